package config

import (
	"strings"
	"testing"
)

// Values testdata does not cover: each is refused at load with its field
// and the reason. Anything that reaches the wire (the EHLO name, the
// username, addresses, headers, the TLS server name) is refused when it
// holds a line break.
func TestLoadRefusesInvalidValues(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"module name with CR LF", "modules:\n  \"bad\\r\\nname\":\n    smtp: {tls: none}\n",
			`line 2: modules."bad\r\nname": invalid module name "bad\r\nname"`},
		{"module name with escape", "modules:\n  \"m\\e[2J\":\n    smtp: {tls: none}\n",
			`line 2: modules."m\x1b[2J": invalid module name "m\x1b[2J"`},
		{"empty file", "", "empty configuration: no modules defined"},
		{"only a document separator", "---\n", "no modules defined"},
		{"token endpoint min_version above max_version",
			"modules:\n  m:\n    smtp:\n      auth:\n        mechanism: XOAUTH2\n        username: probe@example.net\n        oauth2:\n          client_id: c\n          client_secret: s\n          token_url: https://login.example.net/token\n          tls_config:\n            min_version: TLS13\n            max_version: TLS12\n      allowed_targets: [\"*\"]\n",
			"line 12: modules.m.smtp.auth.oauth2.tls_config.min_version: must not be greater than max_version"},
		{"reply_to with CR LF",
			"modules:\n  m:\n    smtp:\n      mail:\n        from: a@example.net\n        to: [b@example.net]\n        message:\n          reply_to: \"noc@example.net\\r\\nBcc: x@example.org\"\n",
			"line 8: modules.m.smtp.mail.message.reply_to: must not contain CR, LF or other control characters"},
		{"empty module", "modules:\n  m:\n",
			"line 2: modules.m: the module is empty; write {} to take every default"},
		{"negative port", "modules:\n  m:\n    smtp: {tls: none, port: -1}\n",
			"line 3: modules.m.smtp.port: must be between 1 and 65535, got -1"},
		{"negative timeout", "modules:\n  m:\n    timeout: -5s\n    smtp: {tls: none}\n",
			`not a valid duration string: "-5s"`},
		{"server_name with CR LF", "modules:\n  m:\n    smtp:\n      tls_config: {server_name: \"mx.example.net\\r\\nEHLO x\"}\n",
			`line 4: modules.m.smtp.tls_config.server_name: "mx.example.net\r\nEHLO x" is not a host name or IP address`},
		{"server_name with a space", "modules:\n  m:\n    smtp:\n      tls_config: {server_name: \"mx example\"}\n",
			`line 4: modules.m.smtp.tls_config.server_name: "mx example" is not a host name or IP address`},
		{"TLS versions crossed", "modules:\n  m:\n    smtp:\n      tls_config: {min_version: TLS13, max_version: TLS12}\n",
			"line 4: modules.m.smtp.tls_config.min_version: must not be greater than max_version"},
		{"empty username", "modules:\n  m:\n    smtp:\n      auth: {username: \"\", password: x}\n      allowed_targets: ['*']\n",
			"line 4: modules.m.smtp.auth.username: must be set"},
		{"username with escape", "modules:\n  m:\n    smtp:\n      auth: {username: \"u\\e\", password: x}\n      allowed_targets: ['*']\n",
			"line 4: modules.m.smtp.auth.username: must not contain CR, LF or other control characters"},
		{"password with NUL", "modules:\n  m:\n    smtp:\n      auth: {username: u, password: \"a\\0b\"}\n      allowed_targets: ['*']\n",
			"line 4: modules.m.smtp.auth.password: must not contain a NUL byte"},
		{"empty allowed target", "modules:\n  m:\n    smtp:\n      allowed_targets: ['']\n",
			"line 4: modules.m.smtp.allowed_targets.0: empty entry"},
		{"allowed target prefix too long", "modules:\n  m:\n    smtp:\n      allowed_targets: ['10.0.0.0/33']\n",
			`line 4: modules.m.smtp.allowed_targets.0: "10.0.0.0/33" is not a host name, host:port, IP address or CIDR prefix`},
		{"allowed target URL", "modules:\n  m:\n    smtp:\n      allowed_targets: ['smtp://mx.example.net']\n",
			`line 4: modules.m.smtp.allowed_targets.0: "smtp://mx.example.net" is not a host name, host:port, IP address or CIDR prefix`},
		{"allowed target with user", "modules:\n  m:\n    smtp:\n      allowed_targets: ['user@mx.example.net']\n",
			`line 4: modules.m.smtp.allowed_targets.0: "user@mx.example.net" is not a host name, host:port, IP address or CIDR prefix`},
		{"allowed target with CR LF", "modules:\n  m:\n    smtp:\n      allowed_targets: [\"mx.example.net\\r\\nevil\"]\n",
			`line 4: modules.m.smtp.allowed_targets.0: "mx.example.net\r\nevil" is not a host name, host:port, IP address or CIDR prefix`},
		{"allowed target IPv6 port out of range", "modules:\n  m:\n    smtp:\n      allowed_targets: ['[::1]:99999']\n",
			`line 4: modules.m.smtp.allowed_targets.0: "[::1]:99999": invalid port "99999"`},
		{"allowed target IPv4 in brackets", "modules:\n  m:\n    smtp:\n      allowed_targets: ['[127.0.0.1]']\n",
			`line 4: modules.m.smtp.allowed_targets.0: "[127.0.0.1]" is not a bracketed IPv6 address`},
		{"allowed target with a zone", "modules:\n  m:\n    smtp:\n      allowed_targets: ['fe80::1%eth0']\n",
			`line 4: modules.m.smtp.allowed_targets.0: "fe80::1%eth0": IPv6 zones are not supported`},
		{"allowed target wildcard name", "modules:\n  m:\n    smtp:\n      allowed_targets: ['*.example.net']\n",
			`line 4: modules.m.smtp.allowed_targets.0: "*.example.net" is not a host name, host:port, IP address or CIDR prefix`},
		{"empty sender", "modules:\n  m:\n    smtp:\n      mail: {from: \"\", to: [a@example.net]}\n",
			`line 4: modules.m.smtp.mail.from: "" is not an address: mail: no address`},
		{"non-ASCII sender", "modules:\n  m:\n    smtp:\n      mail: {from: \"prüfer@example.net\", to: [a@example.net]}\n",
			`line 4: modules.m.smtp.mail.from: "prüfer@example.net": non-ASCII addresses are not supported`},
		{"bad cc", "modules:\n  m:\n    smtp:\n      mail: {from: a@example.net, cc: [x]}\n",
			`line 4: modules.m.smtp.mail.cc.0: "x" is not an address: mail: missing '@' or angle-addr`},
		{"bcc with CR LF", "modules:\n  m:\n    smtp:\n      mail: {from: a@example.net, bcc: [\"x@example.net\\r\\nDATA\"]}\n",
			"line 4: modules.m.smtp.mail.bcc.0: must not contain CR, LF or other control characters"},
		{"from_name with LF", "modules:\n  m:\n    smtp:\n      mail: {from: a@example.net, to: [a@example.net], message: {from_name: \"x\\ny\"}}\n",
			"line 4: modules.m.smtp.mail.message.from_name: must not contain CR, LF or other control characters"},
		{"bad reply_to", "modules:\n  m:\n    smtp:\n      mail: {from: a@example.net, to: [a@example.net], message: {reply_to: x}}\n",
			`line 4: modules.m.smtp.mail.message.reply_to: "x" is not an address: mail: missing '@' or angle-addr`},
		{"header name with a space", "modules:\n  m:\n    smtp:\n      mail: {from: a@example.net, to: [a@example.net], message: {headers: {\"X Y\": v}}}\n",
			`line 4: modules.m.smtp.mail.message.headers.X Y: "X Y" is not a valid header name`},
		{"header value with CR LF", "modules:\n  m:\n    smtp:\n      mail: {from: a@example.net, to: [a@example.net], message: {headers: {X-Y: \"v\\r\\nBcc: z@example.net\"}}}\n",
			"line 4: modules.m.smtp.mail.message.headers.X-Y: value must not contain CR, LF or other control characters"},
		{"blank body", "modules:\n  m:\n    smtp:\n      mail: {from: a@example.net, to: [a@example.net], message: {body: \"  \"}}\n",
			"line 4: modules.m.smtp.mail.message.body: body or html_body must be set"},
		{"attachment without path", "modules:\n  m:\n    smtp:\n      mail: {from: a@example.net, to: [a@example.net], message: {attachments: [{path: \"\"}]}}\n",
			"line 4: modules.m.smtp.mail.message.attachments.0.path: must be set"},
		{"attachment content type with CR LF", "modules:\n  m:\n    smtp:\n      mail: {from: a@example.net, to: [a@example.net], message: {attachments: [{path: x, content_type: \"text/plain\\r\\nX: y\"}]}}\n",
			`line 4: modules.m.smtp.mail.message.attachments.0.content_type: "text/plain\r\nX: y" is not a media type`},
		{"attachment file name with a path", "modules:\n  m:\n    smtp:\n      mail: {from: a@example.net, to: [a@example.net], message: {attachments: [{path: x, filename: \"../x\"}]}}\n",
			"line 4: modules.m.smtp.mail.message.attachments.0.filename: must not contain control characters, quotes, slashes or backslashes"},
		{"two documents", "modules:\n  m:\n    smtp: {tls: none}\n---\nmodules:\n  other:\n    smtp: {tls: none}\n",
			"line 4: a second YAML document; the configuration is a single document"},
		{"broken second document", "modules:\n  m:\n    smtp: {tls: none}\n---\nmodules: [\n",
			"yaml: line 5: did not find expected node content"},
		{"module defined twice", "modules:\n  m:\n    smtp: {tls: none}\n  m:\n    smtp: {tls: none}\n",
			"yaml: unmarshal errors:\n  line 4: mapping key \"m\" already defined at line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.yaml)
			}
			if cfg != nil {
				t.Error("a configuration returned with the error")
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n got: %s\nwant: %s", err, tc.want)
			}
		})
	}
}

