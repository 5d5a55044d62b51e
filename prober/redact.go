package prober

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	shown "github.com/smtp-exporter/smtp_exporter/internal/printable"
)

// Redaction bounds.
const (
	// minSecretLen keeps redaction from mangling a transcript over a
	// one-letter password; such a secret is still never sent in a stored
	// client line, which is redacted as a whole.
	minSecretLen = 4
	// minCutPrefix is how much of the start of a secret is taken for the
	// secret when a text ends in it: a server or a bound that cut the
	// secret short must not show its first bytes.
	minCutPrefix = 8
)

// Redacted replaces credentials in the transcript, the errors and the log.
const Redacted = "<redacted>"

// redactor is the one place where secrets are taken out of text. Every
// text that leaves a probe goes through it while still raw, before it is
// quoted, escaped, cut or formatted: transcript lines, the text of the
// failure, every log record and the strings of the Result.
//
// A secret is registered with its derived forms, all known before the
// first packet: the password, the token, the OAuth client secret and
// refresh token, the PLAIN and XOAUTH2/OAUTHBEARER blobs they go into, each
// as it is and in every base64 alphabet (standard, URL, padded or not), and
// each escaped the ways a server or a log quotes text (Go and JSON string
// escapes, backslash escapes, URL and HTML escapes). Values derived during
// AUTH (the CRAM-MD5 digest, the SCRAM proof, each SASL response) are
// registered before they are sent.
//
// A registered form is found:
//   - anywhere in a text, with control and invisible characters (tab, CR,
//     LF, NUL, zero-width, bidirectional marks) or invalid UTF-8 inserted
//     into it: matching skips them, so that a form split across the lines of
//     one reply is found too;
//   - cut short: a text, a line or a word (up to a space, a quote or "...")
//     that ends in at least minCutPrefix bytes of the start of a form, past
//     any part of it that is no secret (the username in the PLAIN blob), is
//     redacted there as well.
//
// Bounds: a secret shorter than minSecretLen bytes is not looked for in
// server text (it would match everywhere); fewer than minCutPrefix bytes of
// the start of a secret, or a piece of a secret that does not include its
// start, can show when a server cuts or reorders it; a secret the server
// transforms in a way not listed above (another encoding, a hash) is not
// recognised.
type redactor struct {
	mu    sync.RWMutex
	forms []secretForm
	// done lists what was registered, so that a value registered again
	// (the password, then the SASL response holding it) is not worked
	// through again.
	done []registration
}

// registration is one call of register.
type registration struct {
	value  string
	public int
	cut    bool
}

// covers reports whether registering r gave every form, and every cut
// rule, that registering n would give: the forms depend on the value, and
// on whether public is 0 (the forms at an offset inside longer base64);
// the cut rule on cut and public.
func (r registration) covers(n registration) bool {
	return r.value == n.value && (r.public == 0 || n.public != 0) && (!n.cut || r.cut && r.public <= n.public)
}

// secretForm is one form of a secret as matching sees it: without the
// characters matching skips.
type secretForm struct {
	text string
	// public is how many bytes at the start are no secret; a cut-off start
	// counts only past them. cut is false for forms whose start is never
	// taken for a secret (a whole SASL response, which starts with the
	// username).
	public int
	cut    bool
	// next is the Knuth-Morris-Pratt failure function of text.
	next []int
}

func newRedactor() *redactor { return &redactor{} }

// add registers a secret with its derived forms; a text ending in its
// start is redacted.
func (r *redactor) add(secret string) { r.register(secret, 0, true) }

// addExact registers a secret with its derived forms; only whole forms are
// redacted.
func (r *redactor) addExact(secret string) { r.register(secret, 0, false) }

// addComposite registers a value whose first public bytes are no secret,
// such as the PLAIN blob after the username.
func (r *redactor) addComposite(value string, public int) { r.register(value, public, true) }

// escapes are the ways text is quoted that a form is registered in. Each
// maps a prefix of its input to a prefix of its output, so that the public
// part of a form is known in each.
var escapes = []func(string) string{
	func(s string) string { q := strconv.Quote(s); return q[1 : len(q)-1] },
	func(s string) string { q := strconv.QuoteToASCII(s); return q[1 : len(q)-1] },
	func(s string) string { return jsonEscape(s, true) },
	func(s string) string { return jsonEscape(s, false) },
	strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace,
	strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace,
	url.QueryEscape,
	url.PathEscape,
	html.EscapeString,
}

// base64Encodings are the alphabets a secret is registered in.
var base64Encodings = []*base64.Encoding{
	base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding,
}

