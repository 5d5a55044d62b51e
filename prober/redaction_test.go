package prober

import (
	"encoding/base64"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// assertNoSecrets fails if any secret appears in the transcript, the log or
// the failure.
func assertNoSecrets(t *testing.T, r *Result, log string, secrets ...string) {
	t.Helper()
	transcript := transcriptText(r)
	failure := ""
	if r.Failure != nil && r.Failure.Err != nil {
		failure = r.Failure.Err.Error()
	}
	for _, s := range secrets {
		if s == "" {
			t.Fatal("empty secret: the test would prove nothing")
		}
		for where, text := range map[string]string{"transcript": transcript, "log": log, "failure": failure} {
			if strings.Contains(text, s) {
				t.Errorf("secret %q found in the %s", s, where)
			}
		}
	}
}

// The credentials the server really received must appear nowhere: not the
// password, not its base64, not the PLAIN blob, not LOGIN's lines, not the
// CRAM-MD5 response or its digest.
func TestTranscriptRedaction(t *testing.T) {
	t.Parallel()
	caFile := smtptest.Certs().WriteCAFile(t)
	for _, mech := range []string{"PLAIN", "LOGIN", "CRAM-MD5"} {
		for _, mode := range []string{"none", "starttls"} {
			t.Run(mech+"/"+mode, func(t *testing.T) {
				t.Parallel()
				serverTLS := smtptest.NoTLS
				if mode == "starttls" {
					serverTLS = smtptest.StartTLS
				}
				srv := smtptest.NewServer(t, smtptest.Options{TLS: serverTLS, Username: testUser, Password: testPassword})
				m := loadModule(t, moduleSpec{TLS: mode, CAFile: caFile, Mechanism: mech, AllowPlaintext: true})
				r, log := runProbe(t, target(srv), m)
				requireSuccess(t, r, log)
				srv.Close()

				// What went over the wire during AUTH, as the server read it.
				lines := srv.Lines()
				var authLine string
				var answers []string
				for i, l := range lines {
					if strings.HasPrefix(l, "AUTH ") {
						authLine = l
						for _, a := range lines[i+1:] {
							if a == "QUIT" {
								break
							}
							answers = append(answers, a)
						}
					}
				}
				secrets := []string{testPassword, base64.StdEncoding.EncodeToString([]byte(testPassword))}
				transcript := transcriptText(r)
				switch mech {
				case "PLAIN":
					blob := "\x00" + testUser + "\x00" + testPassword
					ir := strings.TrimPrefix(authLine, "AUTH PLAIN ")
					if ir != base64.StdEncoding.EncodeToString([]byte(blob)) {
						t.Fatalf("AUTH line %q does not carry the PLAIN blob", authLine)
					}
					secrets = append(secrets, ir, blob)
					if !strings.Contains(transcript, "C: AUTH PLAIN <redacted>\n") {
						t.Errorf("no redacted AUTH PLAIN line:\n%s", transcript)
					}
				case "LOGIN":
					if len(answers) != 2 {
						t.Fatalf("LOGIN answers %q", answers)
					}
					secrets = append(secrets, answers[1])
					if strings.Count(transcript, "C: "+Redacted+"\n") != 2 {
						t.Errorf("want two redacted LOGIN lines:\n%s", transcript)
					}
				case "CRAM-MD5":
					if len(answers) != 1 {
						t.Fatalf("CRAM-MD5 answers %q", answers)
					}
					decoded, err := base64.StdEncoding.DecodeString(answers[0])
					if err != nil {
						t.Fatal(err)
					}
					_, digest, _ := strings.Cut(string(decoded), " ")
					secrets = append(secrets, answers[0], string(decoded), digest)
					if strings.Count(transcript, "C: "+Redacted+"\n") != 1 {
						t.Errorf("want one redacted CRAM-MD5 line:\n%s", transcript)
					}
				}
				assertNoSecrets(t, r, log, secrets...)
				// Whatever follows the exchange is shown again.
				if !strings.Contains(transcript, "C: QUIT\n") {
					t.Errorf("redaction did not end with the exchange:\n%s", transcript)
				}
			})
		}
	}
}

// The state machine, line by line: it follows the exchange, not a pattern.
func TestRedactorStateMachine(t *testing.T) {
	t.Parallel()
	tr := newTranscript(time.Now(), slog.New(slog.DiscardHandler))
	steps := []struct {
		dir  Direction
		text string
		code int
		want string
	}{
		{Client, "EHLO me", 0, "EHLO me"},
		{Server, "250 ok", 250, "250 ok"},
		{Client, "auth plain AGFAYgBj", 0, "auth plain " + Redacted},
		{Server, "334 ", 334, "334 "},
		{Client, "AGFAYgBj", 0, Redacted},
		{Server, "535 5.7.8 no", 535, "535 5.7.8 no"},
		{Client, "AUTH LOGIN", 0, "AUTH LOGIN"},
		{Server, "334 VXNlcm5hbWU6", 334, "334 VXNlcm5hbWU6"},
		{Client, "dXNlcg==", 0, Redacted},
		{Server, "334 UGFzc3dvcmQ6", 334, "334 UGFzc3dvcmQ6"},
		{Client, "cGFzcw==", 0, Redacted},
		{Server, "235 ok", 235, "235 ok"},
		{Client, "MAIL FROM:<a@b>", 0, "MAIL FROM:<a@b>"},
	}
	for i, s := range steps {
		if s.dir == Client {
			tr.client(s.text)
		} else {
			tr.server(s.text)
			tr.replyDone(s.code)
		}
		if got := tr.lines[i].Text; got != s.want {
			t.Errorf("step %d: %q recorded as %q, want %q", i, s.text, got, s.want)
		}
	}
}

func TestTranscriptScrubsSecretsAndBoundsLines(t *testing.T) {
	t.Parallel()
	var logs smtptest.LogBuffer
	tr := newTranscript(time.Now(), slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	tr.addSecret("hunter2-password")
	tr.addSecret("x") // too short to scrub without mangling everything
	tr.server("535 5.7.8 bad password hunter2-password for user x")
	tr.replyDone(535)
	if got := tr.lines[0].Text; got != "535 5.7.8 bad password "+Redacted+" for user x" {
		t.Errorf("scrubbed line %q", got)
	}
	if strings.Contains(logs.String(), "hunter2") {
		t.Error("secret in the log")
	}
	tr.server(strings.Repeat("é", 600))
	tr.endReply()
	if l := tr.lines[1].Text; len(l) > maxTranscriptLineLen+3 || !strings.HasSuffix(l, "...") {
		t.Errorf("long line kept as %d bytes", len(l))
	}
	for i := range 2 * maxTranscriptLines {
		tr.note("line %d", i)
	}
	if n := len(tr.lines); n != maxTranscriptLines {
		t.Errorf("%d lines kept, want %d", n, maxTranscriptLines)
	}
	if last := tr.lines[len(tr.lines)-1]; last.Text != "transcript truncated" {
		t.Errorf("last line %q", last.Text)
	}
	if got := printable("a\x00b\x1bc\xffd\u202ee", 100); got != `a\x00b\x1bc`+"\uFFFD"+`d\u202ee` {
		t.Errorf("printable = %q", got)
	}
}