// Forms that are valid and must stay so.
func TestLoadAcceptsEdgeForms(t *testing.T) {
	for _, tc := range []struct{ name, yaml string }{
		{"module without smtp block", "modules:\n  m: {}\n"},
		{"module with only a timeout", "modules:\n  m:\n    timeout: 5s\n"},
		{"allowed target bracketed IPv6", "modules:\n  m:\n    smtp:\n      allowed_targets: ['[2001:db8::25]', '[::1]:587', '::1', '2001:db8::/32']\n"},
		{"server_name IP", "modules:\n  m:\n    smtp:\n      tls_config: {server_name: 192.0.2.25}\n"},
		{"trailing document marker", "modules:\n  m:\n    smtp: {tls: none}\n---\n"},
		{"document end marker", "modules:\n  m:\n    smtp: {tls: none}\n...\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load([]byte(tc.yaml))
			if err != nil {
				t.Fatalf("refused: %v\n%s", err, tc.yaml)
			}
			m := cfg.Modules["m"]
			if m.SMTP.EHLO == "" || m.SMTP.TLS != DefaultSMTPProbe.TLS && !strings.Contains(tc.yaml, "tls:") || m.Timeout <= 0 {
				t.Errorf("defaults not applied: %+v", m)
			}
		})
	}
	cfg, err := Load([]byte("modules:\n  m:\n    smtp:\n      allowed_targets: ['[2001:db8::25]']\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Modules["m"].SMTP; !s.AllowsHost("2001:db8::25", 25) || s.AllowsHost("2001:db8::26", 25) {
		t.Error("bracketed IPv6 entry does not admit exactly its address")
	}
}
