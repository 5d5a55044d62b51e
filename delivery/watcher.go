package delivery

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"go.yaml.in/yaml/v3"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/prober"
	"github.com/smtp-exporter/smtp_exporter/prober/message"
)

// Timing bounds what a watcher does and how long it waits.
type Timing struct {
	// Op bounds every IMAP operation: connect, login, one pass.
	Op time.Duration
	// Poll is how often a server without IDLE is searched, and how often
	// a watcher with canaries pending looks in Junk.
	Poll time.Duration
	// Idle is how long one IDLE lasts before it is renewed.
	Idle time.Duration
	// MinBackoff and MaxBackoff bound the wait before a reconnection,
	// doubled after each failure.
	MinBackoff, MaxBackoff time.Duration
}

// Defaults of Timing.
var DefaultTiming = Timing{
	Op:         30 * time.Second,
	Poll:       10 * time.Second,
	Idle:       5 * time.Minute,
	MinBackoff: time.Second,
	MaxBackoff: 5 * time.Minute,
}

func (t Timing) withDefaults() Timing {
	d := DefaultTiming
	if t.Op > 0 {
		d.Op = t.Op
	}
	if t.Poll > 0 {
		d.Poll = t.Poll
	}
	if t.Idle > 0 {
		d.Idle = t.Idle
	}
	if t.MinBackoff > 0 {
		d.MinBackoff = t.MinBackoff
	}
	if t.MaxBackoff > 0 {
		d.MaxBackoff = t.MaxBackoff
	}
	return d
}

// Bounds of one session.
const (
	// maxPassBytes is what the server may send during one pass (or one
	// IDLE): the search results, the headers fetched and the list of
	// mailboxes fit in it many times over.
	maxPassBytes = 4 << 20
	// maxFetch is how many messages with the header, not seen before, one
	// pass fetches the header of; the rest wait for the next pass.
	maxFetch = 200
	// maxKnown bounds the UIDs whose probe id a watcher remembers per
	// folder, so that a message is fetched once.
	maxKnown = 10000
	// maxIDLen is the longest probe id looked for.
	maxIDLen = 128
	// maxMailboxes is how many LIST entries are read to find Junk.
	maxMailboxes = 1000
)

// junkNames are the usual names of a Junk folder without SPECIAL-USE.
var junkNames = []string{"Junk", "Spam", "Junk E-mail", "Junk Email", "INBOX.Junk", "INBOX.Spam", "INBOX/Junk", "INBOX/Spam"}

// Login outcomes, as in smtp_exporter_logins_total.
const (
	LoginAccepted  = "accepted"
	LoginRefused   = "refused"
	LoginThrottled = "throttled"
	LoginFailed    = "failed"
)

// errRefused is a login the server refused: the watcher holds further
// logins for auth_failure_backoff.
type errRefused struct{ err error }

func (e *errRefused) Error() string { return "login refused: " + e.err.Error() }

// watcher is the IMAP session of one mailbox.
type watcher struct {
	t    *Tracker
	spec watchSpec
	tr   *transcript
	up   atomic.Bool

	mu     sync.Mutex
	module string // the one logins count for

	kickc chan struct{}
	quit  chan struct{}
	done  chan struct{}
	once  sync.Once

	// known maps, per folder, a UID to the probe id of the message.
	known       map[string]map[imap.UID]string
	uidValidity map[string]uint32
	// loggedFlagged avoids repeating the note about canaries left flagged.
	loggedFlagged bool
}

func newWatcher(t *Tracker, spec watchSpec) *watcher {
	return &watcher{
		t:           t,
		spec:        spec,
		tr:          newTranscript(prober.NewScrubber(), t.now),
		module:      spec.module,
		kickc:       make(chan struct{}, 1),
		quit:        make(chan struct{}),
		done:        make(chan struct{}),
		known:       map[string]map[imap.UID]string{},
		uidValidity: map[string]uint32{},
	}
}

// specKey tells watchers apart: the same mailbox, account and settings
// (secrets included, as digests) share one.
func specKey(i config.IMAP, backoff time.Duration) string {
	text, _ := yaml.Marshal(i)
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00%s\x00", text, i.Address, i.Mailbox, i.Auth.Password, backoff)
	if o := i.Auth.OAuth2; o != nil {
		fmt.Fprintf(h, "%s\x00%s\x00", o.ClientSecret, o.TLSConfig.Key)
	}
	fmt.Fprintf(h, "%s", i.TLSConfig.Key)
	return i.Address + "/" + i.Mailbox + "/" + hex.EncodeToString(h.Sum(nil)[:8])
}

