package collector

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// SCRAM load figures: probes at once against a server asking for the
// largest iteration count the prober accepts, each with scramLoadTimeout.
const (
	scramLoadProbes     = 500
	scramLoadIterations = 1_000_000
	scramLoadTimeout    = 3 * time.Second
	// scramLoadOverrun is how far past its timeout a probe may end, and
	// scramLoadMetrics how long /metrics may take, both times the slack
	// of loadScale. The exporter's aim is half a second past the timeout
	// (a few tens of milliseconds on an idle machine); the bound is twice
	// that, for a machine busy with other work. Without the bound on key
	// derivations /metrics took 2.7 to 3.2 seconds here, and no probe
	// logged in.
	scramLoadOverrun = time.Second
	scramLoadMetrics = time.Second
)

// scramLoadServer is a SCRAM-SHA-256 server that asks for
// scramLoadIterations and checks the proof: a probe whose key derivation
// ends in time logs in and succeeds.
type scramLoadServer struct {
	user, password string
	salt           []byte
	// salted is the password's key, derived once.
	salted []byte
}

func newSCRAMLoadServer(user, password string) *scramLoadServer {
	s := &scramLoadServer{user: user, password: password, salt: []byte("scram-load-salt")}
	var err error
	s.salted, err = pbkdf2.Key(sha256.New, password, s.salt, scramLoadIterations, sha256.Size)
	if err != nil {
		panic(err)
	}
	return s
}

func (s *scramLoadServer) handle(c *smtptest.Conn) {
	smtptest.AuthSession{Host: "scram.test", Extensions: []string{"AUTH SCRAM-SHA-256"}, Auth: s.auth}.Handle(c)
}

func (s *scramLoadServer) auth(c *smtptest.Conn, arg string) bool {
	mech, ir, _ := strings.Cut(arg, " ")
	first, err := base64.StdEncoding.DecodeString(ir)
	if mech != "SCRAM-SHA-256" || err != nil || !strings.HasPrefix(string(first), "n,,n=") {
		return c.WriteLine("501 5.5.2 bad client-first") == nil
	}
	bare := strings.TrimPrefix(string(first), "n,,")
	user, clientNonce, _ := strings.Cut(strings.TrimPrefix(bare, "n="), ",r=")
	nonce := clientNonce + rand.Text()
	serverFirst := "r=" + nonce + ",s=" + base64.StdEncoding.EncodeToString(s.salt) + ",i=" + strconv.Itoa(scramLoadIterations)
	if c.WriteLine("334 "+base64.StdEncoding.EncodeToString([]byte(serverFirst))) != nil {
		return false
	}
	line, err := c.ReadLine()
	if err != nil || line == "*" {
		return c.WriteLine("501 5.7.0 Authentication aborted") == nil
	}
	final, _ := base64.StdEncoding.DecodeString(line)
	withoutProof, proof, _ := strings.Cut(string(final), ",p=")
	mac := func(key []byte, data string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(data))
		return m.Sum(nil)
	}
	clientKey := mac(s.salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	authMessage := bare + "," + serverFirst + "," + withoutProof
	want := make([]byte, len(clientKey))
	subtle.XORBytes(want, clientKey, mac(storedKey[:], authMessage))
	if user != s.user || withoutProof != "c=biws,r="+nonce || proof != base64.StdEncoding.EncodeToString(want) {
		return c.WriteLine("535 5.7.8 Error: authentication failed") == nil
	}
	serverFinal := "v=" + base64.StdEncoding.EncodeToString(mac(mac(s.salted, "Server Key"), authMessage))
	if c.WriteLine("334 "+base64.StdEncoding.EncodeToString([]byte(serverFinal))) != nil {
		return false
	}
	if _, err := c.ReadLine(); err != nil {
		return false
	}
	return c.WriteLine("235 2.7.0 Authentication successful") == nil
}

