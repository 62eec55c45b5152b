package datagen_test

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/bench/datagen"
	"github.com/tenantvault/tenantvault/internal/testenv"
)

// generate fills a new database and returns its URL and stats.
func generate(t *testing.T, opts datagen.Options) (string, datagen.Stats) {
	t.Helper()
	dbURL := testenv.NewDatabase(t)
	opts.Logf = t.Logf
	ctx := testenv.Context(t, 5*time.Minute)
	st, err := datagen.Generate(ctx, dbURL, opts)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	return dbURL, st
}

// tableChecksums returns an md5 of the whole content of every table, in a
// canonical row order.
func tableChecksums(t *testing.T, conn *pgx.Conn) map[string]string {
	t.Helper()
	ctx := testenv.Context(t, time.Minute)
	sums := map[string]string{}
	for _, tbl := range datagen.Tables {
		var sum string
		err := conn.QueryRow(ctx, `SELECT md5(coalesce(string_agg(t::text, E'\n' ORDER BY t::text), '')) FROM public.`+tbl+` t`).Scan(&sum)
		if err != nil {
			t.Fatalf("checksum %s: %v", tbl, err)
		}
		sums[tbl] = sum
	}
	return sums
}

func TestGenerateIsDeterministic(t *testing.T) {
	t.Parallel()
	// Another seed giving other data is checked without a database, in
	// TestPlanIsDeterministic.
	opts := datagen.Options{Tenants: 12, TargetBytes: 2 << 20, Seed: 42, OddIDs: true}
	urlA, stA := generate(t, opts)
	opts.Workers = 1 // the order of loading must not matter
	urlB, stB := generate(t, opts)

	a := tableChecksums(t, testenv.Connect(t, urlA))
	b := tableChecksums(t, testenv.Connect(t, urlB))
	for _, tbl := range datagen.Tables {
		if a[tbl] != b[tbl] {
			t.Errorf("table %s differs between two runs with the same options", tbl)
		}
	}
	for _, tbl := range datagen.Tables {
		if stA.Rows(tbl) != stB.Rows(tbl) {
			t.Errorf("table %s: %d rows, then %d", tbl, stA.Rows(tbl), stB.Rows(tbl))
		}
	}
	if !maps.Equal(stA.TenantRows, stB.TenantRows) {
		t.Errorf("rows per tenant differ: %v and %v", stA.TenantRows, stB.TenantRows)
	}
}

