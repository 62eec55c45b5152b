package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
)

// restoreTenant loads one tenant in one transaction: delete what it has
// (replace), load every table in foreign-key order, move sequences forward,
// check foreign keys and recompute every digest, and commit only if all of
// it holds.
func (r *runner) restoreTenant(ctx context.Context, p *Plan, it *Item) (res TenantResult) {
	start := time.Now()
	res = TenantResult{Tenant: it.Tenant, Set: it.Set.ID}
	defer func() {
		res.Duration = time.Since(start)
		if res.Err != nil {
			res.Err = fmt.Errorf("tenant %q: %w", it.Tenant, res.Err)
			r.o.Logger.Error("tenant not restored; rolled back", "tenant", it.Tenant, "err", res.Err)
		} else {
			r.o.Logger.Info("tenant restored", "tenant", it.Tenant, "set", it.Set.ID, "rows", res.Rows, "seconds", res.Duration.Seconds())
		}
	}()
	db := r.dbs[r.database(p.Model, it.Tenant)]
	conn, err := tenancy.Connect(ctx, db.cfg)
	if err != nil {
		res.Err = err
		return res
	}
	defer conn.Close(context.Background())
	res.Rows, res.Bytes, res.Deleted, res.Tables, res.Err = r.load(ctx, conn, db, it)
	res.Verified = res.Err == nil
	return res
}

func (r *runner) load(ctx context.Context, conn *pgx.Conn, db *targetDB, it *Item) (rows, bytes, deleted int64, tables int, err error) {
	replacing := len(it.Existing) > 0
	begin := "BEGIN ISOLATION LEVEL READ COMMITTED"
	if replacing && r.snap != "" {
		begin = "BEGIN ISOLATION LEVEL REPEATABLE READ"
	}
	if _, err = conn.Exec(ctx, begin); err != nil {
		return
	}
	defer func() {
		if err != nil {
			// Closing the connection would roll back too; say it.
			rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conn.Exec(rctx, "ROLLBACK")
			cancel()
		}
	}()
	if replacing && r.snap != "" {
		if _, err = conn.Exec(ctx, "SET TRANSACTION SNAPSHOT "+tenancy.Literal(r.snap)); err != nil {
			return
		}
	}
	if err = suppressTriggers(ctx, conn); err != nil {
		return
	}
	set := it.Set
	order, targetIdx, err := loadOrder(db, set, it.Tenant)
	if err != nil {
		return
	}
	chunks := map[int]manifest.Chunk{}
	for _, c := range it.T.Chunks {
		chunks[c.Table] = c
	}
	if replacing {
		for i := len(order) - 1; i >= 0; i-- {
			t := &set.Tables[order[i]]
			tag, e := conn.Exec(ctx, tenancy.DeleteSQL(t), it.Tenant)
			if e != nil {
				err = fmt.Errorf("delete current rows of %s: %w", t.QualifiedName(), explain(e))
				return
			}
			deleted += tag.RowsAffected()
		}
	} else {
		for _, ti := range order {
			t := &set.Tables[ti]
			var n int64
			if err = conn.QueryRow(ctx, tenancy.CountSQL(t), it.Tenant).Scan(&n); err != nil {
				return
			}
			if n > 0 {
				err = tenantvault.Inputf("%d row(s) appeared in %s since the restore was planned; nothing of this tenant was written", n, t.QualifiedName())
				return
			}
		}
	}
	for _, ti := range order {
		c, ok := chunks[ti]
		if !ok {
			continue
		}
		var n int64
		if n, err = r.loadChunk(ctx, conn, set, c); err != nil {
			return
		}
		rows += n
		bytes += c.Size
		tables++
	}
	var loaded []int
	for _, ti := range order {
		loaded = append(loaded, targetIdx[ti])
	}
	if err = moveSequences(ctx, conn, db.cat.Tables, loaded); err != nil {
		return
	}
	if err = checkForeignKeys(ctx, conn, db, set, order, targetIdx, it.Tenant, replacing); err != nil {
		return
	}
	for _, ti := range order {
		c, ok := chunks[ti]
		if !ok {
			c = manifest.Chunk{Table: ti, Digest: emptyDigest}
		}
		if err = verifyChunk(ctx, conn, &set.Tables[ti], c, it.Tenant, false); err != nil {
			return
		}
	}
	if _, err = conn.Exec(ctx, "COMMIT"); err != nil {
		err = fmt.Errorf("commit: %w", err)
	}
	return
}

var emptyDigest = func() string { s := sha256.Sum256(nil); return hex.EncodeToString(s[:]) }()

// explain turns a serialization failure of a replacing transaction into
// advice.
func explain(err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "40001" {
		return fmt.Errorf("the tenant's rows changed after the pre-restore snapshot; nothing was replaced, run the restore again: %w", err)
	}
	return err
}

// loadOrder lists the set's table indexes holding the tenant's rows in
// foreign-key order of the target, and maps them to target indexes.
func loadOrder(db *targetDB, set *manifest.Manifest, tenant string) ([]int, map[int]int, error) {
	setIdx := tenancy.TablesOf(set.Tables, tenant)
	toSet := map[int]int{}
	targetIdx := map[int]int{}
	var subset []int
	for _, si := range setIdx {
		_, ti := db.table(&set.Tables[si])
		if ti < 0 {
			return nil, nil, tenantvault.Inputf("table %s is missing in the target", set.Tables[si].QualifiedName())
		}
		toSet[ti] = si
		targetIdx[si] = ti
		subset = append(subset, ti)
	}
	var order []int
	for _, ti := range tenancy.LoadOrder(db.cat.Tables, db.cat.ForeignKeys, subset) {
		order = append(order, toSet[ti])
	}
	return order, targetIdx, nil
}

