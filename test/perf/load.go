package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is an exporter the harness started and must stop.
type process struct {
	name string
	cmd  *exec.Cmd
	base string // http://127.0.0.1:port
	log  string // file with its stdout and stderr
	done chan struct{}
}

// startProcess starts bin with args plus a listen address on a free
// loopback port, and waits until it answers on /metrics.
func startProcess(name, bin, logDir string, env []string, args ...string) (*process, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin, append(args, "--web.listen-address="+listen)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{name: name, cmd: cmd, base: "http://" + listen, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(p.base + "/metrics")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited at start; see %s", name, logPath)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("%s did not answer on %s within 15s; see %s", name, listen, logPath)
		}
	}
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// stop ends the process by its PID: SIGTERM, then SIGKILL after 5 s.
func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// metric reads one unlabelled sample from the process's /metrics.
func (p *process) metric(name string) (float64, error) {
	resp, err := http.Get(p.base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if value, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(value), 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s on /metrics", p.name, name)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// probeURL is the /probe request for module and target.
func probeURL(base, module, target string) string {
	return base + "/probe?" + url.Values{"module": {module}, "target": {target}}.Encode()
}

// loadResult is what a closed-loop load run measured on the client side.
type loadResult struct {
	Probes    int
	Failures  int
	FirstErr  string
	Elapsed   time.Duration
	Latencies []time.Duration
	// Bodies holds the response bodies when they were asked for.
	Bodies [][]byte
}

var probeSuccess = []byte("\nprobe_success 1\n")

// prometheusAccept is the Accept header of Prometheus 2.x scrapes.
const prometheusAccept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"

// httpLoad runs concurrency workers, each sending the next /probe request
// as soon as the last is answered, until duration has passed or maxProbes
// were sent. A probe counts as failed unless the response says
// probe_success 1.
func httpLoad(ctx context.Context, urlFor func(worker int) string, concurrency int, duration time.Duration, maxProbes int, scrapeTimeout time.Duration, keepBodies bool) loadResult {
	// Like Prometheus: keep-alive, and gzip asked for (the transport adds
	// Accept-Encoding and decompresses).
	transport := &http.Transport{
		MaxIdleConns:        concurrency,
		MaxIdleConnsPerHost: concurrency,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: scrapeTimeout + 5*time.Second}
	header := strconv.FormatFloat(scrapeTimeout.Seconds(), 'f', -1, 64)

	var mu sync.Mutex
	var res loadResult
	issued := 0
	start := time.Now()
	deadline := start.Add(duration)
	var wg sync.WaitGroup
	for worker := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			target := urlFor(worker)
			var lat []time.Duration
			var bodies [][]byte
			var buf bytes.Buffer
			failures := 0
			var firstErr error
			for ctx.Err() == nil && time.Now().Before(deadline) {
				mu.Lock()
				if issued >= maxProbes {
					mu.Unlock()
					break
				}
				issued++
				mu.Unlock()
				t0 := time.Now()
				err := get(ctx, client, target, header, &buf)
				lat = append(lat, time.Since(t0))
				if err == nil && !bytes.Contains(buf.Bytes(), probeSuccess) {
					err = errors.New("probe_success is not 1: " + firstFailureLine(buf.Bytes()))
				}
				if err != nil {
					failures++
					if firstErr == nil {
						firstErr = err
					}
				}
				if keepBodies {
					bodies = append(bodies, bytes.Clone(buf.Bytes()))
				}
			}
			mu.Lock()
			res.Latencies = append(res.Latencies, lat...)
			res.Bodies = append(res.Bodies, bodies...)
			res.Failures += failures
			if firstErr != nil && res.FirstErr == "" {
				res.FirstErr = firstErr.Error()
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Probes = len(res.Latencies)
	return res
}

func get(ctx context.Context, client *http.Client, target, scrapeTimeout string, buf *bytes.Buffer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", scrapeTimeout)
	req.Header.Set("Accept", prometheusAccept)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	buf.Reset()
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(buf.String()))
	}
	return nil
}

// firstFailureLine picks the line that says why a probe failed, for the
// report: our failure_info, or blackbox's failed expectation.
func firstFailureLine(body []byte) string {
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "probe_smtp_failure_info{") {
			return line
		}
	}
	return "(no failure_info)"
}
