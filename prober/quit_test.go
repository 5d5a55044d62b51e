package prober

import (
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// A server that never answers QUIT: the probe did its work, so it
// succeeds, and it waits quitWait for the 221, not its whole timeout.
func TestQuitNotAnswered(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewScripted(t, smtptest.AuthSession{
		Host:       "quiet.test",
		Extensions: []string{"AUTH PLAIN"},
		Auth: func(c *smtptest.Conn, _ string) bool {
			return c.WriteLine("235 2.7.0 Authentication successful") == nil
		},
		Quit: (*smtptest.Conn).WaitClosed,
	}.Handle)
	m := loadModule(t, moduleSpec{TLS: "none", Mechanism: "PLAIN", AllowPlaintext: true, Timeout: "10s"})
	start := time.Now()
	r, log := runProbe(t, target(srv), m)
	took := time.Since(start)
	requireSuccess(t, r, log)
	if !r.AuthSuccess {
		t.Error("AuthSuccess not set")
	}
	// The whole timeout is 10s; the wait for the 221 is one second.
	if took > 5*time.Second || r.Duration > 5*time.Second {
		t.Errorf("probe took %v (reported %v) with a 10s timeout: it waited for the 221 far too long", took, r.Duration)
	}
	q := phaseOf(t, r, PhaseQuit)
	if !q.Ran || q.Code != 0 {
		t.Errorf("quit phase %+v, want it to have run without a reply", q)
	}
	if q.Duration < quitWait/2 {
		t.Errorf("quit phase took %v: it did not wait for the 221", q.Duration)
	}
	if tr := transcriptText(r); !strings.Contains(tr, "C: QUIT\n") || !strings.Contains(tr, "no reply to QUIT after ") {
		t.Errorf("transcript does not say the 221 did not come:\n%s", tr)
	}
	if !strings.Contains(log, "Server did not answer QUIT") {
		t.Errorf("log does not say the 221 did not come:\n%s", log)
	}
	srv.Close()
	if !srv.SawCommand("QUIT") {
		t.Error("server did not see QUIT")
	}
}

// When less than quitWait is left, the wait for the 221 ends at the
// probe's deadline, and the probe still succeeds: a missing 221 never
// fails a probe that did its work.
func TestQuitNotAnsweredNearDeadline(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewScripted(t, smtptest.AuthSession{
		Host:  "quiet.test",
		Other: "250 quiet.test",
		Quit:  (*smtptest.Conn).WaitClosed,
	}.Handle)
	m := loadModule(t, moduleSpec{TLS: "none", Timeout: "300ms"})
	r, log := runProbe(t, target(srv), m)
	requireSuccess(t, r, log)
	if q := phaseOf(t, r, PhaseQuit); !q.Ran || q.Code != 0 {
		t.Errorf("quit phase %+v, want it to have run without a reply", q)
	}
	if r.Duration > 2*time.Second {
		t.Errorf("probe with a 300ms timeout took %v", r.Duration)
	}
	if !strings.Contains(transcriptText(r), "no reply to QUIT after ") {
		t.Errorf("transcript does not say the 221 did not come:\n%s", transcriptText(r))
	}
}

// Any reply other than 221 still fails the quit phase: only a missing one
// is forgiven.
func TestQuitWrongReply(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewReplyServer(t, "220 mx\r\n", map[string]string{"QUIT": "554 5.0.0 no\r\n"})
	r, _ := runProbe(t, target(srv), loadModule(t, moduleSpec{TLS: "none"}))
	requireFailure(t, r, PhaseQuit, ReasonUnexpectedReply)
	if q := phaseOf(t, r, PhaseQuit); q.Code != 554 {
		t.Errorf("quit code %d, want 554", q.Code)
	}
}
