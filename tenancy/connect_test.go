package tenancy

import "testing"

func TestURLWithDatabase(t *testing.T) {
	cases := []struct{ in, want string }{
		{"postgres://u:p@h:5433/postgres?sslmode=disable", "postgres://u:p@h:5433/tenantvault_drill_x?sslmode=disable"},
		{"postgresql://h/postgres?dbname=other&application_name=a", "postgresql://h/tenantvault_drill_x?application_name=a"},
		{"postgres://h", "postgres://h/tenantvault_drill_x"},
		{"host=h user=u dbname=postgres", "host=h user=u dbname=postgres dbname='tenantvault_drill_x'"},
	}
	for _, c := range cases {
		got, err := URLWithDatabase(c.in, "tenantvault_drill_x")
		if err != nil || got != c.want {
			t.Errorf("URLWithDatabase(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	if _, err := URLWithDatabase("postgres://h/%zz", "x"); err == nil {
		t.Error("a malformed URL was accepted")
	}
}

func TestRedactURL(t *testing.T) {
	cases := []struct{ in, want string }{
		{"postgres://u:secret@h/db", "postgres://u:REDACTED@h/db"},
		{"postgres://u@h/db?password=secret", "postgres://u@h/db?password=REDACTED"},
		{"postgres://u:secret@[::1", "postgres://u:REDACTED@[::1"},
		{"host=h password=secret user=u", "host=h password=REDACTED user=u"},
		{"postgres://h/db", "postgres://h/db"},
	}
	for _, c := range cases {
		if got := RedactURL(c.in); got != c.want {
			t.Errorf("RedactURL(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestLiteral(t *testing.T) {
	cases := [][2]string{{"", "''"}, {"o'brien", "'o''brien'"}, {"a/../b", "'a/../b'"}, {"x''", "'x'''''"}}
	for _, c := range cases {
		if got := Literal(c[0]); got != c[1] {
			t.Errorf("Literal(%q) = %s, want %s", c[0], got, c[1])
		}
	}
}
