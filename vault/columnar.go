package vault

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
)

// Columnar layout (codec CodecColumnar): chunk content, COPY text rows, is
// stored one block at a time with each block's values grouped by column,
// so the compressor sees a column's similar values side by side instead of
// interleaved with the other columns' (docs/FORMAT.md, Columnar layout).
// The layout changes only how bytes are stored: digests stay over the COPY
// text, and a block that is not clean COPY text is kept as it is.

// Column kinds in a columnar block.
const (
	colText  byte = 0 // values each ended by '\n'
	colInt   byte = 1 // decimal int64 values as zigzag varint deltas
	colRaw   byte = 2 // not a column: the block's bytes as they are
	colTime  byte = 3 // timestamps sharing a suffix, as microsecond deltas
	maxBlock      = 1 << 20
)

// columnarEncoder lays blocks of rows out by column. Its buffers are reused
// from block to block.
type columnarEncoder struct {
	starts []int32 // per value: offset in the block of its first byte
	ends   []int32 // and of its separator
	ints   []int64
	tmp    []byte
}

// blockEnd is where the first block of data ends: after its last whole
// row within maxBlock bytes, or at maxBlock within a longer row.
func blockEnd(data []byte) int {
	if len(data) <= maxBlock {
		return len(data)
	}
	if i := bytes.LastIndexByte(data[:maxBlock], '\n'); i >= 0 {
		return i + 1
	}
	return maxBlock
}

// encodeAll appends the columnar form of data, cut into blocks, to dst.
func (e *columnarEncoder) encodeAll(dst, data []byte) []byte {
	for len(data) > 0 {
		n := blockEnd(data)
		dst = e.encode(dst, data[:n])
		data = data[n:]
	}
	return dst
}

// encode appends the columnar form of block (1 to maxBlock bytes) to dst:
// by column when it is whole rows of COPY text, as it is otherwise.
func (e *columnarEncoder) encode(dst, block []byte) []byte {
	rows, cols, ok := e.split(block)
	if !ok {
		dst = binary.AppendUvarint(dst, 0)
		dst = append(dst, colRaw)
		dst = binary.AppendUvarint(dst, uint64(len(block)))
		return append(dst, block...)
	}
	dst = binary.AppendUvarint(dst, uint64(rows))
	dst = binary.AppendUvarint(dst, uint64(cols))
	for c := range cols {
		if e.parseInts(block, rows, cols, c) {
			dst = e.appendDeltas(append(dst, colInt))
			continue
		}
		if suffix, ok := e.parseTimes(block, rows, cols, c); ok {
			dst = binary.AppendUvarint(append(dst, colTime), uint64(len(suffix)))
			dst = e.appendDeltas(append(dst, suffix...))
			continue
		}
		n := 0
		for r := range rows {
			i := r*cols + c
			n += int(e.ends[i]-e.starts[i]) + 1
		}
		dst = append(dst, colText)
		dst = binary.AppendUvarint(dst, uint64(n))
		for r := range rows {
			i := r*cols + c
			dst = append(dst, block[e.starts[i]:e.ends[i]]...)
			dst = append(dst, '\n')
		}
	}
	return dst
}

// appendDeltas appends e.ints as varint differences, each from the one
// before it.
func (e *columnarEncoder) appendDeltas(dst []byte) []byte {
	prev := int64(0)
	for _, v := range e.ints {
		dst = binary.AppendVarint(dst, v-prev)
		prev = v
	}
	return dst
}

// split finds the values of block's rows; ok is false unless every row has
// the same number of tab-separated values and ends in '\n'.
func (e *columnarEncoder) split(block []byte) (rows, cols int, ok bool) {
	e.starts, e.ends = e.starts[:0], e.ends[:0]
	if len(block) == 0 || block[len(block)-1] != '\n' {
		return 0, 0, false
	}
	start := int32(0)
	rowCols := 0
	for i, b := range block {
		if b != '\t' && b != '\n' {
			continue
		}
		e.starts, e.ends = append(e.starts, start), append(e.ends, int32(i))
		start = int32(i) + 1
		rowCols++
		if b == '\n' {
			if cols == 0 {
				cols = rowCols
			} else if rowCols != cols {
				return 0, 0, false
			}
			rows++
			rowCols = 0
		}
	}
	return rows, cols, true
}

// parseInts fills e.ints with column c's values if every one is an int64
// in the form strconv.AppendInt writes, so that decoding gives the bytes
// back exactly.
func (e *columnarEncoder) parseInts(block []byte, rows, cols, c int) bool {
	e.ints = e.ints[:0]
	for r := range rows {
		i := r*cols + c
		v, ok := canonicalInt(block[e.starts[i]:e.ends[i]])
		if !ok {
			return false
		}
		e.ints = append(e.ints, v)
	}
	return true
}

