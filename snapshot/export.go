package snapshot

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// exportTables exports tables, as next hands them out, through one
// session and one packer, and calls done with each result. A table whose
// sort spilled to run files is merged and compressed in the background
// while the next table's COPY runs, so the client's compression overlaps
// the server's reading; everything else that touches the packer waits for
// it first. done runs on the caller's goroutine.
func (r *run) exportTables(ctx context.Context, conn *pgx.Conn, packer *vault.Packer, tables []manifest.Table, next func() (int, bool), done func(ti int, res tableResult)) error {
	type finished struct {
		ti  int
		res tableResult
		err error
	}
	var pending chan finished
	wait := func() error {
		if pending == nil {
			return nil
		}
		f := <-pending
		pending = nil
		if f.err != nil {
			return f.err
		}
		done(f.ti, f.res)
		return nil
	}
	for {
		ti, ok := next()
		if !ok {
			return wait()
		}
		res, fin, err := r.export(ctx, conn, packer, tables, ti, wait)
		if err != nil {
			if werr := wait(); werr != nil {
				return werr
			}
			return err
		}
		if fin == nil {
			done(ti, res)
			continue
		}
		if err := wait(); err != nil {
			fin.abandon()
			return err
		}
		pending = make(chan finished, 1)
		go func() {
			res, err := fin.run()
			pending <- finished{ti, res, err}
		}()
	}
}

// export streams one table and cuts it into one chunk per tenant (plus one
// for rows without a tenant): through the sorted export when planSort
// allows it, else through a single ordered COPY. wait returns once the
// packer is free. A table that spilled comes back as a background merge
// for the caller to run (and then a zero result).
func (r *run) export(ctx context.Context, conn *pgx.Conn, packer *vault.Packer, tables []manifest.Table, ti int, wait func() error) (tableResult, *backgroundMerge, error) {
	t := &tables[ti]
	s := &splitter{ctx: ctx, r: r, t: t, packer: packer, prefixed: t.Scope != nil, res: tableResult{table: ti}}
	if t.Owner != "" {
		s.fixed = t.Owner
	}
	fail := func(err error) (tableResult, *backgroundMerge, error) {
		return tableResult{}, nil, fmt.Errorf("export %s: %w", t.QualifiedName(), err)
	}
	plan, err := r.planSort(ctx, conn, tables, ti)
	if err != nil {
		return fail(err)
	}
	if plan == nil {
		if err := wait(); err != nil {
			return tableResult{}, nil, err
		}
		if _, err := conn.PgConn().CopyTo(ctx, s, tenancy.ExportSQL(t, r.o.Tenants)); err != nil {
			if s.err != nil {
				err = s.err
			}
			return fail(err)
		}
		return r.closeSplitter(s)
	}
	sortedExports.Add(1)
	if plan.route != nil {
		routedExports.Add(1)
	}
	a := r.getArena()
	so := &sorter{p: plan, s: s, a: a, tempDir: r.o.TempDir}
	if _, err := conn.PgConn().CopyTo(ctx, so, plan.sql); err != nil {
		so.closeRuns()
		r.putArena(a)
		if so.err != nil {
			err = so.err
		}
		return fail(err)
	}
	if len(so.runs) > 0 && so.err == nil && len(so.carry) == 0 {
		// Free the arena for the next table: its rows join the runs.
		if len(a.ents) > 0 {
			if err := so.spill(); err != nil {
				so.closeRuns()
				r.putArena(a)
				return fail(err)
			}
		}
		r.putArena(a)
		so.a = nil
		return tableResult{}, &backgroundMerge{r: r, so: so}, nil
	}
	defer r.putArena(a)
	if err := wait(); err != nil {
		so.closeRuns()
		return tableResult{}, nil, err
	}
	if err := so.finish(); err != nil {
		return fail(err)
	}
	return r.closeSplitter(s)
}

func (r *run) closeSplitter(s *splitter) (tableResult, *backgroundMerge, error) {
	if err := s.close(); err != nil {
		return tableResult{}, nil, fmt.Errorf("export %s: %w", s.t.QualifiedName(), err)
	}
	r.o.Progress.ReadDone.Add(s.read)
	return s.res, nil, nil
}

// backgroundMerge is the rest of a spilled table's export: merge its runs
// into the splitter.
type backgroundMerge struct {
	r  *run
	so *sorter
}

func (b *backgroundMerge) run() (tableResult, error) {
	if err := b.so.finish(); err != nil {
		return tableResult{}, fmt.Errorf("export %s: %w", b.so.s.t.QualifiedName(), err)
	}
	res, _, err := b.r.closeSplitter(b.so.s)
	return res, err
}

