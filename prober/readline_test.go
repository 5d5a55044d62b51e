package prober

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

// replyConn is a session reading what a server wrote, through the same
// buffer as a probe's.
func replyConn(t *testing.T, data string) *smtpConn {
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() { client.Close() })
	go func() {
		io.WriteString(server, data)
		server.Close()
	}()
	return newSMTPConn(client, newTranscript(time.Now(), slog.New(slog.DiscardHandler)))
}

// line returns a reply line of exactly n bytes with its CRLF.
func line(code string, final bool, n int) string {
	sep := "-"
	if final {
		sep = " "
	}
	return code + sep + strings.Repeat("x", n-len(code)-len(sep)-2) + "\r\n"
}

func TestReplyLinesAroundTheBufferAndTheLimit(t *testing.T) {
	for _, n := range []int{replyBufferSize - 1, replyBufferSize, replyBufferSize + 1, 3 * replyBufferSize, maxReplyLineLen} {
		c := replyConn(t, line("250", false, n)+line("250", true, n)+"221 bye\r\n")
		rep, err := c.readReply()
		if err != nil {
			t.Fatalf("%d-byte lines: %v", n, err)
		}
		if len(rep.Lines) != 2 || len(rep.Lines[0]) != n-6 || len(rep.Lines[1]) != n-6 {
			t.Errorf("%d-byte lines: got %d lines of %d and %d bytes", n, len(rep.Lines), len(rep.Lines[0]), len(rep.Lines[len(rep.Lines)-1]))
		}
		// The stream goes on where the long lines ended.
		if rep, err := c.readReply(); err != nil || rep.Code != 221 {
			t.Errorf("%d-byte lines: next reply %+v, %v", n, rep, err)
		}
	}

	for _, n := range []int{maxReplyLineLen + 1, maxReplyLineLen + replyBufferSize, 10 * maxReplyLineLen} {
		_, err := replyConn(t, line("250", true, n)).readReply()
		var pe *ProtocolError
		if !errors.As(err, &pe) || !strings.Contains(pe.Detail, "longer than 4096 bytes") {
			t.Errorf("%d-byte line: error %v, want a protocol error", n, err)
		}
	}

	// A long line cut by the end of the connection.
	cut := line("250", true, 3*replyBufferSize)
	if _, err := replyConn(t, cut[:len(cut)-10]).readReply(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut long line: error %v, want unexpected EOF", err)
	}
}