// parseTimes fills e.ints with column c's values as microseconds if every
// one is a timestamp in the form appendTime writes followed by the same
// suffix (the time zone, "+00" in a snapshot's UTC session).
func (e *columnarEncoder) parseTimes(block []byte, rows, cols, c int) (suffix []byte, ok bool) {
	e.ints = e.ints[:0]
	for r := range rows {
		i := r*cols + c
		v := block[e.starts[i]:e.ends[i]]
		us, n, ok := parseTime(v)
		if !ok || us < minTime || us >= maxTime {
			return nil, false
		}
		if r == 0 {
			suffix = v[n:]
			if len(suffix) > maxSuffix {
				return nil, false
			}
		} else if !bytes.Equal(v[n:], suffix) {
			return nil, false
		}
		e.tmp = appendTime(e.tmp[:0], us)
		if !bytes.Equal(e.tmp, v[:n]) {
			return nil, false
		}
		e.ints = append(e.ints, us)
	}
	return suffix, true
}

// canonicalInt parses b as a decimal integer written without a plus sign,
// leading zeros or "-0"; 19-digit values are left to text, which keeps
// the parse free of overflow checks.
func canonicalInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	d := b
	if neg {
		d = b[1:]
	}
	if len(d) == 0 || len(d) > 18 || (d[0] == '0' && (len(d) > 1 || neg)) {
		return 0, false
	}
	var v int64
	for _, ch := range d {
		if ch < '0' || ch > '9' {
			return 0, false
		}
		v = v*10 + int64(ch-'0')
	}
	if neg {
		v = -v
	}
	return v, true
}

// columnarReader turns the columnar blocks read from r back into rows.
// Every block it decodes is at most maxBlock bytes of rows, as the writer
// makes them, so its buffers stay bounded whatever the input.
type columnarReader struct {
	r     *bufio.Reader
	out   []byte      // rows of the current block not yet read
	row   []byte      // the block's rows
	text  []byte      // the block's values, column after column
	spans []valueSpan // per value, column after column: where it is in text
	err   error
}

type valueSpan struct{ off, end int32 }

var columnarReaders = sync.Pool{New: func() any {
	return &columnarReader{r: bufio.NewReaderSize(nil, 64<<10)}
}}

// newColumnarReader returns a pooled reader of the columnar stream r;
// release returns it.
func newColumnarReader(r io.Reader) *columnarReader {
	c := columnarReaders.Get().(*columnarReader)
	c.r.Reset(r)
	c.out, c.err = nil, nil
	return c
}

func (c *columnarReader) release() {
	c.r.Reset(nil)
	c.out = nil
	columnarReaders.Put(c)
}

func (c *columnarReader) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		c.err = c.next()
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// errColumnar is a malformed columnar block: damage the content digest
// would also catch, reported before it.
var errColumnar = errors.New("malformed columnar block")

// next decodes one block into c.out; io.EOF after the last.
func (c *columnarReader) next() error {
	rows, err := binary.ReadUvarint(c.r)
	if err == io.EOF {
		return io.EOF
	}
	if err != nil {
		return c.malformed(err)
	}
	if rows == 0 {
		kind, err := c.r.ReadByte()
		if err != nil || kind != colRaw {
			return c.malformed(err)
		}
		n, err := binary.ReadUvarint(c.r)
		if err != nil || n == 0 || n > maxBlock {
			return c.malformed(err)
		}
		c.row = slices.Grow(c.row[:0], int(n))[:n]
		if _, err := io.ReadFull(c.r, c.row); err != nil {
			return c.malformed(err)
		}
		c.out = c.row
		return nil
	}
	cols, err := binary.ReadUvarint(c.r)
	// Each value takes at least its separator: a block of maxBlock bytes
	// holds at most maxBlock values, and its values at most maxBlock
	// bytes less one per value.
	if err != nil || cols == 0 || rows > maxBlock || cols > maxBlock || rows*cols > maxBlock {
		return c.malformed(err)
	}
	nr, nc := int(rows), int(cols)
	budget := maxBlock - nr*nc
	c.text, c.spans = c.text[:0], c.spans[:0]
	for range nc {
		kind, err := c.r.ReadByte()
		if err != nil {
			return c.malformed(err)
		}
		switch kind {
		case colText:
			n, err := binary.ReadUvarint(c.r)
			if err != nil || n < rows || n-rows > uint64(budget-len(c.text)) {
				return c.malformed(err)
			}
			off := len(c.text)
			c.text = slices.Grow(c.text, int(n))[:off+int(n)]
			if _, err := io.ReadFull(c.r, c.text[off:]); err != nil {
				return c.malformed(err)
			}
			start := off
			for range nr {
				i := bytes.IndexByte(c.text[start:], '\n')
				if i < 0 {
					return c.malformed(nil)
				}
				c.spans = append(c.spans, valueSpan{int32(start), int32(start + i)})
				start += i + 1
			}
			if start != len(c.text) {
				return c.malformed(nil)
			}
			// The separators do not count against the budget.
			budget += nr
		case colInt:
			if err := c.deltas(nr, budget, func(v int64) bool {
				c.text = strconv.AppendInt(c.text, v, 10)
				return true
			}); err != nil {
				return err
			}
		case colTime:
			n, err := binary.ReadUvarint(c.r)
			if err != nil || n > maxSuffix {
				return c.malformed(err)
			}
			var suffix [maxSuffix]byte
			if _, err := io.ReadFull(c.r, suffix[:n]); err != nil {
				return c.malformed(err)
			}
			if err := c.deltas(nr, budget, func(v int64) bool {
				if v < minTime || v >= maxTime {
					return false
				}
				c.text = append(appendTime(c.text, v), suffix[:n]...)
				return true
			}); err != nil {
				return err
			}
		default:
			return c.malformed(nil)
		}
	}
	c.row = c.row[:0]
	for r := range nr {
		for col := range nc {
			s := c.spans[col*nr+r]
			c.row = append(c.row, c.text[s.off:s.end]...)
			c.row = append(c.row, '\t')
		}
		c.row[len(c.row)-1] = '\n'
	}
	c.out = c.row
	return nil
}