// TestSCRAMLoad runs scramLoadProbes probes at once through the /probe
// handler and the real prober against a SCRAM server that asks for a
// million iterations, more CPU than the machine has before the deadline.
// Every probe must end within its timeout plus scramLoadOverrun, either
// logged in or failed with timeout in auth, and /metrics, served from the
// exporter's registry as main.go serves it, must answer within
// scramLoadMetrics throughout. Bounded: each probe has a scramLoadTimeout
// timeout and each HTTP request one of 30s.
func TestSCRAMLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test: skipped in -short mode")
	}
	const (
		user     = "probe@example.net"
		password = "scram-load-Passw0rd"
	)
	divide, slack := loadScale()
	probes := raiseFDLimit(t, scramLoadProbes/divide)
	server := newSCRAMLoadServer(user, password)
	srv := smtptest.NewScripted(t, server.handle)

	// A module per probe, so that no two requests share a session;
	// auth_failure_backoff 0s keeps the gate's account holds out of it.
	var yaml strings.Builder
	yaml.WriteString("modules:\n")
	for i := range probes {
		fmt.Fprintf(&yaml, `  scram%d:
    timeout: %s
    auth_failure_backoff: 0s
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth:
        mechanism: SCRAM-SHA-256
        username: %q
        password: %q
      allowed_targets: ["127.0.0.1"]
`, i, scramLoadTimeout, user, password)
	}
	cfg := newTestConfig(t, yaml.String())

	// The registry and routes of main.go.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	handler := NewHandler(HandlerOpts{Config: cfg, Registerer: reg, MaxConcurrent: probes, History: NewHistory(10)})
	mux := http.NewServeMux()
	mux.Handle("/probe", handler)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	ts := httptest.NewServer(mux)
	defer ts.Close()
	transport := &http.Transport{MaxIdleConns: probes + 16, MaxIdleConnsPerHost: probes + 16}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	// /metrics has a connection of its own, opened before the load, as a
	// Prometheus server keeps one.
	metricsTransport := &http.Transport{}
	defer metricsTransport.CloseIdleConnections()
	metricsClient := &http.Client{Transport: metricsTransport, Timeout: 30 * time.Second}
	get := func(client *http.Client, path string) (body string, took time.Duration, err error) {
		start := time.Now()
		resp, err := client.Get(ts.URL + path)
		if err != nil {
			return "", time.Since(start), err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		return string(b), time.Since(start), err
	}

	type outcome struct {
		body string
		took time.Duration
		err  error
	}
	if _, _, err := get(metricsClient, "/metrics"); err != nil {
		t.Fatalf("GET /metrics before the load: %v", err)
	}
	results := make([]outcome, probes)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := &results[i]
			o.body, o.took, o.err = get(client, fmt.Sprintf("/probe?module=scram%d&target=%s", i, url.QueryEscape(srv.Addr())))
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	// /metrics, again and again until every probe has answered.
	var scrapes int
	var slowestMetrics, slowestMetricsAt time.Duration
	for waiting := true; waiting; {
		body, took, err := get(metricsClient, "/metrics")
		if err != nil || !strings.Contains(body, "go_goroutines ") {
			t.Fatalf("GET /metrics during the load: %v\n%.300s", err, body)
		}
		scrapes++
		if took > slowestMetrics {
			slowestMetrics, slowestMetricsAt = took, time.Since(start)-took
		}
		select {
		case <-done:
			waiting = false
		case <-time.After(10 * time.Millisecond):
		}
	}
	took := time.Since(start)

	var succeeded, timedOut int
	var slowestProbe, slowestResponse time.Duration
	for i, o := range results {
		if o.err != nil {
			t.Fatalf("probe %d: %v", i, o.err)
		}
		switch {
		case strings.Contains(o.body, "\nprobe_success 1\n"):
			succeeded++
		case strings.Contains(o.body, `probe_smtp_failure_info{phase="auth",reason="timeout"} 1`):
			timedOut++
		default:
			t.Fatalf("probe %d neither logged in nor timed out in auth:\n%s", i, o.body)
		}
		m := probeDurationPattern.FindStringSubmatch(o.body)
		if m == nil {
			t.Fatalf("probe %d: no probe_duration_seconds:\n%s", i, o.body)
		}
		d, err := time.ParseDuration(m[1] + "s")
		if err != nil {
			t.Fatal(err)
		}
		slowestProbe = max(slowestProbe, d)
		slowestResponse = max(slowestResponse, o.took)
	}
	t.Logf("%d probes of a server asking for %d SCRAM iterations, %v timeout, GOMAXPROCS %d: %d logged in, %d timed out in auth, all answered in %v",
		probes, scramLoadIterations, scramLoadTimeout, runtime.GOMAXPROCS(0), succeeded, timedOut, took.Round(time.Millisecond))
	t.Logf("slowest probe %v (%v past its timeout), slowest response %v; slowest of %d GET /metrics %v, sent %v into the load",
		slowestProbe.Round(time.Millisecond), (slowestProbe - scramLoadTimeout).Round(time.Millisecond),
		slowestResponse.Round(time.Millisecond), scrapes, slowestMetrics.Round(time.Millisecond), slowestMetricsAt.Round(time.Millisecond))

	if overrun := slowestProbe - scramLoadTimeout; overrun > slack*scramLoadOverrun {
		t.Errorf("a probe with a %v timeout took %v, %v past it (bound %v)", scramLoadTimeout, slowestProbe, overrun, slack*scramLoadOverrun)
	}
	if slowestMetrics > slack*scramLoadMetrics {
		t.Errorf("GET /metrics took up to %v during the load (bound %v)", slowestMetrics, slack*scramLoadMetrics)
	}
	// The response also waited for a connection and for the CPU.
	if slowestResponse > scramLoadTimeout+slack*5*time.Second {
		t.Errorf("a probe with a %v timeout was answered after %v", scramLoadTimeout, slowestResponse)
	}
	// Bounding the derivations must not starve them all: a derivation takes
	// a fraction of the timeout without the race detector.
	if !raceDetector && succeeded == 0 {
		t.Errorf("no probe logged in within %v", scramLoadTimeout)
	}
}
