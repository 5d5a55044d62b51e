// Command perf measures what smtp_exporter costs beyond the SMTP
// conversation itself, side by side with a minimal client doing the same
// conversation (the floor) and with blackbox_exporter, against an in-process
// Go SMTP server (CPU-bound) and the real Postfix of test/lab. Everything runs
// on 127.0.0.1, every run is bounded in time and count, and every process it
// starts is stopped by its PID.
//
//	go run ./test/perf                       # full run, about 5 minutes
//	go run ./test/perf -smoke                # each arm works (CI), < 30 s
//	SMTP_EXPORTER_LAB=/tmp/smtp-exporter-lab/env go run ./test/perf -out perf.md
//
// It builds the exporter from the working tree itself. Postfix arms need the
// lab's env file (-lab or SMTP_EXPORTER_LAB), blackbox arms Debian's
// prometheus-blackbox-exporter; both are skipped with a note when missing
// unless -require-all is given.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

type options struct {
	duration    time.Duration
	repeat      int
	concurrency []int
	smoke       bool
	labEnv      string
	blackbox    string
	hung        int
	phaseProbes int
	bench       bool
	benchtime   string
	out         string
	maxLoad     float64
	waitLoad    time.Duration
	requireAll  bool
	pprofDir    string
	exporterEnv []string
	settle      time.Duration
	servers     map[string]bool
	sections    map[string]bool
}

func commaSet(list string) map[string]bool {
	set := map[string]bool{}
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f != "" {
			set[f] = true
		}
	}
	return set
}

func main() {
	os.Exit(run())
}

func run() int {
	var o options
	var conc string
	var floorChild bool
	var spec floorSpec
	fs := flag.NewFlagSet("perf", flag.ContinueOnError)
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "length of each throughput run")
	fs.IntVar(&o.repeat, "repeat", 1, "runs of each throughput cell, in alternating order; the run with the median CPU per probe is reported")
	fs.StringVar(&conc, "concurrency", "1,8,64", "concurrent probes of the throughput runs, comma-separated")
	fs.BoolVar(&o.smoke, "smoke", false, "only check that every arm works: short runs, 20 hung probes, no benchmarks")
	fs.StringVar(&o.labEnv, "lab", os.Getenv("SMTP_EXPORTER_LAB"), "env file of a running test/lab (default $SMTP_EXPORTER_LAB); empty skips Postfix")
	fs.StringVar(&o.blackbox, "blackbox", "/usr/bin/prometheus-blackbox-exporter", "blackbox_exporter binary; empty skips it")
	fs.IntVar(&o.hung, "hung", 1000, "probes held open by a server that never answers")
	fs.IntVar(&o.phaseProbes, "phase-probes", 200, "sequential probes per TLS mode for the phase timings")
	fs.BoolVar(&o.bench, "bench", true, "run the prober and collector benchmarks")
	fs.StringVar(&o.benchtime, "benchtime", "2s", "go test -benchtime for the benchmarks")
	fs.StringVar(&o.out, "out", "", "also write the report to this file")
	fs.Float64Var(&o.maxLoad, "max-load", 1.0, "wait for the 1-minute load average to drop to this before measuring")
	fs.DurationVar(&o.waitLoad, "wait-load", 10*time.Minute, "longest wait for -max-load")
	fs.BoolVar(&o.requireAll, "require-all", false, "fail instead of skipping when the lab or blackbox_exporter is missing")
	servers := fs.String("servers", "go,postfix", "servers to measure: go (in-process), postfix (the lab)")
	sections := fs.String("sections", "throughput,phases,hung,bench", "what to measure")
	fs.DurationVar(&o.settle, "settle", 10*time.Second, "wait after the hung probes ended and garbage was collected, for the scavenger to return memory")
	fs.StringVar(&o.pprofDir, "pprof-dir", "", "build the exporter with net/http/pprof and save a CPU profile of each of its throughput runs here")
	fs.Func("exporter-env", "KEY=VALUE added to smtp_exporter's environment only, such as GOGC=200 (repeatable)", func(v string) error {
		if !strings.Contains(v, "=") {
			return errors.New("want KEY=VALUE")
		}
		o.exporterEnv = append(o.exporterEnv, v)
		return nil
	})
	fs.BoolVar(&floorChild, "floor.child", false, "internal: run as the floor client")
	floorFlags(fs, &spec)
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if floorChild {
		return runFloorChild(spec)
	}
	o.servers, o.sections = commaSet(*servers), commaSet(*sections)
	for _, f := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 512 {
			fmt.Fprintf(os.Stderr, "perf: bad -concurrency %q (1 to 512 each)\n", conc)
			return 2
		}
		o.concurrency = append(o.concurrency, n)
	}
	if o.settle < 0 || o.settle > 5*time.Minute || o.duration <= 0 || o.duration > 5*time.Minute || o.hung < 1 || o.hung > 5000 || o.phaseProbes < 1 || o.phaseProbes > 5000 || o.repeat < 1 || o.repeat > 9 {
		fmt.Fprintln(os.Stderr, "perf: -duration must be in (0, 5m], -settle in [0, 5m], -hung and -phase-probes in [1, 5000], -repeat in [1, 9]")
		return 2
	}
	if o.smoke {
		o.duration = 500 * time.Millisecond
		o.concurrency = []int{1, 4}
		o.hung = 20
		o.settle = 0
		o.phaseProbes = 5
		o.bench = false
		o.repeat = 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	h := &harness{o: o, ctx: ctx}
	err := h.run()
	h.cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "perf:", err)
		return 1
	}
	return 0
}

