package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/smtp-exporter/smtp_exporter/collector"
	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/printable"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// Exit codes of the probe command.
const (
	exitProbeSucceeded = 0
	exitProbeFailed    = 1
	exitUsage          = 2
)

// probeCommand is "smtp_exporter probe": one probe of a target with a
// module of the configuration file, run by the code that serves /probe, and
// a summary for a person instead of metrics.
type probeCommand struct {
	clause     *kingpin.CmdClause
	module     *string
	target     *string
	timeout    *time.Duration
	output     *string
	transcript *bool
}

func addProbeCommand(app *kingpin.Application) *probeCommand {
	c := app.Command("probe", "Run one probe of TARGET with a module of --config.file, as /probe does, and print what happened. Exit code 0: the probe succeeded; 1: it failed; 2: bad usage or configuration.")
	return &probeCommand{
		clause:     c,
		module:     c.Flag("module", "The module to probe with.").Required().PlaceHolder("<name>").String(),
		timeout:    c.Flag("timeout", "How long the probe may take, at most the module's timeout (default: the module's timeout).").PlaceHolder("<duration>").Duration(),
		output:     c.Flag("output", "Output format: text or json.").Default("text").Enum("text", "json"),
		transcript: c.Flag("transcript", "Also print the SMTP transcript, credentials replaced.").Bool(),
		target:     c.Arg("target", "The target, as /probe's target parameter: host, host:port or [v6]:port.").Required().String(),
	}
}

// run loads the configuration, probes, prints and returns the exit code.
func (c *probeCommand) run(configFile string, stdout, stderr io.Writer) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "%s probe: %s\n", exporterName, fmt.Sprintf(format, args...))
		return exitUsage
	}
	if *c.timeout < 0 {
		return fail("--timeout must not be negative, got %v", *c.timeout)
	}
	safeConfig := config.NewSafeConfig(nil)
	if err := safeConfig.Reload(configFile); err != nil {
		return fail("cannot load the configuration: %v", err)
	}
	handler := collector.NewHandler(collector.HandlerOpts{Config: safeConfig})
	entry, err := handler.Probe(context.Background(), *c.module, *c.target, *c.timeout)
	switch {
	case errors.Is(err, collector.ErrUnknownModule):
		return fail("unknown module %q in %s; its modules are: %s", *c.module, configFile, strings.Join(safeConfig.ModuleNames(), ", "))
	case err != nil:
		return fail("%v", err)
	}

	report := newProbeReport(entry, *c.transcript, time.Now())
	if *c.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			fmt.Fprintf(stderr, "%s probe: writing the output: %v\n", exporterName, err)
		}
	} else {
		report.writeText(stdout)
	}
	if !report.Success {
		return exitProbeFailed
	}
	return exitProbeSucceeded
}

// probeReport is what the probe command prints, and with --output=json its
// schema: the field names are stable and documented in the README. Every
// text that came from the server, a certificate or the target is made
// printable by the rule of the pages and the debug output.
type probeReport struct {
	Module  string `json:"module"`
	Target  string `json:"target"`
	ProbeID string `json:"probe_id"`
	// Time is when the probe started.
	Time            time.Time `json:"time"`
	Success         bool      `json:"success"`
	DurationSeconds float64   `json:"duration_seconds"`
	TimeoutSeconds  float64   `json:"timeout_seconds"`
	// Address is the IP address and port dialled; "" when the probe
	// stopped before it dialled.
	Address          string  `json:"address"`
	DNSLookupSeconds float64 `json:"dns_lookup_seconds"`
	// Failure is null on success.
	Failure *reportFailure `json:"failure"`
	// Phases are those the module plans, in the order they run.
	Phases []reportPhase `json:"phases"`
	// TLS is null when no TLS session came up.
	TLS *reportTLS `json:"tls"`
	// Certificates are those the server presented, leaf first, also when
	// they did not verify.
	Certificates []reportCertificate `json:"certificates"`
	Capabilities reportCapabilities  `json:"capabilities"`
	Auth         reportAuth          `json:"auth"`
	// Delivery is null when the module sends no canary.
	Delivery *reportDelivery `json:"delivery"`
	// Transcript is null without --transcript.
	Transcript []reportLine `json:"transcript"`

	// transcriptText is the transcript as the debug output shows it.
	transcriptText string
}

