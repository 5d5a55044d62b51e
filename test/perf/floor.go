package main

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The floor: the same SMTP conversation as the exporter's probe, by the
// smallest client that can hold it (net/textproto, crypto/tls), with nothing
// around it. It runs in a child process of its own, so that its CPU time is
// its own.

// floorSpec is what the child is asked to do. The password comes through
// the environment, never the command line.
type floorSpec struct {
	Addr        string
	CAFile      string
	Implicit    bool
	Auth        bool
	User        string
	QuickACK    bool
	Concurrency int
	Duration    time.Duration
	MaxProbes   int
	CPUProfile  string
	// Listen, when set, makes the child the limit instead: an HTTP server
	// on that address that holds one conversation per /probe request and
	// answers BodyBytes bytes.
	Listen    string
	BodyBytes int
	// Timeout bounds each conversation.
	Timeout time.Duration
}

// floorResult is what the child reports on stdout.
type floorResult struct {
	Probes    int
	Failures  int
	FirstErr  string
	Elapsed   time.Duration
	Latencies []time.Duration
	// CPU is user + system time of the child from the first probe to the
	// last, from getrusage.
	CPU      float64
	PeakRSSK int64
}

const floorPasswordEnv = "PERF_FLOOR_PASSWORD"

func floorFlags(fs *flag.FlagSet, s *floorSpec) {
	fs.StringVar(&s.Addr, "floor.addr", "", "")
	fs.StringVar(&s.CAFile, "floor.ca", "", "")
	fs.BoolVar(&s.Implicit, "floor.implicit", false, "")
	fs.BoolVar(&s.Auth, "floor.auth", false, "")
	fs.StringVar(&s.User, "floor.user", "", "")
	fs.BoolVar(&s.QuickACK, "floor.quickack", true, "")
	fs.IntVar(&s.Concurrency, "floor.concurrency", 1, "")
	fs.DurationVar(&s.Duration, "floor.duration", time.Second, "")
	fs.IntVar(&s.MaxProbes, "floor.max", 1000000, "")
	fs.StringVar(&s.CPUProfile, "floor.cpuprofile", "", "")
	fs.IntVar(&s.BodyBytes, "floor.body", 0, "")
	fs.DurationVar(&s.Timeout, "floor.timeout", 10*time.Second, "")
	// Named as the exporters name it, so that startProcess starts the
	// limit as it starts them.
	fs.StringVar(&s.Listen, "web.listen-address", "", "")
}

func (s floorSpec) args() []string {
	return []string{
		"-floor.child",
		"-floor.addr=" + s.Addr,
		"-floor.ca=" + s.CAFile,
		fmt.Sprintf("-floor.implicit=%t", s.Implicit),
		fmt.Sprintf("-floor.auth=%t", s.Auth),
		"-floor.user=" + s.User,
		fmt.Sprintf("-floor.quickack=%t", s.QuickACK),
		fmt.Sprintf("-floor.concurrency=%d", s.Concurrency),
		"-floor.duration=" + s.Duration.String(),
		fmt.Sprintf("-floor.max=%d", s.MaxProbes),
		"-floor.cpuprofile=" + s.CPUProfile,
		fmt.Sprintf("-floor.body=%d", s.BodyBytes),
		"-floor.timeout=" + cmp.Or(s.Timeout, 10*time.Second).String(),
	}
}

// floorSetup is what every conversation of the child shares: the TLS
// configuration and the AUTH PLAIN argument ("" without AUTH).
func floorSetup(s floorSpec) (*tls.Config, string, error) {
	pem, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, "", err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, "", fmt.Errorf("no certificate in %s", s.CAFile)
	}
	host, _, _ := net.SplitHostPort(s.Addr)
	plain := ""
	if s.Auth {
		plain = base64.StdEncoding.EncodeToString([]byte("\x00" + s.User + "\x00" + os.Getenv(floorPasswordEnv)))
	}
	return &tls.Config{RootCAs: pool, ServerName: host}, plain, nil
}

