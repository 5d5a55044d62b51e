package prober

import (
	"slices"
	"strconv"
	"strings"
)

// Bounds on what an EHLO reply can put into a Result: keywords become metric
// labels, so they are sanitized and few.
const (
	maxExtensions    = 32
	maxKeywordLen    = 32
	maxMechanisms    = 32
	maxMechanismLen  = 32
	maxSizeParameter = 20
)

// extensions is what one EHLO reply advertised.
type extensions struct {
	// keywords are upper-cased, reduced to [A-Z0-9-], deduplicated and
	// capped, in the order advertised.
	keywords []string
	// params holds the raw parameters by keyword.
	params map[string]string
	// auth is the union of the mechanisms on every AUTH line, both
	// "AUTH LOGIN PLAIN" and the old "AUTH=LOGIN PLAIN".
	auth []string
	// size is the SIZE limit: -1 when not advertised, 0 for no limit.
	size int64
}

func (e extensions) has(keyword string) bool {
	_, ok := e.params[keyword]
	return ok
}

// parseEHLO reads the extension lines of an EHLO reply; the first line is the
// server's greeting, and the last ("250 KEYWORD") counts like the others.
// Keywords are matched case-insensitively ("250-auth login",
// "250-Size 10240000").
func parseEHLO(rep *Reply) extensions {
	ext := extensions{params: map[string]string{}, size: -1}
	for _, line := range rep.Lines[1:] {
		line = strings.TrimSpace(line)
		keyword, params, _ := strings.Cut(line, " ")
		if k, p, found := strings.Cut(keyword, "="); found {
			// The pre-standard "AUTH=LOGIN PLAIN" form.
			keyword, params = k, strings.TrimSpace(p+" "+params)
		}
		keyword = sanitizeKeyword(keyword, "-", maxKeywordLen)
		if keyword == "" {
			continue
		}
		params = strings.TrimSpace(params)
		if _, seen := ext.params[keyword]; !seen {
			if len(ext.keywords) >= maxExtensions {
				continue
			}
			ext.keywords = append(ext.keywords, keyword)
			ext.params[keyword] = params
		}
		switch keyword {
		case "AUTH":
			for _, m := range strings.Fields(params) {
				m = sanitizeKeyword(m, "-_", maxMechanismLen)
				if m != "" && !slices.Contains(ext.auth, m) && len(ext.auth) < maxMechanisms {
					ext.auth = append(ext.auth, m)
				}
			}
		case "SIZE":
			ext.size = parseSize(params)
		}
	}
	return ext
}

// parseSize reads a SIZE parameter; no parameter, or one that is not a
// number, means the server announced no usable limit (0).
func parseSize(params string) int64 {
	f := strings.Fields(params)
	if len(f) == 0 || len(f[0]) > maxSizeParameter {
		return 0
	}
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// sanitizeKeyword upper-cases s and keeps only letters, digits and the
// given extra characters, at most max of them.
func sanitizeKeyword(s, extra string, max int) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(s) {
		if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') || strings.ContainsRune(extra, r) {
			b.WriteRune(r)
			if b.Len() == max {
				break
			}
		}
	}
	return b.String()
}