type reportFailure struct {
	Phase  string `json:"phase"`
	Reason string `json:"reason"`
	// Meaning is the sentence the result page shows for the reason.
	Meaning string `json:"meaning"`
	// Detail is the prober's error text; "" when there is none.
	Detail string `json:"detail"`
}

type reportPhase struct {
	Phase string `json:"phase"`
	// Ran is false for a phase the probe did not reach.
	Ran             bool    `json:"ran"`
	DurationSeconds float64 `json:"duration_seconds"`
	// Code is the reply code that ended the phase, 0 for none;
	// EnhancedCode the RFC 3463 code as given ("5.7.8"), "" for none.
	Code         int    `json:"code"`
	EnhancedCode string `json:"enhanced_code"`
	// Failed marks the phase the probe failed in.
	Failed bool `json:"failed"`
}

type reportTLS struct {
	Version    string `json:"version"`
	Cipher     string `json:"cipher"`
	ServerName string `json:"server_name"`
	// Verified is whether the chain led to a trusted root.
	Verified bool `json:"verified"`
}

type reportCertificate struct {
	Subject string `json:"subject"`
	Issuer  string `json:"issuer"`
	// Names are the subject alternative names, DNS names then addresses;
	// OmittedNames counts those left out of the list.
	Names        []string  `json:"names"`
	OmittedNames int       `json:"omitted_names"`
	Serial       string    `json:"serial"`
	NotBefore    time.Time `json:"not_before"`
	NotAfter     time.Time `json:"not_after"`
	Expired      bool      `json:"expired"`
}

type reportCapabilities struct {
	// EHLO and EHLOTLS are the extension keywords advertised before TLS
	// and on the encrypted session, upper-cased.
	EHLO         []string `json:"ehlo"`
	EHLOTLS      []string `json:"ehlo_tls"`
	HELOFallback bool     `json:"helo_fallback"`
	// AuthMechanisms were advertised on the session AUTH ran on.
	AuthMechanisms []string `json:"auth_mechanisms"`
	// SizeLimitBytes is the advertised SIZE, 0 for "no limit", null when
	// SIZE was not advertised.
	SizeLimitBytes *int64 `json:"size_limit_bytes"`
}

type reportAuth struct {
	Attempted bool `json:"attempted"`
	Success   bool `json:"success"`
	// Mechanism is the mechanism used, "" when AUTH did not run.
	Mechanism string `json:"mechanism"`
}

type reportDelivery struct {
	RecipientsAccepted int  `json:"recipients_accepted"`
	MessageAccepted    bool `json:"message_accepted"`
	// Data is whether the module sends the message, or resets after RCPT.
	Data      bool   `json:"data"`
	QueueID   string `json:"queue_id"`
	MessageID string `json:"message_id"`
}

type reportLine struct {
	AtSeconds float64 `json:"at_seconds"`
	// Dir is "C" for the client, "S" for the server, "*" for a note.
	Dir  string `json:"dir"`
	Text string `json:"text"`
}

