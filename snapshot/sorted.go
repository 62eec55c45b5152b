package snapshot

import (
	"bufio"
	"bytes"
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
)

// The sorted export: the server streams a table with a plain COPY (no
// ORDER BY, and for a foreign-key chain no join on its last hop), and the
// client puts the rows in exactly the order tenancy.ExportSQL's ORDER BY
// gives, so chunks and digests are byte for byte those of the ordered
// export and of the restore's tenancy.TenantCopySQL.
//
// The order is (tenant key as text, "C"), then the primary key with text
// compared byte-wise, or without a key the row's ROW(...)::text. The
// client reproduces it only where that order is a plain byte comparison
// of something it can compute from the COPY text: every key column an
// int2/int4/int8 (signed), text, varchar or uuid (lower-case hex, which
// sorts as the 16 bytes do), the tenant key one of those types (its
// ::text is its COPY text), and a UTF-8 database (so "C" compares the
// bytes the client receives). Anything else takes the ordered export.
//
// Rows go into an arena of sortMem bytes per worker; a full arena is
// sorted and written to a temporary run file, and the runs are merged at
// the end, at most mergeFanIn at a time. A table that fits one arena never
// touches the disk.

// sortMem is the arena of one export worker: rows, their sort keys and 24
// bytes of bookkeeping per row.
var sortMem = 32 << 20

// mergeFanIn is how many run files one merge pass reads at once (each
// through a 64 KiB buffer); more runs are first merged into longer ones.
const mergeFanIn = 64

// maxParentRows bounds the (key, tenant) pairs held for routed exports in
// one snapshot, 16 bytes each (plus each tenant ID once): 4 Mi pairs are
// 64 MiB. A last hop to a larger table is joined on the server instead.
var maxParentRows int64 = 4 << 20

// SortKinds of key fields.
const (
	kindInt = iota + 1
	kindText
)

type sortField struct {
	field int // index among the exported columns
	kind  int
}

// sortPlan is how the client orders one table's rows.
type sortPlan struct {
	sql      string
	prefixed bool
	keys     []sortField
	record   bool       // no primary key: order by the row's record text
	route    *parentMap // prefix is the last hop's key, mapped to a tenant
	maxField int        // the last field the keys need
}

func sortKind(typ string) int {
	switch {
	case typ == "smallint" || typ == "integer" || typ == "bigint":
		return kindInt
	case typ == "text" || typ == "uuid" || typ == "character varying" || strings.HasPrefix(typ, "character varying("):
		return kindText
	}
	return 0
}

func findTable(tables []manifest.Table, schema, name string) *manifest.Table {
	for i := range tables {
		if tables[i].Schema == schema && tables[i].Name == name {
			return &tables[i]
		}
	}
	return nil
}

func columnType(t *manifest.Table, name string) string {
	if t == nil {
		return ""
	}
	for _, c := range t.Columns {
		if c.Name == name {
			return c.Type
		}
	}
	return ""
}