// harness holds what a run started, so that cleanup can stop it all.
type harness struct {
	o   options
	ctx context.Context
	dir string

	root        string // the module's directory
	pprofAddr   string // the exporter's pprof listener, with -pprof-dir
	exporterBin string
	servers     []server
	goStartTLS  *smtpServer
	goImplicit  *smtpServer
	processes   []*process
	hungCA      string
	hasBlackbox bool
	lab         labEnv

	starts  int
	report  *report
	problem []string
}

func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s perf: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (h *harness) cleanup() {
	for _, p := range h.processes {
		p.stop()
	}
	if h.goStartTLS != nil {
		h.goStartTLS.close()
	}
	if h.goImplicit != nil {
		h.goImplicit.close()
	}
	if h.dir != "" {
		os.RemoveAll(h.dir)
	}
}

func (h *harness) run() error {
	var err error
	h.dir, err = os.MkdirTemp("", "smtp-exporter-perf-")
	if err != nil {
		return err
	}
	if err := h.build(); err != nil {
		return err
	}
	if err := h.startServers(); err != nil {
		return err
	}
	if !h.o.smoke {
		load := waitLoadBelow(h.o.maxLoad, h.o.waitLoad, h.logf)
		h.logf("load average %.2f at the start", load)
	}
	h.report = newReport(h.o)

	exporter, blackbox, err := h.startExporters()
	if err != nil {
		return err
	}
	if h.o.sections["throughput"] {
		if err := h.throughput(exporter, blackbox); err != nil {
			return err
		}
	}
	if h.pprofAddr != "" {
		// Allocations since the start, all throughput runs together.
		if err := <-profileURL("http://"+h.pprofAddr+"/debug/pprof/allocs", filepath.Join(h.o.pprofDir, "smtp_exporter-allocs.pprof"), 30*time.Second); err != nil {
			h.logf("allocation profile: %v", err)
		}
	}
	if h.o.sections["phases"] {
		if err := h.phaseTimings(exporter, blackbox); err != nil {
			return err
		}
	}
	exporter.stop()
	if blackbox != nil {
		blackbox.stop()
	}
	if h.o.sections["hung"] {
		if err := h.hungProbes(); err != nil {
			return err
		}
	}
	if h.o.bench && h.o.sections["bench"] {
		if err := h.benchmarks(); err != nil {
			return err
		}
	}
	h.report.loadEnd = loadAverage()
	text := h.report.String()
	fmt.Print(text)
	if h.o.out != "" {
		if err := os.WriteFile(h.o.out, []byte(text), 0o644); err != nil {
			return err
		}
	}
	if len(h.problem) > 0 {
		return fmt.Errorf("%d checks failed:\n  %s", len(h.problem), strings.Join(h.problem, "\n  "))
	}
	return nil
}

// fail records a broken arm; the run goes on so that the report shows all.
func (h *harness) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	h.logf("FAIL %s", msg)
	h.problem = append(h.problem, msg)
}

func (h *harness) build() error {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	if _, err := os.Stat(filepath.Join(root, "main.go")); err != nil {
		return fmt.Errorf("run from inside the smtp_exporter module: %w", err)
	}
	h.root = root
	h.exporterBin = filepath.Join(h.dir, "smtp_exporter")
	h.logf("building the exporter in %s", root)
	args := []string{"build", "-o", h.exporterBin}
	if h.o.pprofDir != "" {
		if err := os.MkdirAll(h.o.pprofDir, 0o755); err != nil {
			return err
		}
		overlay, err := pprofOverlay(h.dir, root)
		if err != nil {
			return err
		}
		args = append(args, "-overlay", overlay)
		port, err := freePort()
		if err != nil {
			return err
		}
		h.pprofAddr = fmt.Sprintf("127.0.0.1:%d", port)
	}
	cmd := exec.CommandContext(h.ctx, "go", append(args, ".")...)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building the exporter: %w", err)
	}
	return nil
}

