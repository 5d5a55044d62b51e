package prober

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
)

// Read bounds. RFC 5321 allows 512-octet reply lines; real servers stay far
// below 4 KiB and a reply of a hundred lines, so anything longer is a broken
// or hostile server, not a reason to buffer more.
const (
	maxReplyLineLen = 4096
	maxReplyLines   = 100
)

// replyBufferSize is the read buffer of a session: real replies fit, and a
// thousand probes waiting on silent servers hold a quarter of what a buffer
// of maxReplyLineLen would take. A longer line is gathered past it, up to
// maxReplyLineLen.
const replyBufferSize = 1024

// errArgument is a command argument carrying CR or LF, which would smuggle
// a second command onto the wire.
var errArgument = errors.New("command argument contains CR or LF")

// smtpConn is a thin SMTP client: one line out, one bounded reply in, each
// recorded in the transcript. It knows nothing of phases or timing.
type smtpConn struct {
	nc net.Conn
	r  *bufio.Reader
	tr *transcript
	// sock is the TCP socket under any TLS, for the acknowledgement
	// setting of ackNow; nil when nc is not a socket (tests).
	sock syscall.RawConn
}

func newSMTPConn(nc net.Conn, tr *transcript) *smtpConn {
	c := &smtpConn{nc: nc, r: bufio.NewReaderSize(nc, replyBufferSize), tr: tr}
	if sc, ok := nc.(syscall.Conn); ok {
		c.sock, _ = sc.SyscallConn()
	}
	return c
}

// ackNow makes the kernel acknowledge what the server sends next without
// delay. Without it a reply can sit in the server's socket for the 40 ms of
// our delayed ACK: a server with Nagle's algorithm on (Postfix) holds back
// a small write while an earlier one is unacknowledged, and Postfix with
// OpenSSL and TLS 1.3 writes its session ticket alone right after the
// handshake, then the banner or the reply to EHLO. Linux delays ACKs after
// the client has just sent something, which is every time here; the phase
// timings would report the stall as the server's. Called before every
// reply, because sending re-enables the delay.
func (c *smtpConn) ackNow() {
	if c.sock != nil {
		_ = c.sock.Control(setQuickACK)
	}
}

// upgrade switches to the TLS connection wrapping the current one. The
// reader keeps its buffer: nothing may be buffered from before the
// handshake (startTLS refuses that), and what Reset would drop must not be
// read.
func (c *smtpConn) upgrade(nc net.Conn) {
	c.nc = nc
	c.r.Reset(nc)
}

// cmd sends one command and reads its reply. expect follows net/textproto:
// 2 accepts any 2xx, 25 any 25x, 250 only 250. A reply that does not match
// is returned together with a *ReplyError.
func (c *smtpConn) cmd(expect int, format string, args ...any) (*Reply, error) {
	line := fmt.Sprintf(format, args...)
	if err := c.writeLine(line); err != nil {
		return nil, err
	}
	return c.expect(verbOf(line), expect)
}

// expect reads a reply and checks its code.
func (c *smtpConn) expect(verb string, expect int) (*Reply, error) {
	rep, err := c.readReply()
	if err != nil {
		return nil, err
	}
	if !codeMatches(rep.Code, expect) {
		return rep, c.replyError(verb, rep)
	}
	return rep, nil
}

func (c *smtpConn) replyError(verb string, rep *Reply) *ReplyError {
	return &ReplyError{
		Command:  verb,
		Code:     rep.Code,
		Enhanced: rep.Enhanced,
		Message:  c.tr.replyText(rep, 200),
	}
}

// writeLine sends one line with CRLF. A line holding CR or LF is refused
// before anything is written.
func (c *smtpConn) writeLine(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return errArgument
	}
	c.tr.client(line)
	_, err := io.WriteString(c.nc, line+"\r\n")
	return err
}

// readLine reads one line of at most maxReplyLineLen bytes, without its
// line ending. A bare LF ending is tolerated.
func (c *smtpConn) readLine() (string, error) {
	b, err := c.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		if b, err = c.readLongLine(b); b == nil && err != nil {
			return "", err
		}
	}
	if err != nil {
		if errors.Is(err, io.EOF) && len(b) > 0 {
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	line := strings.TrimSuffix(string(b[:len(b)-1]), "\r")
	return line, nil
}

// readLongLine gathers a line that did not fit the buffer, first holding
// what was read of it; a line of more than maxReplyLineLen bytes, line
// ending included, is a protocol error (nil slice). Other errors come with
// what was read, for readLine to tell a cut line from a clean end.
func (c *smtpConn) readLongLine(first []byte) ([]byte, error) {
	long := append([]byte(nil), first...)
	for {
		if len(long) >= maxReplyLineLen {
			return nil, protocolErrorf("reply line longer than %d bytes", maxReplyLineLen)
		}
		b, err := c.r.ReadSlice('\n')
		long = append(long, b...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			if len(long) > maxReplyLineLen {
				return nil, protocolErrorf("reply line longer than %d bytes", maxReplyLineLen)
			}
			return long, err
		}
	}
}

// readReply reads a whole reply, single or multi-line, and only returns
// once its final line ("code SP") is in. The transcript records the lines
// read, whole reply or not, when it returns.
func (c *smtpConn) readReply() (*Reply, error) {
	c.ackNow()
	defer c.tr.endReply()
	rep := &Reply{}
	for i := 0; ; i++ {
		if i == maxReplyLines {
			return nil, protocolErrorf("reply longer than %d lines", maxReplyLines)
		}
		line, err := c.readLine()
		if err != nil {
			return nil, err
		}
		c.tr.server(line)
		rl, err := parseReplyLine(line, c.tr.red)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			rep.Code = rl.code
		} else if rl.code != rep.Code {
			return nil, protocolErrorf("multi-line reply mixes codes %d and %d", rep.Code, rl.code)
		}
		rep.Lines = append(rep.Lines, rl.text)
		if rl.final {
			break
		}
	}
	rep.Enhanced = parseEnhanced(rep.Lines[0])
	c.tr.replyDone(rep.Code)
	return rep, nil
}

// verbOf returns the command verb of a line, upper-cased: never its
// arguments, which may carry credentials.
func verbOf(line string) string {
	verb, _, _ := strings.Cut(line, " ")
	return strings.ToUpper(verb)
}