// planSort decides whether the client can order table ti and how; nil
// means the server's ordered export.
func (r *run) planSort(ctx context.Context, conn *pgx.Conn, tables []manifest.Table, ti int) (*sortPlan, error) {
	if r.o.ServerSort {
		return nil, nil
	}
	t := &tables[ti]
	var enc, ctype string
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_encoding'), (SELECT datctype FROM pg_database WHERE datname = current_database())").Scan(&enc, &ctype); err != nil {
		return nil, fmt.Errorf("read the database's encoding and LC_CTYPE: %w", err)
	}
	if enc != "UTF8" {
		return nil, nil
	}
	p := &sortPlan{prefixed: t.Scope != nil, maxField: -1}
	cols := tenancy.Exported(t)
	if len(t.Key) == 0 {
		// record_out quotes what isspace() calls white space, in the
		// database's LC_CTYPE: only in C and UTF-8 locales is that
		// exactly the six ASCII spaces.
		lc := strings.ToLower(ctype)
		if lc != "c" && lc != "posix" && !strings.Contains(lc, "utf-8") && !strings.Contains(lc, "utf8") {
			return nil, nil
		}
		p.record, p.maxField = true, len(cols)-1
	}
	for _, k := range t.Key {
		f := slices.IndexFunc(cols, func(c manifest.Column) bool { return c.Name == k })
		if f < 0 {
			return nil, nil // a generated key column: not in the COPY
		}
		kind := sortKind(cols[f].Type)
		if kind == 0 {
			return nil, nil
		}
		p.keys = append(p.keys, sortField{field: f, kind: kind})
		p.maxField = max(p.maxField, f)
	}
	p.sql = tenancy.PlainExportSQL(t, r.o.Tenants)
	if !p.prefixed {
		return p, nil
	}
	hops := t.Scope.Hops
	holder := t
	if len(hops) > 0 {
		last := hops[len(hops)-1]
		holder = findTable(tables, last.RefSchema, last.RefTable)
	}
	if sortKind(columnType(holder, t.Scope.Column)) == 0 {
		return nil, nil
	}
	if len(hops) == 0 || len(r.o.Tenants) > 0 {
		return p, nil
	}
	last := hops[len(hops)-1]
	child := t
	if len(hops) > 1 {
		h := hops[len(hops)-2]
		child = findTable(tables, h.RefSchema, h.RefTable)
	}
	if len(last.Columns) != 1 || sortKind(columnType(holder, last.RefCols[0])) != kindInt || sortKind(columnType(child, last.Columns[0])) != kindInt {
		return p, nil
	}
	m, err := r.parents.get(ctx, conn, t.Database, last, t.Scope.Column)
	if err != nil {
		return nil, err
	}
	if m != nil {
		p.route, p.sql = m, tenancy.RoutedExportSQL(t)
	}
	return p, nil
}

// ent is one row in the arena: its sort key at off, then its line.
type ent struct {
	pfx  uint64 // the key's first 8 bytes, big-endian, zero-padded
	off  uint32
	klen uint32
	llen uint32
}

// arena holds rows until they are sorted; one per export worker.
type arena struct {
	buf  []byte
	ents []ent
}

const entSize = 24

func (a *arena) used() int { return len(a.buf) + entSize*len(a.ents) }

func (a *arena) key(e ent) []byte { return a.buf[e.off : e.off+e.klen] }

func (a *arena) line(e ent) []byte { return a.buf[e.off+e.klen : e.off+e.klen+e.llen] }

func (a *arena) sort() {
	slices.SortFunc(a.ents, func(x, y ent) int {
		if x.pfx != y.pfx {
			if x.pfx < y.pfx {
				return -1
			}
			return 1
		}
		return bytes.Compare(a.key(x), a.key(y))
	})
}

func (a *arena) reset() {
	a.buf, a.ents = a.buf[:0], a.ents[:0]
}

func keyPrefix(k []byte) uint64 {
	var b [8]byte
	copy(b[:], k)
	return binary.BigEndian.Uint64(b[:])
}

// getArena lends a worker's arena.
func (r *run) getArena() *arena {
	r.arenaMu.Lock()
	defer r.arenaMu.Unlock()
	if n := len(r.arenas); n > 0 {
		a := r.arenas[n-1]
		r.arenas = r.arenas[:n-1]
		return a
	}
	// It starts small: allocated whole, its untouched pages cost no memory
	// but count to the heap the collector lets grow (GOGC), so the export
	// of 30,000 small tables let as much garbage pile up.
	return &arena{buf: make([]byte, 0, 64<<10)}
}

func (r *run) putArena(a *arena) {
	a.reset()
	r.arenaMu.Lock()
	r.arenas = append(r.arenas, a)
	r.arenaMu.Unlock()
}