func jsonEscape(s string, escapeHTML bool) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(escapeHTML)
	_ = enc.Encode(s) // a string always encodes
	out := strings.TrimSuffix(b.String(), "\n")
	return out[1 : len(out)-1]
}

func (r *redactor) register(value string, public int, cut bool) {
	if r == nil || len(value) < minSecretLen {
		return
	}
	reg := registration{value, public, cut}
	r.mu.RLock()
	done := slices.ContainsFunc(r.done, func(d registration) bool { return d.covers(reg) })
	r.mu.RUnlock()
	if done {
		return
	}
	forms := formsOf(reg)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done = append(r.done, reg)
	// A new list, since readers hold the old one without the lock, made
	// once with room for all the forms: grown by append it was allocated
	// two or three times over, for every secret of every probe.
	list := append(make([]secretForm, 0, len(r.forms)+len(forms)), r.forms...)
	for _, f := range forms {
		list = mergeForm(list, f)
	}
	slices.SortStableFunc(list, func(a, b secretForm) int { return cmp.Compare(len(b.text), len(a.text)) })
	r.forms = list
}

// mergeForm adds f to list; when the same form is listed already, the
// stricter reading of the two wins.
func mergeForm(list []secretForm, f secretForm) []secretForm {
	i := slices.IndexFunc(list, func(g secretForm) bool { return g.text == f.text })
	if i < 0 {
		return append(list, f)
	}
	if f.cut && (!list[i].cut || f.public < list[i].public) {
		list[i].cut, list[i].public = true, f.public
	}
	return list
}

// maxCachedForms bounds formCache: a few values per module with
// credentials. Past it the cache starts again empty.
const maxCachedForms = 1024

// formCache keeps the forms of each registration made. A module's
// secrets, and the blobs they go into, are the same on every probe, and
// working out their forms (the escapes, the base64 spellings at each
// offset, the matching tables) was most of what redaction cost a probe
// that logs in. The forms are read-only once made; redactors share them.
var formCache = struct {
	sync.Mutex
	m map[registration][]secretForm
}{m: map[registration][]secretForm{}}

// formsOf returns the forms registering reg gives, from formCache.
func formsOf(reg registration) []secretForm {
	formCache.Lock()
	forms, ok := formCache.m[reg]
	formCache.Unlock()
	if ok {
		return forms
	}
	forms = deriveForms(reg)
	formCache.Lock()
	if len(formCache.m) >= maxCachedForms {
		clear(formCache.m)
	}
	formCache.m[reg] = forms
	formCache.Unlock()
	return forms
}

// deriveForms works out the forms of a registration: the value as it is,
// escaped each way, and in each base64 spelling, as matching sees them.
func deriveForms(reg registration) []secretForm {
	value, public := reg.value, reg.public
	type raw struct {
		text   string
		public int
	}
	raws := []raw{{value, public}}
	// Most escapes leave a secret as it is: a form already listed is not
	// listed again.
	add := func(f raw) {
		if !slices.Contains(raws, f) {
			raws = append(raws, f)
		}
	}
	for _, esc := range escapes {
		add(raw{esc(value), len(esc(value[:public]))})
	}
	for _, enc := range base64Encodings {
		// Whole groups of three bytes encode alone.
		whole := public - public%3
		add(raw{enc.EncodeToString([]byte(value)), len(enc.EncodeToString([]byte(value[:whole])))})
	}
	if public == 0 {
		// Inside a longer message that is base64 as a whole (a 334
		// challenge quoting the secret), the secret starts at any offset
		// of a group of three bytes: what it alone decides of the encoding
		// at each offset. A composite value needs none: its secret part is
		// registered alone.
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			for k := 1; k <= 2; k++ {
				shifted := enc.EncodeToString(append(make([]byte, k), value...))
				from, to := (8*k+5)/6, 8*(k+len(value))/6
				add(raw{shifted[from:to], 0})
			}
			add(raw{enc.EncodeToString([]byte(value))[:8*len(value)/6], 0})
		}
	}
	var forms []secretForm
	for _, f := range raws {
		skel, _, _ := skeleton(nil, f.text, nil, nil)
		if len(skel) < minSecretLen {
			continue
		}
		text := string(skel)
		pub, _, _ := skeleton(nil, f.text[:f.public], nil, nil)
		forms = mergeForm(forms, secretForm{text: text, public: len(pub), cut: reg.cut, next: kmpNext(text)})
	}
	return forms
}