func newProbeReport(e *collector.Entry, transcript bool, now time.Time) probeReport {
	r := e.Result
	if r == nil {
		r = &prober.Result{Success: e.Success, Duration: e.Duration, SizeLimit: -1}
	}
	rep := probeReport{
		Module:           e.Module,
		Target:           printable.String(e.Target),
		ProbeID:          e.ProbeID,
		Time:             e.Time.UTC(),
		Success:          e.Success,
		DurationSeconds:  e.Duration.Seconds(),
		TimeoutSeconds:   e.Timeout.Seconds(),
		DNSLookupSeconds: r.DNSLookupTime.Seconds(),
		Phases:           []reportPhase{},
		Certificates:     []reportCertificate{},
		Auth: reportAuth{
			Attempted: r.AuthAttempted,
			Success:   r.AuthSuccess,
			Mechanism: printable.String(r.AuthMechanism),
		},
		Capabilities: reportCapabilities{
			EHLO:           collector.PrintableAll(r.Extensions[prober.PhaseEHLO]),
			EHLOTLS:        collector.PrintableAll(r.Extensions[prober.PhaseEHLOTLS]),
			HELOFallback:   r.HELOFallback,
			AuthMechanisms: collector.PrintableAll(r.AuthMechanisms),
		},
	}
	if r.IP.IsValid() {
		rep.Address = netip.AddrPortFrom(r.IP, uint16(r.Port)).String()
	}
	if !e.Success {
		f := &reportFailure{Phase: string(e.FailurePhase), Reason: string(e.FailureReason)}
		if f.Reason == "" {
			f.Reason = "unknown"
		}
		f.Meaning = collector.ReasonMeaning(e.FailureReason)
		if f.Meaning == "" {
			f.Meaning = "The prober gave no reason."
		}
		if r.Failure != nil && r.Failure.Err != nil {
			f.Detail = printable.String(r.Failure.Err.Error())
		}
		rep.Failure = f
	}
	for _, p := range r.Phases {
		rep.Phases = append(rep.Phases, reportPhase{
			Phase:           string(p.Phase),
			Ran:             p.Ran,
			DurationSeconds: p.Duration.Seconds(),
			Code:            p.Code,
			EnhancedCode:    printable.String(p.Enhanced),
			Failed:          rep.Failure != nil && p.Phase == e.FailurePhase,
		})
	}
	if s := r.TLS; s != nil {
		rep.TLS = &reportTLS{
			Version:    tls.VersionName(s.Version),
			Cipher:     tls.CipherSuiteName(s.CipherSuite),
			ServerName: printable.String(s.ServerName),
			Verified:   s.Verified,
		}
	}
	for _, c := range r.Certificates {
		names := make([]string, 0, len(c.DNSNames)+len(c.IPAddresses))
		for _, n := range c.DNSNames {
			names = append(names, printable.String(n))
		}
		for _, ip := range c.IPAddresses {
			names = append(names, ip.String())
		}
		rep.Certificates = append(rep.Certificates, reportCertificate{
			Subject:      printable.String(c.Subject),
			Issuer:       printable.String(c.Issuer),
			Names:        names,
			OmittedNames: c.OmittedNames,
			Serial:       printable.String(c.Serial),
			NotBefore:    c.NotBefore.UTC(),
			NotAfter:     c.NotAfter.UTC(),
			Expired:      now.After(c.NotAfter),
		})
	}
	if r.SizeLimit >= 0 {
		size := r.SizeLimit
		rep.Capabilities.SizeLimitBytes = &size
	}
	if _, ok := r.Phase(prober.PhaseMail); ok {
		_, data := r.Phase(prober.PhaseData)
		rep.Delivery = &reportDelivery{
			RecipientsAccepted: r.RecipientsAccepted,
			MessageAccepted:    r.MessageAccepted,
			Data:               data,
			QueueID:            printable.String(r.QueueID),
			MessageID:          printable.String(r.MessageID),
		}
	}
	if transcript {
		rep.transcriptText = collector.TranscriptText(r.Transcript)
		rep.Transcript = []reportLine{}
		for _, l := range r.Transcript {
			rep.Transcript = append(rep.Transcript, reportLine{
				AtSeconds: l.At.Seconds(),
				Dir:       printable.String(string(l.Dir)),
				Text:      printable.String(l.Text),
			})
		}
	}
	return rep
}