// runFloorChild is main in the child process.
func runFloorChild(s floorSpec) int {
	cfg, plain, err := floorSetup(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if s.Listen != "" {
		return runLimit(s, cfg, plain)
	}

	var mu sync.Mutex
	res := floorResult{}
	var wg sync.WaitGroup
	var issued int64
	start := time.Now()
	deadline := start.Add(s.Duration)
	if s.CPUProfile != "" {
		f, err := os.Create(s.CPUProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	cpuStart := ownCPU()
	for range s.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			failures := 0
			var firstErr error
			for time.Now().Before(deadline) {
				mu.Lock()
				if issued >= int64(s.MaxProbes) {
					mu.Unlock()
					break
				}
				issued++
				mu.Unlock()
				t0 := time.Now()
				err := floorConversation(s, cfg, plain)
				lat = append(lat, time.Since(t0))
				if err != nil {
					failures++
					if firstErr == nil {
						firstErr = err
					}
				}
			}
			mu.Lock()
			res.Latencies = append(res.Latencies, lat...)
			res.Failures += failures
			if firstErr != nil && res.FirstErr == "" {
				res.FirstErr = firstErr.Error()
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.CPU = ownCPU() - cpuStart
	if s.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	res.Probes = len(res.Latencies)
	res.PeakRSSK, _ = memKiB(os.Getpid(), "VmHWM")
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return 1
	}
	return 0
}

func ownCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// floorConversation is banner, EHLO, STARTTLS, EHLO, [AUTH PLAIN], QUIT,
// each reply read in full; with Implicit, TLS first and no STARTTLS.
func floorConversation(s floorSpec, cfg *tls.Config, plain string) error {
	raw, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer raw.Close()
	if err := raw.SetDeadline(time.Now().Add(s.Timeout)); err != nil {
		return err
	}
	var sock syscall.RawConn
	if s.QuickACK {
		sock, _ = raw.(*net.TCPConn).SyscallConn()
	}
	var conn net.Conn = raw
	if s.Implicit {
		tc := tls.Client(raw, cfg)
		if err := tc.Handshake(); err != nil {
			return err
		}
		conn = tc
	}
	tp := textproto.NewConn(conn)
	expect := func(code int) error {
		if sock != nil {
			// The same remedy for the delayed-ACK stall as the exporter's,
			// so that the floor is the best this conversation can do.
			sock.Control(func(fd uintptr) {
				syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
			})
		}
		_, _, err := tp.ReadResponse(code)
		return err
	}
	cmd := func(code int, line string) error {
		if err := tp.PrintfLine("%s", line); err != nil {
			return err
		}
		return expect(code)
	}
	if err := expect(220); err != nil {
		return fmt.Errorf("banner: %w", err)
	}
	if err := cmd(250, "EHLO localhost"); err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	if !s.Implicit {
		if err := cmd(220, "STARTTLS"); err != nil {
			return fmt.Errorf("STARTTLS: %w", err)
		}
		tc := tls.Client(raw, cfg)
		if err := tc.Handshake(); err != nil {
			return err
		}
		tp = textproto.NewConn(tc)
		if err := cmd(250, "EHLO localhost"); err != nil {
			return fmt.Errorf("EHLO after TLS: %w", err)
		}
	}
	if plain != "" {
		if err := cmd(235, "AUTH PLAIN "+plain); err != nil {
			return errors.New("AUTH PLAIN refused")
		}
	}
	if err := cmd(221, "QUIT"); err != nil {
		return fmt.Errorf("QUIT: %w", err)
	}
	return nil
}

// The limit: the floor's conversation plus the smallest HTTP round trip of
// an answer the size of smtp_exporter's, on a keep-alive loopback
// connection, as a scraper gets it. What the exporter costs beyond it is
// its own doing. It runs until it is stopped; the harness reads its CPU
// time from /proc, as it does the exporters'.

// limitBody is size bytes of exposition-like text ending in probe_success
// with the value given.
func limitBody(size int, success bool) []byte {
	tail := "probe_success 0\n"
	if success {
		tail = "probe_success 1\n"
	}
	line := "# limit: the size of smtp_exporter's answer, nothing measured\n"
	var b []byte
	for len(b)+len(line)+len(tail) <= size {
		b = append(b, line...)
	}
	b = append(b, strings.Repeat("#", max(size-len(b)-len(tail)-1, 0))...)
	if len(b) > 0 {
		b = append(b, '\n')
	}
	return append(b, tail...)
}

// runLimit serves /probe (one conversation each) and /metrics (the Go
// runtime's metrics, which the held-probes section reads as it does the
// exporters') until SIGTERM.
func runLimit(s floorSpec, cfg *tls.Config, plain string) int {
	ok, failed := limitBody(s.BodyBytes, true), limitBody(s.BodyBytes, false)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	mux.HandleFunc("/probe", func(w http.ResponseWriter, _ *http.Request) {
		body := ok
		if err := floorConversation(s, cfg, plain); err != nil {
			body = failed
			fmt.Fprintln(os.Stderr, err)
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		w.Write(body)
	})
	ln, err := net.Listen("tcp", s.Listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := &http.Server{Handler: mux}
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
