package prober

import (
	"bytes"
	"fmt"
	"io"
	"mime/quotedprintable"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober/message"
)

// A body whose lines start with dots: without dot-stuffing the server would
// strip the leading dots, and the lone "." would end the message early.
const dottedBody = `line one\n.leading dot\n..two dots\n.\nafter the lone dot\n`

func canaryYAML(data bool, to ...string) string {
	return fmt.Sprintf(`from: probe@example.net
to: [%s]
cc: [cc@example.net]
bcc: [bcc@example.net]
data: %v
message:
  subject: smtp_exporter canary
  body: "%s"
`, strings.Join(to, ", "), data, dottedBody)
}

func TestCanaryDelivered(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, smtptest.Options{
		TLS: smtptest.StartTLS, Username: testUser, Password: testPassword, Size: 10240000,
	})
	m := loadModule(t, moduleSpec{
		TLS: "starttls", CAFile: smtptest.Certs().WriteCAFile(t), Mechanism: "auto",
		Mail: canaryYAML(true, "sink@example.net"),
	})
	r, log := runProbe(t, target(srv), m)
	requireSuccess(t, r, log)
	if r.RecipientsAccepted != 3 || !r.MessageAccepted {
		t.Errorf("recipients accepted %d, message accepted %v", r.RecipientsAccepted, r.MessageAccepted)
	}
	if r.QueueID != "4XyZ1a2B3c" {
		t.Errorf("QueueID %q", r.QueueID)
	}
	for ph, code := range map[Phase]int{PhaseMail: 250, PhaseRcpt: 250, PhaseData: 250} {
		if got := phaseOf(t, r, ph); got.Code != code {
			t.Errorf("phase %s code %d, want %d", ph, got.Code, code)
		}
	}
	srv.Close()

	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("server accepted %d messages", len(msgs))
	}
	got := msgs[0]
	if got.From != "probe@example.net" || !slices.Equal(got.To, []string{"sink@example.net", "cc@example.net", "bcc@example.net"}) {
		t.Errorf("envelope from %s to %v", got.From, got.To)
	}
	if !got.TLS || got.AuthUser != testUser {
		t.Errorf("message came over TLS=%v as %q", got.TLS, got.AuthUser)
	}
	// SIZE declared the exact size the server then received.
	var declared int
	for _, l := range srv.Lines() {
		if rest, ok := strings.CutPrefix(l, "MAIL FROM:<probe@example.net> SIZE="); ok {
			declared, _ = strconv.Atoi(rest)
		}
	}
	if declared == 0 || declared != len(got.Data) {
		t.Errorf("declared SIZE=%d, received %d bytes", declared, len(got.Data))
	}
	// Nothing of the message leaked out as a command.
	for _, l := range srv.Lines() {
		if strings.Contains(l, "after the lone dot") {
			t.Errorf("message line read as a command: %q", l)
		}
	}

	parsed, err := mail.ReadMessage(bytes.NewReader(got.Data))
	if err != nil {
		t.Fatalf("received message does not parse: %v", err)
	}
	if id := parsed.Header.Get("Message-Id"); id == "" || id != r.MessageID {
		t.Errorf("Message-ID %q, Result.MessageID %q", id, r.MessageID)
	}
	if probeID := parsed.Header.Get(message.ProbeIDHeader); probeID != "test-probe" {
		t.Errorf("probe id header %q", probeID)
	}
	if parsed.Header.Get("Bcc") != "" || bytes.Contains(got.Data, []byte("bcc@example.net")) {
		t.Error("Bcc recipient visible in the message")
	}
	body, err := io.ReadAll(quotedprintable.NewReader(parsed.Body))
	if err != nil {
		t.Fatal(err)
	}
	want := "line one\r\n.leading dot\r\n..two dots\r\n.\r\nafter the lone dot\r\n"
	if string(body) != want {
		t.Errorf("body after the round trip:\n%q\nwant\n%q", body, want)
	}
}

