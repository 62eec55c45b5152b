package snapshot

import (
	"bytes"
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// export streams one table through a single ordered COPY and cuts it into
// one chunk per tenant (plus one for rows without a tenant).
func (r *run) export(ctx context.Context, conn *pgx.Conn, packer *vault.Packer, tables []manifest.Table, ti int) (tableResult, error) {
	t := &tables[ti]
	s := &splitter{r: r, t: t, packer: packer, prefixed: t.Scope != nil, res: tableResult{table: ti}}
	if t.Owner != "" {
		s.fixed = t.Owner
	}
	sql := tenancy.ExportSQL(t, r.o.Tenants)
	if _, err := conn.PgConn().CopyTo(ctx, s, sql); err != nil {
		if s.err != nil {
			return tableResult{}, s.err
		}
		return tableResult{}, fmt.Errorf("export %s: %w", t.QualifiedName(), err)
	}
	if err := s.close(); err != nil {
		return tableResult{}, fmt.Errorf("export %s: %w", t.QualifiedName(), err)
	}
	return s.res, nil
}

// splitter receives COPY text and routes rows to per-tenant chunks. Rows of
// a column-model scoped table start with the tenant key field, which is
// cut off; rows arrive grouped by tenant.
type splitter struct {
	r        *run
	t        *manifest.Table
	packer   *vault.Packer
	prefixed bool
	fixed    string // owner of every row (schema and database models)

	carry []byte // an incomplete line from the previous Write
	cur   []byte // the current tenant key, still COPY-escaped
	cw    *vault.ChunkWriter
	rows  int64
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
			s.cw = s.packer.StartChunk()
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
		s.cw = s.packer.StartChunk()
	}
	s.rows++
	s.bytes(len(row))
	_, s.err = s.cw.Write(row)
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
		tc.tenant = unescapeCopy(s.cur)
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

// unescapeCopy decodes one field of PostgreSQL's COPY text format.
func unescapeCopy(b []byte) string {
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