func (w *watcher) setModule(m string) {
	w.mu.Lock()
	w.module = m
	w.mu.Unlock()
}

func (w *watcher) countLogin(outcome string) {
	w.mu.Lock()
	m := w.module
	w.mu.Unlock()
	w.t.onLogin(m, outcome)
}

func (w *watcher) kick() {
	select {
	case w.kickc <- struct{}{}:
	default:
	}
}

func (w *watcher) stop() {
	w.once.Do(func() { close(w.quit) })
	<-w.done
}

// sleep waits d, or until the watcher is stopped (false).
func (w *watcher) sleep(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-w.quit:
		return false
	case <-timer.C:
		return true
	}
}

// run logs in, watches and reconnects until stopped.
func (w *watcher) run() {
	defer close(w.done)
	log := w.t.logger.With("mailbox", w.spec.imap.Mailbox, "address", w.spec.imap.Address)
	backoff := time.Duration(0)
	for {
		start := time.Now()
		err := w.session()
		w.up.Store(false)
		select {
		case <-w.quit:
			return
		default:
		}
		var refused *errRefused
		if errors.As(err, &refused) && w.spec.backoff > 0 {
			log.Error("IMAP login refused: holding further logins", "err", err, "hold", w.spec.backoff.String())
			w.tr.note("login refused; next login in %s (auth_failure_backoff)", w.spec.backoff)
			if !w.hold(w.spec.backoff) {
				return
			}
			backoff = 0
			continue
		}
		if time.Since(start) > w.t.timing.MaxBackoff {
			backoff = 0 // it ran well for a while
		}
		backoff = min(max(backoff*2, w.t.timing.MinBackoff), w.t.timing.MaxBackoff)
		log.Warn("IMAP session ended; reconnecting", "err", err, "in", backoff.String())
		w.tr.note("session ended (%v); reconnecting in %s", err, backoff)
		if !w.sleep(backoff) {
			return
		}
	}
}

// hold waits out a refused login's hold; a change of the credentials (a
// new password file) ends it early, as for probes.
func (w *watcher) hold(d time.Duration) bool {
	before, _ := w.spec.imap.Auth.Account()
	until := time.Now().Add(d)
	for time.Now().Before(until) {
		if !w.sleep(min(w.t.timing.Poll, time.Until(until))) {
			return false
		}
		if now, err := w.spec.imap.Auth.Account(); err == nil && now.Secret != before.Secret {
			w.tr.note("credentials changed: the hold ends")
			return true
		}
	}
	return true
}

