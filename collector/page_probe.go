package collector

import (
	"crypto/tls"
	"fmt"
	"html/template"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/smtp-exporter/smtp_exporter/delivery"
	"github.com/smtp-exporter/smtp_exporter/internal/printable"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// probePage is what the probe result page shows. Every value that came from
// a target, a server or a certificate is a plain string here and escaped by
// html/template when the page is rendered; none is marked safe.
type probePage struct {
	ID      uint64
	ProbeID string
	Time    string
	Module  string
	// Target is the target parameter as shown, with invisible characters
	// escaped; TargetParam is the parameter as given, for the link that
	// runs the probe again (html/template percent-encodes it there).
	Target      string
	TargetParam string
	Timeout     string
	Success     bool
	Duration    string
	// Provenance and Notice say where the result came from when its probe
	// did not run for this request (shared, reused, held).
	Provenance string
	Notice     string
	// Failure is nil on success.
	Failure *failureView
	// Address is the IP address and port dialled, "" when the probe
	// stopped before.
	Address   string
	DNSLookup string

	Waterfall    waterfall
	TLS          tlsView
	Capabilities capabilities
	// Delivery is nil when the module sends no canary.
	Delivery *deliveryView
	// DeliveryState is nil unless the module has a delivery block and the
	// page is the answer to a probe request.
	DeliveryState *deliveryStateView
	Transcript    []transcriptRow

	Log          string
	Metrics      string
	ModuleConfig string
}

type failureView struct {
	Phase  string
	Reason string
	// Meaning explains the reason in a sentence.
	Meaning string
	// Detail is the prober's error text, which never holds a secret; "" if
	// there was none.
	Detail string
}

// waterfall lays the phases out on one time axis. The prober measures how
// long each phase took, not when it began; the phases run back to back, so
// each begins where the previous ones end, after the setup. The setup
// (target checks, DNS, credentials) is the part of the probe's duration that
// no phase accounts for, which also absorbs the few microseconds between
// phases. The axis therefore spans the probe's duration exactly.
type waterfall struct {
	// Scale is the time the full width stands for.
	Scale time.Duration
	Ticks []tick
	Bars  []phaseBar
}

// tick is a label on the time axis.
type tick struct {
	Offset float64 // percent of the width
	Label  string
}

// phaseBar is one row of the waterfall.
type phaseBar struct {
	Phase string
	// Ran is false for a planned phase the probe never reached; it has no
	// bar.
	Ran          bool
	Failed       bool
	Reason       string
	Duration     time.Duration
	DurationText string
	// Offset and Width place the bar, in percent of the scale.
	Offset, Width float64
	// Code is the reply that ended the phase, 0 for none.
	Code     int
	Enhanced string
}

// phaseSetup names the waterfall's first row; it is also the phase a
// failure before the connection is reported in.
const phaseSetup = string(prober.PhaseSetup)

func newWaterfall(r *prober.Result) waterfall {
	var phases time.Duration
	for _, p := range r.Phases {
		if p.Ran {
			phases += max(p.Duration, 0)
		}
	}
	setup := max(r.Duration-phases, 0)
	scale := setup + phases

	w := waterfall{Scale: scale}
	percent := func(d time.Duration) float64 {
		if scale <= 0 {
			return 0
		}
		return 100 * float64(d) / float64(scale)
	}
	w.Bars = append(w.Bars, phaseBar{
		Phase:        phaseSetup,
		Ran:          true,
		Duration:     setup,
		DurationText: formatDuration(setup),
		Width:        percent(setup),
	})
	at := setup
	for _, p := range r.Phases {
		bar := phaseBar{Phase: string(p.Phase), Ran: p.Ran, Offset: percent(at), Code: p.Code, Enhanced: p.Enhanced}
		if p.Ran {
			d := max(p.Duration, 0)
			bar.Duration, bar.DurationText, bar.Width = d, formatDuration(d), percent(d)
			at += d
		}
		w.Bars = append(w.Bars, bar)
	}
	if f := r.Failure; f != nil && !r.Success {
		marked := false
		for i := range w.Bars {
			if w.Bars[i].Phase == string(f.Phase) {
				w.Bars[i].Failed, w.Bars[i].Reason = true, string(f.Reason)
				marked = true
				break
			}
		}
		if !marked {
			// A failure in a phase the module did not plan is a prober bug,
			// but the page must still say where the probe stopped.
			w.Bars = append(w.Bars, phaseBar{Phase: string(f.Phase), Failed: true, Reason: string(f.Reason), Offset: percent(at)})
		}
	}
	if scale > 0 {
		w.Ticks = append(w.Ticks, tick{Offset: 0, Label: "0"})
		for i := 1; i <= 4; i++ {
			w.Ticks = append(w.Ticks, tick{Offset: 25 * float64(i), Label: formatDuration(scale * time.Duration(i) / 4)})
		}
	}
	return w
}

// tlsView is the TLS session and the certificates the server presented.
type tlsView struct {
	// Planned is whether the module uses TLS at all.
	Planned bool
	// Established is whether a TLS session came up; the certificates can be
	// known without it, when their verification failed.
	Established bool
	Version     string
	Cipher      string
	ServerName  string
	// Verified is whether the chain verified against the trusted roots.
	Verified     bool
	Certificates []certView
}

type certView struct {
	Subject   string
	Issuer    string
	Names     string
	Serial    string
	NotBefore string
	NotAfter  string
	// Expiry is the time left or past, such as "in 89 days".
	Expiry  string
	Expired bool
}

func newTLSView(r *prober.Result, now time.Time) tlsView {
	v := tlsView{}
	for _, p := range r.Phases {
		if p.Phase == prober.PhaseTLS || p.Phase == prober.PhaseStartTLS {
			v.Planned = true
		}
	}
	if s := r.TLS; s != nil {
		v.Established = true
		v.Version = tls.VersionName(s.Version)
		v.Cipher = s.CipherName()
		v.ServerName = printable.String(s.ServerName)
		v.Verified = s.Verified
	}
	for _, c := range r.Certificates {
		v.Certificates = append(v.Certificates, newCertView(c, now))
	}
	return v
}

func newCertView(c prober.Certificate, now time.Time) certView {
	names := make([]string, 0, len(c.DNSNames)+len(c.IPAddresses)+1)
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if c.OmittedNames > 0 {
		names = append(names, "and "+plural(c.OmittedNames, "more name"))
	}
	v := certView{
		Subject:   printable.String(c.Subject),
		Issuer:    printable.String(c.Issuer),
		Names:     printable.String(strings.Join(names, ", ")),
		Serial:    c.Serial,
		NotBefore: c.NotBefore.UTC().Format(time.RFC3339),
		NotAfter:  c.NotAfter.UTC().Format(time.RFC3339),
		Expired:   now.After(c.NotAfter),
	}
	v.Expiry = CertificateExpiry(c.NotBefore, c.NotAfter, now)
	return v
}

// CertificateExpiry says how long a certificate has left at now, or how
// long ago it expired: "in 89 days", "expired 3 days ago", "not valid yet".
func CertificateExpiry(notBefore, notAfter, now time.Time) string {
	days := int(math.Abs(notAfter.Sub(now).Hours()) / 24)
	switch {
	case now.After(notAfter):
		return "expired " + plural(days, "day") + " ago"
	case now.Before(notBefore):
		return "not valid yet"
	}
	return "in " + plural(days, "day")
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return strconv.Itoa(n) + " " + unit + "s"
}

// capabilities is what the server advertised.
type capabilities struct {
	Extensions []extensionList
	// AuthMechanisms were advertised on the session AUTH ran on.
	AuthMechanisms []string
	AuthMechanism  string
	AuthAttempted  bool
	AuthSuccess    bool
	// SizeLimit is "" when SIZE was not advertised.
	SizeLimit    string
	HELOFallback bool
}

type extensionList struct {
	Phase    string
	Keywords []string
}

func newCapabilities(r *prober.Result) capabilities {
	c := capabilities{
		AuthMechanisms: printableAll(r.AuthMechanisms),
		AuthMechanism:  printable.String(r.AuthMechanism),
		AuthAttempted:  r.AuthAttempted,
		AuthSuccess:    r.AuthSuccess,
		HELOFallback:   r.HELOFallback,
	}
	for _, ph := range []prober.Phase{prober.PhaseEHLO, prober.PhaseEHLOTLS} {
		if kw := r.Extensions[ph]; len(kw) > 0 {
			c.Extensions = append(c.Extensions, extensionList{Phase: string(ph), Keywords: printableAll(kw)})
		}
	}
	switch {
	case r.SizeLimit == 0:
		c.SizeLimit = "no limit"
	case r.SizeLimit > 0:
		c.SizeLimit = formatBytes(r.SizeLimit)
	}
	return c
}

func printableAll(list []string) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = printable.String(s)
	}
	return out
}

