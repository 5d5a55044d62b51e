package prober

import (
	"os"
	"testing"
	"time"

	promconfig "github.com/prometheus/common/config"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// BenchmarkTLSConfig is what every probe of a module with a ca_file pays
// for its TLS configuration once it was built: making sure the file has not
// changed, and a copy of the configuration.
func BenchmarkTLSConfig(b *testing.B) {
	tc := &promconfig.TLSConfig{CAFile: smtptest.Certs().WriteCAFile(b)}
	// A CA file as it usually is: written long before.
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(tc.CAFile, old, old); err != nil {
		b.Fatal(err)
	}
	cache := &tlsConfigCache{entries: map[promconfig.TLSConfig]cachedTLSConfig{}}
	if _, err := cache.get(tc); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cache.get(tc); err != nil {
			b.Fatal(err)
		}
	}
}