func kmpNext(s string) []int {
	next := make([]int, len(s))
	for i, k := 1, 0; i < len(s); i++ {
		for k > 0 && s[i] != s[k] {
			k = next[k-1]
		}
		if s[i] == s[k] {
			k++
		}
		next[i] = k
	}
	return next
}

// skipped reports whether matching skips r: control characters (tab, CR
// and LF included), invisible ones (internal/printable's unsafe set) and
// invalid UTF-8.
func skipped(r rune, size int) bool {
	return r == utf8.RuneError && size == 1 || r == '\t' || shown.Unsafe(r)
}

// skeleton appends to dst the bytes of s that matching does not skip.
// When pos is not nil, the index in s of each byte appended is appended to
// it; when ends is not nil, the positions in the skeleton where a word
// ends: before a skipped whitespace, a space, a quote or "...", and at the
// end of s. The lists are returned rather than written through pointers so
// that a caller's buffers for them can stay on its stack.
func skeleton(dst []byte, s string, pos, ends []int) (skel []byte, _, _ []int) {
	skel = slices.Grow(dst, len(s))
	end := func() {
		if ends != nil && (len(ends) == 0 || ends[len(ends)-1] != len(skel)) {
			ends = append(ends, len(skel))
		}
	}
	if pos != nil {
		pos = slices.Grow(pos, len(s))
	}
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			// ASCII, most of any text: the controls (tab, CR and LF among
			// them) and DEL are skipped.
			if c == '\n' || c == '\r' || c == '\t' || c == ' ' || c == '"' || c == '\'' || c == '`' ||
				c == '.' && strings.HasPrefix(s[i:], "...") {
				end()
			}
			if c >= 0x20 && c != 0x7f {
				skel = append(skel, c)
				if pos != nil {
					pos = append(pos, i)
				}
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == '…' {
			end()
		}
		if !skipped(r, size) {
			skel = append(skel, s[i:i+size]...)
			if pos != nil {
				for j := range size {
					pos = append(pos, i+j)
				}
			}
		}
		i += size
	}
	end()
	return skel, pos, ends
}

// maxRedactPasses bounds the passes of redact: a pass can only leave a
// secret behind when the secret holds the marker itself.
const maxRedactPasses = 4

// redact returns raw with every registered form replaced by Redacted. Line
// breaks inside a redacted stretch are kept, each line getting its own
// Redacted, so that a reply keeps its lines. The text is redacted again
// while that changes it, so that the marker cannot complete a secret.
func (r *redactor) redact(raw string) string {
	out := r.redactOnce(raw)
	for i := 1; i < maxRedactPasses && out != raw; i++ {
		raw, out = out, r.redactOnce(out)
	}
	return out
}

// empty reports whether no secret is registered: redacting changes
// nothing then.
func (r *redactor) empty() bool {
	if r == nil {
		return true
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.forms) == 0
}

func (r *redactor) redactOnce(raw string) string {
	if r == nil || raw == "" {
		return raw
	}
	r.mu.RLock()
	forms := r.forms
	r.mu.RUnlock()
	if len(forms) == 0 {
		return raw
	}
	// Most texts are short: their skeleton fits on the stack, and their
	// word ends in one allocation.
	var skelBuf [256]byte
	var endsBuf [16]int
	skel, _, ends := skeleton(skelBuf[:0], raw, nil, endsBuf[:0])
	var hit []bool
	mark := func(from, to int) {
		if hit == nil {
			hit = make([]bool, len(skel))
		}
		for i := from; i < to; i++ {
			hit[i] = true
		}
	}
	for _, f := range forms {
		f.scan(skel, ends, mark)
	}
	r.scanBase64(skel, mark)
	if hit == nil {
		return raw
	}
	// Where each byte of skel is in raw matters only to cut out a hit.
	_, pos, _ := skeleton(nil, raw, make([]int, 0, len(raw)), nil)
	var b strings.Builder
	done := 0
	for k := 0; k < len(skel); {
		if !hit[k] {
			k++
			continue
		}
		j := k
		for j < len(skel) && hit[j] {
			j++
		}
		from, to := pos[k], pos[j-1]+1
		for from > 0 && !utf8.RuneStart(raw[from]) {
			from--
		}
		for to < len(raw) && !utf8.RuneStart(raw[to]) {
			to++
		}
		b.WriteString(raw[done:from])
		for i, line := range strings.Split(raw[from:to], "\n") {
			if i > 0 {
				b.WriteByte('\n')
			}
			if skel, _, _ := skeleton(nil, line, nil, nil); len(skel) > 0 {
				b.WriteString(Redacted)
			}
		}
		done, k = to, j
	}
	b.WriteString(raw[done:])
	return b.String()
}