// formatBytes writes a SIZE limit as the server gave it and in MiB, which
// is how mail administrators configure it.
func formatBytes(n int64) string {
	if n < 1<<20 {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	return fmt.Sprintf("%d bytes (%.1f MiB)", n, float64(n)/(1<<20))
}

// deliveryView is the canary's fate.
type deliveryView struct {
	RecipientsAccepted int
	MessageAccepted    bool
	// Data is whether the module sends the message or resets after RCPT.
	Data      bool
	QueueID   string
	MessageID string
}

func newDeliveryView(r *prober.Result) *deliveryView {
	if _, ok := r.Phase(prober.PhaseMail); !ok {
		return nil
	}
	_, data := r.Phase(prober.PhaseData)
	return &deliveryView{
		RecipientsAccepted: r.RecipientsAccepted,
		MessageAccepted:    r.MessageAccepted,
		Data:               data,
		QueueID:            printable.String(r.QueueID),
		MessageID:          printable.String(r.MessageID),
	}
}

// deliveryStateView is what the delivery tracker knows of the module's
// canaries when the page is rendered: the state across probes, as
// debug=true shows it, not this probe's alone.
type deliveryStateView struct {
	WatcherUp             bool
	Pending, Late         int
	Delivered, Junk, Lost uint64
	// Canaries are the module's recent canaries, newest first.
	Canaries []canaryRow
}

// canaryRow is one recent canary. Every string is printable and escaped
// by the template.
type canaryRow struct {
	ProbeID string
	// ThisProbe marks the canary of the probe the page shows.
	ThisProbe bool
	Sent      string
	// Seen, Latency, ServerLatency and Folder are "" until it is found.
	Seen, Latency, ServerLatency, Folder string
	Junk                                 bool
	State                                string
	// Class is the stylesheet's class of the state: ok, fail or muted.
	Class string
}

// newDeliveryStateView returns the tracker's view of module, nil when the
// module has no delivery block (or there is no tracker). probeID is the
// probe the page shows.
func newDeliveryStateView(t *delivery.Tracker, module, probeID string) *deliveryStateView {
	s, ok := t.Status(module) // a nil tracker has no state
	if !ok {
		return nil
	}
	return deliveryStateOf(s, probeID)
}

// deliveryStateOf is newDeliveryStateView of a Status.
func deliveryStateOf(s delivery.Status, probeID string) *deliveryStateView {
	v := &deliveryStateView{
		WatcherUp: s.WatcherUp, Pending: s.Pending, Late: s.Late,
		Delivered: s.Delivered, Junk: s.JunkSeen, Lost: s.Lost,
		Canaries: make([]canaryRow, 0, len(s.Recent)),
	}
	for _, c := range s.Recent {
		row := canaryRow{
			ProbeID:   printable.String(c.ProbeID),
			ThisProbe: c.ProbeID == probeID,
			Sent:      c.Sent.UTC().Format("2006-01-02 15:04:05Z"),
			State:     c.State,
			Junk:      c.Junk,
		}
		if !c.Seen.IsZero() {
			row.Seen = c.Seen.UTC().Format("2006-01-02 15:04:05Z")
			row.Latency = formatDuration(c.Latency)
			row.ServerLatency = formatDuration(c.ServerLatency)
			row.Folder = printable.String(c.Folder)
		}
		switch c.State {
		case delivery.StateDelivered:
			row.Class = "ok"
		case delivery.StatePending:
			row.Class = "muted"
		default:
			row.Class = "fail"
		}
		v.Canaries = append(v.Canaries, row)
	}
	return v
}

// transcriptRow is one line of the SMTP conversation.
type transcriptRow struct {
	At string
	// Class is "client", "server" or "note", for the stylesheet.
	Class string
	Dir   string
	Text  string
}

func newTranscript(lines []prober.TranscriptLine) []transcriptRow {
	rows := make([]transcriptRow, 0, len(lines))
	for _, l := range lines {
		row := transcriptRow{At: formatDuration(l.At), Dir: printable.String(string(l.Dir)), Text: printable.String(l.Text)}
		switch l.Dir {
		case prober.Client:
			row.Class = "client"
		case prober.Server:
			row.Class = "server"
		default:
			row.Class = "note"
		}
		rows = append(rows, row)
	}
	return rows
}

// reasonMeaning explains each failure reason in the words of the README's
// table, for the person reading the page at night.
var reasonMeaning = map[prober.Reason]string{
	prober.ReasonTargetInvalid:        "The target parameter is not host, host:port or [v6]:port.",
	prober.ReasonTargetNotAllowed:     "The target, or the address it resolved to, is outside the module's allowed_targets; nothing was sent.",
	prober.ReasonDNS:                  "The target did not resolve, in the preferred IP family or at all.",
	prober.ReasonCredentials:          "The password_file could not be read: missing, unreadable, not a regular file (a pipe, a device, a directory) or over 64 KiB.",
	prober.ReasonMessageUnavailable:   "The canary message could not be built: an attachment is missing, not a regular file or too large.",
	prober.ReasonConnectionRefused:    "The server refused the TCP connection.",
	prober.ReasonConnectionFailed:     "The connection could not be made: unreachable network or unusable source address.",
	prober.ReasonConnectionClosed:     "The server closed or reset the connection in the middle of the conversation, outside a TLS handshake.",
	prober.ReasonTimeout:              "The probe's timeout ran out in this phase.",
	prober.ReasonTLSHandshake:         "The TLS handshake failed for a reason other than the certificate or the TLS version, a connection the server closed or reset during the handshake included.",
	prober.ReasonCertificate:          "The certificate did not verify (expired, wrong name, unknown authority), or in setup a tls_config file could not be loaded.",
	prober.ReasonProtocolError:        "The server's reply was malformed: bad code, over-long line, too many lines or a bad challenge.",
	prober.ReasonServiceUnavailable:   "The server answered 421 (in AUTH, one that does not speak of limits), or refused the greeting with 554.",
	prober.ReasonUnexpectedReply:      "The server sent a reply code this phase does not accept.",
	prober.ReasonStartTLSUnavailable:  "The module wants STARTTLS, but the server does not advertise it.",
	prober.ReasonAuthUnavailable:      "The server advertises no AUTH at all.",
	prober.ReasonMechanismUnavailable: "The configured AUTH mechanism (for auto: any supported one) is not advertised.",
	prober.ReasonPlaintextAuthRefused: "AUTH would have run on an unencrypted session and allow_plaintext_auth is off; nothing was sent.",
	prober.ReasonAuthRejected:         "The server checked the credentials and refused them (535, 5.7.8, SCRAM invalid-proof): wrong username or password, or a locked account. Further logins wait for auth_failure_backoff.",
	prober.ReasonAuthTemporaryFailure: "AUTH failed with a 4xx reply (454 4.7.0): the server could not check the credentials now, often because its authentication backend is down. Further logins wait for auth_failure_backoff.",
	prober.ReasonSenderRejected:       "The server refused MAIL FROM.",
	prober.ReasonMessageTooLarge:      "The canary is larger than the SIZE the server advertises; nothing was sent.",
	prober.ReasonRecipientRejected:    "The server refused a recipient with a 5xx reply (550 5.1.1: no such mailbox).",
	prober.ReasonRecipientDeferred:    "The server deferred a recipient with a 4xx reply, as greylisting does.",
	prober.ReasonMessageRejected:      "The server refused DATA with a 5xx reply, before or after the message.",
	prober.ReasonMessageDeferred:      "The server deferred DATA with a 4xx reply.",

	// Other replies to AUTH: throttling, and refusals that checked no
	// credential.
	prober.ReasonAuthThrottled:          "The server is limiting logins: a 421 to AUTH, or a reply saying too many attempts, a rate limit or throttling. Further logins wait for auth_failure_backoff; look for anything else logging in with this account too often.",
	prober.ReasonAuthEncryptionRequired: "The server wants an encrypted session for this mechanism (538 5.7.11): use tls: starttls or implicit, or another mechanism. No credential was checked.",
	prober.ReasonAuthMechanismTooWeak:   "The server refused the mechanism as too weak (534 5.7.9); at Google this means an application-specific password or OAuth is required. No credential was checked.",
	prober.ReasonAuthBasicDisabled:      "Basic (password) authentication is disabled for submission (550 5.7.30): switch this module to OAuth (XOAUTH2/OAUTHBEARER). Microsoft 365 retires basic SMTP AUTH by default at the end of 2026.",
	prober.ReasonAuthDisabled:           "SMTP AUTH is disabled for the tenant or the mailbox (5.7.139, Microsoft 365: SMTP AUTH switched off, security defaults or conditional access); an administrator must allow it. No credential was checked.",
	prober.ReasonAuthRefused:            "The server refused AUTH with a 5xx that says nothing of the credentials: a policy refusal (network, account policy); no credential was checked.",

	// Modern authentication and security posture checks.
	prober.ReasonServerSignature:          "The SCRAM server did not prove that it knows the password: its signature was wrong.",
	prober.ReasonTokenRejected:            "The server refused the OAuth bearer token (JSON error status 401 or invalid_token, or a 535): expired, revoked or issued for another account. Further logins wait for auth_failure_backoff.",
	prober.ReasonTokenUnavailable:         "There was no token to log in with: token_file, client_secret_file or refresh_token_file could not be read (missing, not a regular file, over 64 KiB), or the token endpoint failed.",
	prober.ReasonAuthOfferedWithoutTLS:    "The server offers AUTH before TLS, and the module fails on that (fail_if_auth_offered_without_tls).",
	prober.ReasonInsecureMechanism:        "The server offers, before TLS, a mechanism listed in the module's fail_if_mechanisms_offered.",
	prober.ReasonTLSVersion:               "The server and the module share no TLS version within min_version and max_version.",
	prober.ReasonAuthUnexpectedlyAccepted: "The server accepted a login the module expects it to refuse (expect_auth_rejected).",
}

// newProbePage gathers what the result page shows of a history entry; now
// is the time certificate expiries are measured from.
func newProbePage(e *Entry, now time.Time) probePage {
	r := e.Result
	if r == nil {
		r = &prober.Result{Success: e.Success, Duration: e.Duration, SizeLimit: -1}
	}
	p := probePage{
		ID:           e.ID,
		ProbeID:      e.ProbeID,
		Provenance:   e.Provenance.String(),
		Notice:       e.Notice,
		Time:         e.Time.UTC().Format("2006-01-02 15:04:05Z"),
		Module:       e.Module,
		Target:       printable.String(e.Target),
		TargetParam:  e.Target,
		Timeout:      formatDuration(e.Timeout),
		Success:      e.Success,
		Duration:     formatDuration(e.Duration),
		Waterfall:    newWaterfall(r),
		TLS:          newTLSView(r, now),
		Capabilities: newCapabilities(r),
		Delivery:     newDeliveryView(r),
		Transcript:   newTranscript(r.Transcript),
		Log:          e.Log(),
		Metrics:      e.Metrics,
		ModuleConfig: e.ModuleConfig,
	}
	if r.IP.IsValid() {
		p.Address = netip.AddrPortFrom(r.IP, uint16(r.Port)).String()
	} else if r.Host != "" {
		p.Address = net.JoinHostPort(printable.String(r.Host), strconv.Itoa(r.Port)) + " (not connected)"
	}
	if r.DNSLookupTime > 0 {
		p.DNSLookup = formatDuration(r.DNSLookupTime)
	}
	if !e.Success {
		f := &failureView{Phase: string(e.FailurePhase), Reason: string(e.FailureReason)}
		if r.Failure != nil && r.Failure.Err != nil {
			f.Detail = printable.String(r.Failure.Err.Error())
		}
		if f.Reason == "" {
			// A prober that returned no result, or one that failed without
			// saying why: the log tells the rest.
			f.Reason = "unknown"
			f.Meaning = "The prober gave no reason; see the probe log below."
		} else {
			f.Meaning = reasonMeaning[prober.Reason(f.Reason)]
		}
		p.Failure = f
	}
	return p
}

// pageFuncs are the helpers the page templates use.
var pageFuncs = template.FuncMap{
	// percent renders a bar position for a style attribute. The value is a
	// number we computed, so it is safe as CSS.
	"percent": func(v float64) template.CSS {
		return template.CSS(strconv.FormatFloat(v, 'f', 3, 64) + "%")
	},
	"nanos": func(d time.Duration) int64 { return int64(d) },
}
