package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
)

// restoreTenant loads one tenant in one transaction: delete what it has
// (replace), load every table in foreign-key order, check foreign keys and
// recompute every digest, and commit only if all of it holds.
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
	conn, err := db.conn(ctx)
	if err != nil {
		res.Err = err
		return res
	}
	res.Err = r.load(ctx, conn, db, it, &res)
	if res.Err != nil || p.Model == tenancy.ModelDatabase {
		// A connection's state after a failure is unknown; one to a
		// tenant's own database is not needed again.
		conn.Close(context.Background())
	} else {
		db.release(conn)
	}
	res.Verified = res.Err == nil
	return res
}

func (r *runner) load(ctx context.Context, conn *pgx.Conn, db *targetDB, it *Item, res *TenantResult) (err error) {
	replacing := len(it.Existing) > 0
	begin := "BEGIN ISOLATION LEVEL READ COMMITTED"
	if replacing && r.snap != "" {
		begin = "BEGIN ISOLATION LEVEL REPEATABLE READ"
	}
	// One round trip opens and sets up the transaction.
	setup := begin
	if replacing && r.snap != "" {
		setup += "; SET TRANSACTION SNAPSHOT " + tenancy.Literal(r.snap)
	}
	setup += "; " + replicaRole + "; " + tenantPlans
	if _, err = conn.PgConn().Exec(ctx, setup).ReadAll(); err != nil {
		err = replicaRoleError(err)
		if conn.PgConn().TxStatus() == 'I' {
			return // BEGIN itself failed
		}
	}
	defer func() {
		if err != nil {
			// Closing the connection would roll back too; say it.
			rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conn.Exec(rctx, "ROLLBACK")
			cancel()
		}
	}()
	if err != nil {
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
			res.Deleted += tag.RowsAffected()
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
		res.Rows += n
		res.Bytes += c.Size
		res.Tables++
	}
	if it.Replay == nil {
		if err = checkForeignKeys(ctx, conn, db, set, order, targetIdx, it.T, replacing); err != nil {
			return
		}
	}
	// The base is proved against the set's digests before any change is
	// replayed on top of it.
	for _, ti := range order {
		c, ok := chunks[ti]
		if !ok {
			c = manifest.Chunk{Table: ti, Digest: emptyDigest}
		}
		if err = verifyChunk(ctx, conn, &set.Tables[ti], c, it.Tenant, false); err != nil {
			if !replacing {
				err = concurrentWrites(ctx, conn, &set.Tables[ti], c, it.Tenant, err)
			}
			return
		}
		res.Digests++
	}
	if it.Replay != nil {
		var st replayStats
		if st, err = r.replay(ctx, conn, set, it); err != nil {
			return
		}
		if res.Rows, err = checkCounts(ctx, conn, set, it, st); err != nil {
			return
		}
		res.Replayed = &ReplayProof{Changes: st.applied, Skipped: st.skipped, LastCommit: st.lastTime, LastLSN: st.lastLSN, At: it.Replay.At}
		r.o.Logger.Info("replayed changes", "tenant", it.Tenant, "applied", st.applied, "skipped", st.skipped, "until", it.Replay.At)
		if err = checkForeignKeys(ctx, conn, db, set, order, targetIdx, it.T, true); err != nil {
			return
		}
	}
	r.touch(db, order, targetIdx)
	if _, err = conn.Exec(ctx, "COMMIT"); err != nil {
		err = fmt.Errorf("commit: %w", err)
	}
	return
}

// tenantPlans makes every statement of a tenant's restore transaction
// planned for that tenant. Its queries (read-back, foreign-key checks,
// counts, deletes) run as prepared statements, which PostgreSQL switches to
// a generic plan after five executions; a generic plan does not know which
// tenant it is for, and on a skewed tenant column it scans whole tables per
// tenant: a mass restore becomes quadratic. Measured (BENCHMARKS.md) on
// restoring 40% of tenants into an empty copy: 37.9 s -> 17.2 s. Blanket
// planner overrides (enable_seqscan off and the like) helped a live target
// and tripled the time into an empty one, so they are not used.
const tenantPlans = `SET LOCAL plan_cache_mode = force_custom_plan`

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
	_, err := conn.Exec(ctx, replicaRole)
	return replicaRoleError(err)
}

