// Package printable is the one rule for showing text that came from a
// server or a caller (a banner, a reply, a certificate field, the target
// parameter) in a log, a page or the debug output: what cannot be seen is
// written as an escape, so that the text cannot forge lines, send terminal
// control sequences or read differently from what it is.
package printable

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Unsafe reports whether r is shown as an escape: control characters but
// tab; format characters (category Cf: bidirectional overrides and isolates
// such as U+202E and U+2066..U+2069, zero-width characters U+200B..U+200F,
// the byte order mark U+FEFF, the soft hyphen); the line and paragraph
// separators U+2028 and U+2029; and the other characters Unicode says to
// draw as nothing (variation selectors, Hangul fillers, U+034F).
func Unsafe(r rune) bool {
	if r == '\t' {
		return false
	}
	if r < utf8.RuneSelf {
		return r < 0x20 || r == 0x7f
	}
	return unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp,
		unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector)
}

// String returns s as valid UTF-8 with every unsafe rune written as an
// escape in the notation of Go's strconv.Quote, which the log uses: \x1b,
// \u0085, \u202e, \U000e0001. Invalid UTF-8 becomes
// U+FFFD. Safe text is returned as it is, and String(String(s)) ==
// String(s).
func String(s string) string {
	return Bounded(s, -1)
}

// Bounded is String cut to at most max bytes, followed by "..." where it
// was cut; an escape is never cut in half. A negative max means no bound.
func Bounded(s string, max int) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, Unsafe) && (max < 0 || len(s) <= max) {
		return s
	}
	var b strings.Builder
	if max >= 0 {
		b.Grow(min(len(s), max) + len("..."))
	} else {
		b.Grow(len(s) + 16)
	}
	var buf [10]byte
	// Ranging over s yields U+FFFD for each invalid byte.
	for _, r := range s {
		piece := buf[:0]
		if Unsafe(r) {
			piece = escape(piece, r)
		} else {
			piece = utf8.AppendRune(piece, r)
		}
		if max >= 0 && b.Len()+len(piece) > max {
			b.WriteString("...")
			break
		}
		b.Write(piece)
	}
	return b.String()
}

const hexDigits = "0123456789abcdef"

func escape(b []byte, r rune) []byte {
	var prefix string
	var digits int
	switch {
	case r < utf8.RuneSelf:
		prefix, digits = `\x`, 2
	case r <= 0xffff:
		prefix, digits = `\u`, 4
	default:
		prefix, digits = `\U`, 8
	}
	b = append(b, prefix...)
	for shift := 4 * (digits - 1); shift >= 0; shift -= 4 {
		b = append(b, hexDigits[(r>>shift)&0xf])
	}
	return b
}
