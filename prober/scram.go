package prober

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// SCRAM bounds. The iteration count comes from the server and sets how
// long the client hashes: saltPassword stops at the probe's deadline, and
// the cap keeps a server asking for billions from taking a CPU for the
// whole of it.
const (
	scramMaxIterations = 1_000_000
	scramNonceBytes    = 24
	scramMaxSaltBytes  = 256
	// saltCheckEvery is how many iterations saltPassword hashes between
	// looks at the deadline: a quarter of a millisecond on a CPU with SHA
	// instructions, a few without, tens under the race detector.
	saltCheckEvery = 1024
)

// derivationSlots is a counting semaphore over SCRAM key derivations.
type derivationSlots chan struct{}

func newDerivationSlots(n int) derivationSlots {
	return make(derivationSlots, max(n, 1))
}

// acquire takes a slot, waiting for one until ctx ends.
func (s derivationSlots) acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	default:
	}
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s derivationSlots) release() { <-s }

// keyDerivations bounds the SCRAM key derivations running at once in the
// process to one per CPU the Go scheduler runs on. A derivation is pure
// CPU for as long as the server's iteration count says (a fifth of a
// second at scramMaxIterations with SHA instructions): without the bound,
// hundreds of probes of such servers share the CPUs, none finishes, each
// overruns its deadline by its share of the queue, and /metrics waits
// behind them. With it, a probe waits for a slot within its deadline and
// fails with timeout in auth when none comes.
//
// It is the one package-level semaphore of the prober, on purpose: what
// it guards, the CPUs, exists once per process, whoever calls Probe and
// however many handlers there are. It carries nothing from one probe to
// another but how many are hashing now. A mechanism keeps its own
// reference (scramAuth.slots), which tests replace.
var keyDerivations = newDerivationSlots(runtime.GOMAXPROCS(0))

// scramAuth is RFC 5802 SCRAM (SCRAM-SHA-1, and SCRAM-SHA-256 from RFC
// 7677) without channel binding: the GS2 header is "n,,". The server proves
// it knows the password too, and a server that fails that proof fails the
// probe even if it then says 235.
//
// SASLprep (RFC 4013) is applied only in its trivial form: the username and
// password are used as given. That is exact for printable ASCII; a
// non-ASCII password that SASLprep would map or normalise (non-ASCII spaces,
// NFKC) gives a different key than the server's, and the login fails.
type scramAuth struct {
	name               string
	newHash            func() hash.Hash
	username, password string

	clientNonce     string
	clientFirstBare string
	serverSignature []byte
	step            int
	verified        bool

	// secrets receives every derived value that must never be shown (the
	// proof and the client-final message), before it is sent.
	secrets func(string)
	// red redacts what the server says before an error quotes it; nil
	// redacts nothing.
	red *redactor
	// ctx is the probe's: the wait for a derivation slot and the key
	// derivation stop when it ends. nil means no deadline.
	ctx context.Context
	// slots bounds the derivations running at once: keyDerivations.
	slots derivationSlots
}

func newSCRAM(name, username, password string, secrets func(string)) *scramAuth {
	a := &scramAuth{name: name, username: username, password: password, secrets: secrets, slots: keyDerivations}
	if name == config.MechanismSCRAMSHA1 {
		a.newHash = sha1.New
	} else {
		a.newHash = sha256.New
	}
	return a
}

func (a *scramAuth) Start() (string, []byte, error) {
	nonce := make([]byte, scramNonceBytes)
	if _, err := rand.Read(nonce); err != nil {
		return "", nil, err
	}
	a.clientNonce = base64.RawStdEncoding.EncodeToString(nonce)
	a.clientFirstBare = "n=" + scramEscape(a.username) + ",r=" + a.clientNonce
	return a.name, []byte("n,," + a.clientFirstBare), nil
}

// scramServerError is the server-error of a server-final message ("e=...").
type scramServerError struct{ value string }

func (e *scramServerError) Error() string {
	return "server reported SCRAM error " + strconv.Quote(e.value)
}

// errServerSignature is a server-final message whose signature does not
// match, or no server-final message at all: the server did not prove it
// knows the password.
var errServerSignature = errors.New("server signature does not verify")

func (a *scramAuth) Next(challenge []byte) ([]byte, error) {
	a.step++
	switch a.step {
	case 1:
		return a.clientFinal(challenge)
	case 2:
		return a.checkServerFinal(challenge)
	}
	return nil, errUnexpectedChallenge
}