// session runs one IMAP session: connect, log in, watch until an error or
// stop.
func (w *watcher) session() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-w.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	c, raw, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	// Closing the client unblocks any command when the watcher stops.
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	if err := w.login(ctx, c, raw); err != nil {
		return err
	}
	raw.begin(w.t.timing.Op)
	junk, err := w.findJunk(c)
	if err != nil {
		return err
	}
	if _, err := w.selectFolder(c, w.spec.imap.Mailbox); err != nil {
		return err
	}
	w.up.Store(true)
	w.tr.note("watching %s (junk folder: %s)", w.spec.imap.Mailbox, orNone(junk))
	for {
		raw.begin(w.t.timing.Op)
		if err := w.pass(c, junk); err != nil {
			return err
		}
		w.t.sweep()
		if err := w.wait(ctx, c, raw); err != nil {
			return err
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// connect dials and sets up TLS, all under one deadline.
func (w *watcher) connect(ctx context.Context) (*imapclient.Client, *boundedConn, error) {
	i := &w.spec.imap
	tlsConfig, err := prober.TLSConfig(&i.TLSConfig)
	if err != nil {
		return nil, nil, fmt.Errorf("tls_config: %w", err)
	}
	if tlsConfig.ServerName == "" {
		host, _, _ := net.SplitHostPort(i.Address)
		tlsConfig.ServerName = host
	}
	dctx, cancel := context.WithTimeout(ctx, w.t.timing.Op)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(dctx, "tcp", i.Address)
	if err != nil {
		return nil, nil, err
	}
	raw := &boundedConn{Conn: nc}
	raw.begin(w.t.timing.Op)
	opts := &imapclient.Options{
		TLSConfig:   tlsConfig,
		DebugWriter: w.tr,
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(data *imapclient.UnilateralDataMailbox) {
				if data.NumMessages != nil {
					w.kick()
				}
			},
		},
	}
	w.tr.note("connecting to %s (%s)", i.Address, i.TLS)
	var c *imapclient.Client
	if i.TLS == config.TLSImplicit {
		tc := tls.Client(raw, tlsConfig)
		if err := tc.HandshakeContext(dctx); err != nil {
			nc.Close()
			return nil, nil, err
		}
		c = imapclient.New(tc, opts)
	} else {
		c, err = imapclient.NewStartTLS(raw, opts)
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
	}
	if err := c.WaitGreeting(); err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, raw, nil
}

// login logs in once, counting the login. The exchange is kept out of the
// transcript: a note stands for it.
func (w *watcher) login(ctx context.Context, c *imapclient.Client, raw *boundedConn) error {
	a := &w.spec.imap.Auth
	raw.begin(w.t.timing.Op)
	caps := c.Caps()
	mech := a.Mechanism
	var client sasl.Client
	var password string
	if a.UsesToken() {
		tctx, cancel := context.WithTimeout(ctx, w.t.timing.Op)
		token, err := prober.BearerToken(tctx, a, w.tr.scrub, w.t.logger)
		cancel()
		if err != nil {
			return fmt.Errorf("obtaining the token: %w", err)
		}
		if mech == config.MechanismAuto {
			mech = config.MechanismXOAUTH2
			if caps.Has(imap.Cap("AUTH=OAUTHBEARER")) {
				mech = config.MechanismOAUTHBEARER
			}
		}
		if mech == config.MechanismOAUTHBEARER {
			host, port, _ := net.SplitHostPort(w.spec.imap.Address)
			var p int
			fmt.Sscan(port, &p)
			client = sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: a.Username, Token: token, Host: host, Port: p})
		} else {
			client = &xoauth2{username: a.Username, token: token}
		}
	} else {
		p, err := a.ReadPassword()
		if err != nil {
			return fmt.Errorf("reading the password: %w", err)
		}
		password = p
		w.tr.scrub.AddPassword(a.Username, password)
		if mech == config.MechanismAuto {
			mech = config.MechanismLogin
			if caps.Has(imap.CapLoginDisabled) {
				mech = config.MechanismPlain
			}
		}
		if mech == config.MechanismPlain {
			client = sasl.NewPlainClient("", a.Username, password)
		}
	}
	w.tr.note("login as %s with %s", a.Username, mech)
	w.tr.mute(true)
	var err error
	if client != nil {
		err = c.Authenticate(client)
	} else {
		err = c.Login(a.Username, password).Wait()
	}
	w.tr.mute(false)
	if err == nil {
		w.countLogin(LoginAccepted)
		w.tr.note("logged in")
		return nil
	}
	var ie *imap.Error
	if errors.As(err, &ie) && ie.Type == imap.StatusResponseTypeNo {
		if ie.Code == imap.ResponseCodeUnavailable {
			w.countLogin(LoginThrottled)
			return &errRefused{err: w.tr.scrubErr(err)}
		}
		w.countLogin(LoginRefused)
		return &errRefused{err: w.tr.scrubErr(err)}
	}
	w.countLogin(LoginFailed)
	return fmt.Errorf("login: %w", w.tr.scrubErr(err))
}

// findJunk returns the account's Junk folder: the one LIST marks \Junk
// (SPECIAL-USE), else one of the usual names; "" when there is none.
func (w *watcher) findJunk(c *imapclient.Client) (string, error) {
	opts := &imap.ListOptions{}
	if c.Caps().Has(imap.CapSpecialUse) {
		opts.ReturnSpecialUse = true
	}
	cmd := c.List("", "*", opts)
	var list []*imap.ListData
	for {
		data := cmd.Next()
		if data == nil {
			break
		}
		if len(list) < maxMailboxes {
			list = append(list, data)
		}
	}
	if err := cmd.Close(); err != nil {
		return "", fmt.Errorf("LIST: %w", err)
	}
	return chooseJunk(list, w.spec.imap.Mailbox), nil
}

