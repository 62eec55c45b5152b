package export

import (
	"bytes"
	"encoding/csv"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
)

func TestCopyToCSV(t *testing.T) {
	in := "1\t\\N\t\t\\\\N\n" + // NULL, empty, the text \N
		"2\ta\\tb\\nc\\rd\t\"q\",\\\\\t\\.\n" + // escapes, quotes and commas, \.
		"3\t\\x41\\101\\b\\f\\v\t{\"a b\",NULL}\t\\\\x00ff\n" // hex and octal escapes, an array, bytea
	var out bytes.Buffer
	n, err := copyToCSV(strings.NewReader(in), &out, []string{"id", "a", "b", "c"})
	if err != nil || n != 3 {
		t.Fatalf("%d rows, %v", n, err)
	}
	want := `"id","a","b","c"
"1",,"","\N"
"2","a	b
c` + "\r" + `d","""q"",\","."
"3","AA` + "\b\f\v" + `","{""a b"",NULL}","\x00ff"
`
	if out.String() != want {
		t.Fatalf("got\n%q\nwant\n%q", out.String(), want)
	}
}

func TestCopyToCSVShape(t *testing.T) {
	for _, in := range []string{"1\t2\t3\n", "1\n", "1\t2"} {
		_, err := copyToCSV(strings.NewReader(in), io.Discard, []string{"a", "b"})
		if !errors.Is(err, errShape) {
			t.Errorf("%q: %v", in, err)
		}
	}
}

// TestCopyToCSVRandom: random values, rendered as COPY text renders them,
// come out of a CSV reader as they went in, NULLs as NULLs.
func TestCopyToCSVRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "\t", "\n", "\r", "\\", "\"", ",", "'", "ü", "😀", "N", ".", " ", "\x01", "{", "}"}
	const cols = 4
	var copyText strings.Builder
	var values [][]*string
	for r := 0; r < 2000; r++ {
		row := make([]*string, cols)
		for c := range row {
			if rng.IntN(5) == 0 {
				copyText.WriteString(`\N`)
			} else {
				var v strings.Builder
				for range rng.IntN(6) {
					v.WriteString(alphabet[rng.IntN(len(alphabet))])
				}
				s := v.String()
				row[c] = &s
				copyText.WriteString(copyEscape(s))
			}
			if c < cols-1 {
				copyText.WriteByte('\t')
			}
		}
		copyText.WriteByte('\n')
		values = append(values, row)
	}
	var out bytes.Buffer
	if _, err := copyToCSV(strings.NewReader(copyText.String()), &out, []string{"a", "b", "c", "d"}); err != nil {
		t.Fatal(err)
	}
	// encoding/csv cannot tell NULL from "" (and reads \r\n inside quotes
	// as \n, which PostgreSQL does not): it checks the syntax, and the
	// values come from the raw fields.
	recs, err := csv.NewReader(bytes.NewReader(out.Bytes())).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	lines := splitRecords(out.String())
	if len(recs) != len(values)+1 || len(lines) != len(recs) {
		t.Fatalf("%d records, %d lines, want %d", len(recs), len(lines), len(values)+1)
	}
	for i, row := range values {
		for c, v := range row {
			raw := lines[i+1][c]
			if v == nil {
				if raw != "" {
					t.Fatalf("row %d col %d: NULL came out as %q", i, c, raw)
				}
				continue
			}
			if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
				t.Fatalf("row %d col %d: %q is not quoted", i, c, raw)
			}
			if got := strings.ReplaceAll(raw[1:len(raw)-1], `""`, `"`); got != *v {
				t.Fatalf("row %d col %d: got %q, want %q", i, c, got, *v)
			}
			if tenancy.UnescapeCopy([]byte(copyEscape(*v))) != *v {
				t.Fatal("copyEscape is wrong")
			}
		}
	}
}

