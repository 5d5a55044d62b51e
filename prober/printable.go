package prober

import shown "github.com/smtp-exporter/smtp_exporter/internal/printable"

// printable makes text from a server or a caller safe to store and show,
// by the rule of internal/printable (what cannot be seen as an escape), cut
// to at most max bytes and "...".
func printable(s string, max int) string {
	return shown.Bounded(s, max)
}
