package export

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// errShape is wrapped when COPY text does not have the table's shape.
var errShape = errors.New("COPY text does not match the table")

// copyToCSV converts PostgreSQL COPY text format (rows ending in "\n",
// fields separated by tabs, NULL as \N, backslash escapes) to CSV as
// COPY ... (FORMAT csv) reads it back: NULL is an unquoted empty field and
// every other value is quoted, so an empty string ("") stays an empty
// string and no value can be mistaken for NULL or for the end-of-data
// marker \. . A header line of the quoted column names comes first. Rows
// are converted one at a time: memory holds one row, whatever the table's
// size. It returns the number of rows.
func copyToCSV(r io.Reader, w io.Writer, columns []string) (int64, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	for i, c := range columns {
		if i > 0 {
			bw.WriteByte(',')
		}
		writeQuoted(bw, []byte(c))
	}
	bw.WriteByte('\n')
	br := bufio.NewReaderSize(r, 64<<10)
	var rows int64
	var long []byte // a row longer than the reader's buffer
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long = append(long[:0], line...)
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err == io.EOF {
			if len(line) > 0 {
				return rows, fmt.Errorf("%w: the last row has no line end", errShape)
			}
			break
		}
		if err != nil {
			return rows, err
		}
		if err := convertRow(bw, line[:len(line)-1], len(columns)); err != nil {
			return rows, fmt.Errorf("row %d: %w", rows+1, err)
		}
		rows++
	}
	return rows, bw.Flush()
}

// convertRow writes one COPY text row (without its "\n") as a CSV line.
func convertRow(bw *bufio.Writer, row []byte, ncols int) error {
	n := 0
	for {
		field, rest, more := bytes.Cut(row, []byte{'\t'})
		if n >= ncols {
			return fmt.Errorf("%w: more than %d fields", errShape, ncols)
		}
		if n > 0 {
			bw.WriteByte(',')
		}
		if !(len(field) == 2 && field[0] == '\\' && field[1] == 'N') {
			bw.WriteByte('"')
			unescapeQuoted(bw, field)
			bw.WriteByte('"')
		}
		n++
		if !more {
			break
		}
		row = rest
	}
	if n != ncols {
		return fmt.Errorf("%w: %d fields, the table has %d columns", errShape, n, ncols)
	}
	return bw.WriteByte('\n')
}

// writeQuoted writes s as a quoted CSV value: quotes doubled, everything
// else as it is (line breaks included, which CSV allows inside quotes).
func writeQuoted(bw *bufio.Writer, s []byte) {
	bw.WriteByte('"')
	for _, c := range s {
		if c == '"' {
			bw.WriteByte('"')
		}
		bw.WriteByte(c)
	}
	bw.WriteByte('"')
}

// unescapeQuoted decodes one COPY text field (the escapes PostgreSQL's
// COPY FROM accepts: \b \f \n \r \t \v, \digits octal, \xhex, and a
// backslash before any other character standing for that character) and
// writes it with CSV quotes doubled.
func unescapeQuoted(bw *bufio.Writer, b []byte) {
	put := func(c byte) {
		if c == '"' {
			bw.WriteByte('"')
		}
		bw.WriteByte(c)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' || i+1 == len(b) {
			put(c)
			continue
		}
		i++
		switch b[i] {
		case 'b':
			put('\b')
		case 'f':
			put('\f')
		case 'n':
			put('\n')
		case 'r':
			put('\r')
		case 't':
			put('\t')
		case 'v':
			put('\v')
		case 'x':
			v, n := 0, 0
			for n < 2 && i+1 < len(b) && isHex(b[i+1]) {
				i++
				v = v*16 + hexVal(b[i])
				n++
			}
			if n == 0 {
				put('x') // PostgreSQL reads a lone \x as x
				continue
			}
			put(byte(v))
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := int(b[i] - '0')
			for n := 1; n < 3 && i+1 < len(b) && b[i+1] >= '0' && b[i+1] <= '7'; n++ {
				i++
				v = v*8 + int(b[i]-'0')
			}
			put(byte(v))
		default:
			put(b[i])
		}
	}
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func hexVal(c byte) int {
	switch {
	case c >= 'a':
		return int(c-'a') + 10
	case c >= 'A':
		return int(c-'A') + 10
	}
	return int(c - '0')
}