// chooseJunk picks the Junk folder from a LIST: the one marked \Junk, else
// the first of the usual names; never the watched mailbox.
func chooseJunk(list []*imap.ListData, mailbox string) string {
	junk := ""
	for _, data := range list {
		if slices.Contains(data.Attrs, imap.MailboxAttrJunk) {
			junk = data.Mailbox
			break
		}
	}
	if junk == "" {
		for _, want := range junkNames {
			if i := slices.IndexFunc(list, func(d *imap.ListData) bool { return strings.EqualFold(d.Mailbox, want) }); i >= 0 {
				junk = list[i].Mailbox
				break
			}
		}
	}
	if strings.EqualFold(junk, mailbox) {
		return ""
	}
	return junk
}

func (w *watcher) selectFolder(c *imapclient.Client, name string) (*imap.SelectData, error) {
	data, err := c.Select(name, nil).Wait()
	if err != nil {
		return nil, fmt.Errorf("SELECT %s: %w", name, err)
	}
	if w.uidValidity[name] != data.UIDValidity {
		w.uidValidity[name] = data.UIDValidity
		delete(w.known, name)
	}
	return data, nil
}

// pass looks for canaries in Junk, then in the mailbox, and deletes ours.
// It leaves the mailbox selected. The mailbox comes last: a message that
// lands in it after its search is announced by an EXISTS (during the
// pass, or in the IDLE that follows), which starts another pass. Searched
// first, a message landing while Junk is selected would be announced in
// the reply to the SELECT that returns to the mailbox, which announces
// nothing, and wait for the next poll.
func (w *watcher) pass(c *imapclient.Client, junk string) error {
	if junk != "" {
		if _, err := w.selectFolder(c, junk); err != nil {
			return err
		}
		if err := w.scan(c, junk, true); err != nil {
			return err
		}
		if _, err := w.selectFolder(c, w.spec.imap.Mailbox); err != nil {
			return err
		}
	}
	return w.scan(c, w.spec.imap.Mailbox, false)
}

var probeIDSection = &imap.FetchItemBodySection{
	Specifier:    imap.PartSpecifierHeader,
	HeaderFields: []string{message.ProbeIDHeader},
	Peek:         true, // never set \Seen on anyone's message
}

// scan searches the selected folder for messages with the header, learns
// the probe id of those not known yet, and deletes those that are ours.
func (w *watcher) scan(c *imapclient.Client, folder string, isJunk bool) error {
	data, err := c.UIDSearch(&imap.SearchCriteria{
		Header:  []imap.SearchCriteriaHeaderField{{Key: message.ProbeIDHeader, Value: ""}},
		NotFlag: []imap.Flag{imap.FlagDeleted},
	}, nil).Wait()
	if err != nil {
		return fmt.Errorf("UID SEARCH in %s: %w", folder, err)
	}
	uids := data.AllUIDs()
	known := w.known[folder]
	if known == nil {
		known = map[imap.UID]string{}
		w.known[folder] = known
	}
	present := make(map[imap.UID]bool, len(uids))
	var fetch imap.UIDSet
	nfetch := 0
	// Newest first: canaries are among the latest messages.
	for i := len(uids) - 1; i >= 0; i-- {
		present[uids[i]] = true
		if _, ok := known[uids[i]]; !ok && nfetch < maxFetch {
			fetch.AddNum(uids[i])
			nfetch++
		}
	}
	for uid := range known {
		if !present[uid] {
			delete(known, uid)
		}
	}
	dates := map[imap.UID]time.Time{}
	if nfetch > 0 {
		msgs, err := c.Fetch(fetch, &imap.FetchOptions{
			UID:          true,
			InternalDate: true,
			BodySection:  []*imap.FetchItemBodySection{probeIDSection},
		}).Collect()
		if err != nil {
			return fmt.Errorf("UID FETCH in %s: %w", folder, err)
		}
		for _, m := range msgs {
			if len(known) >= maxKnown {
				break
			}
			known[m.UID] = probeIDOf(m.FindBodySection(probeIDSection))
			dates[m.UID] = m.InternalDate
		}
	}
	var ours imap.UIDSet
	for uid, id := range known {
		if id == "" {
			continue
		}
		if w.t.claim(w.spec.key, id, folder, isJunk, dates[uid]) {
			ours.AddNum(uid)
		}
	}
	if len(ours) == 0 {
		return nil
	}
	return w.delete(c, folder, ours)
}