func (h *harness) startServers() error {
	// The tests' CA and server certificate (ECDSA P-256, like the lab's),
	// made in-process.
	pki := smtptest.Certs()
	ca := filepath.Join(h.dir, "ca.pem")
	if err := os.WriteFile(ca, pki.CAPEM, 0o600); err != nil {
		return err
	}
	h.hungCA = ca
	secret := make([]byte, 12)
	rand.Read(secret)
	password := hex.EncodeToString(secret)
	const user = "probe@perf.invalid"
	var err error
	if h.goStartTLS, err = startSMTPServer(pki.Server, false, user, password); err != nil {
		return err
	}
	if h.goImplicit, err = startSMTPServer(pki.Server, true, user, password); err != nil {
		return err
	}
	goServer := server{
		name: "go", title: "Go test server (in-process, TLS 1.3)",
		starttls: h.goStartTLS.addr(), implicit: h.goImplicit.addr(),
		caFile: ca, user: user, password: password,
	}
	if h.o.servers["go"] {
		h.servers = append(h.servers, goServer)
	}

	if !h.o.servers["postfix"] {
		h.logf("Postfix not asked for (-servers)")
	} else if h.o.labEnv == "" {
		if h.o.requireAll {
			return errors.New("no lab: set -lab or SMTP_EXPORTER_LAB")
		}
		h.logf("no lab env file (-lab, SMTP_EXPORTER_LAB): Postfix arms skipped")
	} else {
		h.lab, err = readLabEnv(h.o.labEnv)
		if err != nil {
			return err
		}
		h.servers = append(h.servers, server{
			name: "postfix", title: "Postfix 3.7 + Dovecot (test/lab, OpenSSL, TLS 1.3)",
			starttls: h.lab.addr("LAB_PORT_SUBMISSION"), implicit: h.lab.addr("LAB_PORT_IMPLICIT"),
			caFile: h.lab["LAB_CA"], user: h.lab["LAB_USER"], password: h.lab["LAB_PASSWORD"],
			passwFile: h.lab["LAB_PASSWORD_FILE"],
		})
	}
	if h.o.blackbox != "" {
		if _, err := os.Stat(h.o.blackbox); err == nil {
			h.hasBlackbox = true
		}
	}
	if !h.hasBlackbox {
		if h.o.requireAll {
			return fmt.Errorf("no blackbox_exporter at %q", h.o.blackbox)
		}
		h.logf("no blackbox_exporter at %q: its arms skipped", h.o.blackbox)
	}
	return nil
}

// startExporters starts smtp_exporter and, when present, blackbox_exporter,
// with the configuration for every server.
func (h *harness) startExporters() (exporter, blackbox *process, err error) {
	return h.startExportersOnly(true, h.hasBlackbox)
}

// startExportersOnly starts those asked for; a second start of either gets
// its own log file.
func (h *harness) startExportersOnly(withExporter, withBlackbox bool) (exporter, blackbox *process, err error) {
	h.starts++
	suffix := ""
	if h.starts > 1 {
		suffix = "-hung"
	}
	if withExporter {
		cfg := filepath.Join(h.dir, "smtp_exporter.yml")
		if err := os.WriteFile(cfg, []byte(exporterConfig(h.servers, h.hungCA, h.workers(), h.o.hung)), 0o600); err != nil {
			return nil, nil, err
		}
		env := slices.Clone(h.o.exporterEnv)
		if h.pprofAddr != "" {
			env = append(env, pprofEnv+"="+h.pprofAddr)
		}
		exporter, err = startProcess("smtp_exporter"+suffix, h.exporterBin, h.dir, env,
			"--config.file="+cfg, "--probe.max-concurrent=0")
		if err != nil {
			return nil, nil, err
		}
		h.processes = append(h.processes, exporter)
	}
	if withBlackbox {
		cfg := filepath.Join(h.dir, "blackbox.yml")
		if err := os.WriteFile(cfg, []byte(blackboxConfig(h.servers, h.hungCA, h.workers(), h.o.hung)), 0o600); err != nil {
			return nil, nil, err
		}
		blackbox, err = startProcess("blackbox_exporter"+suffix, h.o.blackbox, h.dir, nil, "--config.file="+cfg)
		if err != nil {
			return nil, nil, err
		}
		h.processes = append(h.processes, blackbox)
	}
	return exporter, blackbox, nil
}

// workers is the most concurrent workers of any run.
func (h *harness) workers() int {
	return slices.Max(h.o.concurrency)
}

// goVersion is the toolchain the harness and the exporter were built with.
func goVersion() string { return runtime.Version() }