func (b *backgroundMerge) abandon() { b.so.closeRuns() }

// sortedExports and routedExports count what took the sorted export, for
// tests.
var sortedExports, routedExports atomic.Int64

// splitter receives COPY text and routes rows to per-tenant chunks. Rows of
// a column-model scoped table start with the tenant key field, which is
// cut off; rows arrive grouped by tenant.
type splitter struct {
	ctx      context.Context
	r        *run
	t        *manifest.Table
	packer   *vault.Packer
	prefixed bool
	fixed    string // owner of every row (schema and database models)

	carry []byte // an incomplete line from the previous Write
	cur   []byte // the current tenant key, still COPY-escaped
	cw    *vault.ChunkWriter
	rows  int64
	read  int64 // COPY bytes received
	res   tableResult
	err   error
}

func (s *splitter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n := len(p)
	if !s.prefixed {
		// One chunk for the whole table: every raw newline ends a row,
		// because COPY escapes newlines inside values.
		if s.cw == nil {
			if s.cw, s.err = s.start(s.fixed); s.err != nil {
				return 0, s.err
			}
		}
		s.rows += int64(bytes.Count(p, []byte{'\n'}))
		s.bytes(len(p))
		_, s.err = s.cw.Write(p)
		return n, s.err
	}
	if len(s.carry) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.carry = append(s.carry, p...)
			return n, nil
		}
		s.carry = append(s.carry, p[:i+1]...)
		s.line(s.carry)
		s.carry = s.carry[:0]
		p = p[i+1:]
	}
	for len(p) > 0 && s.err == nil {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.carry = append(s.carry, p...)
			break
		}
		s.line(p[:i+1])
		p = p[i+1:]
	}
	return n, s.err
}

func (s *splitter) bytes(n int) {
	s.read += int64(n)
	s.r.o.Progress.Bytes.Add(int64(n))
}

func (s *splitter) line(l []byte) {
	tab := bytes.IndexByte(l, '\t')
	if tab < 0 {
		s.err = fmt.Errorf("malformed COPY row in %s", s.t.QualifiedName())
		return
	}
	key, row := l[:tab], l[tab+1:]
	if s.cw == nil || !bytes.Equal(key, s.cur) {
		if s.cw != nil {
			if s.err = s.finishChunk(); s.err != nil {
				return
			}
		}
		s.cur = append(s.cur[:0], key...)
		tenant := s.fixed
		if tenant == "" && string(key) != `\N` {
			tenant = tenancy.UnescapeCopy(key)
		}
		if s.cw, s.err = s.start(tenant); s.err != nil {
			return
		}
	}
	s.rows++
	s.bytes(len(row))
	_, s.err = s.cw.Write(row)
}

// start begins a chunk of tenant's rows ("": global rows, or rows that
// reach no tenant), sealed with the tenant's own key where the repository
// has them.
func (s *splitter) start(tenant string) (*vault.ChunkWriter, error) {
	if tenant == "" {
		return s.packer.StartChunk(), nil
	}
	return s.packer.StartTenantChunk(s.ctx, tenant)
}

// finishChunk stores the current chunk, or references the earlier set's
// identical one.
func (s *splitter) finishChunk() error {
	tc := tenantChunk{rows: s.rows}
	switch {
	case s.fixed != "":
		tc.tenant = s.fixed
	case !s.prefixed:
		tc.global = true
	case string(s.cur) == `\N`:
		tc.global = true // rows that reach no tenant
	default:
		tc.tenant = tenancy.UnescapeCopy(s.cur)
	}
	var prev *vault.ChunkRef
	if p, ok := s.r.prev[prevKey{tc.tenant, tc.global, s.t.Signature}]; ok {
		prev = &p
	} else {
		prev = s.r.reuse.Lookup(tc.tenant, tc.global, s.t.Signature)
	}
	ref, err := s.cw.Finish(prev)
	if err != nil {
		return err
	}
	tc.ref = ref
	if err := s.res.add(tc, s.r.o.TempDir); err != nil {
		return err
	}
	s.r.o.Progress.Rows.Add(s.rows)
	s.rows = 0
	s.cw = nil
	return nil
}

func (s *splitter) close() error {
	if s.err != nil {
		return s.err
	}
	if len(s.carry) > 0 {
		return fmt.Errorf("COPY output ended inside a row")
	}
	if s.cw == nil {
		return nil
	}
	return s.finishChunk()
}
