package prober

import (
	"crypto/hmac"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// A server may quote back what the client sent, decoded or re-encoded in
// another base64 alphabet, or only the digest of a CRAM-MD5 response: every
// such form is scrubbed, and the username, which is no secret, is not.
func TestScrubQuotedCredentials(t *testing.T) {
	t.Parallel()
	const (
		user = "probe@example.net"
		// The password differs in every base64 alphabet, padded or not.
		password = "Ech0-me?>if-you-dare"
	)
	tr := newTranscript(time.Now(), slog.New(slog.DiscardHandler))
	tr.addSecret(password)
	blob := "\x00" + user + "\x00" + password
	tr.addResponse([]byte(blob), user)
	tr.addResponse([]byte(user), user) // LOGIN's first answer
	mac := hmac.New(md5.New, []byte(password))
	mac.Write([]byte("<1.2@mx>"))
	digest := hex.EncodeToString(mac.Sum(nil))
	tr.addResponse([]byte(user+" "+digest), user)

	forms := []string{password, digest, base64.StdEncoding.EncodeToString([]byte(blob))}
	for _, enc := range base64Encodings {
		forms = append(forms, enc.EncodeToString([]byte(password)))
	}
	for _, form := range forms {
		got := tr.scrub("535 5.7.8 you sent " + form + " for " + user)
		if strings.Contains(got, form) || got != "535 5.7.8 you sent "+Redacted+" for "+user {
			t.Errorf("%q scrubbed to %q", form, got)
		}
	}
	// The password inside the blob goes with the whole blob, not leaving
	// the rest of the blob readable around a marker; the NUL before it is
	// no part of the match.
	if got := tr.scrub(blob); got != "\x00"+Redacted {
		t.Errorf("blob scrubbed to %q", got)
	}
}

// quotedPassword has what quoting changes, and is long enough for the rule
// on a cut-off start.
const quotedPassword = `pw"Quote\Back-1234`

// Every rule of the redactor, on raw text as a server sends it.
func TestRedactRules(t *testing.T) {
	t.Parallel()
	red := newRedactor()
	red.add(quotedPassword)
	blob := "\x00" + testUser + "\x00" + quotedPassword
	red.addComposite(blob, len(blob)-len(quotedPassword))
	goQuoted := strconv.Quote(quotedPassword)
	half := len(quotedPassword) / 2
	// A message that holds the secret, encoded as a whole at each offset
	// of a group of three bytes.
	inBase64 := func(prefix string) string {
		return base64.StdEncoding.EncodeToString([]byte(prefix + `{"scope":"` + quotedPassword + `"}`))
	}
	for _, tc := range []struct{ name, in, want string }{
		{"as it is", "you sent " + quotedPassword + " ok", "you sent " + Redacted + " ok"},
		{"Go-quoted", "you sent " + goQuoted, "you sent \"" + Redacted + "\""},
		{"JSON-escaped", `{"e":"` + `pw\"Quote\\Back-1234` + `"}`, `{"e":"` + Redacted + `"}`},
		{"URL-escaped", "key=" + url.QueryEscape(quotedPassword), "key=" + Redacted},
		{"HTML-escaped", "<b>" + html.EscapeString(quotedPassword) + "</b>", "<b>" + Redacted + "</b>"},
		{"control character inside", "you sent " + quotedPassword[:half] + "\x01" + quotedPassword[half:], "you sent " + Redacted},
		{"zero-width character inside", "you sent " + quotedPassword[:half] + "\u200b" + quotedPassword[half:], "you sent " + Redacted},
		{"split across lines", "you sent " + quotedPassword[:half] + "\n" + quotedPassword[half:] + " ok", "you sent " + Redacted + "\n" + Redacted + " ok"},
		{"cut at the end", "you sent " + quotedPassword[:8], "you sent " + Redacted},
		{"cut before dots", "you sent " + goQuoted[:12] + "... more", "you sent \"" + Redacted + "... more"},
		{"cut at a word end", "you sent " + quotedPassword[:9] + " more", "you sent " + Redacted + " more"},
		// Bounds: less than 8 bytes of the start, or a piece that is not
		// the start, shows.
		{"7 bytes of the start", "you sent " + quotedPassword[:7], "you sent " + quotedPassword[:7]},
		{"the start inside a word", "you sent " + quotedPassword[:9] + "zzz", "you sent " + quotedPassword[:9] + "zzz"},
		// The username in the PLAIN blob is no secret.
		{"blob cut after the username", "you sent " + blob[:len(blob)-len(quotedPassword)+3], "you sent " + blob[:len(blob)-len(quotedPassword)+3]},
		{"blob cut in the password", "you sent " + blob[:len(blob)-len(quotedPassword)+8], "you sent \x00" + Redacted},
		{"username alone", "535 no such user " + testUser, "535 no such user " + testUser},
		{"base64 at offset 0", inBase64(""), Redacted},
		{"base64 at offset 1", inBase64("x"), Redacted},
		{"base64 at offset 2", inBase64("xy"), Redacted},
	} {
		if got := red.redact(tc.in); got != tc.want {
			t.Errorf("%s: %q redacted to %q, want %q", tc.name, tc.in, got, tc.want)
		}
	}
	for _, enc := range base64Encodings {
		for _, v := range []string{quotedPassword, blob} {
			in := "334 " + enc.EncodeToString([]byte(v))
			if got := red.redact(in); got != "334 "+Redacted {
				t.Errorf("%q redacted to %q", in, got)
			}
		}
	}
}

// The lines of one reply are redacted together, with the reply code and
// the enhanced status code of each line left out of the match.
func TestRedactReplyLines(t *testing.T) {
	t.Parallel()
	tr := newTranscript(time.Now(), slog.New(slog.DiscardHandler))
	tr.addSecret(quotedPassword)
	half := len(quotedPassword) / 2
	tr.server("535-5.7.8 you sent " + quotedPassword[:half])
	tr.server("535 5.7.8 " + quotedPassword[half:] + " which is wrong")
	rep := &Reply{Code: 535, Enhanced: "5.7.8", Lines: []string{"5.7.8 you sent " + quotedPassword[:half], "5.7.8 " + quotedPassword[half:] + " which is wrong"}}
	tr.replyDone(535)
	want := []string{"535-5.7.8 you sent " + Redacted, "535 5.7.8 " + Redacted + " which is wrong"}
	for i, l := range tr.lines {
		if l.Text != want[i] {
			t.Errorf("line %d: %q, want %q", i, l.Text, want[i])
		}
	}
	if got := tr.replyText(rep, 200); got != "you sent "+Redacted {
		t.Errorf("reply text %q", got)
	}
}

// Redaction comes before quoting and cutting: a secret that straddles the
// cut shows nothing of its start, and a quoted error shows no escaped form.
func TestShowRedactsBeforeCutting(t *testing.T) {
	t.Parallel()
	red := newRedactor()
	red.add(quotedPassword)
	for _, max := range []int{32, 40, 64, 200} {
		raw := strings.Repeat("x", max-len(quotedPassword)/2) + quotedPassword + " and more"
		for name, got := range map[string]string{
			"show":  red.show(raw, max),
			"quote": red.quote(raw, max),
			"clip":  red.clip(raw, max),
		} {
			if strings.Contains(got, quotedPassword[:8]) || strings.Contains(got, strconv.Quote(quotedPassword)[1:9]) || !strings.Contains(got, Redacted) {
				t.Errorf("%s(%d) = %q", name, max, got)
			}
		}
	}
	if got := red.quote("55 "+quotedPassword, 40); got != strconv.Quote("55 "+Redacted) {
		t.Errorf("quote = %s", got)
	}
}

// A malformed reply, a SCRAM server-error and the expect_auth_rejected log
// line quote what the server said: none shows the password, quoted or not.
func TestQuotedRepliesRedacted(t *testing.T) {
	t.Parallel()
	goQuoted := strconv.Quote(quotedPassword)
	for _, tc := range []struct {
		name, reply    string
		expectRejected bool
	}{
		{"malformed reply", "55 you sent " + quotedPassword + "\r\n", false},
		{"quoting reply", "535 5.7.8 you sent " + goQuoted + "\r\n", false},
		{"expect_auth_rejected", "535 5.7.8 you sent " + goQuoted + "\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewReplyServer(t, "220 mx ESMTP\r\n", map[string]string{
				"EHLO": "250-mx\r\n250 AUTH PLAIN\r\n",
				"AUTH": tc.reply,
			})
			m := loadModule(t, moduleSpec{TLS: "none", Mechanism: "PLAIN", Password: quotedPassword, AllowPlaintext: true})
			m.SMTP.ExpectAuthRejected = tc.expectRejected
			r, log := runProbe(t, target(srv), m)
			failure := ""
			if r.Failure != nil {
				failure = r.Failure.Err.Error()
			}
			if tc.expectRejected != (r.Failure == nil) {
				t.Fatalf("failure %v, log:\n%s", r.Failure, log)
			}
			if tc.expectRejected && !strings.Contains(log, "Authentication refused, as expected") {
				t.Fatalf("no log line of the expected refusal:\n%s", log)
			}
			for where, text := range map[string]string{"failure": failure, "log": log, "transcript": transcriptText(r)} {
				for _, f := range []string{quotedPassword[:8], goQuoted[1:9], strconv.Quote(goQuoted)[1:9]} {
					if strings.Contains(text, f) {
						t.Errorf("%s shows %q:\n%s", where, f, text)
					}
				}
			}
		})
	}
}