// deltas reads a column of nr varint differences and has render append
// each running value to c.text; render refuses a value out of its range.
func (c *columnarReader) deltas(nr, budget int, render func(v int64) bool) error {
	prev := int64(0)
	for range nr {
		d, err := binary.ReadVarint(c.r)
		if err != nil {
			return c.malformed(err)
		}
		prev += d
		off := len(c.text)
		if !render(prev) || len(c.text) > budget {
			return c.malformed(nil)
		}
		c.spans = append(c.spans, valueSpan{int32(off), int32(len(c.text))})
	}
	return nil
}

func (c *columnarReader) malformed(err error) error {
	if err == nil || err == io.EOF {
		return fmt.Errorf("%w", errColumnar)
	}
	return fmt.Errorf("%w: %v", errColumnar, err)
}

const (
	maxSuffix = 16
	usPerDay  = 86400 * 1000000
	// Microseconds from 0001-01-01 to 1970-01-01 and to 10000-01-01: the
	// range of four-digit years that appendTime writes.
	minTime = -719162 * usPerDay
	maxTime = 2932897 * usPerDay
)

// parseTime reads "YYYY-MM-DD HH:MM:SS" with an optional fraction of one
// to six digits from the start of b, as microseconds since 1970-01-01,
// and how many bytes it took. It does not check that the fields are in
// range: the caller compares appendTime's rendering with the input.
func parseTime(b []byte) (us int64, n int, ok bool) {
	if len(b) < 19 || b[4] != '-' || b[7] != '-' || b[10] != ' ' || b[13] != ':' || b[16] != ':' {
		return 0, 0, false
	}
	num := func(from, to int) (int64, bool) {
		var v int64
		for _, ch := range b[from:to] {
			if ch < '0' || ch > '9' {
				return 0, false
			}
			v = v*10 + int64(ch-'0')
		}
		return v, true
	}
	y, ok1 := num(0, 4)
	mo, ok2 := num(5, 7)
	d, ok3 := num(8, 10)
	h, ok4 := num(11, 13)
	mi, ok5 := num(14, 16)
	s, ok6 := num(17, 19)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || mo < 1 || mo > 12 {
		return 0, 0, false
	}
	us = ((daysFromCivil(y, mo, d)*24+h)*60+mi)*60 + s
	us *= 1000000
	n = 19
	if n < len(b) && b[n] == '.' {
		scale := int64(100000)
		var frac int64
		for n++; n < len(b) && n < 27 && b[n] >= '0' && b[n] <= '9'; n++ {
			frac += int64(b[n]-'0') * scale
			scale /= 10
		}
		if n == 20 {
			return 0, 0, false
		}
		us += frac
	}
	return us, n, true
}

// appendTime writes us (microseconds since 1970-01-01, within
// [minTime, maxTime)) as PostgreSQL writes a timestamp in ISO style: the
// fraction without its trailing zeros, none when it is zero.
func appendTime(dst []byte, us int64) []byte {
	days := floorDiv(us, usPerDay)
	rest := us - days*usPerDay
	y, mo, d := civilFromDays(days)
	secs, frac := rest/1000000, rest%1000000
	pad := func(v int64, width int) {
		for p := int64(1); width > 1; width-- {
			p *= 10
			if v < p {
				dst = append(dst, '0')
			}
		}
		dst = strconv.AppendInt(dst, v, 10)
	}
	pad(y, 4)
	dst = append(dst, '-')
	pad(mo, 2)
	dst = append(dst, '-')
	pad(d, 2)
	dst = append(dst, ' ')
	pad(secs/3600, 2)
	dst = append(dst, ':')
	pad(secs/60%60, 2)
	dst = append(dst, ':')
	pad(secs%60, 2)
	if frac != 0 {
		dst = append(dst, '.')
		digits := 6
		for frac%10 == 0 {
			frac /= 10
			digits--
		}
		pad(frac, digits)
	}
	return dst
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// daysFromCivil and civilFromDays convert between proleptic Gregorian
// dates and days since 1970-01-01 (Howard Hinnant's algorithms).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := floorDiv(y, 400)
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

func civilFromDays(z int64) (y, m, d int64) {
	z += 719468
	era := floorDiv(z, 146097)
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y = yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d = doy - (153*mp+2)/5 + 1
	m = mp + 3
	if m > 12 {
		m -= 12
	}
	if m <= 2 {
		y++
	}
	return y, m, d
}
