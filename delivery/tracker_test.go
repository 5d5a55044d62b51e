package delivery

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

func TestDeliveredToInboxWithLatency(t *testing.T) {
	lab := newIMAPLab(t, imap.CapIdle, imap.CapUIDPlus)
	lab.deliver("INBOX", "", "foreign without header")
	lab.deliver("INBOX", "someone-else-7", "foreign canary of another exporter")
	tr, logins := newTestTracker(t, nil)
	tr.Apply(loadConfig(t, lab.moduleYAML("canary", testPassword, "5m")))
	eventually(t, "the watcher to log in", func() bool { return status(t, tr, "canary").WatcherUp })

	sent := time.Now()
	tr.Sent("canary", "abc-1", sent)
	if s := status(t, tr, "canary"); s.Pending != 1 || s.Late != 0 {
		t.Errorf("after Sent: pending %d late %d, want 1 0", s.Pending, s.Late)
	}
	time.Sleep(30 * time.Millisecond)
	lab.deliver("INBOX", "abc-1", "our canary")
	eventually(t, "the canary to be seen", func() bool { return status(t, tr, "canary").Delivered == 1 })
	s := status(t, tr, "canary")
	if s.Pending != 0 || !s.HasLast || s.LastLatency < 30*time.Millisecond || s.LastLatency > 10*time.Second {
		t.Errorf("status %+v: want nothing pending and a latency of at least 30ms", s)
	}
	if len(s.Recent) != 1 || s.Recent[0].Folder != "INBOX" || s.Recent[0].Junk || s.Recent[0].State != StateDelivered {
		t.Errorf("recent: %+v", s.Recent)
	}
	eventually(t, "the canary to be deleted", func() bool { return len(lab.messages("INBOX")) == 2 })
	for _, m := range lab.messages("INBOX") {
		if !strings.HasPrefix(m.Subject, "foreign") || len(m.Flags) != 0 {
			t.Errorf("foreign message changed or removed: %+v", m)
		}
	}
	if got := logins.list(); !slices.Equal(got, []string{"canary/accepted"}) {
		t.Errorf("logins %v, want one accepted", got)
	}
	if n := lab.logins.Load(); n != 1 {
		t.Errorf("%d logins, want 1", n)
	}
}

func TestDeliveredToJunk(t *testing.T) {
	lab := newIMAPLab(t, imap.CapIdle, imap.CapUIDPlus)
	// The in-memory server has no SPECIAL-USE: found by its usual name
	// (TestChooseJunk covers \Junk).
	if err := lab.user.Create("Spam", nil); err != nil {
		t.Fatal(err)
	}
	lab.deliver("Spam", "", "foreign spam")
	tr, _ := newTestTracker(t, nil)
	tr.Apply(loadConfig(t, lab.moduleYAML("canary", testPassword, "5m")))
	eventually(t, "the watcher to log in", func() bool { return status(t, tr, "canary").WatcherUp })
	tr.Sent("canary", "abc-2", time.Now())
	lab.deliver("Spam", "abc-2", "our canary")
	eventually(t, "the canary to be seen", func() bool { return status(t, tr, "canary").Delivered == 1 })
	s := status(t, tr, "canary")
	if s.JunkSeen != 1 || s.Recent[0].Folder != "Spam" || !s.Recent[0].Junk {
		t.Errorf("status %+v: want one canary in Junk", s)
	}
	eventually(t, "the canary to be deleted", func() bool { return len(lab.messages("Spam")) == 1 })
	if m := lab.messages("Spam"); m[0].Subject != "foreign spam" || len(m[0].Flags) != 0 {
		t.Errorf("foreign message changed: %+v", m)
	}
}

func TestLateThenLost(t *testing.T) {
	lab := newIMAPLab(t, imap.CapIdle, imap.CapUIDPlus)
	clock := smtptest.NewClock(time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC))
	tr, _ := newTestTracker(t, clock.Now)
	tr.Apply(loadConfig(t, lab.moduleYAML("canary", testPassword, "5m")))
	eventually(t, "the watcher to log in", func() bool { return status(t, tr, "canary").WatcherUp })
	tr.Sent("canary", "abc-3", clock.Now())
	clock.Advance(time.Minute)
	if s := status(t, tr, "canary"); s.Pending != 1 || s.Late != 0 {
		t.Errorf("after 1m: %+v", s)
	}
	clock.Advance(2 * time.Minute)
	if s := status(t, tr, "canary"); s.Pending != 1 || s.Late != 1 || s.Lost != 0 {
		t.Errorf("after 3m: pending %d late %d lost %d, want 1 1 0", s.Pending, s.Late, s.Lost)
	}
	clock.Advance(30 * time.Minute)
	if s := status(t, tr, "canary"); s.Pending != 0 || s.Late != 0 || s.Lost != 1 || s.Recent[0].State != StateLost {
		t.Errorf("after 33m: %+v, want it lost", s)
	}
	// Found after lost_after: still lost, not delivered, and deleted.
	lab.deliver("INBOX", "abc-3", "our late canary")
	eventually(t, "the late canary to be deleted", func() bool { return len(lab.messages("INBOX")) == 0 })
	if s := status(t, tr, "canary"); s.Lost != 1 || s.Delivered != 0 || s.Recent[0].State != StateLostSeen {
		t.Errorf("after the late canary: %+v", s)
	}
}