// TestGenerate checks one 20 MB database: its size, the skew of tenant
// sizes, that every row belongs to one tenant only, the odd shapes the
// schema promises, and the helpers.
func TestGenerate(t *testing.T) {
	t.Parallel()
	const target = 20 << 20
	dbURL, st := generate(t, datagen.Options{Tenants: 60, TargetBytes: target, Seed: 1, OddIDs: true})
	conn := testenv.Connect(t, dbURL)
	ctx := testenv.Context(t, 2*time.Minute)

	t.Run("size", func(t *testing.T) {
		if st.TableBytes < target*2/3 || st.TableBytes > target*3/2 {
			t.Errorf("tables hold %d bytes, want about %d", st.TableBytes, target)
		}
		if st.DatabaseBytes < st.TableBytes {
			t.Errorf("database %d bytes < tables %d bytes", st.DatabaseBytes, st.TableBytes)
		}
		// The shares of the big tables are roughly as planned.
		for tbl, share := range map[string]float64{"comments": 0.40, "issues": 0.20, "attachments": 0.15, "audit_log": 0.10} {
			var bytes int64
			for _, ts := range st.Tables {
				if ts.Name == tbl {
					bytes = ts.Bytes
				}
			}
			got := float64(bytes) / float64(st.TableBytes)
			if got < share/1.6 || got > share*1.6 {
				t.Errorf("%s holds %.0f%% of the data, want about %.0f%%", tbl, got*100, share*100)
			}
		}
		for _, ts := range st.Tables {
			if ts.Rows == 0 {
				t.Errorf("table %s is empty", ts.Name)
			}
		}
	})

	t.Run("skew", func(t *testing.T) {
		var rows []int64
		for _, n := range st.TenantRows {
			rows = append(rows, n)
		}
		slices.Sort(rows)
		if len(rows) != 60 {
			t.Fatalf("%d tenants in stats, want 60", len(rows))
		}
		if big, median := rows[len(rows)-1], rows[len(rows)/2]; big < 10*median {
			t.Errorf("largest tenant has %d rows, median %d: want a Zipf skew", big, median)
		}
		if rows[0] < 20 {
			t.Errorf("smallest tenant has %d rows, want a handful at least", rows[0])
		}
	})

	t.Run("tenant sizes", func(t *testing.T) {
		sizes, err := datagen.TenantSizes(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		if len(sizes) != len(st.TenantRows) {
			t.Fatalf("TenantSizes lists %d tenants, stats %d", len(sizes), len(st.TenantRows))
		}
		for i, s := range sizes {
			if s.Rows != st.TenantRows[s.ID] {
				t.Errorf("tenant %q: TenantSizes counts %d rows, Generate %d", s.ID, s.Rows, st.TenantRows[s.ID])
			}
			if s.Bytes <= 0 || i > 0 && s.Rows > sizes[i-1].Rows {
				t.Errorf("tenant %q: bad size or order: %+v", s.ID, s)
			}
		}
		ids, err := datagen.TenantIDs(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) != 60 || !slices.IsSorted(ids) || !slices.Contains(ids, "o'brien & co") || !slices.Contains(ids, "tab\there") {
			t.Errorf("TenantIDs = %q", ids)
		}
	})

	t.Run("integrity", func(t *testing.T) {
		// The foreign keys, added after the load, already prove that every
		// reference exists. These check what they cannot: that a row and
		// everything it refers to belong to the same tenant.
		checks := map[string]string{
			"issue's project":       `SELECT count(*) FROM issues i JOIN projects p ON p.id = i.project_id WHERE p.tenant_id <> i.tenant_id`,
			"issue's milestone":     `SELECT count(*) FROM issues i JOIN milestones m ON m.id = i.milestone_id WHERE m.tenant_id <> i.tenant_id OR m.project_id <> i.project_id`,
			"issue's reporter":      `SELECT count(*) FROM issues i JOIN users u ON u.id = i.reporter_id WHERE u.tenant_id <> i.tenant_id`,
			"issue's assignee":      `SELECT count(*) FROM issues i JOIN users u ON u.id = i.assignee_id WHERE u.tenant_id <> i.tenant_id`,
			"issue's parent":        `SELECT count(*) FROM issues i JOIN issues p ON p.id = i.parent_id WHERE p.tenant_id <> i.tenant_id OR p.id >= i.id`,
			"milestone's project":   `SELECT count(*) FROM milestones m JOIN projects p ON p.id = m.project_id WHERE p.tenant_id <> m.tenant_id`,
			"project's lead":        `SELECT count(*) FROM projects p JOIN users u ON u.id = p.lead_id WHERE u.tenant_id <> p.tenant_id`,
			"comment's author":      `SELECT count(*) FROM comments c JOIN issues i ON i.id = c.issue_id JOIN users u ON u.id = c.author_id WHERE u.tenant_id <> i.tenant_id`,
			"watcher":               `SELECT count(*) FROM issue_watchers w JOIN issues i ON i.id = w.issue_id JOIN users u ON u.id = w.user_id WHERE u.tenant_id <> i.tenant_id`,
			"event's issue":         `SELECT count(*) FROM events e JOIN issues i ON i.id = e.issue_id WHERE i.tenant_id <> e.tenant_id`,
			"comment before issue":  `SELECT count(*) FROM comments c JOIN issues i ON i.id = c.issue_id WHERE c.created_at < i.created_at`,
			"attachment's checksum": `SELECT count(*) FROM attachments WHERE sha256 <> sha256(content) OR size <> length(content)`,
			"user e-mail":           `SELECT count(*) - count(DISTINCT (tenant_id, email)) FROM users`,
		}
		for name, q := range checks {
			var n int64
			if err := conn.QueryRow(ctx, q).Scan(&n); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if n != 0 {
				t.Errorf("%s: %d bad rows", name, n)
			}
		}
	})

	t.Run("shapes", func(t *testing.T) {
		// What a tenant-aware backup must cope with is really there.
		checks := map[string]string{
			"rows in the default partition": `SELECT count(*) FROM events_default`,
			"monthly partitions":            `SELECT count(*) - 1 FROM pg_partition_tree('events') WHERE isleaf`,
			"duplicate audit rows":          `SELECT count(*) FROM (SELECT FROM audit_log a GROUP BY a.* HAVING count(*) > 1) d`,
			"sub-issues":                    `SELECT count(*) FROM issues WHERE parent_id IS NOT NULL`,
			"null assignees":                `SELECT count(*) FROM issues WHERE assignee_id IS NULL`,
			"empty label arrays":            `SELECT count(*) FROM issues WHERE labels = '{}'`,
			"toasted issue bodies":          `SELECT count(*) FROM issues WHERE length(body) > 2500`,
			"large attachments":             `SELECT count(*) FROM attachments WHERE size > 32768`,
			"IPv6 addresses":                `SELECT count(*) FROM audit_log WHERE family(ip) = 6`,
			"nested JSON":                   `SELECT count(*) FROM issues WHERE custom -> 'customer' ->> 'tenant' = tenant_id`,
			"tenants without attachments": `SELECT count(*) FROM tenants t WHERE NOT EXISTS (
				SELECT FROM attachments a JOIN comments c ON c.id = a.comment_id JOIN issues i ON i.id = c.issue_id WHERE i.tenant_id = t.id)`,
		}
		for name, q := range checks {
			var n int64
			if err := conn.QueryRow(ctx, q).Scan(&n); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if n == 0 {
				t.Errorf("no %s", name)
			}
		}
		var months int64
		conn.QueryRow(ctx, `SELECT count(*) FROM pg_partition_tree('events') WHERE isleaf`).Scan(&months)
		if months != 49 {
			t.Errorf("events has %d partitions, want 48 months and a default", months)
		}
	})

	t.Run("sequences", func(t *testing.T) {
		// New rows get new IDs: the sequences were moved past the load.
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		var issue, comment int64
		err = tx.QueryRow(ctx, `INSERT INTO comments (issue_id, author_id, body, created_at)
			SELECT i.id, i.reporter_id, 'x', now() FROM issues i ORDER BY i.id LIMIT 1 RETURNING issue_id, id`).Scan(&issue, &comment)
		if err != nil {
			t.Fatalf("insert comment: %v", err)
		}
		if comment != st.Rows("comments")+1 {
			t.Errorf("new comment got ID %d, want %d", comment, st.Rows("comments")+1)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO events (tenant_id, issue_id, kind, payload, created_at)
			SELECT tenant_id, id, 'x', '{}', now() FROM issues WHERE id = $1`, issue); err != nil {
			t.Fatalf("insert event: %v", err)
		}
	})

	t.Run("delete tenant", func(t *testing.T) {
		// Deleting the largest tenant cascades through every path,
		// including the NO ACTION references from comments and issues to
		// users, and leaves the other tenants alone.
		victim := ""
		for id, n := range st.TenantRows {
			if m := st.TenantRows[victim]; victim == "" || n > m || n == m && id < victim {
				victim = id
			}
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		before := tenantChecksums(t, tx)
		start := time.Now()
		if _, err := tx.Exec(ctx, `DELETE FROM tenants WHERE id = $1`, victim); err != nil {
			t.Fatalf("delete tenant %q: %v", victim, err)
		}
		t.Logf("deleted tenant %q (%d rows) in %s", victim, st.TenantRows[victim], time.Since(start).Round(time.Millisecond))
		after := tenantChecksums(t, tx)
		for id, sums := range before {
			switch {
			case id == victim && len(after[id]) != 0:
				t.Errorf("deleted tenant %q still has rows in %v", id, slices.Sorted(maps.Keys(after[id])))
			case id != victim && !maps.Equal(sums, after[id]):
				t.Errorf("tenant %q changed when %q was deleted", id, victim)
			}
		}
	})
}

// tenantChecksumsSQL returns, for every tenant and table, an md5 of the
// tenant's rows, following foreign keys for the tables without a tenant
// column.
const tenantChecksumsSQL = `
WITH rows AS (
	SELECT 'tenants' AS tbl, x.id AS tenant_id, x::text AS r FROM tenants x
	UNION ALL SELECT 'users', x.tenant_id, x::text FROM users x
	UNION ALL SELECT 'projects', x.tenant_id, x::text FROM projects x
	UNION ALL SELECT 'milestones', x.tenant_id, x::text FROM milestones x
	UNION ALL SELECT 'issues', x.tenant_id, x::text FROM issues x
	UNION ALL SELECT 'events', x.tenant_id, x::text FROM events x
	UNION ALL SELECT 'audit_log', x.tenant_id, x::text FROM audit_log x
	UNION ALL SELECT 'issue_watchers', i.tenant_id, x::text FROM issue_watchers x JOIN issues i ON i.id = x.issue_id
	UNION ALL SELECT 'comments', i.tenant_id, x::text FROM comments x JOIN issues i ON i.id = x.issue_id
	UNION ALL SELECT 'attachments', i.tenant_id, x::text FROM attachments x
		JOIN comments c ON c.id = x.comment_id JOIN issues i ON i.id = c.issue_id)
SELECT tenant_id, tbl, md5(string_agg(r, E'\n' ORDER BY r)) FROM rows GROUP BY 1, 2`

func tenantChecksums(t *testing.T, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) map[string]map[string]string {
	t.Helper()
	rows, err := q.Query(context.Background(), tenantChecksumsSQL)
	if err != nil {
		t.Fatalf("tenant checksums: %v", err)
	}
	sums := map[string]map[string]string{}
	var tenant, table, sum string
	_, err = pgx.ForEachRow(rows, []any{&tenant, &table, &sum}, func() error {
		if sums[tenant] == nil {
			sums[tenant] = map[string]string{}
		}
		sums[tenant][table] = sum
		return nil
	})
	if err != nil {
		t.Fatalf("tenant checksums: %v", err)
	}
	return sums
}

func TestMutate(t *testing.T) {
	t.Parallel()
	dbURL, st := generate(t, datagen.Options{Tenants: 40, TargetBytes: 2 << 20, Seed: 3, OddIDs: true})
	conn := testenv.Connect(t, dbURL)
	ctx := testenv.Context(t, 2*time.Minute)

	before := tenantChecksums(t, conn)
	changed, err := datagen.Mutate(ctx, dbURL, 0.05, 11)
	if err != nil {
		t.Fatalf("Mutate: %v", err)
	}
	if len(changed) != 2 || !slices.IsSorted(changed) {
		t.Fatalf("Mutate(0.05) of 40 tenants changed %q, want 2 tenants in order", changed)
	}
	after := tenantChecksums(t, conn)
	for id := range st.TenantRows {
		if got, want := !maps.Equal(before[id], after[id]), slices.Contains(changed, id); got != want {
			t.Errorf("tenant %q: changed %v, reported as changed %v", id, got, want)
		}
	}
	for _, id := range changed {
		for _, tbl := range []string{"issues", "comments", "events", "audit_log"} {
			if before[id][tbl] == after[id][tbl] {
				t.Errorf("tenant %q: %s unchanged", id, tbl)
			}
		}
	}

	// The same seed picks the same tenants; another seed others.
	again, err := datagen.Mutate(ctx, dbURL, 0.05, 11)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again, changed) {
		t.Errorf("same seed changed %q, then %q", changed, again)
	}
	all, err := datagen.Mutate(ctx, dbURL, 1, 12)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 40 {
		t.Errorf("Mutate(1) changed %d tenants, want all 40", len(all))
	}
	for _, f := range []float64{0, -1, 1.5} {
		if _, err := datagen.Mutate(ctx, dbURL, f, 1); err == nil {
			t.Errorf("Mutate(%g) did not fail", f)
		}
	}
}

func TestGenerateRejectsBadOptions(t *testing.T) {
	ctx := context.Background()
	for _, o := range []datagen.Options{
		{Tenants: 0, TargetBytes: 1 << 20},
		{Tenants: 1, TargetBytes: 0},
		{Tenants: 1, TargetBytes: 1 << 20, ZipfS: -1},
	} {
		// Bad options fail before connecting: no database needed.
		if _, err := datagen.Generate(ctx, "postgres://invalid.invalid/none", o); err == nil || !strings.Contains(err.Error(), "must be") {
			t.Errorf("Generate(%+v) = %v, want an options error", o, err)
		}
	}
}

// The chain shape (issue 15): comments reach their tenant through issues,
// reactions through comments then issues; rows of all tenants interleave in
// ID order, which is time order; every foreign-key column is indexed; the
// same options give the same data.
func TestGenerateChainShape(t *testing.T) {
	t.Parallel()
	opts := datagen.Options{Tenants: 40, TargetBytes: 4 << 20, Seed: 7, Shape: datagen.ShapeChain}
	urlA, st := generate(t, opts)
	opts.Workers = 1
	urlB, _ := generate(t, opts)
	ctx := testenv.Context(t, time.Minute)
	a, b := testenv.Connect(t, urlA), testenv.Connect(t, urlB)
	for _, tbl := range datagen.ChainTables {
		var sa, sb string
		q := `SELECT md5(coalesce(string_agg(t::text, E'\n' ORDER BY t::text), '')) FROM public.` + tbl + ` t`
		if err := a.QueryRow(ctx, q).Scan(&sa); err != nil {
			t.Fatal(err)
		}
		if err := b.QueryRow(ctx, q).Scan(&sb); err != nil {
			t.Fatal(err)
		}
		if sa != sb {
			t.Errorf("table %s differs between two runs with the same options", tbl)
		}
		if st.Rows(tbl) == 0 {
			t.Errorf("table %s is empty", tbl)
		}
	}
	var sum int64
	for _, n := range st.TenantRows {
		sum += n
	}
	if sum != st.TotalRows() {
		t.Errorf("TenantRows adds up to %d rows, the tables hold %d", sum, st.TotalRows())
	}
	// Interleaved: consecutive rows of the big tables mostly belong to
	// different tenants, and IDs follow time.
	var switches, n int64
	var ordered bool
	err := a.QueryRow(ctx, `SELECT count(*) FILTER (WHERE tn IS DISTINCT FROM prev), count(*), bool_and(at >= prev_at OR prev_at IS NULL)
		FROM (SELECT i.tenant_id AS tn, lag(i.tenant_id) OVER w AS prev, c.created_at AS at, lag(c.created_at) OVER w AS prev_at
		      FROM public.comments c JOIN public.issues i ON i.id = c.issue_id WINDOW w AS (ORDER BY c.id)) x`).Scan(&switches, &n, &ordered)
	if err != nil {
		t.Fatal(err)
	}
	if !ordered || switches < n/4 {
		t.Errorf("comments are not interleaved in time order: %d tenant switches in %d rows, time ordered %v", switches, n, ordered)
	}
	var fkIndexed int
	err = a.QueryRow(ctx, `SELECT count(*) FROM pg_constraint c WHERE c.contype = 'f' AND EXISTS (
		SELECT 1 FROM pg_index i WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1])`).Scan(&fkIndexed)
	if err != nil {
		t.Fatal(err)
	}
	if fkIndexed != 3 {
		t.Errorf("%d of 3 foreign keys have an index on their column", fkIndexed)
	}
	sizes, err := datagen.TenantSizes(ctx, urlA)
	if err != nil {
		t.Fatal(err)
	}
	if len(sizes) != 40 || sizes[0].Rows != slices.Max(slices.Collect(maps.Values(st.TenantRows))) {
		t.Errorf("TenantSizes: %d tenants, largest %d rows; want 40 and the largest of Stats", len(sizes), sizes[0].Rows)
	}
}