// copyEscape renders a value as COPY TO text format does.
func copyEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`, "\b", `\b`, "\f", `\f`, "\v", `\v`).Replace(s)
}

// splitRecords splits CSV text into records of raw fields (quotes kept),
// so that an unquoted empty field (NULL) can be told from "".
func splitRecords(s string) [][]string {
	var recs [][]string
	var rec []string
	var field strings.Builder
	quoted := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '"' && i+1 < len(s) && s[i+1] == '"':
			field.WriteString(`""`)
			i++
		case c == '"':
			quoted = !quoted
			field.WriteByte(c)
		case !quoted && c == ',':
			rec = append(rec, field.String())
			field.Reset()
		case !quoted && c == '\n':
			recs = append(recs, append(rec, field.String()))
			rec = nil
			field.Reset()
		default:
			field.WriteByte(c)
		}
	}
	return recs
}

// TestCopyToCSVStreams: converting does not allocate per row, so memory
// does not grow with a table's size (rows longer than the read buffer
// excepted, which cost their own length once).
func TestCopyToCSVStreams(t *testing.T) {
	row := strings.Repeat("value\\twith\\nescapes\t", 9) + "last\n"
	r := &repeatReader{row: []byte(row), n: 50000}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	n, err := copyToCSV(r, io.Discard, make([]string, 10))
	runtime.ReadMemStats(&after)
	if err != nil || n != 50000 {
		t.Fatalf("%d rows, %v", n, err)
	}
	total := int64(50000 * len(row))
	if alloc := int64(after.TotalAlloc - before.TotalAlloc); alloc > 1<<20 {
		t.Fatalf("converting %d MB allocated %d bytes", total>>20, alloc)
	}
}

type repeatReader struct {
	row []byte
	n   int
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	k := copy(p, r.row[r.off:])
	r.off += k
	if r.off == len(r.row) {
		r.off = 0
		r.n--
	}
	return k, nil
}

func TestSQLType(t *testing.T) {
	for in, want := range map[string]string{
		"integer": "integer", "character varying(20)": "character varying(20)", `"char"`: `"char"`,
		"public.mood": "text", "public.mood[]": "text[]", `"my.schema"."t"[][]`: "text[][]", `public."a.b"`: "text",
		"numeric(10,2)": "numeric(10,2)", "timestamp(3) with time zone": "timestamp(3) with time zone",
	} {
		if got, _ := sqlType(in); got != want {
			t.Errorf("sqlType(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFileName(t *testing.T) {
	long := &manifest.Table{Schema: strings.Repeat("ü", 63), Name: strings.Repeat("%", 63)}
	for _, tc := range []struct {
		t    *manifest.Table
		want string
	}{
		{&manifest.Table{Schema: "public", Name: "tasks"}, "01-public.tasks.csv"},
		{&manifest.Table{Schema: "tenant_a", Name: `Order Lines, "all"`}, "01-tenant_a.%4Frder%20%4Cines%2C%20%22all%22.csv"},
	} {
		if got := fileName(1, tc.t); got != tc.want {
			t.Errorf("fileName(%q) = %q, want %q", tc.t.Name, got, tc.want)
		}
	}
	got := fileName(12, long)
	if len(got) > 200 || !strings.HasPrefix(got, "12-%C3%BC") || !strings.HasSuffix(got, ".csv") || strings.Contains(got[len(got)-22:], "%") {
		t.Fatalf("long name %q (%d bytes)", got, len(got))
	}
	other := &manifest.Table{Schema: long.Schema, Name: long.Name + "x"}
	if fileName(12, other) == got {
		t.Fatal("two long names collide")
	}
}

// TestCopyToCSVLongRow: a row longer than the read buffer converts whole.
func TestCopyToCSVLongRow(t *testing.T) {
	big := strings.Repeat("x\\ty", 100000)
	var out bytes.Buffer
	n, err := copyToCSV(strings.NewReader("1\t"+big+"\n2\t\\N\n"), &out, []string{"a", "b"})
	want := `"a","b"` + "\n" + `"1","` + strings.Repeat("x\ty", 100000) + `"` + "\n" + `"2",` + "\n"
	if err != nil || n != 2 || out.String() != want {
		t.Fatalf("%d rows, %v, %d bytes (want %d)", n, err, out.Len(), len(want))
	}
}
