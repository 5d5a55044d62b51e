package prober

import (
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"hash"
	"testing"
	"time"
)

// saltPassword is crypto/pbkdf2 for one block, and stops when its context
// ends.
func TestSaltPassword(t *testing.T) {
	t.Parallel()
	for _, newHash := range []func() hash.Hash{sha1.New, sha256.New} {
		for _, tc := range []struct {
			password, salt string
			iterations     int
		}{
			{"pencil", "salt", 1},
			{"pencil", "salt", 2},
			{"pencil", "QSXCR+Q6sek8bf92", 4096},
			{"", "s", 5000},
			{"Ech0-me?>if-you-dare", "\x00\xff", 8193},
		} {
			want, err := pbkdf2.Key(newHash, tc.password, []byte(tc.salt), tc.iterations, newHash().Size())
			if err != nil {
				t.Fatal(err)
			}
			got, err := saltPassword(context.Background(), newHash, tc.password, []byte(tc.salt), tc.iterations)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("saltPassword(%q, %q, %d) = %x, %v; want %x", tc.password, tc.salt, tc.iterations, got, err, want)
			}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := saltPassword(ctx, sha256.New, "pencil", []byte("salt"), scramMaxIterations)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v, want the deadline's", err)
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("stopped %v after a 20ms deadline", d)
	}
}
