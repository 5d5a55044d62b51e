package printable

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"220 mx.example.net ESMTP", "220 mx.example.net ESMTP"},
		{"tab\tkept", "tab\tkept"},
		{"é ü 日本 ✓ \uFFFD", "é ü 日本 ✓ \uFFFD"},
		{"a\x00b\x1b[31mc\x7fd", `a\x00b\x1b[31mc\x7fd`},
		{"line\r\nforged", `line\x0d\x0aforged`},
		{"\u0085next line", `\u0085next line`},
		{"invalid \xff\xfe bytes", "invalid \uFFFD\uFFFD bytes"},
		{"evil\u202Egnp.exe", `evil\u202egnp.exe`},
		{"\u2066isolate\u2069 \u2067\u2068", `\u2066isolate\u2069 \u2067\u2068`},
		{"zero\u200Bwidth\u200C\u200D\u200E\u200F", `zero\u200bwidth\u200c\u200d\u200e\u200f`},
		{"\uFEFFbom", `\ufeffbom`},
		{"\u2028sep\u2029", `\u2028sep\u2029`},
		{"soft\u00ADhyphen", `soft\u00adhyphen`},
		{"\u061Carabic mark \u2060joiner", `\u061carabic mark \u2060joiner`},
		{"tag\U000E0041\U000E007F", `tag\U000e0041\U000e007f`},
		{"filler\u3164\u115F\u034F", `filler\u3164\u115f\u034f`},
		{"variation\uFE0F", `variation\ufe0f`},
		{`already \u202e escaped`, `already \u202e escaped`},
	} {
		got := String(tc.in)
		if got != tc.want {
			t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if again := String(got); again != got {
			t.Errorf("String(String(%q)) = %q, want %q", tc.in, again, got)
		}
		if strings.ContainsFunc(got, Unsafe) || !utf8.ValidString(got) {
			t.Errorf("String(%q) = %q still holds an unsafe rune", tc.in, got)
		}
	}
}

func TestBounded(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"longer than ten", 10, "longer tha..."},
		{"日本語", 4, "日..."},
		{"ab\u202Ecd", 5, "ab..."},
		{"ab\u202Ecd", 8, `ab\u202e...`},
		{"ab\u202Ecd", 10, `ab\u202ecd`},
		{"ab\x00", 4, "ab..."},
		{"", 0, ""},
		{"x", 0, "..."},
		{"no \u200B bound", -1, `no \u200b bound`},
	} {
		if got := Bounded(tc.in, tc.max); got != tc.want {
			t.Errorf("Bounded(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
}

func FuzzString(f *testing.F) {
	for _, seed := range []string{"220 ok", "a\u202Eb\x00\xff", "\U000E0001", `\u202e`} {
		f.Add(seed, 20)
	}
	f.Fuzz(func(t *testing.T, s string, max int) {
		max %= 1000
		got := Bounded(s, max)
		if !utf8.ValidString(got) || strings.ContainsFunc(got, Unsafe) {
			t.Fatalf("Bounded(%q, %d) = %q holds an unsafe rune", s, max, got)
		}
		if max >= 0 && len(got) > max+len("...") {
			t.Fatalf("Bounded(%q, %d) = %d bytes", s, max, len(got))
		}
		if full := String(s); String(full) != full {
			t.Fatalf("String is not idempotent on %q", s)
		}
	})
}
