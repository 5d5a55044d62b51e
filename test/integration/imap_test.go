package integration

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/smtp"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// imapTimeout bounds every IMAP and SMTP conversation of these tests: it is
// the deadline of the connection, so a server that stops answering fails
// the test instead of hanging it.
const imapTimeout = 30 * time.Second

// requireIMAP is requireLab for tests of the lab's IMAP side.
func requireIMAP(t *testing.T) *Lab {
	t.Helper()
	l := requireLab(t)
	if l.PortIMAP == 0 || l.PortIMAPS == 0 || l.CanaryPassword == "" || l.MaildirJunk == "" || l.JunkHeader == "" || l.Discard == "" {
		t.Fatalf("the lab's env file has no IMAP settings (LAB_PORT_IMAP, LAB_PORT_IMAPS, LAB_CANARY_PASSWORD, LAB_MAILDIR_JUNK, LAB_JUNK_HEADER, LAB_DISCARD): it was started before the lab served IMAP; restart it with test/lab/start.sh")
	}
	return l
}

// labTLSConfig trusts the lab CA and checks the certificate for LAB_HOST.
func labTLSConfig(t *testing.T, l *Lab) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(l.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s: no certificate", l.CA)
	}
	return &tls.Config{RootCAs: pool, ServerName: l.Host, MinVersion: tls.VersionTLS12}
}

// imapLogin connects to the lab's IMAP port (STARTTLS) or IMAPS port
// (implicit TLS), checks that the session is encrypted, and logs in as the
// canary. The client is logged out and closed when the test ends.
func imapLogin(t *testing.T, l *Lab, implicit bool) *imapclient.Client {
	t.Helper()
	port := l.PortIMAP
	if implicit {
		port = l.PortIMAPS
	}
	conn, err := net.DialTimeout("tcp", l.Target(port), imapTimeout)
	if err != nil {
		t.Fatalf("IMAP connect: %v", err)
	}
	if err := conn.SetDeadline(time.Now().Add(imapTimeout)); err != nil {
		t.Fatal(err)
	}
	options := &imapclient.Options{TLSConfig: labTLSConfig(t, l)}
	var c *imapclient.Client
	if implicit {
		tlsConn := tls.Client(conn, options.TLSConfig)
		if err := tlsConn.Handshake(); err != nil {
			conn.Close()
			t.Fatalf("IMAPS handshake on %s: %v", l.Target(port), err)
		}
		c = imapclient.New(tlsConn, options)
	} else if c, err = imapclient.NewStartTLS(conn, options); err != nil {
		conn.Close()
		t.Fatalf("IMAP STARTTLS on %s: %v", l.Target(port), err)
	}
	t.Cleanup(func() {
		_ = c.Logout().Wait()
		c.Close()
	})
	if err := c.Login(l.Canary, l.CanaryPassword).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN as %s on %s: %v", l.Canary, l.Target(port), err)
	}
	return c
}

// sendLabMessage submits a message with the given extra header lines
// through Postfix's submission port (STARTTLS, AUTH PLAIN as LAB_USER) and
// returns once Postfix has queued it.
func sendLabMessage(t *testing.T, l *Lab, to string, headers ...string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", l.Target(l.PortSubmission), imapTimeout)
	if err != nil {
		t.Fatalf("SMTP connect: %v", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(imapTimeout)); err != nil {
		t.Fatal(err)
	}
	c, err := smtp.NewClient(conn, l.Host)
	if err != nil {
		t.Fatalf("SMTP greeting: %v", err)
	}
	steps := []struct {
		name string
		run  func() error
	}{
		{"STARTTLS", func() error { return c.StartTLS(labTLSConfig(t, l)) }},
		{"AUTH", func() error { return c.Auth(smtp.PlainAuth("", l.User, l.Password, l.Host)) }},
		{"MAIL", func() error { return c.Mail(l.User) }},
		{"RCPT", func() error { return c.Rcpt(to) }},
		{"DATA", func() error {
			w, err := c.Data()
			if err != nil {
				return err
			}
			msg := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: smtp_exporter lab IMAP test\r\n%s\r\n\r\nA message of TestLabIMAP.\r\n",
				l.User, to, strings.Join(headers, "\r\n"))
			if _, err := w.Write([]byte(msg)); err != nil {
				return err
			}
			return w.Close()
		}},
		{"QUIT", c.Quit},
	}
	for _, step := range steps {
		if err := step.run(); err != nil {
			t.Fatalf("sending to %s: %s: %v", to, step.name, err)
		}
	}
}