const replicaRole = "SET LOCAL session_replication_role = replica"

// replicaRoleError explains a refusal to set session_replication_role.
func replicaRoleError(err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "42501" {
		return &tenantvault.InputError{Msg: "the target role may not set session_replication_role, which keeps triggers from firing on restored rows",
			Hint: "restore as a superuser, or on PostgreSQL 15+: GRANT SET ON PARAMETER session_replication_role TO <role>"}
	}
	return err
}

// guardedReader remembers the error its reader returned, because pgconn
// reports a failed COPY FROM with the server's text only, and can be
// detached: when the connection fails, pgconn returns while its copying
// goroutine may still be in Read, so the chunk reader must not be closed
// (and its decoder reused) until that Read is over.
type guardedReader struct {
	mu       sync.Mutex
	r        io.Reader
	err      error
	detached bool
	loaded   *atomic.Int64 // Options.Loaded; may be nil
}

var errDetached = errors.New("reader detached")

func (g *guardedReader) Read(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.detached {
		return 0, errDetached
	}
	n, err := g.r.Read(p)
	if g.loaded != nil {
		g.loaded.Add(int64(n))
	}
	if err != nil && err != io.EOF {
		g.err = err
	}
	return n, err
}

// detach waits for a Read in flight and returns the reader's error.
func (g *guardedReader) detach() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.detached = true
	return g.err
}

