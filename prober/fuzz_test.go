package prober

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// Fuzz targets for everything the prober parses from a server or a user.
// Their seed corpora live in testdata/fuzz; test/fuzz.sh runs each briefly.

// fuzzConn is an smtpConn that reads the server's side from data. What the
// client writes is dropped.
func fuzzConn(data []byte) *smtpConn {
	tr := newTranscript(time.Now(), slog.New(slog.DiscardHandler))
	return &smtpConn{nc: sinkConn{}, r: bufio.NewReaderSize(bytes.NewReader(data), maxReplyLineLen), tr: tr}
}

// sinkConn swallows what the client writes; only Write is ever called.
type sinkConn struct{ net.Conn }

func (sinkConn) Write(b []byte) (int, error) { return len(b), nil }

var enhancedPattern = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}$`)

// checkTranscript asserts the bounds every transcript keeps, whatever the
// server sent.
func checkTranscript(t *testing.T, tr *transcript) {
	t.Helper()
	if len(tr.lines) > maxTranscriptLines {
		t.Fatalf("transcript of %d lines", len(tr.lines))
	}
	for _, l := range tr.lines {
		if len(l.Text) > maxTranscriptLineLen+len("...") || !utf8.ValidString(l.Text) {
			t.Fatalf("transcript line not bounded or not UTF-8: %q", l.Text)
		}
		if strings.ContainsFunc(l.Text, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }) {
			t.Fatalf("control character in transcript line %q", l.Text)
		}
	}
}

// FuzzReadReply reads replies until the input runs out or breaks the
// protocol. Whatever arrives, a reply is bounded and well-formed, an error
// is a protocol error or the end of the input, and the transcript stays
// bounded and printable.
func FuzzReadReply(f *testing.F) {
	for _, seed := range []string{
		"220 mx.example.net ESMTP\r\n",
		"250-mx.example.net\r\n250-SIZE 10240000\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n",
		"535 5.7.8 Authentication credentials invalid\r\n",
		"220-first\n220 bare LF\n",
		"250-mx\r\n220 mixed\r\n",
		"2500 four digits\r\n",
		"334 \r\n",
		"220 \x00\xff\xfe\r\n",
		strings.Repeat("250-x\r\n", maxReplyLines+1) + "250 x\r\n",
		"220 " + strings.Repeat("x", maxReplyLineLen+10) + "\r\n",
		"421",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := fuzzConn(data)
		// Enough replies to overflow the transcript, few enough to keep
		// each run fast.
		for range min(len(data)+1, 2*maxTranscriptLines) {
			rep, err := c.readReply()
			if err != nil {
				var pe *ProtocolError
				if !errors.As(err, &pe) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("error %T %v is neither a protocol error nor the end of input", err, err)
				}
				break
			}
			if len(rep.Lines) == 0 || len(rep.Lines) > maxReplyLines {
				t.Fatalf("reply of %d lines", len(rep.Lines))
			}
			if rep.Code < 200 || rep.Code > 559 || rep.Code/10%10 > 5 {
				t.Fatalf("reply code %d out of range", rep.Code)
			}
			for _, l := range rep.Lines {
				if len(l) > maxReplyLineLen {
					t.Fatalf("line of %d bytes", len(l))
				}
				if strings.ContainsFunc(l, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }) {
					t.Fatalf("control character in %q", l)
				}
			}
			if rep.Enhanced != "" && (!enhancedPattern.MatchString(rep.Enhanced) || !strings.HasPrefix(rep.Lines[0], rep.Enhanced)) {
				t.Fatalf("enhanced code %q from %q", rep.Enhanced, rep.Lines[0])
			}
			checkExtensions(t, parseEHLO(rep))
		}
		checkTranscript(t, c.tr)
	})
}

var (
	keywordPattern   = regexp.MustCompile(`^[A-Z0-9-]{1,32}$`)
	mechanismPattern = regexp.MustCompile(`^[A-Z0-9_-]{1,32}$`)
)

// checkExtensions asserts what parseEHLO promises: keywords and mechanisms
// become metric labels, so they are sanitized, unique and few.
func checkExtensions(t *testing.T, ext extensions) {
	t.Helper()
	if len(ext.keywords) > maxExtensions || len(ext.auth) > maxMechanisms {
		t.Fatalf("%d keywords, %d mechanisms", len(ext.keywords), len(ext.auth))
	}
	if len(ext.params) != len(ext.keywords) {
		t.Fatalf("%d keywords but %d parameter entries", len(ext.keywords), len(ext.params))
	}
	seen := map[string]bool{}
	for _, k := range ext.keywords {
		if !keywordPattern.MatchString(k) || seen[k] || !ext.has(k) {
			t.Fatalf("keyword %q (duplicate: %v)", k, seen[k])
		}
		seen[k] = true
	}
	seen = map[string]bool{}
	for _, m := range ext.auth {
		if !mechanismPattern.MatchString(m) || seen[m] {
			t.Fatalf("mechanism %q (duplicate: %v)", m, seen[m])
		}
		seen[m] = true
	}
	if len(ext.auth) > 0 && !ext.has("AUTH") {
		t.Fatal("mechanisms without an AUTH keyword")
	}
	if ext.size < -1 || (ext.size >= 0 && !ext.has("SIZE")) {
		t.Fatalf("size %d (SIZE advertised: %v)", ext.size, ext.has("SIZE"))
	}
}

// FuzzParseEHLO feeds the extension lines of an EHLO reply, one per line of
// text, straight to the parser.
func FuzzParseEHLO(f *testing.F) {
	for _, seed := range []string{
		"PIPELINING\nSIZE 10240000\nAUTH PLAIN LOGIN CRAM-MD5\n8BITMIME\nSTARTTLS",
		"auth login plain\nAUTH=LOGIN PLAIN\nSize 5242880",
		"SIZE\nSIZE 99999999999999999999999\nSIZE -1\nSIZE abc",
		"AUTH " + strings.Repeat("M ", 100),
		strings.Repeat("X-KEYWORD-WITH-A-LONG-NAME-THAT-GOES-ON\n", 40),
		"ÄUTH plain\n\t\nAUTH=\n=\n-\nX_Y z",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		rep := &Reply{Code: 250, Lines: append([]string{"mx.example.net"}, strings.Split(text, "\n")...)}
		checkExtensions(t, parseEHLO(rep))
	})
}

// Credentials of the SASL fuzz target; the password differs in every
// base64 alphabet.
const (
	fuzzUser     = "fuzz@example.net"
	fuzzPassword = "Fuzz-pw?>-never-shown"
)

// FuzzSASLExchange runs a whole AUTH exchange of PLAIN, LOGIN or CRAM-MD5
// against server replies from the fuzzer. The exchange must end, and
// neither the transcript nor the error may show the password, in any
// encoding, the PLAIN blob or the CRAM-MD5 response.
func FuzzSASLExchange(f *testing.F) {
	cram := base64.StdEncoding.EncodeToString([]byte("<1896.697170952@mx.example.net>"))
	for _, seed := range []struct {
		mech   uint8
		server string
	}{
		{0, "235 2.7.0 ok\r\n"},
		{0, "334 \r\n235 ok\r\n"},
		{0, "334 \r\n334 \r\n535 no\r\n"},
		{1, "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 ok\r\n"},
		{1, "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n334 again\r\n501 cancelled\r\n"},
		{1, "334 !!!\r\n"},
		{1, "334 " + strings.Repeat("QUFB", 300) + "\r\n"},
		{2, "334 " + cram + "\r\n235 ok\r\n"},
		{2, "334 " + strings.TrimRight(cram, "=") + "\r\n535 5.7.8 " + fuzzPassword + "\r\n"},
		{2, "334 \r\n501 5.7.0 cancelled\r\n"},
		{2, "334-" + cram + "\r\n334 " + cram + "\r\n"},
	} {
		f.Add(seed.mech, []byte(seed.server))
	}
	f.Fuzz(func(t *testing.T, which uint8, server []byte) {
		var mech saslMechanism
		switch which % 3 {
		case 0:
			mech = &plainAuth{username: fuzzUser, password: fuzzPassword}
		case 1:
			mech = &loginAuth{username: fuzzUser, password: fuzzPassword}
		default:
			mech = &cramMD5Auth{username: fuzzUser, password: fuzzPassword}
		}
		c := fuzzConn(server)
		p := &probe{c: c, tr: c.tr, logger: slog.New(slog.DiscardHandler)}
		p.tr.addSecret(fuzzPassword)
		rep, err := p.saslExchange(mech, fuzzUser)
		if err == nil && (rep == nil || rep.Code != 235) {
			t.Fatalf("exchange succeeded with %+v", rep)
		}
		checkTranscript(t, p.tr)

		var out strings.Builder
		for _, l := range p.tr.lines {
			out.WriteString(l.Text + "\n")
		}
		if err != nil {
			out.WriteString(p.tr.scrub(err.Error()))
		}
		blob := "\x00" + fuzzUser + "\x00" + fuzzPassword
		forms := []string{fuzzPassword, base64.StdEncoding.EncodeToString([]byte(blob))}
		for _, enc := range base64Encodings {
			forms = append(forms, enc.EncodeToString([]byte(fuzzPassword)))
		}
		for _, form := range forms {
			if strings.Contains(out.String(), form) {
				t.Fatalf("%q shown:\n%s", form, out.String())
			}
		}
		// No CRAM-MD5 digest of any challenge the server sent either.
		for _, l := range p.tr.lines {
			challenge, decErr := base64.StdEncoding.DecodeString(strings.TrimPrefix(l.Text, "334 "))
			if l.Dir != Server || decErr != nil {
				continue
			}
			mac := hmac.New(md5.New, []byte(fuzzPassword))
			mac.Write(challenge)
			if digest := hex.EncodeToString(mac.Sum(nil)); strings.Contains(out.String(), digest) {
				t.Fatalf("CRAM-MD5 digest shown:\n%s", out.String())
			}
		}
	})
}

// FuzzDecodeChallenge checks the decoding of a 334 challenge and each
// mechanism's answer to it.
func FuzzDecodeChallenge(f *testing.F) {
	for _, seed := range []string{"", "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+", "VXNlcm5hbWU6",
		"VXNlcm5hbWU", "!!", " PDE+ ", strings.Repeat("A", maxChallengeLen+4)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		challenge, err := decodeChallenge(&Reply{Code: 334, Lines: []string{text}})
		if err != nil {
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T %v is not a protocol error", err, err)
			}
			return
		}
		if len(strings.TrimSpace(text)) > maxChallengeLen {
			t.Fatalf("challenge of %d bytes accepted", len(text))
		}
		cram := &cramMD5Auth{username: fuzzUser, password: fuzzPassword}
		resp, err := cram.Next(challenge)
		if len(challenge) == 0 {
			if err == nil {
				t.Fatal("CRAM-MD5 answered an empty challenge")
			}
		} else {
			mac := hmac.New(md5.New, []byte(fuzzPassword))
			mac.Write(challenge)
			if want := fuzzUser + " " + hex.EncodeToString(mac.Sum(nil)); err != nil || string(resp) != want {
				t.Fatalf("CRAM-MD5 answered %q, %v; want %q", resp, err, want)
			}
		}
		login := &loginAuth{username: fuzzUser, password: fuzzPassword}
		if resp, err := login.Next(challenge); err != nil || string(resp) != fuzzUser {
			t.Fatalf("LOGIN answered the first prompt with %q, %v", resp, err)
		}
		plain := &plainAuth{username: fuzzUser, password: fuzzPassword}
		if _, err := plain.Next(challenge); (err == nil) != (len(challenge) == 0) {
			t.Fatalf("PLAIN answered a challenge of %d bytes: %v", len(challenge), err)
		}
	})
}

// FuzzParseTarget checks that whatever a user puts in the target parameter
// either is refused or yields a host that is an IP address or a DNS name,
// and a port in range, which parse back to themselves.
func FuzzParseTarget(f *testing.F) {
	for _, seed := range []string{
		"mail.example.net", "mail.example.net:25", "127.0.0.1:2525", "::1", "[::1]", "[::1]:25",
		"[fe80::1%eth0]:25", "::ffff:10.0.0.1", "smtp://mail.example.net", "user@mail.example.net",
		"mail.example.net/x", "mail.example.net\r\nQUIT", "mail.example.net:0", "mail.example.net:065535",
		"%00", "[127.0.0.1]:25", "ünï.example", strings.Repeat("a.", 130),
	} {
		f.Add(seed, uint16(587))
	}
	f.Fuzz(func(t *testing.T, target string, defaultPort uint16) {
		dp := max(int(defaultPort), 1)
		host, port, err := parseTarget(target, dp)
		if err != nil {
			return
		}
		if len(target) > maxTargetLen || strings.ContainsAny(target, "/?#@") ||
			strings.ContainsFunc(target, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			t.Fatalf("parseTarget(%q) accepted", target)
		}
		if port < 1 || port > 65535 {
			t.Fatalf("parseTarget(%q): port %d", target, port)
		}
		if _, addrErr := netip.ParseAddr(host); addrErr != nil && !isHostName(host) {
			t.Fatalf("parseTarget(%q): host %q is neither an address nor a name", target, host)
		}
		h2, p2, err := parseTarget(net.JoinHostPort(host, strconv.Itoa(port)), dp)
		if err != nil || h2 != host || p2 != port {
			t.Fatalf("parseTarget(%q) = %q, %d; which parses back as %q, %d, %v", target, host, port, h2, p2, err)
		}
	})
}

// FuzzScrub embeds a secret in text from the input in every way a server
// may echo it (as it is, quoted, JSON-escaped, in every base64 alphabet,
// split across two lines, with a control or invisible character inserted,
// inside a longer base64 message) and checks that no output of the
// redactor shows it: not redact, not show or quote at any bound, not the
// transcript of a reply carrying it.
func FuzzScrub(f *testing.F) {
	f.Add("pw\"Quote\\Back-1234", "535 5.7.8 you sent ", " ok", uint8(4), uint16(40))
	f.Add("hunter2-password", "", "", uint8(0), uint16(32))
	f.Add("ya29.T0ken?>never-shown", "{\"scope\":\"", "\"}", uint8(9), uint16(200))
	f.Add("\x00\xff\u200bsecret\\\"", "x", "y", uint8(3), uint16(64))
	f.Fuzz(func(t *testing.T, secret, before, after string, how uint8, max uint16) {
		if len(secret) < 12 || len(secret) > 200 || strings.ContainsAny(secret, "\n") || strings.ContainsAny(before+after, "\r\n") {
			t.Skip("not a secret or a text the redactor is given")
		}
		half := len(secret) / 2
		for half > 0 && !utf8.RuneStart(secret[half]) {
			half--
		}
		var embedded string
		switch how % 10 {
		case 0:
			embedded = secret
		case 1:
			embedded = strconv.Quote(secret)
		case 2:
			b, _ := json.Marshal(secret)
			embedded = string(b)
		case 3, 4, 5, 6:
			embedded = base64Encodings[how%10-3].EncodeToString([]byte(secret))
		case 7:
			embedded = secret[:half] + "\r\n" + secret[half:]
		case 8:
			embedded = secret[:half] + "\x01\u200b" + secret[half:]
		case 9:
			embedded = base64.StdEncoding.EncodeToString([]byte(before + secret + after))
		}
		text := before + embedded + after
		// What must not show: the secret's skeleton, 8 bytes of its start,
		// and its registered forms.
		skelBytes, _, _ := skeleton(nil, secret, nil, nil)
		skel := string(skelBytes)
		if len(skel) < minCutPrefix {
			t.Skip("the secret is shorter than minCutPrefix once skipped characters are left out")
		}
		// render gives every output of text, with secrets registered, as
		// the characters a reader sees, compared as matching sees them: an
		// escape stands for its character (the digits of "\x00" next to a
		// run of zeros are no secret, and "\"" in a quoted secret must not
		// hide it), and a skipped character cannot hide a leak.
		render := func(text string, secrets ...string) []string {
			tr := newTranscript(time.Now(), slog.New(slog.DiscardHandler))
			for _, s := range secrets {
				tr.addSecret(s)
			}
			for _, l := range strings.Split(text, "\r\n") {
				tr.server("535-" + l)
			}
			tr.replyDone(535)
			outputs := []string{tr.red.redact(text), tr.red.show(text, int(max)), tr.red.quote(text, int(max)), tr.red.clip(text, int(max)), transcriptText(&Result{Transcript: tr.lines})}
			for i, out := range outputs {
				skel, _, _ := skeleton(nil, unescapeGo(out), nil, nil)
				outputs[i] = string(skel)
			}
			return outputs
		}
		// The text around the secret may spell it, or join an opening
		// quote or an escape into it, by itself: what the outputs of that
		// text alone show is no leak. Inside a message that is base64 as a
		// whole, the text before the secret decides the characters before
		// it, so the baseline is the same message with the secret's bytes
		// replaced.
		baselineText := before + "<redacted>" + after
		if how%10 == 9 {
			filler := strings.Repeat("#", len(secret))
			baselineText = before + base64.StdEncoding.EncodeToString([]byte(before+filler+after)) + after
		}
		baseline := render(baselineText)
		quoted := strconv.Quote(secret)
		forms := []string{quoted[1 : len(quoted)-1], strings.TrimRight(base64.StdEncoding.EncodeToString([]byte(secret)), "=")}
		for i, out := range render(text, secret) {
			if strings.Count(out, skel) > strings.Count(baseline[i], skel) {
				t.Fatalf("secret %q shown in %q (text %q)", secret, out, text)
			}
			for _, form := range forms {
				if len(form) >= minSecretLen && strings.Count(out, form) > strings.Count(baseline[i], form) {
					t.Fatalf("form %q of secret %q shown in %q", form, secret, out)
				}
			}
		}
	})
}

// unescapeGo replaces the escapes strconv.Quote and the redactor's output
// write (\xNN, \uNNNN, \UNNNNNNNN, \", \\ and the single-letter ones) by
// the characters they stand for; anything else is kept as it is.
func unescapeGo(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		digits := map[byte]int{'x': 2, 'u': 4, 'U': 8}[s[i+1]]
		if digits > 0 && i+2+digits <= len(s) {
			if n, err := strconv.ParseUint(s[i+2:i+2+digits], 16, 32); err == nil {
				if s[i+1] == 'x' {
					b.WriteByte(byte(n))
				} else {
					b.WriteRune(rune(n))
				}
				i += 1 + digits
				continue
			}
		}
		if c, ok := map[byte]byte{'"': '"', '\\': '\\', 'n': '\n', 'r': '\r', 't': '\t', 'a': '\a', 'b': '\b', 'f': '\f', 'v': '\v'}[s[i+1]]; ok {
			b.WriteByte(c)
			i++
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