func TestWithoutUIDPLUSForeignDeletedMessagesAreNotExpunged(t *testing.T) {
	lab := newIMAPLab(t) // no IDLE, no UIDPLUS: polls, and cannot expunge by UID
	lab.deliver("INBOX", "", "foreign flagged deleted")
	// Flag the foreign message \Deleted as its owner's client would.
	lab.inspect.Store(true)
	c := lab.client()
	if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	lab.inspect.Store(false)

	tr, _ := newTestTracker(t, nil)
	tr.Apply(loadConfig(t, lab.moduleYAML("canary", testPassword, "5m")))
	tr.Sent("canary", "abc-4", time.Now())
	lab.deliver("INBOX", "abc-4", "our canary")
	eventually(t, "the canary to be seen", func() bool { return status(t, tr, "canary").Delivered == 1 })
	eventually(t, "the canary to be flagged", func() bool {
		m := lab.messages("INBOX")
		return len(m) == 2 && slices.Contains(m[1].Flags, imap.FlagDeleted)
	})
	time.Sleep(200 * time.Millisecond)
	m := lab.messages("INBOX")
	if len(m) != 2 || m[0].Subject != "foreign flagged deleted" {
		t.Errorf("messages %+v: the foreign message must stay", m)
	}
	if !strings.Contains(strings.Join(tr.Transcript("canary"), "\n"), "ours left flagged") {
		t.Error("the transcript does not say the canary was left flagged")
	}
}

func TestWrongPasswordIsHeld(t *testing.T) {
	lab := newIMAPLab(t, imap.CapIdle, imap.CapUIDPlus)
	tr, logins := newTestTracker(t, nil)
	tr.Apply(loadConfig(t, lab.moduleYAML("canary", "wrong-"+testPassword, "1h")))
	eventually(t, "a login", func() bool { return len(logins.list()) == 1 })
	time.Sleep(500 * time.Millisecond) // ten reconnection back-offs
	if n := lab.logins.Load(); n != 1 {
		t.Errorf("%d logins during the hold, want 1", n)
	}
	if got := logins.list(); !slices.Equal(got, []string{"canary/refused"}) {
		t.Errorf("logins %v, want one refused", got)
	}
	if status(t, tr, "canary").WatcherUp {
		t.Error("watcher up after a refused login")
	}
	text := strings.Join(tr.Transcript("canary"), "\n")
	if strings.Contains(text, testPassword) || !strings.Contains(text, "login refused") {
		t.Errorf("transcript:\n%s", text)
	}
}

func TestReconnectsAfterTheServerDrops(t *testing.T) {
	lab := newIMAPLab(t, imap.CapIdle, imap.CapUIDPlus)
	tr, _ := newTestTracker(t, nil)
	tr.Apply(loadConfig(t, lab.moduleYAML("canary", testPassword, "5m")))
	eventually(t, "the watcher to log in", func() bool { return status(t, tr, "canary").WatcherUp })
	lab.drop()
	eventually(t, "a second login", func() bool { return lab.logins.Load() == 2 && status(t, tr, "canary").WatcherUp })
	tr.Sent("canary", "abc-5", time.Now())
	lab.deliver("INBOX", "abc-5", "our canary")
	eventually(t, "the canary to be seen", func() bool { return status(t, tr, "canary").Delivered == 1 })
}

func TestReloadKeepsAndStopsWatchers(t *testing.T) {
	lab := newIMAPLab(t, imap.CapIdle, imap.CapUIDPlus)
	tr, _ := newTestTracker(t, nil)
	both := loadConfig(t, lab.moduleYAML("a", testPassword, "5m"), lab.moduleYAML("b", testPassword, "5m"))
	tr.Apply(both)
	if n := len(tr.watcherKeys()); n != 1 {
		t.Fatalf("%d watchers for two modules of one mailbox, want 1", n)
	}
	eventually(t, "the watcher to log in", func() bool { return status(t, tr, "a").WatcherUp })
	tr.Sent("a", "abc-6", time.Now())
	lab.deliver("INBOX", "abc-6", "a's canary")
	eventually(t, "a's canary", func() bool { return status(t, tr, "a").Delivered == 1 })

	keys := tr.watcherKeys()
	tr.Apply(loadConfig(t, lab.moduleYAML("a", testPassword, "5m")))
	if got := tr.watcherKeys(); !slices.Equal(got, keys) {
		t.Errorf("watchers %v after removing b, want %v kept", got, keys)
	}
	if _, ok := tr.Status("b"); ok {
		t.Error("b still has delivery state")
	}
	if s := status(t, tr, "a"); s.Delivered != 1 || !s.WatcherUp {
		t.Errorf("a after the reload: %+v, want its counter kept and its watcher up", s)
	}
	if n := lab.logins.Load(); n != 1 {
		t.Errorf("%d logins, want the session kept", n)
	}

	tr.Apply(loadConfig(t))
	if n := len(tr.watcherKeys()); n != 0 {
		t.Errorf("%d watchers without delivery blocks", n)
	}
	if _, ok := tr.Status("a"); ok {
		t.Error("a still has delivery state")
	}
	tr.Sent("a", "abc-7", time.Now()) // ignored
}