// loadChunk streams a chunk into its table with COPY FROM, checking the
// stored checksum and content digest on the way.
func (r *runner) loadChunk(ctx context.Context, conn *pgx.Conn, set *manifest.Manifest, c manifest.Chunk) (int64, error) {
	t := &set.Tables[c.Table]
	rc, err := r.o.Vault.OpenChunk(ctx, set, c)
	if err != nil {
		return 0, err
	}
	g := &guardedReader{r: rc, loaded: r.o.Loaded}
	tag, err := conn.PgConn().CopyFrom(ctx, g, tenancy.CopyInSQL(t))
	readErr := g.detach()
	rc.Close()
	if readErr != nil {
		return 0, readErr
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
// tables past the largest value in its column, and never moves one
// backwards. The sequence tuple is read and set outside MVCC, so the
// condition sees concurrent nextval calls. All of it is one round trip.
func moveSequences(ctx context.Context, conn *pgx.Conn, tables []manifest.Table, idx []int) error {
	var script strings.Builder
	for _, i := range idx {
		t := &tables[i]
		for _, c := range t.Columns {
			if c.Sequence == "" {
				continue
			}
			fmt.Fprintf(&script, "SELECT setval(%s::regclass, x.m) FROM (SELECT max(%s)::bigint AS m FROM %s) x, %s s WHERE x.m IS NOT NULL AND s.last_value < x.m;\n",
				tenancy.Literal(c.Sequence), tenancy.Ident(c.Name), tenancy.Ident(t.Schema, t.Name), c.Sequence)
		}
	}
	if script.Len() == 0 {
		return nil
	}
	if _, err := conn.PgConn().Exec(ctx, script.String()).ReadAll(); err != nil {
		return fmt.Errorf("move sequences past the restored rows: %w", err)
	}
	return nil
}

// concurrentWrites explains a digest mismatch that comes from rows written
// to the tenant in the target while it was being restored, which the plan
// could not see: that is a conflict, not damaged data.
func concurrentWrites(ctx context.Context, conn *pgx.Conn, t *manifest.Table, c manifest.Chunk, tenant string, verifyErr error) error {
	var n int64
	if err := conn.QueryRow(ctx, tenancy.CountSQL(t), tenant).Scan(&n); err != nil || n <= c.Rows {
		return verifyErr
	}
	return fmt.Errorf("%d row(s) of this tenant were written to %s while it was being restored; nothing of it was committed", n-c.Rows, t.QualifiedName())
}

// checkForeignKeys proves what the suppressed foreign-key triggers would
// have: every reference from the tenant's restored rows finds its row and,
// after a replace, no global row points at a deleted one. Each table's
// references are checked in one pass; only a failure looks at them one by
// one, to name the constraint.
func checkForeignKeys(ctx context.Context, conn *pgx.Conn, db *targetDB, set *manifest.Manifest, order []int, targetIdx map[int]int, tn *manifest.Tenant, replaced bool) error {
	tenant := tn.ID
	restored := map[int]int{} // target index -> set index
	for _, si := range order {
		restored[targetIdx[si]] = si
	}
	type check struct {
		t    *manifest.Table
		fks  []tenancy.ForeignKey
		refs []tenancy.Ref
	}
	checks := map[int]*check{} // by target index of the referencing table
	var keys []int
	for _, fk := range db.cat.ForeignKeys {
		to := &db.cat.Tables[fk.To]
		var t *manifest.Table
		if si, from := restored[fk.From]; from {
			t = &set.Tables[si]
			if provenByScope(set, t, fk, to, tn) {
				continue
			}
		} else if _, into := restored[fk.To]; replaced && into && !isScoped(set, &db.cat.Tables[fk.From]) {
			g := db.cat.Tables[fk.From]
			g.Scope, g.Owner = nil, ""
			t = &g
		} else {
			continue
		}
		c := checks[fk.From]
		if c == nil {
			c = &check{t: t}
			checks[fk.From] = c
			keys = append(keys, fk.From)
		}
		c.fks = append(c.fks, fk)
		c.refs = append(c.refs, tenancy.Ref{Columns: fk.Columns, RefSchema: to.Schema, RefTable: to.Name, RefCols: fk.RefCols})
	}
	for _, k := range keys {
		c := checks[k]
		var n int64
		if err := conn.QueryRow(ctx, tenancy.DanglingRefsSQL(c.t, c.refs...), tenant).Scan(&n); err != nil {
			return fmt.Errorf("check foreign keys of %s: %w", c.t.QualifiedName(), err)
		}
		if n == 0 {
			continue
		}
		for i, fk := range c.fks {
			if err := conn.QueryRow(ctx, tenancy.DanglingRefsSQL(c.t, c.refs[i]), tenant).Scan(&n); err != nil {
				return fmt.Errorf("check foreign key %s: %w", fk.Name, err)
			}
			if n > 0 {
				return fmt.Errorf("foreign key %s on %s would break: %d row(s) reference missing rows of %s",
					fk.Name, db.cat.Tables[fk.From].QualifiedName(), n, c.refs[i].RefSchema+"."+c.refs[i].RefTable)
			}
		}
	}
	return nil
}

// provenByScope reports whether the tenant's restored rows of t satisfy
// foreign key fk by construction, so that checking it would only repeat the
// snapshot: either fk is the first hop of t's scope path (every row of the
// tenant's chunk was found by joining through it, so the row it references
// is in the same tenant's chunk of the referenced table), or fk is t's tenant
// key column referencing the tenants table, whose chunk for this tenant
// holds that very row. The digests proved both chunks were restored exactly.
func provenByScope(set *manifest.Manifest, t *manifest.Table, fk tenancy.ForeignKey, to *manifest.Table, tn *manifest.Tenant) bool {
	if t.Scope == nil {
		return false
	}
	if len(t.Scope.Hops) > 0 {
		h := t.Scope.Hops[0]
		return h.RefSchema == to.Schema && h.RefTable == to.Name &&
			slices.Equal(h.Columns, fk.Columns) && slices.Equal(h.RefCols, fk.RefCols)
	}
	if !slices.Equal(fk.Columns, []string{t.Scope.Column}) {
		return false
	}
	for _, c := range tn.Chunks {
		root := &set.Tables[c.Table]
		if root.Schema == to.Schema && root.Name == to.Name && root.Scope != nil && len(root.Scope.Hops) == 0 &&
			slices.Equal(root.Key, []string{root.Scope.Column}) && slices.Equal(fk.RefCols, root.Key) && c.Rows > 0 {
			return true
		}
	}
	return false
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
