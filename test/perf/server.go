package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// connIdle bounds every connection of the servers below: a stuck client
// cannot hold one longer.
const connIdle = 30 * time.Second

// smtpServer is a small, fast SMTP server on 127.0.0.1 for the CPU-bound
// runs: greeting, EHLO, STARTTLS (or TLS at once), AUTH PLAIN, NOOP, RSET,
// QUIT. It accepts lines ending in LF as well as CRLF, as Postfix does,
// because blackbox_exporter's query_response ends what it sends with LF.
type smtpServer struct {
	ln       net.Listener
	tls      *tls.Config
	implicit bool
	// plain is the AUTH PLAIN response it accepts, decoded.
	plain []byte

	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
	sessions atomic.Int64
}

func startSMTPServer(cert tls.Certificate, implicit bool, user, password string) (*smtpServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &smtpServer{
		ln:       ln,
		tls:      &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		implicit: implicit,
		plain:    []byte("\x00" + user + "\x00" + password),
		conns:    map[net.Conn]struct{}{},
	}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *smtpServer) addr() string { return s.ln.Addr().String() }

func (s *smtpServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.session(c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

func (s *smtpServer) close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
	s.wg.Wait()
}

const ehloHead = "250-mx.perf.invalid\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
const ehloTail = "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"

func (s *smtpServer) session(raw net.Conn) {
	if raw.SetDeadline(time.Now().Add(connIdle)) != nil {
		return
	}
	var conn net.Conn = raw
	encrypted := false
	if s.implicit {
		tc := tls.Server(raw, s.tls)
		if tc.Handshake() != nil {
			return
		}
		conn, encrypted = tc, true
	}
	r := bufio.NewReaderSize(conn, 1024)
	w := bufio.NewWriterSize(conn, 1024)
	reply := func(text string) bool {
		w.WriteString(text)
		return w.Flush() == nil
	}
	if !reply("220 mx.perf.invalid ESMTP smtp_exporter perf\r\n") {
		return
	}
	s.sessions.Add(1)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		line = bytes.TrimRight(line, "\r\n")
		verb, arg, _ := bytes.Cut(line, []byte(" "))
		ok := true
		switch strings.ToUpper(string(verb)) {
		case "EHLO":
			ext := "250-STARTTLS\r\n"
			if encrypted {
				ext = "250-AUTH PLAIN LOGIN\r\n"
			}
			ok = reply(ehloHead + ext + ehloTail)
		case "HELO", "NOOP", "RSET":
			ok = reply("250 2.0.0 Ok\r\n")
		case "STARTTLS":
			if encrypted {
				ok = reply("503 5.5.1 Error: TLS already active\r\n")
				break
			}
			// Data sent before the handshake would be injected into the
			// encrypted session.
			if !reply("220 2.0.0 Ready to start TLS\r\n") || r.Buffered() > 0 {
				return
			}
			tc := tls.Server(raw, s.tls)
			if tc.Handshake() != nil {
				return
			}
			conn, encrypted = tc, true
			r.Reset(tc)
			w.Reset(tc)
		case "AUTH":
			ok = s.auth(r, reply, encrypted, string(arg))
		case "QUIT":
			reply("221 2.0.0 Bye\r\n")
			return
		default:
			ok = reply("502 5.5.2 Error: command not recognized\r\n")
		}
		if !ok {
			return
		}
	}
}

// auth answers AUTH PLAIN, with or without an initial response.
func (s *smtpServer) auth(r *bufio.Reader, reply func(string) bool, encrypted bool, arg string) bool {
	if !encrypted {
		return reply("530 5.7.0 Must issue a STARTTLS command first\r\n")
	}
	mech, initial, _ := strings.Cut(arg, " ")
	if !strings.EqualFold(mech, "PLAIN") {
		return reply("504 5.5.4 Unrecognized authentication type\r\n")
	}
	if initial == "" {
		if !reply("334 \r\n") {
			return false
		}
		line, err := r.ReadSlice('\n')
		if err != nil {
			return false
		}
		initial = string(bytes.TrimRight(line, "\r\n"))
	}
	got, err := base64.StdEncoding.DecodeString(initial)
	if err != nil || !bytes.Equal(got, s.plain) {
		return reply("535 5.7.8 Error: authentication failed\r\n")
	}
	return reply("235 2.7.0 Authentication successful\r\n")
}

// hungServer accepts connections and never says anything: every probe of
// it waits for a greeting until it is released or times out.
type hungServer struct {
	ln       net.Listener
	mu       sync.Mutex
	conns    []net.Conn
	accepted atomic.Int64
	done     chan struct{}
}

func startHungServer() (*hungServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &hungServer{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
			h.accepted.Add(1)
		}
	}()
	return h, nil
}

func (h *hungServer) addr() string { return h.ln.Addr().String() }

// release closes every connection held so far; the probes see the
// connection closed.
func (h *hungServer) release() {
	h.mu.Lock()
	for _, c := range h.conns {
		c.Close()
	}
	h.conns = nil
	h.mu.Unlock()
}

// waitAccepted waits until n connections arrived or max passed.
func (h *hungServer) waitAccepted(n int64, max time.Duration) error {
	deadline := time.Now().Add(max)
	for h.accepted.Load() < n {
		if time.Now().After(deadline) {
			return errors.New("hung server: not all probes connected in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func (h *hungServer) close() {
	h.ln.Close()
	<-h.done
	h.release()
}
