package prober

import (
	"crypto/hmac"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A server may quote back what the client sent, decoded or re-encoded in
// another base64 alphabet, or only the digest of a CRAM-MD5 response: every
// such form is scrubbed, and the username, which is no secret, is not.
func TestScrubQuotedCredentials(t *testing.T) {
	t.Parallel()
	const (
		user = "probe@example.net"
		// The password differs in every base64 alphabet, padded or not.
		password = "Ech0-me?>if-you-dare"
	)
	tr := newTranscript(time.Now(), slog.New(slog.DiscardHandler))
	tr.addSecret(password)
	blob := "\x00" + user + "\x00" + password
	tr.addResponse([]byte(blob), user)
	tr.addResponse([]byte(user), user) // LOGIN's first answer
	mac := hmac.New(md5.New, []byte(password))
	mac.Write([]byte("<1.2@mx>"))
	digest := hex.EncodeToString(mac.Sum(nil))
	tr.addResponse([]byte(user+" "+digest), user)

	forms := []string{password, digest, base64.StdEncoding.EncodeToString([]byte(blob))}
	for _, enc := range base64Encodings {
		forms = append(forms, enc.EncodeToString([]byte(password)))
	}
	for _, form := range forms {
		got := tr.scrub("535 5.7.8 you sent " + form + " for " + user)
		if strings.Contains(got, form) || got != "535 5.7.8 you sent "+Redacted+" for "+user {
			t.Errorf("%q scrubbed to %q", form, got)
		}
	}
	// The password inside the blob goes with the whole blob, not leaving
	// the rest of the blob readable around a marker; the NUL before it is
	// no part of the match.
	if got := tr.scrub(blob); got != "\x00"+Redacted {
		t.Errorf("blob scrubbed to %q", got)
	}
}