// minBase64Run is the shortest run of base64 characters that is decoded to
// look for a secret inside: 12 characters are 9 bytes.
const minBase64Run = 12

// scanBase64 marks every run of base64 characters in skel that decodes, in
// one of the alphabets, to a text that shows a secret: a server can quote
// a secret inside a message that it then encodes as a whole (the JSON of a
// refused token, a SCRAM server-error, in a 334 challenge), escaped or at
// any offset.
func (r *redactor) scanBase64(skel []byte, mark func(from, to int)) {
	isBase64 := func(c byte) bool {
		return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '-' || c == '_' || c == '='
	}
	for i := 0; i < len(skel); {
		if !isBase64(skel[i]) {
			i++
			continue
		}
		j := i
		for j < len(skel) && isBase64(skel[j]) {
			j++
		}
		if j-i >= minBase64Run {
			run := bytes.TrimRight(skel[i:j], "=")
			// Most runs are words and codes that decode to nothing
			// readable; they are decoded on the stack.
			var buf [192]byte
			dst := buf[:]
			if n := base64.RawStdEncoding.DecodedLen(len(run)); n > len(buf) {
				dst = make([]byte, n)
			}
			for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
				if n, err := enc.Decode(dst, run); err == nil {
					if text := string(dst[:n]); r.redact(text) != text {
						mark(i, j)
					}
					break
				}
			}
		}
		i = j
	}
}

// scan calls mark for every occurrence of f in skel, and for every word
// end in ends that cuts f off after at least minCutPrefix of its secret
// bytes.
func (f *secretForm) scan(skel []byte, ends []int, mark func(from, to int)) {
	q := 0
	for i := 0; ; i++ {
		for len(ends) > 0 && ends[0] == i {
			if f.cut && q >= f.public+minCutPrefix {
				mark(i-q, i)
			}
			ends = ends[1:]
		}
		if i == len(skel) {
			return
		}
		if q == 0 {
			// Nothing is found before the form's first byte, and no word
			// end cuts it off before that.
			j := bytes.IndexByte(skel[i:], f.text[0])
			if j < 0 {
				return
			}
			i += j
			for len(ends) > 0 && ends[0] <= i {
				ends = ends[1:]
			}
		}
		for q > 0 && skel[i] != f.text[q] {
			q = f.next[q-1]
		}
		if skel[i] == f.text[q] {
			q++
		}
		if q == len(f.text) {
			mark(i+1-q, i+1)
			q = f.next[q-1]
		}
	}
}

// redactLines redacts the lines of one reply together, so that a secret
// split across them is found. head gives the length of the start of a line
// left out of the joined text (the reply code, the enhanced status code).
func (r *redactor) redactLines(lines []string, head func(string) int) []string {
	if r.empty() {
		return lines
	}
	heads := make([]string, len(lines))
	texts := make([]string, len(lines))
	for i, l := range lines {
		n := head(l)
		heads[i], texts[i] = l[:n], l[n:]
	}
	text := strings.Join(texts, "\n")
	red := r.redact(text)
	if red == text && strings.Count(text, "\n") == len(lines)-1 {
		return lines // nothing to redact, and no line held a line break
	}
	joined := strings.Split(red, "\n")
	out := make([]string, len(lines))
	for i := range lines {
		if len(joined) != len(lines) {
			// A line held a line break: redact each alone.
			out[i] = heads[i] + r.redact(texts[i])
			continue
		}
		out[i] = heads[i] + joined[i]
	}
	return out
}

// replyLineHead is the length of a reply line's code, separator and
// enhanced status code.
func replyLineHead(line string) int {
	n := 0
	if len(line) >= 3 && isDigits(line[:3]) && (len(line) == 3 || line[3] == ' ' || line[3] == '-') {
		n = min(len(line), 4)
	}
	return n + enhancedHead(line[n:])
}

// enhancedHead is the length of the enhanced status code at the start of
// a reply's text, with the space after it.
func enhancedHead(text string) int {
	if e := parseEnhanced(text); e != "" {
		if len(text) > len(e) && text[len(e)] == ' ' {
			return len(e) + 1
		}
		return len(e)
	}
	return 0
}

func isDigits(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < '0' || r > '9' })
}

