package tenancy

import (
	"bytes"
	"fmt"

	"github.com/tenantvault/tenantvault/manifest"
)

// GroupCountSQL counts the rows of every tenant of a column-model scoped
// table in one pass: rows of (tenant ID as text, count), through the same
// join chain as the snapshot reads them. Rows that reach no tenant are left
// out. With filter, $1 is a text array of the tenants to count.
func GroupCountSQL(t *manifest.Table, filter bool) string {
	fromClause, key := from(t, false)
	where := key + " IS NOT NULL"
	if filter {
		where = key + " = ANY($1::text[])"
	}
	return fmt.Sprintf("SELECT %s::text, count(*) FROM %s WHERE %s GROUP BY 1", key, fromClause, where)
}

// UnescapeCopy decodes one field of PostgreSQL's COPY text format (the
// tenant key that ExportSQL puts before each row).
func UnescapeCopy(b []byte) string {
	if bytes.IndexByte(b, '\\') < 0 {
		return string(b)
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' || i+1 == len(b) {
			out = append(out, c)
			continue
		}
		i++
		switch b[i] {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'v':
			out = append(out, '\v')
		case 'x':
			v, n := 0, 0
			for n < 2 && i+1 < len(b) && isHex(b[i+1]) {
				i++
				v = v*16 + hexVal(b[i])
				n++
			}
			out = append(out, byte(v))
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := int(b[i] - '0')
			for n := 1; n < 3 && i+1 < len(b) && b[i+1] >= '0' && b[i+1] <= '7'; n++ {
				i++
				v = v*8 + int(b[i]-'0')
			}
			out = append(out, byte(v))
		default:
			out = append(out, b[i])
		}
	}
	return string(out)
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	}
	return int(c-'A') + 10
}