// sorter receives the plain COPY, sorts it and hands the rows, in
// canonical order, to the splitter.
type sorter struct {
	p       *sortPlan
	s       *splitter
	a       *arena
	tempDir string
	runs    []*os.File
	carry   []byte
	key     []byte
	field   [][]byte
	rec     []byte
	out     []byte // a batch of lines of an unprefixed table
	err     error
}

func (so *sorter) Write(p []byte) (int, error) {
	if so.err != nil {
		return 0, so.err
	}
	n := len(p)
	if len(so.carry) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			so.carry = append(so.carry, p...)
			return n, nil
		}
		so.carry = append(so.carry, p[:i+1]...)
		so.add(so.carry)
		so.carry = so.carry[:0]
		p = p[i+1:]
	}
	for len(p) > 0 && so.err == nil {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			so.carry = append(so.carry, p...)
			break
		}
		so.add(p[:i+1])
		p = p[i+1:]
	}
	return n, so.err
}

// add computes a row's sort key and puts it into the arena. The key is a
// byte string whose order is the canonical order: for a prefixed table
// 0x00, the tenant key's text and 0x00 (or 0x01 for NULL, last as in
// ORDER BY); then each key column (an int as 8 big-endian bytes with the
// sign bit flipped, text as its bytes and 0x00, which text never holds),
// or the record text.
func (so *sorter) add(l []byte) {
	p := so.p
	k := so.key[:0]
	var prefix []byte
	row := l
	if p.prefixed {
		tab := bytes.IndexByte(l, '\t')
		if tab < 0 {
			so.err = fmt.Errorf("malformed COPY row in %s", so.s.t.QualifiedName())
			return
		}
		prefix, row = l[:tab], l[tab+1:]
		if p.route != nil {
			var err error
			if prefix, err = p.route.tenant(prefix); err != nil {
				so.err = fmt.Errorf("%s: %w", so.s.t.QualifiedName(), err)
				return
			}
		}
		if string(prefix) == `\N` {
			k = append(k, 1)
		} else {
			k = append(k, 0)
			k = appendUnescaped(k, prefix)
			k = append(k, 0)
		}
	}
	if p.maxField >= 0 {
		so.field = splitFields(so.field[:0], row[:len(row)-1], p.maxField+1)
		if len(so.field) <= p.maxField {
			so.err = fmt.Errorf("malformed COPY row in %s: %d fields", so.s.t.QualifiedName(), len(so.field))
			return
		}
	}
	for _, f := range p.keys {
		v := so.field[f.field]
		switch f.kind {
		case kindInt:
			n, ok := parseInt(v)
			if !ok {
				so.err = fmt.Errorf("%s: key value %q is not an integer", so.s.t.QualifiedName(), v)
				return
			}
			k = binary.BigEndian.AppendUint64(k, uint64(n)^(1<<63))
		default:
			k = appendUnescaped(k, v)
			k = append(k, 0)
		}
	}
	if p.record {
		k, so.rec = appendRecord(k, so.rec, so.field)
	}
	so.key = k
	need := len(k) + len(prefix) + 1 + len(row)
	if !p.prefixed {
		need = len(k) + len(row)
	}
	a := so.a
	if len(a.ents) > 0 && a.used()+need+entSize > sortMem {
		if so.err = so.spill(); so.err != nil {
			return
		}
	}
	if len(a.buf)+need > cap(a.buf) && cap(a.buf) < sortMem {
		// Past its first 64 KiB the arena takes its whole bound at once:
		// growing step by step would leave each smaller copy as garbage.
		a.buf = append(make([]byte, 0, max(sortMem, len(a.buf)+need)), a.buf...)
	}
	off := len(a.buf)
	a.buf = append(a.buf, k...)
	if p.prefixed {
		a.buf = append(a.buf, prefix...)
		a.buf = append(a.buf, '\t')
	}
	a.buf = append(a.buf, row...)
	a.ents = append(a.ents, ent{pfx: keyPrefix(k), off: uint32(off), klen: uint32(len(k)), llen: uint32(len(a.buf) - off - len(k))})
}