// The PLAIN blob is a secret from the start: a server that echoes it in
// the banner, before AUTH, does not get it shown.
func TestBlobRegisteredBeforeTheFirstPacket(t *testing.T) {
	t.Parallel()
	blob := base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00" + testPassword))
	srv := smtptest.NewReplyServer(t, "220-mx ESMTP\r\n220 last time you sent "+blob+"\r\n", map[string]string{
		"EHLO": "250 mx\r\n",
	})
	m := loadModule(t, moduleSpec{TLS: "none", Mechanism: "PLAIN", AllowPlaintext: true})
	r, log := runProbe(t, target(srv), m)
	if !strings.Contains(transcriptText(r), "S: 220 last time you sent "+Redacted) {
		t.Errorf("banner not redacted:\n%s", transcriptText(r))
	}
	assertNoSecrets(t, r, log, blob)
}

// Every record of a probe's log goes through the redactor, whatever its
// level and however the value is given.
func TestRedactingHandler(t *testing.T) {
	t.Parallel()
	var logs smtptest.LogBuffer
	tr := newTranscript(time.Now(), slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	tr.addSecret(quotedPassword)
	l := tr.logger.With("bound", quotedPassword).WithGroup("g")
	l.Error("sent "+quotedPassword, "err", errors.New("you sent "+quotedPassword), "list", []string{quotedPassword},
		slog.Group("inner", "s", quotedPassword), "stringer", testStringer(quotedPassword))
	l.Warn("w", "s", quotedPassword)
	l.Info("i", "s", quotedPassword)
	l.Debug("d", "s", quotedPassword)
	if out := logs.String(); strings.Contains(out, quotedPassword[:8]) || strings.Contains(out, `pw\"Quot`) || strings.Count(out, Redacted) < 9 {
		t.Errorf("log:\n%s", out)
	}
}

type testStringer string

func (s testStringer) String() string { return string(s) }

// A token endpoint that cannot be reached is named without the values of
// its query.
func TestTokenEndpointErrorHidesQuery(t *testing.T) {
	t.Parallel()
	err := tokenEndpointError(&url.Error{Op: "Post", URL: "https://login.example.net/token?key=s3cr3t-key&v=2", Err: errors.New("connection refused")}, nil)
	if got := err.Error(); strings.Contains(got, "s3cr3t") || !strings.Contains(got, "key=<secret>") {
		t.Errorf("error %q", got)
	}
}

// redactAll looks at a list joined first; what any one string would show
// must still be redacted in that string alone, and a list with nothing to
// redact comes back as it was.
func TestRedactAllFindsWhatOneStringShows(t *testing.T) {
	const secret = "Sw0rdf1sh-leak-canary"
	r := newRedactor()
	r.add(secret)
	clean := []string{"PIPELINING", "SIZE", "8BITMIME", "AUTH"}
	if got := r.redactAll(clean); &got[0] != &clean[0] {
		t.Errorf("a list with nothing to redact was copied: %q", got)
	}
	for name, leak := range map[string]string{
		"as it is":          secret,
		"cut at its end":    secret[:10],
		"in base64":         base64.StdEncoding.EncodeToString([]byte(secret)),
		"inside base64":     base64.RawStdEncoding.EncodeToString([]byte(`{"pw":"` + secret + `"}`)),
		"after a control":   "X\x01" + secret,
		"split by controls": secret[:6] + "\x00\u200b" + secret[6:],
	} {
		list := []string{"PIPELINING", "X-" + leak, "8BITMIME"}
		got := r.redactAll(list)
		if got[0] != "PIPELINING" || got[2] != "8BITMIME" {
			t.Errorf("%s: other strings changed: %q", name, got)
		}
		if got[1] == list[1] || strings.Contains(got[1], secret[:8]) {
			t.Errorf("%s: %q not redacted: %q", name, list[1], got[1])
		}
		if want := r.redact(list[1]); got[1] != want {
			t.Errorf("%s: %q, want %q as redact gives it alone", name, got[1], want)
		}
	}
}

// The forms cache stays within maxCachedForms however many secrets pass
// through it, and a secret registered after the cache started again is
// still redacted in every form.
func TestFormCacheIsBoundedAndStillRedacts(t *testing.T) {
	first := "first-secret-0000"
	r := newRedactor()
	r.add(first)
	for i := range maxCachedForms + 10 {
		newRedactor().add(fmt.Sprintf("filler-secret-%06d", i))
		formCache.Lock()
		n := len(formCache.m)
		formCache.Unlock()
		if n > maxCachedForms {
			t.Fatalf("%d registrations cached, bound %d", n, maxCachedForms)
		}
	}
	again := newRedactor()
	again.add(first)
	for _, text := range []string{first, base64.StdEncoding.EncodeToString([]byte(first)), strconv.Quote(first)} {
		for name, red := range map[string]*redactor{"before": r, "after": again} {
			if out := red.redact("x " + text + " y"); strings.Contains(out, first[:8]) || strings.Contains(out, text) {
				t.Errorf("%s the cache started again: %q shown in %q", name, text, out)
			}
		}
	}
}
