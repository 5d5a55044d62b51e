package examples

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

const (
	runbooksFile = "../docs/runbooks.md"
	// runbookBase is where the shipped rules link to docs/runbooks.md; the
	// rules file's header says how to point it at a copy of your own.
	runbookBase = "https://github.com/smtp-exporter/smtp_exporter/blob/main/docs/runbooks.md"
)

var markdownHeading = regexp.MustCompile(`(?m)^#{1,6}\s+(.+?)\s*#*\s*$`)

// githubAnchor is the fragment GitHub gives a Markdown heading: lower case,
// punctuation other than "-" and "_" dropped, spaces as "-".
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// runbookAnchors returns the anchors of docs/runbooks.md's headings, and
// the text of each section under a heading of its own level 2.
func runbookAnchors(t *testing.T) (anchors map[string]bool, sections map[string]string) {
	t.Helper()
	text := string(readFile(t, runbooksFile))
	anchors, sections = map[string]bool{}, map[string]string{}
	for _, m := range markdownHeading.FindAllStringSubmatch(text, -1) {
		anchors[githubAnchor(m[1])] = true
	}
	parts := regexp.MustCompile(`(?m)^## `).Split(text, -1)
	for _, part := range parts[1:] {
		title, body, _ := strings.Cut(part, "\n")
		sections[strings.TrimSpace(title)] = body
	}
	return anchors, sections
}

func TestGitHubAnchor(t *testing.T) {
	for heading, want := range map[string]string{
		"SMTPAuthenticationFailing":                   "smtpauthenticationfailing",
		"Before you start: see the probe that failed": "before-you-start-see-the-probe-that-failed",
		"Silencing while you fix":                     "silencing-while-you-fix",
	} {
		if got := githubAnchor(heading); got != want {
			t.Errorf("githubAnchor(%q) = %q, want %q", heading, got, want)
		}
	}
}

// TestEveryAlertHasARunbook checks that every alert links, through its
// runbook_url annotation, to a section of docs/runbooks.md that exists, and
// that the section of every alert says what it means, what to check first
// and how to silence it with the alert's name.
func TestEveryAlertHasARunbook(t *testing.T) {
	anchors, sections := runbookAnchors(t)
	var alerts []string
	for _, r := range loadRules(t) {
		alerts = append(alerts, r.Alert)
		url := r.Annotations["runbook_url"]
		base, anchor, ok := strings.Cut(url, "#")
		if !ok || base != runbookBase {
			t.Errorf("%s: runbook_url %q, want %s#<anchor>", r.Alert, url, runbookBase)
			continue
		}
		if !anchors[anchor] {
			t.Errorf("%s: runbook_url %q: docs/runbooks.md has no heading with the anchor %q", r.Alert, url, anchor)
		}
		if want := githubAnchor(r.Alert); anchor != want {
			t.Errorf("%s: runbook_url links to #%s, want its own section #%s", r.Alert, anchor, want)
		}
		body, ok := sections[r.Alert]
		if !ok {
			t.Errorf("docs/runbooks.md has no section ## %s", r.Alert)
			continue
		}
		for _, want := range []string{"**What it means.**", "**Check first", "**Silence", "amtool silence add", "alertname=" + r.Alert} {
			if !strings.Contains(body, want) {
				t.Errorf("docs/runbooks.md, section %s: no %q", r.Alert, want)
			}
		}
	}
	// A section for an alert that no longer exists misleads.
	for title := range sections {
		if strings.HasPrefix(title, "SMTP") && !slices.Contains(alerts, title) {
			t.Errorf("docs/runbooks.md has a section %s, which is not an alert of %s", title, rulesFile)
		}
	}
}