// clientFinal answers the server-first message with the proof.
func (a *scramAuth) clientFinal(serverFirst []byte) ([]byte, error) {
	attrs, err := scramAttributes(string(serverFirst))
	if err != nil {
		return nil, err
	}
	if _, ok := attrs["m"]; ok {
		return nil, protocolErrorf("server requires an unsupported SCRAM extension")
	}
	if e, ok := attrs["e"]; ok {
		return nil, a.rejected(e)
	}
	nonce := attrs["r"]
	if len(nonce) <= len(a.clientNonce) || !strings.HasPrefix(nonce, a.clientNonce) {
		return nil, protocolErrorf("server nonce does not extend the client nonce")
	}
	if !isPrintableASCII(nonce) {
		return nil, protocolErrorf("server nonce is not printable ASCII")
	}
	salt, err := base64.StdEncoding.DecodeString(attrs["s"])
	if err != nil || len(salt) == 0 || len(salt) > scramMaxSaltBytes {
		return nil, protocolErrorf("bad SCRAM salt")
	}
	iterations, err := strconv.Atoi(attrs["i"])
	if err != nil || iterations < 1 {
		return nil, protocolErrorf("bad SCRAM iteration count %s", a.red.quote(attrs["i"], 20))
	}
	if iterations > scramMaxIterations {
		return nil, protocolErrorf("SCRAM iteration count %d exceeds the limit of %d", iterations, scramMaxIterations)
	}

	salted, err := a.deriveKey(salt, iterations)
	if err != nil {
		return nil, err
	}
	clientKey := a.hmac(salted, []byte("Client Key"))
	storedKey := a.newHash()
	storedKey.Write(clientKey)
	withoutProof := "c=" + base64.StdEncoding.EncodeToString([]byte("n,,")) + ",r=" + nonce
	authMessage := []byte(a.clientFirstBare + "," + string(serverFirst) + "," + withoutProof)
	clientSignature := a.hmac(storedKey.Sum(nil), authMessage)
	proof := make([]byte, len(clientKey))
	subtle.XORBytes(proof, clientKey, clientSignature)
	a.serverSignature = a.hmac(a.hmac(salted, []byte("Server Key")), authMessage)

	encodedProof := base64.StdEncoding.EncodeToString(proof)
	final := withoutProof + ",p=" + encodedProof
	a.secrets(encodedProof)
	a.secrets(final)
	return []byte(final), nil
}

// deriveKey runs saltPassword in a slot of a.slots, waiting for one until
// the probe's deadline.
func (a *scramAuth) deriveKey(salt []byte, iterations int) ([]byte, error) {
	ctx := a.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	wait := time.Now()
	if err := a.slots.acquire(ctx); err != nil {
		return nil, fmt.Errorf("waited %v for one of the %d SCRAM key derivations running at once to end: %w",
			time.Since(wait).Round(time.Millisecond), cap(a.slots), err)
	}
	defer a.slots.release()
	salted, err := saltPassword(ctx, a.newHash, a.password, salt, iterations)
	if err != nil {
		return nil, fmt.Errorf("deriving the SCRAM key (%d iterations): %w", iterations, err)
	}
	return salted, nil
}

// saltPassword is SCRAM's Hi(): PBKDF2 (RFC 8018) with HMAC over newHash,
// for the one block of a hash's length that SCRAM uses, as crypto/pbkdf2
// computes it. Unlike crypto/pbkdf2 it gives up when ctx ends: the server
// chooses the iteration count, and scramMaxIterations take a good part of a
// second, which must not carry a probe past its deadline.
func saltPassword(ctx context.Context, newHash func() hash.Hash, password string, salt []byte, iterations int) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	prf := hmac.New(newHash, []byte(password))
	prf.Write(salt)
	prf.Write([]byte{0, 0, 0, 1})
	u := prf.Sum(nil)
	key := bytes.Clone(u)
	for i := 1; i < iterations; i++ {
		if i%saltCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		prf.Reset()
		prf.Write(u)
		u = prf.Sum(u[:0])
		subtle.XORBytes(key, key, u)
	}
	return key, nil
}

// checkServerFinal verifies the server's signature; the empty answer lets
// the server send its final reply.
func (a *scramAuth) checkServerFinal(serverFinal []byte) ([]byte, error) {
	attrs, err := scramAttributes(string(serverFinal))
	if err != nil {
		return nil, err
	}
	if e, ok := attrs["e"]; ok {
		return nil, a.rejected(e)
	}
	v, ok := attrs["v"]
	if !ok {
		return nil, protocolErrorf("SCRAM server-final message without a verifier")
	}
	sig, err := base64.StdEncoding.DecodeString(v)
	if err != nil || !hmac.Equal(sig, a.serverSignature) {
		return nil, &saslFailure{reason: ReasonServerSignature, err: errServerSignature}
	}
	a.verified = true
	return []byte{}, nil
}

// complete reports whether the server proved it knows the password; a 235
// without that proof is not a success.
func (a *scramAuth) complete() error {
	if !a.verified {
		return &saslFailure{reason: ReasonServerSignature, err: fmt.Errorf("%w: the server accepted without sending its signature", errServerSignature)}
	}
	return nil
}

// rejected is a server-error ("e=invalid-proof"), classified by
// scramErrorReason. The empty answer lets the server finish with its final
// reply. The value is redacted before it is cut, and quoted after.
func (a *scramAuth) rejected(value string) error {
	return &saslFailure{reason: scramErrorReason(value), answer: []byte{}, err: &scramServerError{value: a.red.clip(value, 64)}}
}

func (a *scramAuth) hmac(key, data []byte) []byte {
	m := hmac.New(a.newHash, key)
	m.Write(data)
	return m.Sum(nil)
}

// scramAttributes parses "a=value,b=value". Values may contain '=' (base64)
// but not ','; attribute names are single letters and appear once.
func scramAttributes(msg string) (map[string]string, error) {
	attrs := map[string]string{}
	if msg == "" {
		return nil, protocolErrorf("empty SCRAM message")
	}
	for _, part := range strings.Split(msg, ",") {
		if len(part) < 2 || part[1] != '=' || !(part[0] >= 'a' && part[0] <= 'z' || part[0] >= 'A' && part[0] <= 'Z') {
			return nil, protocolErrorf("malformed SCRAM attribute")
		}
		key := part[:1]
		if _, dup := attrs[key]; dup {
			return nil, protocolErrorf("repeated SCRAM attribute %s", key)
		}
		attrs[key] = part[2:]
	}
	return attrs, nil
}

// scramEscape encodes a username as a saslname: '=' and ',' are escaped.
func scramEscape(s string) string {
	return strings.NewReplacer("=", "=3D", ",", "=2C").Replace(s)
}

func isPrintableASCII(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x21 || r > 0x7e })
}
