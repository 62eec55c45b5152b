package tenancy

import "testing"

func TestUnescapeCopy(t *testing.T) {
	for in, want := range map[string]string{
		``: ``, `plain`: `plain`, `a\\b`: `a\b`, `\t\n\r\b\f\v`: "\t\n\r\b\f\v", `\x41\x4`: "A\x04",
		`\101\7z`: "A\az", `\q`: `q`, `end\`: `end\`, `\\N`: `\N`, `ü\tü`: "ü\tü",
	} {
		if got := UnescapeCopy([]byte(in)); got != want {
			t.Errorf("UnescapeCopy(%q) = %q, want %q", in, got, want)
		}
		if got := string(AppendUnescapedCopy([]byte("x"), []byte(in))); got != "x"+want {
			t.Errorf("AppendUnescapedCopy(x, %q) = %q", in, got)
		}
	}
}