func TestTranscriptRedactsThePassword(t *testing.T) {
	lab := newIMAPLab(t, imap.CapIdle, imap.CapUIDPlus)
	tr, _ := newTestTracker(t, nil)
	tr.Apply(loadConfig(t, lab.moduleYAML("canary", testPassword, "5m")))
	eventually(t, "the watcher to log in", func() bool { return status(t, tr, "canary").WatcherUp })
	w := tr.watchers[tr.watcherKeys()[0]]
	// Whatever reaches the transcript, the password does not.
	w.tr.Write([]byte("A9 LOGIN \"" + testUser + "\" \"" + testPassword + "\"\r\n* BAD echo " + testPassword[:10]))
	w.tr.Write([]byte("\r\n"))
	text := strings.Join(tr.Transcript("canary"), "\n")
	if strings.Contains(text, testPassword[:10]) {
		t.Errorf("the password in the transcript:\n%s", text)
	}
	for _, want := range []string{"login as " + testUser, "logged in", "C: ", "S: ", "<redacted>"} {
		if !strings.Contains(text, want) {
			t.Errorf("the transcript lacks %q:\n%s", want, text)
		}
	}
}

func TestChooseJunk(t *testing.T) {
	list := func(entries ...*imap.ListData) []*imap.ListData { return entries }
	cases := []struct {
		list    []*imap.ListData
		mailbox string
		want    string
	}{
		{list(&imap.ListData{Mailbox: "INBOX"}, &imap.ListData{Mailbox: "Spam"}, &imap.ListData{Mailbox: "Quarantaine", Attrs: []imap.MailboxAttr{imap.MailboxAttrJunk}}), "INBOX", "Quarantaine"},
		{list(&imap.ListData{Mailbox: "INBOX"}, &imap.ListData{Mailbox: "junk e-mail"}), "INBOX", "junk e-mail"},
		{list(&imap.ListData{Mailbox: "INBOX"}, &imap.ListData{Mailbox: "INBOX.Junk"}), "INBOX", "INBOX.Junk"},
		{list(&imap.ListData{Mailbox: "INBOX"}, &imap.ListData{Mailbox: "Archive"}), "INBOX", ""},
		{list(&imap.ListData{Mailbox: "Junk"}), "Junk", ""},
	}
	for _, tc := range cases {
		if got := chooseJunk(tc.list, tc.mailbox); got != tc.want {
			t.Errorf("chooseJunk(%v) = %q, want %q", tc.list, got, tc.want)
		}
	}
}

// A canary that lands in the mailbox while the watcher searches Junk is
// found in the same pass, not at the next poll (a minute here).
func TestCanaryLandingWhileJunkIsSearched(t *testing.T) {
	lab := newIMAPLab(t, imap.CapIdle, imap.CapUIDPlus)
	if err := lab.user.Create("Spam", nil); err != nil {
		t.Fatal(err)
	}
	timing := fastTiming
	timing.Poll, timing.Idle = time.Minute, time.Minute
	tr := NewTracker(Options{Timing: timing})
	t.Cleanup(tr.Stop)
	tr.Apply(loadConfig(t, lab.moduleYAML("canary", testPassword, "5m")))
	eventually(t, "the watcher to log in", func() bool { return status(t, tr, "canary").WatcherUp })

	var once sync.Once
	hook := func(mailbox string) {
		if mailbox == "Spam" {
			once.Do(func() { lab.deliver("INBOX", "abc-junk-race", "our canary") })
		}
	}
	lab.onSelect.Store(&hook)
	tr.Sent("canary", "abc-junk-race", time.Now())
	eventually(t, "the canary to be seen", func() bool { return status(t, tr, "canary").Delivered == 1 })
	if s := status(t, tr, "canary"); s.Recent[0].Folder != "INBOX" || s.LastLatency > 5*time.Second {
		t.Errorf("status %+v: want the canary seen in INBOX within the pass", s)
	}
}

// A process without a tracker reports no delivery state.
func TestNilTrackerHasNoState(t *testing.T) {
	var tr *Tracker
	if s, ok := tr.Status("canary"); ok {
		t.Errorf("status %+v from a nil tracker", s)
	}
	if lines := tr.Transcript("canary"); lines != nil {
		t.Errorf("transcript %q from a nil tracker", lines)
	}
}