// show returns text from outside (a server, a token endpoint) as it may be
// shown: secrets redacted in the raw text, cut to about max bytes (clip),
// then made printable. A text changed by either is redacted once more, so
// that it cannot end in the start of a secret. A nil redactor only cuts
// and makes the text printable.
func (r *redactor) show(raw string, max int) string {
	red := r.clip(raw, max)
	bound := max
	if n := len(red) - len("..."); n > max {
		bound = n // clip kept a whole marker past max
	}
	s := printable(red, bound)
	if r != nil && s != red {
		s = r.redact(s)
	}
	return s
}

// clip returns raw with secrets redacted, then cut to max bytes on a
// character boundary and "..."; a text cut short is redacted once more, so
// that it cannot end in the start of a secret. The text stays raw
// otherwise, for a caller that quotes it.
func (r *redactor) clip(raw string, max int) string {
	s := r.redact(raw)
	if max >= 0 && len(s) > max {
		cut := cutAt(s, max)
		// A marker is never cut in half.
		if i := strings.LastIndex(s[:cut], "<"); i >= 0 && strings.HasPrefix(s[i:], Redacted) && i+len(Redacted) > cut {
			cut = i + len(Redacted)
		}
		if cut < len(s) {
			s = r.redact(s[:cut] + "...")
		}
	}
	return s
}

// quote is clip in Go's double quotes, which escape what cannot be seen.
func (r *redactor) quote(raw string, max int) string {
	return strconv.Quote(r.clip(raw, max))
}

// redactError returns err, or an error of its redacted text when the text
// would show a secret. The typed error is kept only while its text is
// safe, so that errors.As cannot reach unredacted fields.
func (r *redactor) redactError(err error) error {
	if err == nil || r == nil {
		return err
	}
	text := err.Error()
	if red := r.redact(text); red != text {
		return errors.New(red)
	}
	return err
}

// redactResult redacts the strings of a Result that came from the server:
// the queue id, the EHLO keywords and mechanisms, the certificate fields.
// The failure and the transcript are redacted as they are made.
func (r *redactor) redactResult(res *Result) {
	res.QueueID = r.redact(res.QueueID)
	for ph, keywords := range res.Extensions {
		res.Extensions[ph] = r.redactAll(keywords)
	}
	res.AuthMechanisms = r.redactAll(res.AuthMechanisms)
	if res.TLS != nil {
		res.TLS.ServerName = r.redact(res.TLS.ServerName)
	}
	for i := range res.Certificates {
		c := &res.Certificates[i]
		c.Subject, c.Issuer, c.Serial = r.redact(c.Subject), r.redact(c.Issuer), r.redact(c.Serial)
		c.DNSNames = r.redactAll(c.DNSNames)
	}
}

// redactAll redacts each string, copying the slice only when one changes.
// The strings are first looked at together, joined by spaces: a space
// ends a word and a base64 run, so whatever one string alone would show
// shows in the joined text too, and when it shows nothing (most lists:
// the keywords of an EHLO reply) the strings need no look of their own.
func (r *redactor) redactAll(list []string) []string {
	if len(list) > 1 {
		if joined := strings.Join(list, " "); r.redact(joined) == joined {
			return list
		}
	}
	var out []string
	for i, s := range list {
		if red := r.redact(s); red != s {
			if out == nil {
				out = slices.Clone(list)
			}
			out[i] = red
		}
	}
	if out == nil {
		return list
	}
	return out
}

// redactingHandler redacts every record before the handler it wraps sees
// it: the message, every string, error and Stringer value, in groups too.
// It is how every log line of a probe, at any level, goes through the
// redactor while its values are still raw, before the text handler quotes
// them.
type redactingHandler struct {
	inner slog.Handler
	red   *redactor
}

func (h *redactingHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

func (h *redactingHandler) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, h.red.redact(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.attr(a))
		return true
	})
	return h.inner.Handle(ctx, out)
}

func (h *redactingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		red[i] = h.attr(a)
	}
	return &redactingHandler{inner: h.inner.WithAttrs(red), red: h.red}
}

func (h *redactingHandler) WithGroup(name string) slog.Handler {
	return &redactingHandler{inner: h.inner.WithGroup(name), red: h.red}
}

func (h *redactingHandler) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, h.red.redact(v.String()))
	case slog.KindGroup:
		group := v.Group()
		red := make([]any, len(group))
		for i, g := range group {
			red[i] = h.attr(g)
		}
		return slog.Group(a.Key, red...)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return slog.String(a.Key, h.red.redact(x.Error()))
		case fmt.Stringer:
			return slog.String(a.Key, h.red.redact(x.String()))
		case []string:
			return slog.Any(a.Key, h.red.redactAll(x))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
