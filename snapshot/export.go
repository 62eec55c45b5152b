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

// export streams one table through a single ordered COPY and cuts it into
// one chunk per tenant (plus one for rows without a tenant).
func (r *run) export(ctx context.Context, conn *pgx.Conn, packer *vault.Packer, tables []manifest.Table, ti int) (tableResult, error) {
	t := &tables[ti]
	s := &splitter{ctx: ctx, r: r, t: t, packer: packer, prefixed: t.Scope != nil, res: tableResult{table: ti}}
	if t.Owner != "" {
		s.fixed = t.Owner
	}
	plan, err := r.planSort(ctx, conn, tables, ti)
	if err != nil {
		return tableResult{}, fmt.Errorf("export %s: %w", t.QualifiedName(), err)
	}
	if plan != nil {
		sortedExports.Add(1)
		if plan.route != nil {
			routedExports.Add(1)
		}
		err = r.sortedCopy(ctx, conn, s, plan)
	} else if _, err = conn.PgConn().CopyTo(ctx, s, tenancy.ExportSQL(t, r.o.Tenants)); err != nil && s.err != nil {
		err = s.err
	}
	if err != nil {
		return tableResult{}, fmt.Errorf("export %s: %w", t.QualifiedName(), err)
	}
	if err := s.close(); err != nil {
		return tableResult{}, fmt.Errorf("export %s: %w", t.QualifiedName(), err)
	}
	r.o.Progress.ReadDone.Add(s.read)
	return s.res, nil
}

// sortedExports and routedExports count what took the sorted export, for
// tests.
var sortedExports, routedExports atomic.Int64

// sortedCopy reads the table with plan's plain COPY and hands its rows to
// s in canonical order.
func (r *run) sortedCopy(ctx context.Context, conn *pgx.Conn, s *splitter, plan *sortPlan) error {
	a := r.getArena()
	defer r.putArena(a)
	so := &sorter{p: plan, s: s, a: a, tempDir: r.o.TempDir}
	defer so.closeRuns()
	if _, err := conn.PgConn().CopyTo(ctx, so, plan.sql); err != nil {
		if so.err != nil {
			return so.err
		}
		return err
	}
	return so.finish()
}

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
