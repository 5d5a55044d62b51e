package examples

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/smtp-exporter/smtp_exporter/collector"
	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/delivery"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober"
	"github.com/smtp-exporter/smtp_exporter/prober/message"
)

const (
	moreModules = "more_modules.yml"
	// canaryModule is the module of more_modules.yml with a delivery block.
	canaryModule = "submission_canary_confirmed"
)

// canaryMailbox is an in-process IMAP server (go-imap's in-memory
// backend) behind implicit TLS on loopback, holding the canary's mailbox.
type canaryMailbox struct {
	addr, caFile, password string
	user                   *imapmemserver.User
}

func newCanaryMailbox(t *testing.T) *canaryMailbox {
	t.Helper()
	certs := smtptest.Certs()
	mb := &canaryMailbox{caFile: certs.WriteCAFile(t), password: "canary-imap-password"}
	mem := imapmemserver.New()
	mb.user = imapmemserver.NewUser("canary@example.net", mb.password)
	if err := mb.user.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	mem.AddUser(mb.user)
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{certs.Server}}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:      imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIdle: {}, imap.CapUIDPlus: {}},
		TLSConfig: tlsConfig,
		Logger:    discardLogger{},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mb.addr = ln.Addr().String()
	go srv.Serve(tls.NewListener(ln, tlsConfig))
	t.Cleanup(func() { srv.Close() })
	return mb
}

// deliver puts a canary with the probe id header into the mailbox, as the
// mail server would.
func (mb *canaryMailbox) deliver(t *testing.T, probeID string) {
	t.Helper()
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: probe@example.net\r\nTo: canary@example.net\r\nSubject: smtp_exporter canary\r\n%s: %s\r\n\r\nbody\r\n",
		message.ProbeIDHeader, probeID)
	if _, err := mb.user.Append("INBOX", bytes.NewReader(b.Bytes()), &imap.AppendOptions{Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

// canaryConfig writes examples/more_modules.yml with the delivery block of
// canaryModule pointed at mb, and returns its path. Everything else of
// the module stays as the example has it.
func canaryConfig(t *testing.T, mb *canaryMailbox) string {
	t.Helper()
	var file map[string]any
	if err := yaml.Unmarshal(readFile(t, moreModules), &file); err != nil {
		t.Fatalf("%s: %v", moreModules, err)
	}
	module, _ := file["modules"].(map[string]any)[canaryModule].(map[string]any)
	if module == nil {
		t.Fatalf("%s has no module %s", moreModules, canaryModule)
	}
	mail, _ := module["smtp"].(map[string]any)["mail"].(map[string]any)
	d, _ := mail["delivery"].(map[string]any)
	if d == nil {
		t.Fatalf("%s: module %s has no delivery block", moreModules, canaryModule)
	}
	dir := t.TempDir()
	passwordFile := filepath.Join(dir, "canary.pass")
	if err := os.WriteFile(passwordFile, []byte(mb.password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	i := d["imap"].(map[string]any)
	i["address"] = mb.addr
	i["tls_config"] = map[string]any{"ca_file": mb.caFile}
	i["password_file"] = passwordFile
	out, err := yaml.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "smtp_exporter.yml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// deliveryMetrics adds what a module with a delivery block emits to
// metrics: its /probe answer, served by the real handler after a canary
// it sent was found by the real watcher in an IMAP mailbox, and the
// exporter's /metrics with the delivery latency histogram, registered as
// main.go registers it.
func deliveryMetrics(t *testing.T, metrics map[string][]string) {
	t.Helper()
	mb := newCanaryMailbox(t)
	reg := prometheus.NewRegistry()
	live := config.NewSafeConfig(reg)
	if err := live.Reload(canaryConfig(t, mb)); err != nil {
		t.Fatal(err)
	}
	tracker := delivery.NewTracker(delivery.Options{})
	t.Cleanup(tracker.Stop)
	reg.MustRegister(tracker.Collector())
	probeIDs := make(chan string, 4)
	handler := collector.NewHandler(collector.HandlerOpts{
		Config:     live,
		Registerer: reg,
		Delivery:   tracker,
		Resolve: func(_ context.Context, target string, smtp *config.SMTPProbe) prober.Target {
			return prober.Target{Host: "smtp.example.net", Port: 587, IP: netip.MustParseAddr("192.0.2.25")}
		},
		// The SMTP side is the populated result; the delivery side is real.
		Probe: func(_ context.Context, _ prober.Target, module *config.Module, probeID string, _ *slog.Logger) *prober.Result {
			r := populatedResult(t, module, true)
			r.AcceptedAt = time.Now()
			probeIDs <- probeID
			return r
		},
	})
	tracker.Apply(live.Get())

	probe := func() {
		t.Helper()
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest("GET", "/probe?module="+canaryModule+"&target=smtp.example.net:587", nil))
		if rec.Code != 200 {
			t.Fatalf("/probe: %d %s", rec.Code, rec.Body)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(rec.Body)
		if err != nil {
			t.Fatalf("parsing the /probe answer: %v", err)
		}
		for _, mf := range families {
			addFamily(mf, metrics)
		}
	}
	probe()
	mb.deliver(t, <-probeIDs)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s, _ := tracker.Status(canaryModule); s.Delivered == 1 {
			break
		}
		if time.Now().After(deadline) {
			s, _ := tracker.Status(canaryModule)
			t.Fatalf("the watcher did not find the canary: %+v", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The answer after the delivery has the latency of the last canary.
	probe()
	gather(t, reg, metrics)
}

// addFamily records a family's series names and label names as Prometheus
// stores them: a histogram as _bucket (with le), _sum and _count, a
// summary as its quantiles, _sum and _count.
func addFamily(mf *dto.MetricFamily, into map[string][]string) {
	var labels []string
	for _, m := range mf.GetMetric() {
		for _, lp := range m.GetLabel() {
			if !slices.Contains(labels, lp.GetName()) {
				labels = append(labels, lp.GetName())
			}
		}
	}
	add := func(name string, extra ...string) {
		l := into[name]
		for _, n := range append(labels, extra...) {
			if !slices.Contains(l, n) {
				l = append(l, n)
			}
		}
		into[name] = l
	}
	name := mf.GetName()
	switch mf.GetType() {
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		add(name+"_bucket", "le")
		add(name + "_sum")
		add(name + "_count")
	case dto.MetricType_SUMMARY:
		add(name, "quantile")
		add(name + "_sum")
		add(name + "_count")
	default:
		add(name)
	}
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
