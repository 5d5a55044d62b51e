package collector

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// heldProbes is how many probes BenchmarkHeldProbe holds at once: enough
// that the process's own memory is small beside theirs.
const heldProbes = 200

// BenchmarkHeldProbe measures what a probe in flight keeps: heldProbes
// STARTTLS probes, each of its own module, served over real HTTP
// connections to a server that accepts and never says a word, so that each
// waits for the banner. Once all of them are in flight and connected it
// reports the heap and the goroutine stacks they hold, per probe, after two
// garbage collections (the second shrinks the stacks the first found
// mostly unused). The silent server and the HTTP clients are bare
// connections, so nearly all that is counted is the exporter's. The first
// round also counts what each module keeps once it has been probed (its
// text, its TLS configuration): about 1.7 KiB more per probe.
func BenchmarkHeldProbe(b *testing.B) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer silent.Close()
	accepted := make(chan net.Conn, heldProbes)
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()

	var yaml strings.Builder
	ca := smtptest.Certs().WriteCAFile(b)
	for i := range heldProbes {
		fmt.Fprintf(&yaml, "  held%d:\n    timeout: 10m\n    smtp:\n      tls: starttls\n      tls_config: {ca_file: %q}\n", i, ca)
	}
	handler := NewHandler(HandlerOpts{Config: benchConfig(b, yaml.String()), MaxConcurrent: heldProbes, History: NewHistory(100)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(ln)
	defer srv.Close()

	var stack, heap float64
	for b.Loop() {
		// Two collections: the second frees what the sync.Pools of
		// net/http kept through the first, which the probes would
		// otherwise take without allocating.
		var before, held runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&before)

		clients := make([]net.Conn, heldProbes)
		for i := range clients {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			fmt.Fprintf(c, "GET /probe?module=held%d&target=%s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n", i, url.QueryEscape(silent.Addr().String()))
			clients[i] = c
		}
		servers := make([]net.Conn, heldProbes)
		for i := range servers {
			select {
			case servers[i] = <-accepted:
			case <-time.After(time.Minute): // a bound, not a wait: a probe that never connects
				b.Fatalf("%d of %d probes reached the silent server", i, heldProbes)
			}
		}
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&held)
		stack = float64(held.StackInuse-before.StackInuse) / heldProbes
		heap = float64(int64(held.HeapAlloc)-int64(before.HeapAlloc)) / heldProbes

		// The server lets go; every probe answers and the HTTP server
		// closes its connection.
		for _, c := range servers {
			c.Close()
		}
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Go(func() {
				defer c.Close()
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					b.Error(err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				if !strings.Contains(string(body), `probe_smtp_failure_info{phase="banner"`) {
					b.Errorf("a held probe did not end in the banner:\n%s", body)
				}
			})
		}
		wg.Wait()
	}
	b.ReportMetric(stack, "stack-B/probe")
	b.ReportMetric(heap, "heap-B/probe")
}
