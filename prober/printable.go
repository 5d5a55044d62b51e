package prober

import (
	"unicode/utf8"

	shown "github.com/smtp-exporter/smtp_exporter/internal/printable"
)

// printable makes text from a server or a caller safe to store and show,
// by the rule of internal/printable (what cannot be seen as an escape), cut
// to at most max bytes and "...".
func printable(s string, max int) string {
	return shown.Bounded(s, max)
}

// cutAt returns where to cut s, longer than max bytes, to keep at most max
// bytes of it without splitting a character.
func cutAt(s string, max int) int {
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return cut
}