// waitForIMAPMessage waits until the message whose probe id header is id is
// in mailbox, and returns its UID. The mailbox is examined (read-only)
// again at each poll, which also makes Dovecot look for new deliveries.
func waitForIMAPMessage(t *testing.T, c *imapclient.Client, mailbox, id string) imap.UID {
	t.Helper()
	const timeout = 15 * time.Second
	deadline := time.Now().Add(timeout)
	for {
		if uids := searchProbeID(t, c, mailbox, id); len(uids) > 0 {
			return uids[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no message with %s: %s in %s after %s", probeIDHeader, id, mailbox, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// searchProbeID returns the UIDs of the messages in mailbox whose probe id
// header is id.
func searchProbeID(t *testing.T, c *imapclient.Client, mailbox, id string) []imap.UID {
	t.Helper()
	if _, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatalf("EXAMINE %s: %v", mailbox, err)
	}
	data, err := c.UIDSearch(&imap.SearchCriteria{
		Header: []imap.SearchCriteriaHeaderField{{Key: probeIDHeader, Value: id}},
	}, nil).Wait()
	if err != nil {
		t.Fatalf("UID SEARCH in %s: %v", mailbox, err)
	}
	return data.AllUIDs()
}

// deleteIMAPMessage removes the message with uid from mailbox.
func deleteIMAPMessage(c *imapclient.Client, mailbox string, uid imap.UID) error {
	if _, err := c.Select(mailbox, nil).Wait(); err != nil {
		return fmt.Errorf("SELECT %s: %w", mailbox, err)
	}
	set := imap.UIDSetNum(uid)
	store := &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}
	if err := c.Store(set, store, nil).Close(); err != nil {
		return fmt.Errorf("UID STORE %s: %w", mailbox, err)
	}
	if err := c.UIDExpunge(set).Close(); err != nil {
		return fmt.Errorf("UID EXPUNGE %s: %w", mailbox, err)
	}
	return nil
}

// waitForDiscard waits until the Postfix log shows the message with
// messageID discarded for LAB_DISCARD: cleanup(8) logs the queue id with the
// Message-ID, discard(8) the queue id with the recipient.
func waitForDiscard(t *testing.T, l *Lab, messageID string) {
	t.Helper()
	const timeout = 15 * time.Second
	deadline := time.Now().Add(timeout)
	for {
		log, err := os.ReadFile(l.PostfixLog)
		if err != nil {
			t.Fatal(err)
		}
		queueID := ""
		for line := range strings.Lines(string(log)) {
			if before, ok := strings.CutSuffix(strings.TrimSpace(line), ": message-id="+messageID); ok && strings.Contains(before, "postfix/cleanup[") {
				queueID = before[strings.LastIndex(before, " ")+1:]
			}
			if queueID != "" && strings.Contains(line, "postfix/discard[") &&
				strings.Contains(line, " "+queueID+": to=<"+l.Discard+">") && strings.Contains(line, "status=sent") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no discard(8) line for %s (queue id %q) after %s", l.PostfixLog, messageID, queueID, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// newProbeID returns an id no other test or run uses.
func newProbeID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "lab-imap-" + hex.EncodeToString(b)
}

// The lab's Dovecot serves the Maildirs Postfix delivers into: the canary
// logs in over both IMAP ports, sees INBOX and a Junk folder marked \Junk,
// and a message carrying LAB_JUNK_HEADER goes through Postfix, LMTP and
// the Sieve script into Junk, where IMAP and LAB_MAILDIR_JUNK both show it,
// while a message without the header lands in INBOX. The discarded
// recipient is accepted.
func TestLabIMAP(t *testing.T) {
	t.Parallel()
	l := requireIMAP(t)

	for _, implicit := range []bool{false, true} {
		c := imapLogin(t, l, implicit)
		if !c.Caps().Has(imap.CapSpecialUse) {
			t.Errorf("implicit TLS %v: no SPECIAL-USE capability in %v", implicit, c.Caps())
		}
		boxes, err := c.List("", "*", &imap.ListOptions{ReturnSpecialUse: true}).Collect()
		if err != nil {
			t.Fatalf("implicit TLS %v: LIST: %v", implicit, err)
		}
		attrs := map[string][]imap.MailboxAttr{}
		for _, box := range boxes {
			attrs[box.Mailbox] = box.Attrs
		}
		if _, ok := attrs["INBOX"]; !ok {
			t.Errorf("implicit TLS %v: no INBOX in LIST: %v", implicit, attrs)
		}
		if junk, ok := attrs["Junk"]; !ok || !slices.Contains(junk, imap.MailboxAttrJunk) {
			t.Errorf("implicit TLS %v: LIST shows Junk with %v (present %v), want the attribute %s", implicit, junk, ok, imap.MailboxAttrJunk)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	junkID, inboxID, lostID := newProbeID(t), newProbeID(t), newProbeID(t)
	lostMessageID := "<" + lostID + "@" + l.Domain + ">"
	sendLabMessage(t, l, l.Discard, probeIDHeader+": "+lostID, "Message-ID: "+lostMessageID)
	sendLabMessage(t, l, l.Canary, probeIDHeader+": "+junkID, l.JunkHeader)
	sendLabMessage(t, l, l.Canary, probeIDHeader+": "+inboxID)

	c := imapLogin(t, l, true)
	junkUID := waitForIMAPMessage(t, c, "Junk", junkID)
	inboxUID := waitForIMAPMessage(t, c, "INBOX", inboxID)
	if uids := searchProbeID(t, c, "INBOX", junkID); len(uids) > 0 {
		t.Errorf("the message with %q is in INBOX as well (UIDs %v)", l.JunkHeader, uids)
	}
	if uids := searchProbeID(t, c, "Junk", inboxID); len(uids) > 0 {
		t.Errorf("the message without %q is in Junk (UIDs %v)", l.JunkHeader, uids)
	}
	// The Maildir the env file names is the one IMAP shows.
	if found := messagesWithProbeID(t, l.MaildirJunk, junkID, map[string]bool{}); len(found) != 1 {
		t.Errorf("%d messages with %s in LAB_MAILDIR_JUNK %s, want 1", len(found), junkID, l.MaildirJunk)
	}
	// Postfix accepted the message for the discarded recipient and threw
	// it away: its log says so for the queue id of that message.
	waitForDiscard(t, l, lostMessageID)

	if t.Failed() {
		return // kept for a look
	}
	for mailbox, uid := range map[string]imap.UID{"Junk": junkUID, "INBOX": inboxUID} {
		if err := deleteIMAPMessage(c, mailbox, uid); err != nil {
			t.Errorf("removing the test message: %v", err)
		}
	}
}
