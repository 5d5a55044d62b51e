package config

import "testing"

// FuzzLoad feeds arbitrary bytes to the loader: it must refuse them with an
// error or accept them, never panic, and what it accepts must render (as
// /config shows it) into a file that loads again.
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"modules:\n  m:\n    smtp:\n      tls: none\n",
		"modules:\n  submission:\n    timeout: 8s\n    smtp:\n      tls: starttls\n      auth:\n        mechanism: plain\n        username: probe@example.net\n        password: hunter2\n      allowed_targets: [\"*\", \"10.0.0.0/8\", \"[2001:db8::1]:587\"]\n",
		"modules:\n  canary:\n    smtp:\n      mail:\n        from: probe@example.net\n        to: [sink@example.net]\n        message:\n          headers: {X-A: b}\n          attachments: [{path: /etc/hostname}]\n",
		"modules:\n  m:\n    smtp:\n      tls_config: {min_version: TLS13, max_version: TLS12}\n",
		"modules:\n  m:\n    smtp:\n      ehlo: \"a\\r\\nb\"\n",
		"modules: &a\n  m: *a\n",
		"modules:\n  m: {}\n",
		"modules:\n  m:\n",
		"modules:\n  m:\n    smtp: {tls: none}\n---\nmodules: {}\n",
		"- [\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Load(data)
		if err != nil {
			if cfg != nil {
				t.Fatal("a configuration returned with an error")
			}
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		if len(cfg.Modules) == 0 {
			t.Fatal("accepted a configuration without modules")
		}
		out, err := cfg.Marshal()
		if err != nil {
			t.Fatalf("accepted configuration does not render: %v", err)
		}
		if _, err := Load(out); err != nil {
			t.Fatalf("rendered configuration does not load again: %v\ninput:\n%s\nrendered:\n%s", err, data, out)
		}
	})
}