// spill sorts the arena into a new run file.
func (so *sorter) spill() error {
	a := so.a
	a.sort()
	f, err := os.CreateTemp(so.tempDir, "tenantvault-sort-*")
	if err != nil {
		return fmt.Errorf("sort %s: %w", so.s.t.QualifiedName(), err)
	}
	os.Remove(f.Name()) // gone with the file, whatever happens
	so.runs = append(so.runs, f)
	w := bufio.NewWriterSize(f, 256<<10)
	var hdr []byte
	for _, e := range a.ents {
		hdr = binary.AppendUvarint(hdr[:0], uint64(e.klen))
		hdr = binary.AppendUvarint(hdr, uint64(e.llen))
		w.Write(hdr)
		w.Write(a.buf[e.off : e.off+e.klen+e.llen])
	}
	a.reset()
	if err := w.Flush(); err != nil {
		return fmt.Errorf("sort %s: write run: %w", so.s.t.QualifiedName(), err)
	}
	return nil
}

// finish sends every row, in order, to the splitter.
func (so *sorter) finish() error {
	defer so.closeRuns()
	if so.err != nil {
		return so.err
	}
	if len(so.carry) > 0 {
		return fmt.Errorf("COPY output ended inside a row")
	}
	if len(so.runs) == 0 {
		so.a.sort()
		for _, e := range so.a.ents {
			if err := so.emit(so.a.line(e)); err != nil {
				return err
			}
		}
		return so.flush()
	}
	if so.a != nil && len(so.a.ents) > 0 {
		if err := so.spill(); err != nil {
			return err
		}
	}
	for len(so.runs) > mergeFanIn {
		f, err := os.CreateTemp(so.tempDir, "tenantvault-sort-*")
		if err != nil {
			return fmt.Errorf("sort %s: %w", so.s.t.QualifiedName(), err)
		}
		os.Remove(f.Name())
		w := bufio.NewWriterSize(f, 256<<10)
		var hdr []byte
		group := so.runs[:mergeFanIn]
		err = merge(group, func(k, l []byte) error {
			hdr = binary.AppendUvarint(hdr[:0], uint64(len(k)))
			hdr = binary.AppendUvarint(hdr, uint64(len(l)))
			w.Write(hdr)
			w.Write(k)
			_, err := w.Write(l)
			return err
		})
		for _, g := range group {
			g.Close()
		}
		so.runs = append(so.runs[mergeFanIn:], f)
		if err == nil {
			err = w.Flush()
		}
		if err != nil {
			return fmt.Errorf("sort %s: merge runs: %w", so.s.t.QualifiedName(), err)
		}
	}
	if err := merge(so.runs, func(_, l []byte) error { return so.emit(l) }); err != nil {
		return err
	}
	return so.flush()
}

func (so *sorter) emit(l []byte) error {
	s := so.s
	if s.prefixed {
		s.line(l)
		return s.err
	}
	so.out = append(so.out, l...)
	if len(so.out) >= 256<<10 {
		return so.flush()
	}
	return nil
}

func (so *sorter) flush() error {
	if len(so.out) == 0 {
		return nil
	}
	_, err := so.s.Write(so.out)
	so.out = so.out[:0]
	return err
}

func (so *sorter) closeRuns() {
	for _, f := range so.runs {
		f.Close()
	}
	so.runs = nil
}

// runReader reads one sorted run back.
type runReader struct {
	r         *bufio.Reader
	buf       []byte
	key, line []byte
}

func (rr *runReader) next() (bool, error) {
	kl, err := binary.ReadUvarint(rr.r)
	if errors.Is(err, io.EOF) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	ll, err := binary.ReadUvarint(rr.r)
	if err != nil {
		return false, errors.Join(err, io.ErrUnexpectedEOF)
	}
	n := int(kl + ll)
	if cap(rr.buf) < n {
		rr.buf = make([]byte, n)
	}
	rr.buf = rr.buf[:n]
	if _, err := io.ReadFull(rr.r, rr.buf); err != nil {
		return false, errors.Join(err, io.ErrUnexpectedEOF)
	}
	rr.key, rr.line = rr.buf[:kl], rr.buf[kl:]
	return true, nil
}

