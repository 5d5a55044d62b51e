package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// With -pprof-dir the exporter is built with net/http/pprof on a second
// loopback listener, added through go build -overlay so that the tree stays
// as it is, and a CPU profile of every smtp_exporter throughput run is saved:
//
//	go tool pprof -top -cum DIR/go-smtp_exporter-c8.pprof

// pprofEnv names the environment variable that gives the listener's address.
const pprofEnv = "SMTP_EXPORTER_PERF_PPROF"

const pprofSource = `package main

import (
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	if addr := os.Getenv("` + pprofEnv + `"); addr != "" {
		go http.ListenAndServe(addr, nil)
	}
}
`

// pprofOverlay writes the overlay that adds the listener to package main.
func pprofOverlay(dir, root string) (string, error) {
	src := filepath.Join(dir, "zz_perf_pprof.go")
	if err := os.WriteFile(src, []byte(pprofSource), 0o600); err != nil {
		return "", err
	}
	overlay := map[string]map[string]string{"Replace": {filepath.Join(root, "zz_perf_pprof.go"): src}}
	b, err := json.Marshal(overlay)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "overlay.json")
	return path, os.WriteFile(path, b, 0o600)
}

// profileDuring fetches a CPU profile of d from the exporter's pprof
// listener into file; it returns at once and reports on done.
func profileDuring(addr string, d time.Duration, file string) (done chan error) {
	seconds := max(int(d.Seconds())-1, 1)
	return profileURL(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, seconds), file, d+10*time.Second)
}

// profileURL saves what url returns into file; it returns at once and
// reports on done.
func profileURL(url, file string, timeout time.Duration) (done chan error) {
	done = make(chan error, 1)
	go func() {
		client := &http.Client{Timeout: timeout}
		resp, err := client.Get(url)
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(file)
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	return done
}

func profileName(server, arm string, concurrency int) string {
	arm = strings.NewReplacer(" + ", "-", " ", "-").Replace(arm)
	return fmt.Sprintf("%s-%s-c%d.pprof", server, arm, concurrency)
}