// delete removes our messages: flagged \Deleted, then UID EXPUNGE. Without
// UIDPLUS, EXPUNGE would also remove every other message flagged \Deleted,
// so it runs only when ours are the only ones; otherwise ours stay flagged
// for the owner's next expunge.
func (w *watcher) delete(c *imapclient.Client, folder string, ours imap.UIDSet) error {
	if err := c.Store(ours, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		return fmt.Errorf("UID STORE in %s: %w", folder, err)
	}
	if c.Caps().Has(imap.CapUIDPlus) {
		if err := c.UIDExpunge(ours).Close(); err != nil {
			return fmt.Errorf("UID EXPUNGE in %s: %w", folder, err)
		}
		return nil
	}
	flagged, err := c.UIDSearch(&imap.SearchCriteria{Flag: []imap.Flag{imap.FlagDeleted}}, nil).Wait()
	if err != nil {
		return fmt.Errorf("UID SEARCH DELETED in %s: %w", folder, err)
	}
	for _, uid := range flagged.AllUIDs() {
		if !ours.Contains(uid) {
			if !w.loggedFlagged {
				w.loggedFlagged = true
				w.t.logger.Warn("The server lacks UIDPLUS and other messages are flagged \\Deleted: canaries left flagged \\Deleted, not expunged", "mailbox", folder)
			}
			w.tr.note("no UIDPLUS and other messages are flagged \\Deleted: ours left flagged, not expunged")
			return nil
		}
	}
	if err := c.Expunge().Close(); err != nil {
		return fmt.Errorf("EXPUNGE in %s: %w", folder, err)
	}
	return nil
}

// probeIDOf returns the probe id in a fetched header section, "" when
// there is none or it is too long.
func probeIDOf(section []byte) string {
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(section)))
	h, _ := r.ReadMIMEHeader()
	id := strings.TrimSpace(h.Get(message.ProbeIDHeader))
	if len(id) > maxIDLen || config.ContainsControl(id) {
		return ""
	}
	return id
}

// wait returns when there may be something new: IDLE where the server
// offers it, a poll otherwise. With canaries pending it returns within
// Poll, so that Junk is looked at too.
func (w *watcher) wait(ctx context.Context, c *imapclient.Client, raw *boundedConn) error {
	d := w.t.timing.Idle
	if w.t.pendingFor(w.spec.key) || !c.Caps().Has(imap.CapIdle) {
		d = w.t.timing.Poll
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	if !c.Caps().Has(imap.CapIdle) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		case <-w.kickc:
		}
		// A poll that proves the session is alive.
		raw.begin(w.t.timing.Op)
		return c.Noop().Wait()
	}
	raw.begin(d + w.t.timing.Op)
	idle, err := c.Idle()
	if err != nil {
		return fmt.Errorf("IDLE: %w", err)
	}
	select {
	case <-ctx.Done():
	case <-timer.C:
	case <-w.kickc:
	case <-c.Closed():
	}
	raw.begin(w.t.timing.Op)
	if err := idle.Close(); err != nil {
		return fmt.Errorf("IDLE: %w", err)
	}
	if err := idle.Wait(); err != nil {
		return fmt.Errorf("IDLE: %w", err)
	}
	return ctx.Err()
}

// xoauth2 is Google's and Microsoft's XOAUTH2, which go-sasl lacks.
type xoauth2 struct{ username, token string }

func (x *xoauth2) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.username + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

func (x *xoauth2) Next(challenge []byte) ([]byte, error) {
	// An error is described in a JSON challenge; the empty answer ends the
	// exchange so the server can say NO.
	return []byte{}, nil
}

// boundedConn bounds what the server may send and sets the deadline of
// each operation.
type boundedConn struct {
	net.Conn
	left atomic.Int64
}

var errTooMuch = errors.New("the server sent more than an operation may read")

func (b *boundedConn) begin(d time.Duration) {
	b.left.Store(maxPassBytes)
	b.Conn.SetDeadline(time.Now().Add(d))
}

func (b *boundedConn) Read(p []byte) (int, error) {
	if b.left.Load() <= 0 {
		return 0, errTooMuch
	}
	n, err := b.Conn.Read(p)
	b.left.Add(-int64(n))
	return n, err
}