// writeText prints the report for a person. Every field is printable
// already; the transcript is rendered as the debug output renders it.
func (rep *probeReport) writeText(out io.Writer) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(cells ...string) {
		for len(cells) > 1 && cells[len(cells)-1] == "" {
			cells = cells[:len(cells)-1]
		}
		fmt.Fprintln(w, strings.Join(cells, "\t"))
	}

	outcome := "SUCCESS"
	if !rep.Success {
		outcome = "FAILURE"
	}
	row("Probe", "module "+rep.Module+", target "+rep.Target)
	row("Result", fmt.Sprintf("%s in %s (timeout %s)", outcome, formatSeconds(rep.DurationSeconds), formatSeconds(rep.TimeoutSeconds)))
	if f := rep.Failure; f != nil {
		row("Failed", "phase "+f.Phase+", reason "+f.Reason)
		row("Meaning", f.Meaning)
		if f.Detail != "" {
			row("Detail", f.Detail)
		}
	}
	address := rep.Address
	if address == "" {
		address = "not connected"
	}
	if rep.DNSLookupSeconds > 0 {
		address += " (DNS lookup " + formatSeconds(rep.DNSLookupSeconds) + ")"
	}
	row("Address", address)
	row("Probe ID", rep.ProbeID)

	row("")
	row("Phases")
	for _, p := range rep.Phases {
		duration, reply := "not reached", ""
		if p.Ran {
			duration = formatSeconds(p.DurationSeconds)
		}
		if p.Code != 0 {
			reply = strconv.Itoa(p.Code)
			if p.EnhancedCode != "" {
				reply += " " + p.EnhancedCode
			}
		}
		mark := ""
		if p.Failed {
			mark = "FAILED: " + rep.Failure.Reason
		}
		row("  "+p.Phase, duration, reply, mark)
	}

	row("")
	row("TLS")
	switch {
	case rep.TLS != nil:
		verified := "no"
		if rep.TLS.Verified {
			verified = "yes"
		}
		row("  version", rep.TLS.Version)
		row("  cipher", rep.TLS.Cipher)
		row("  server name", orNone(rep.TLS.ServerName))
		row("  verified", verified)
	case len(rep.Certificates) > 0:
		row("  session", "none: the handshake failed")
	default:
		row("  session", "none")
	}
	for i, c := range rep.Certificates {
		names := strings.Join(c.Names, ", ")
		if c.OmittedNames > 0 {
			names += fmt.Sprintf(" and %d more", c.OmittedNames)
		}
		row(fmt.Sprintf("  certificate %d", i+1))
		row("    subject", c.Subject)
		row("    issuer", c.Issuer)
		row("    names", orNone(names))
		row("    serial", orNone(c.Serial))
		row("    valid", c.NotBefore.Format(time.RFC3339)+" to "+c.NotAfter.Format(time.RFC3339))
		row("    expires", collector.CertificateExpiry(c.NotBefore, c.NotAfter, rep.Time))
	}

	caps := rep.Capabilities
	row("")
	row("Capabilities")
	row("  ehlo keywords", wordsOrNone(caps.EHLO))
	if len(caps.EHLOTLS) > 0 {
		row("  ehlo_tls keywords", wordsOrNone(caps.EHLOTLS))
	}
	if caps.HELOFallback {
		row("  helo fallback", "EHLO refused, fell back to HELO")
	}
	auth := wordsOrNone(caps.AuthMechanisms)
	if rep.Auth.Attempted {
		outcome := "refused"
		if rep.Auth.Success {
			outcome = "accepted"
		}
		auth += " (used " + rep.Auth.Mechanism + ": " + outcome + ")"
	}
	row("  auth mechanisms", auth)
	switch {
	case caps.SizeLimitBytes == nil:
		row("  size limit", "not advertised")
	case *caps.SizeLimitBytes == 0:
		row("  size limit", "no limit")
	default:
		row("  size limit", collector.FormatBytes(*caps.SizeLimitBytes))
	}

	if d := rep.Delivery; d != nil {
		row("")
		row("Delivery")
		row("  recipients accepted", strconv.Itoa(d.RecipientsAccepted))
		if d.Data {
			row("  message accepted", yesNo(d.MessageAccepted))
			if d.QueueID != "" {
				row("  queue id", d.QueueID)
			}
			if d.MessageID != "" {
				row("  message id", d.MessageID)
			}
		} else {
			row("  message", "not sent: the module resets after RCPT")
		}
	}
	w.Flush()

	if rep.Transcript != nil {
		fmt.Fprintln(out)
		fmt.Fprintln(out, "Transcript (credentials replaced)")
		io.WriteString(out, rep.transcriptText)
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func wordsOrNone(words []string) string {
	if len(words) == 0 {
		return "none"
	}
	return strings.Join(words, " ")
}

// formatSeconds writes a duration as the pages do.
func formatSeconds(s float64) string {
	return collector.FormatDuration(time.Duration(s * float64(time.Second)))
}