// suppressTriggers keeps user triggers (and foreign-key triggers, which
// checkForeignKeys replaces) from firing on restored rows, as pg_restore
// --disable-triggers does, without the table locks ALTER TABLE would take
// on a live database.
func suppressTriggers(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, "SET LOCAL session_replication_role = replica")
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "42501" {
		return &tenantvault.InputError{Msg: "the target role may not set session_replication_role, which keeps triggers from firing on restored rows",
			Hint: "restore as a superuser, or on PostgreSQL 15+: GRANT SET ON PARAMETER session_replication_role TO <role>"}
	}
	return err
}

// errReader remembers the error its reader returned, because pgconn
// reports a failed COPY FROM with the server's text only.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// loadChunk streams a chunk into its table with COPY FROM, checking the
// stored checksum and content digest on the way.
func (r *runner) loadChunk(ctx context.Context, conn *pgx.Conn, set *manifest.Manifest, c manifest.Chunk) (int64, error) {
	t := &set.Tables[c.Table]
	rc, err := r.o.Vault.OpenChunk(ctx, set, c)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	er := &errReader{r: rc}
	tag, err := conn.PgConn().CopyFrom(ctx, er, tenancy.CopyInSQL(t))
	if er.err != nil {
		return 0, er.err
	}
	if err != nil {
		return 0, fmt.Errorf("load %s: %w", t.QualifiedName(), err)
	}
	if tag.RowsAffected() != c.Rows {
		return 0, tenantvault.Integrityf("%s: loaded %d rows, the set records %d", t.QualifiedName(), tag.RowsAffected(), c.Rows)
	}
	return c.Rows, nil
}

// verifyChunk recomputes a table's content digest from the target, inside
// the loading transaction, and compares it with the set's.
func verifyChunk(ctx context.Context, conn *pgx.Conn, t *manifest.Table, c manifest.Chunk, tenant string, global bool) error {
	sql := tenancy.TenantCopySQL(t, tenant)
	if global && t.Scope != nil {
		sql = tenancy.GlobalRowsCopySQL(t)
	}
	h := sha256.New()
	tag, err := conn.PgConn().CopyTo(ctx, h, sql)
	if err != nil {
		return fmt.Errorf("verify %s: %w", t.QualifiedName(), err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != c.Digest || tag.RowsAffected() != c.Rows {
		return tenantvault.Integrityf("%s: restored rows differ from the snapshot (%d rows, digest %s; the set has %d rows, digest %s)",
			t.QualifiedName(), tag.RowsAffected(), got[:12], c.Rows, c.Digest[:12])
	}
	return nil
}

// moveSequences sets each owned sequence (serial or identity) of the given
// tables past the largest restored value, and never moves one backwards.
func moveSequences(ctx context.Context, conn *pgx.Conn, tables []manifest.Table, idx []int) error {
	for _, i := range idx {
		t := &tables[i]
		for _, c := range t.Columns {
			if c.Sequence == "" {
				continue
			}
			var maxVal *int64
			q := fmt.Sprintf("SELECT max(%s)::bigint FROM %s", tenancy.Ident(c.Name), tenancy.Ident(t.Schema, t.Name))
			if err := conn.QueryRow(ctx, q).Scan(&maxVal); err != nil {
				return fmt.Errorf("read %s.%s: %w", t.QualifiedName(), c.Name, err)
			}
			if maxVal == nil {
				continue
			}
			// The sequence tuple is read and set outside MVCC, so the
			// condition sees concurrent nextval calls.
			q = fmt.Sprintf("SELECT setval($1::regclass, $2) FROM %s WHERE last_value < $2", c.Sequence)
			if _, err := conn.Exec(ctx, q, c.Sequence, *maxVal); err != nil {
				return fmt.Errorf("move sequence %s: %w", c.Sequence, err)
			}
		}
	}
	return nil
}

// checkForeignKeys proves what the suppressed foreign-key triggers would
// have: every reference from the tenant's restored rows finds its row and,
// after a replace, no global row points at a deleted one.
func checkForeignKeys(ctx context.Context, conn *pgx.Conn, db *targetDB, set *manifest.Manifest, order []int, targetIdx map[int]int, tenant string, replaced bool) error {
	restored := map[int]int{} // target index -> set index
	for _, si := range order {
		restored[targetIdx[si]] = si
	}
	for _, fk := range db.cat.ForeignKeys {
		si, from := restored[fk.From]
		to := &db.cat.Tables[fk.To]
		var sql string
		switch {
		case from:
			sql = tenancy.DanglingRefsSQL(&set.Tables[si], fk.Columns, to.Schema, to.Name, fk.RefCols)
		case replaced:
			if _, into := restored[fk.To]; !into || isScoped(set, &db.cat.Tables[fk.From]) {
				continue
			}
			g := db.cat.Tables[fk.From]
			g.Scope, g.Owner = nil, ""
			sql = tenancy.DanglingRefsSQL(&g, fk.Columns, to.Schema, to.Name, fk.RefCols)
		default:
			continue
		}
		var n int64
		if err := conn.QueryRow(ctx, sql, tenant).Scan(&n); err != nil {
			return fmt.Errorf("check foreign key %s: %w", fk.Name, err)
		}
		if n > 0 {
			return fmt.Errorf("foreign key %s on %s would break: %d row(s) reference missing rows of %s",
				fk.Name, db.cat.Tables[fk.From].QualifiedName(), n, to.QualifiedName())
		}
	}
	return nil
}

func isScoped(set *manifest.Manifest, t *manifest.Table) bool {
	for i := range set.Tables {
		st := &set.Tables[i]
		if st.Schema == t.Schema && st.Name == t.Name {
			return st.Kind == manifest.TableScoped
		}
	}
	return false
}