type runHeap []*runReader

func (h runHeap) Len() int           { return len(h) }
func (h runHeap) Less(a, b int) bool { return bytes.Compare(h[a].key, h[b].key) < 0 }
func (h runHeap) Swap(a, b int)      { h[a], h[b] = h[b], h[a] }
func (h *runHeap) Push(x any)        { *h = append(*h, x.(*runReader)) }
func (h *runHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// merge reads sorted runs from their start and calls fn with every row in
// key order.
func merge(runs []*os.File, fn func(key, line []byte) error) error {
	h := make(runHeap, 0, len(runs))
	for _, f := range runs {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		rr := &runReader{r: bufio.NewReaderSize(f, 64<<10)}
		ok, err := rr.next()
		if err != nil {
			return err
		}
		if ok {
			h = append(h, rr)
		}
	}
	heap.Init(&h)
	for len(h) > 0 {
		top := h[0]
		if err := fn(top.key, top.line); err != nil {
			return err
		}
		ok, err := top.next()
		if err != nil {
			return err
		}
		if ok {
			heap.Fix(&h, 0)
		} else {
			heap.Pop(&h)
		}
	}
	return nil
}

// splitFields cuts a COPY row (without its newline) at its tabs, up to n
// fields.
func splitFields(dst [][]byte, row []byte, n int) [][]byte {
	for len(dst) < n-1 {
		i := bytes.IndexByte(row, '\t')
		if i < 0 {
			break
		}
		dst = append(dst, row[:i])
		row = row[i+1:]
	}
	if len(dst) < n {
		if i := bytes.IndexByte(row, '\t'); i >= 0 {
			row = row[:i]
		}
		dst = append(dst, row)
	}
	return dst
}

// parseInt reads a COPY integer field (decimal, maybe negative).
func parseInt(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	neg := b[0] == '-'
	if neg {
		b = b[1:]
		if len(b) == 0 {
			return 0, false
		}
	}
	var u uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if u > (1<<64-1-d)/10 {
			return 0, false
		}
		u = u*10 + d
	}
	if neg {
		if u > 1<<63 {
			return 0, false
		}
		return int64(-u), true
	}
	if u > 1<<63-1 {
		return 0, false
	}
	return int64(u), true
}

// appendUnescaped appends a COPY text field's value.
func appendUnescaped(dst, b []byte) []byte {
	return tenancy.AppendUnescapedCopy(dst, b)
}

// appendRecord appends the record text PostgreSQL's record_out writes for
// a row of these COPY fields: ROW(...)::text, which orders a table without
// a primary key. A NULL is nothing; a value that is empty or holds a
// double quote, backslash, parenthesis, comma or white space is quoted,
// with quotes and backslashes doubled. scratch is reused for the values.
func appendRecord(dst, scratch []byte, fields [][]byte) ([]byte, []byte) {
	dst = append(dst, '(')
	for i, f := range fields {
		if i > 0 {
			dst = append(dst, ',')
		}
		if string(f) == `\N` {
			continue
		}
		v := f
		if bytes.IndexByte(f, '\\') >= 0 {
			scratch = tenancy.AppendUnescapedCopy(scratch[:0], f)
			v = scratch
		}
		quote := len(v) == 0
		for _, c := range v {
			switch c {
			case '"', '\\', '(', ')', ',', ' ', '\t', '\n', '\v', '\f', '\r':
				quote = true
			}
		}
		if !quote {
			dst = append(dst, v...)
			continue
		}
		dst = append(dst, '"')
		for _, c := range v {
			if c == '"' || c == '\\' {
				dst = append(dst, c)
			}
			dst = append(dst, c)
		}
		dst = append(dst, '"')
	}
	return append(dst, ')'), scratch
}
