package smtptest

import (
	"bytes"
	"sync"
)

// LogBuffer collects what a logger writes, safe for the concurrent writes of
// a probe's goroutines and the reads of the test, so that tests can search
// the log (for a leaked secret, say) of a probe they ran against a server.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