func TestCanaryFailures(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		opts      smtptest.Options
		to        []string
		phase     Phase
		reason    Reason
		code      int
		enhanced  string
		accepted  int
		sawData   bool
		sawMail   bool
		delivered bool
	}{
		{name: "sender rejected", opts: smtptest.Options{MailReply: "553 5.7.1 <probe@example.net>: Sender address rejected: not owned by user"},
			to: []string{"sink@example.net"}, phase: PhaseMail, reason: ReasonSenderRejected, code: 553, enhanced: "5.7.1", sawMail: true},
		{name: "recipient unknown", opts: smtptest.Options{RcptReplies: map[string]string{
			"nobody@example.net": "550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown"}},
			to: []string{"sink@example.net", "nobody@example.net"}, phase: PhaseRcpt, reason: ReasonRecipientRejected,
			code: 550, enhanced: "5.1.1", accepted: 3, sawMail: true},
		{name: "greylisted", opts: smtptest.Options{RcptReplies: map[string]string{
			"sink@example.net": "450 4.2.0 <sink@example.net>: Recipient address rejected: Greylisted"}},
			to: []string{"sink@example.net"}, phase: PhaseRcpt, reason: ReasonRecipientDeferred,
			code: 450, enhanced: "4.2.0", accepted: 2, sawMail: true},
		{name: "rejected beats deferred", opts: smtptest.Options{RcptReplies: map[string]string{
			"sink@example.net":   "450 4.2.0 Greylisted",
			"nobody@example.net": "550 5.1.1 User unknown"}},
			to: []string{"sink@example.net", "nobody@example.net"}, phase: PhaseRcpt, reason: ReasonRecipientRejected,
			code: 550, enhanced: "5.1.1", accepted: 2, sawMail: true},
		{name: "DATA refused", opts: smtptest.Options{DataReply: "554 5.5.1 Error: no valid recipients"},
			to: []string{"sink@example.net"}, phase: PhaseData, reason: ReasonMessageRejected,
			code: 554, enhanced: "5.5.1", accepted: 3, sawMail: true, sawData: true},
		{name: "rejected after data", opts: smtptest.Options{MessageReply: "554 5.7.1 Message rejected as spam"},
			to: []string{"sink@example.net"}, phase: PhaseData, reason: ReasonMessageRejected,
			code: 554, enhanced: "5.7.1", accepted: 3, sawMail: true, sawData: true},
		{name: "deferred after data", opts: smtptest.Options{MessageReply: "451 4.3.0 Queue file write error"},
			to: []string{"sink@example.net"}, phase: PhaseData, reason: ReasonMessageDeferred,
			code: 451, enhanced: "4.3.0", accepted: 3, sawMail: true, sawData: true},
		{name: "too large for SIZE", opts: smtptest.Options{Size: 100},
			to: []string{"sink@example.net"}, phase: PhaseMail, reason: ReasonMessageTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewServer(t, tc.opts)
			m := loadModule(t, moduleSpec{TLS: "none", Mail: canaryYAML(true, tc.to...)})
			r, _ := runProbe(t, target(srv), m)
			requireFailure(t, r, tc.phase, tc.reason)
			if got := phaseOf(t, r, tc.phase); !got.Ran || got.Code != tc.code || got.Enhanced != tc.enhanced {
				t.Errorf("phase %+v, want code %d enhanced %q", got, tc.code, tc.enhanced)
			}
			if r.RecipientsAccepted != tc.accepted || r.MessageAccepted {
				t.Errorf("recipients accepted %d (want %d), message accepted %v", r.RecipientsAccepted, tc.accepted, r.MessageAccepted)
			}
			if q := phaseOf(t, r, PhaseQuit); !q.Ran || q.Code != 221 {
				t.Errorf("no orderly QUIT after a refusal: %+v", q)
			}
			srv.Close()
			if srv.SawCommand("MAIL") != tc.sawMail || srv.SawCommand("DATA") != tc.sawData {
				t.Errorf("server saw MAIL %v DATA %v: %q", srv.SawCommand("MAIL"), srv.SawCommand("DATA"), srv.Lines())
			}
			if n := len(srv.Messages()); n != 0 {
				t.Errorf("%d messages delivered", n)
			}
		})
	}
}

func TestCanaryWithoutDataResets(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, smtptest.Options{Size: 100})
	m := loadModule(t, moduleSpec{TLS: "none", Mail: canaryYAML(false, "sink@example.net")})
	r, log := runProbe(t, target(srv), m)
	requireSuccess(t, r, log)
	if _, planned := r.Phase(PhaseData); planned {
		t.Error("data phase planned without data")
	}
	if rs := phaseOf(t, r, PhaseRset); rs.Code != 250 {
		t.Errorf("rset phase %+v", rs)
	}
	if r.RecipientsAccepted != 3 || r.MessageAccepted || r.MessageID != "" {
		t.Errorf("recipients %d, message accepted %v, id %q", r.RecipientsAccepted, r.MessageAccepted, r.MessageID)
	}
	srv.Close()
	if srv.SawCommand("DATA") || len(srv.Messages()) != 0 || srv.Resets() != 1 {
		t.Errorf("server saw DATA %v, messages %d, resets %d", srv.SawCommand("DATA"), len(srv.Messages()), srv.Resets())
	}
	// No message, so no SIZE declared, even though SIZE is advertised.
	if !slices.Contains(srv.Lines(), "MAIL FROM:<probe@example.net>") {
		t.Errorf("MAIL FROM line: %q", srv.Lines())
	}
}

// The DATA writer against the test server's reader: every awkward line
// survives the round trip byte for byte.
func TestDotStuffingRoundTrip(t *testing.T) {
	t.Parallel()
	msg := []byte("Subject: x\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . dot\r\n. space\r\nbare LF line\n.bare LF dot\nlast")
	want := "Subject: x\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . dot\r\n. space\r\nbare LF line\r\n.bare LF dot\r\nlast\r\n"
	received := make(chan []byte, 1)
	srv := smtptest.NewScripted(t, func(c *smtptest.Conn) {
		data, err := c.ReadData()
		if err != nil {
			t.Errorf("ReadData: %v", err)
		}
		received <- data
	})
	conn, err := dialTest(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var wire bytes.Buffer
	if err := writeDotStuffed(io.MultiWriter(conn, &wire), msg); err != nil {
		t.Fatal(err)
	}
	if got := string(<-received); got != want {
		t.Errorf("round trip:\n%q\nwant\n%q", got, want)
	}
	if !bytes.HasSuffix(wire.Bytes(), []byte("\r\nlast\r\n.\r\n")) || !bytes.Contains(wire.Bytes(), []byte("\r\n..\r\n...\r\n..leading\r\n")) {
		t.Errorf("wire form %q", wire.Bytes())
	}
}
