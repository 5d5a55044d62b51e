package prober

import (
	"strings"
	"testing"
)

// TestQueueIDForms reads the queue id from the replies real servers give
// to the end of DATA, and none from replies that hold no id.
func TestQueueIDForms(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		server string
		lines  []string // as received, with the reply code
		want   string
	}{
		{"Postfix", []string{"250 2.0.0 Ok: queued as 4Xyz1234AB"}, "4Xyz1234AB"},
		{"Postfix, long queue ids", []string{"250 2.0.0 Ok: queued as 4cK9xY1Z2Tz1xyzA"}, "4cK9xY1Z2Tz1xyzA"},
		{"SendGrid", []string{"250 Ok: queued as JpQlcpr-TsSQ9Vx3b4fA8w"}, "JpQlcpr-TsSQ9Vx3b4fA8w"},
		{"queued as, in brackets", []string{"250 2.0.0 Ok: queued as <20240101.abc@mx.example>"}, "20240101.abc@mx.example"},
		{"Exim", []string{"250 OK id=1rABCd-000Abc-XY"}, "1rABCd-000Abc-XY"},
		{"Exim 4.97", []string{"250 OK id=1sXyZa-00000000Abc-1234"}, "1sXyZa-00000000Abc-1234"},
		{"sendmail", []string{"250 2.0.0 x9SH1kQ3012345 Message accepted for delivery"}, "x9SH1kQ3012345"},
		{"sendmail without an enhanced code", []string{"250 x9SH1kQ3012345 Message accepted for delivery"}, "x9SH1kQ3012345"},
		{"OpenSMTPD", []string{"250 2.0.0 5b1c0a6e Message accepted for delivery"}, "5b1c0a6e"},
		{"OpenSMTPD before 6.6", []string{"250 2.0.0: 5b1c0a6e Message accepted for delivery"}, "5b1c0a6e"},
		{"Proofpoint", []string{"250 2.0.0 3xq2ab1c9d-1 Message accepted for delivery"}, "3xq2ab1c9d-1"},
		{"Gmail", []string{"250 2.0.0 OK  1700000000 d9443c01a7336-1d4c1e3e5f6si1234567pla.123 - gsmtp"}, "d9443c01a7336-1d4c1e3e5f6si1234567pla.123"},
		{"Microsoft 365", []string{"250 2.6.0 <probe-1@example.net> [InternalId=12369505419780, Hostname=AM0PR01MB1234.eurprd01.prod.exchangelabs.com] 5432 bytes in 0.045, 117.513 KB/sec Queued mail for delivery"}, "12369505419780"},
		{"Exchange Server", []string{"250 2.6.0 <probe-1@example.net> [InternalId=4411763474433, Hostname=EX01.corp.example.net] Queued mail for delivery"}, "4411763474433"},
		{"Amazon SES", []string{"250 Ok 0100018c2a3b4c5d-6e7f8a9b-0c1d-2e3f-4a5b-6c7d8e9f0a1b-000000"}, "0100018c2a3b4c5d-6e7f8a9b-0c1d-2e3f-4a5b-6c7d8e9f0a1b-000000"},
		{"qmail", []string{"250 ok 1700000000 qp 12345"}, "12345"},
		{"Haraka", []string{"250 Message Queued (8C2E9F3A-1234-4C5D-9E6F-0123456789AB.1.1)"}, "8C2E9F3A-1234-4C5D-9E6F-0123456789AB.1.1"},
		{"Courier", []string{"250 Ok. 004C46A1.4F8E3D6C.00003F21"}, "004C46A1.4F8E3D6C.00003F21"},
		{"on a later line", []string{"250-2.0.0 Thanks", "250 2.0.0 Ok: queued as 4Xyz"}, "4Xyz"},

		// Replies that name no id.
		{"Postfix without an id", []string{"250 2.0.0 Ok"}, ""},
		{"no id before the text", []string{"250 Message accepted for delivery"}, ""},
		{"Microsoft 365, no InternalId", []string{"250 2.6.0 <probe-1@example.net> Queued mail for delivery"}, ""},
		{"Mailgun", []string{"250 Great success"}, ""},
		{"a bare Ok", []string{"250 ok"}, ""},
		{"a Message-ID is not an id=", []string{"250 2.0.0 Ok <msgid=abc@x>"}, ""},
		{"an id that is too long", []string{"250 2.0.0 Ok: queued as " + strings.Repeat("A", 80)}, strings.Repeat("A", 64)},
		{"an id with what no id holds", []string{"250 2.0.0 Ok: queued as \u202eevil"}, ""},
	} {
		t.Run(tc.server, func(t *testing.T) {
			rep := replyFrom(t, tc.lines)
			if got := queueID(rep); got != tc.want {
				t.Errorf("queueID(%q) = %q, want %q", tc.lines, got, tc.want)
			}
		})
	}
}

// replyFrom makes a reply of lines as received: "250-text" or "250 text".
func replyFrom(t *testing.T, lines []string) *Reply {
	t.Helper()
	rep := &Reply{Code: 250}
	for _, l := range lines {
		text, ok := strings.CutPrefix(l, "250")
		if !ok || text == "" || (text[0] != ' ' && text[0] != '-') {
			t.Fatalf("%q is not a 250 reply line", l)
		}
		rep.Lines = append(rep.Lines, text[1:])
	}
	rep.Enhanced = parseEnhanced(rep.Lines[0])
	return rep
}
