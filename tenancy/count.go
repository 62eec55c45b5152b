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
	return string(AppendUnescapedCopy(make([]byte, 0, len(b)), b))
}

// AppendUnescapedCopy appends the value of the COPY text field b to dst.
func AppendUnescapedCopy(dst, b []byte) []byte {
	for {
		j := bytes.IndexByte(b, '\\')
		if j < 0 || j+1 == len(b) {
			return append(dst, b...)
		}
		dst = append(dst, b[:j]...)
		b = b[j+1:]
		i := 0
		switch b[0] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'v':
			dst = append(dst, '\v')
		case 'x':
			v, n := 0, 0
			for n < 2 && i+1 < len(b) && isHex(b[i+1]) {
				i++
				v = v*16 + hexVal(b[i])
				n++
			}
			dst = append(dst, byte(v))
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := int(b[0] - '0')
			for n := 1; n < 3 && i+1 < len(b) && b[i+1] >= '0' && b[i+1] <= '7'; n++ {
				i++
				v = v*8 + int(b[i]-'0')
			}
			dst = append(dst, byte(v))
		default:
			dst = append(dst, b[0])
		}
		b = b[i+1:]
	}
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
