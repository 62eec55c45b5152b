// Package drill proves backups by restoring a sample of tenants into a throwaway database on a scratch server, checking and timing them, and reporting pass or fail.
package drill

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// DefaultCount is how many tenants a drill samples unless told otherwise.
const DefaultCount = 5

// DatabasePrefix starts the name of every database a drill creates, so that
// one left behind by a killed drill is easy to find and drop.
const DatabasePrefix = "tenantvault_drill_"

// ErrFailed is wrapped by Run's error when the drill ran but did not pass: a
// tenant was not restored or did not verify, a database check found a
// problem, or the restore took longer than MaxRTO. When a tenant failed
// because its data differs from the snapshot, the error wraps
// tenantvault.ErrIntegrity too.
var ErrFailed = errors.New("restore drill failed")

// Options configure a drill.
type Options struct {
	// Repo is the repository whose snapshots are drilled.
	Repo *vault.Vault
	// Scratch is a database URL on the scratch server. The drill connects to
	// that database only to create and drop its own. The role needs
	// CREATEDB and the right to set session_replication_role, as restore
	// does, and superuser rights for the amcheck index checks: a superuser
	// of a throwaway server is simplest.
	Scratch string
	// Tenants, when given, are drilled instead of a sample; every one must
	// be in the drilled set.
	Tenants []string
	// Count is how many tenants to sample when Tenants is empty; 0 means
	// DefaultCount, and more than the set holds means all of them.
	Count int
	// Seed makes the sample repeatable: the same set and seed give the same
	// tenants. 0 picks a random seed, reported in Report.Seed.
	Seed int64
	// SetID is the snapshot set to drill; "" means the newest complete set
	// (pre-restore sets never; partial sets only when there is nothing
	// else).
	SetID string
	// MaxRTO, when positive, is the budget for the restore's wall-clock
	// time (Report.RTO); exceeding it fails the drill.
	MaxRTO time.Duration
	// Keep leaves the drill's databases in place for inspection.
	Keep bool
	// Parallel is how many tenants are restored at once; 0 means restore's
	// default.
	Parallel int
	// Logger receives structured progress; nil discards it.
	Logger *slog.Logger
	// PgRestore is the pg_restore binary that renders the set's schema; ""
	// means pg_restore from PATH.
	PgRestore string
	// Template, when set, names a database on the scratch server that
	// holds the set's schema and no rows (e.g. made by the application's
	// migrations): the drill's database is created as a copy of it, and
	// the set's schema archive is not used. A set taken with
	// --schema-archive=none needs it. Column tenancy model only.
	Template string
	// Progress, when set, is told about each tenant as its restore ends
	// (before the database checks).
	Progress func(TenantResult)
	// Started and Loaded are passed to the restore (restore.Options), for
	// a progress display of its totals and bytes.
	Started func(*restore.Plan)
	Loaded  *atomic.Int64
	// Now is the clock for names and timestamps; nil means time.Now.
	Now func() time.Time
}

// Report is the outcome of a drill.
type Report struct {
	Repository string    // the repository, as vault.Location describes it
	Set        string    // ID of the drilled snapshot set
	SetTime    time.Time // the set's consistent instant
	Model      string    // tenancy model of the set
	// Seed is what the sample was drawn with; Sampled is false when the
	// tenants were given.
	Seed    int64
	Sampled bool
	// ErasedSkipped counts tenants of the set the sample left out because
	// they were erased (tenantvault forget).
	ErasedSkipped int
	// Scratch names the scratch server (host:port/database, no
	// credentials); Database is the drill's own database on it, and
	// TenantDatabases the tenant databases it created (database model).
	Scratch         string
	Database        string
	TenantDatabases []string
	// Kept is true when the databases were left in place (Options.Keep).
	Kept bool
	// Cleanup says what became of the databases: "dropped", "kept", or why
	// dropping failed.
	Cleanup string

	Started  time.Time
	Duration time.Duration // the whole drill, checks and cleanup included
	// RTO is the restore's wall-clock time: plan, schema, global tables and
	// every tenant loaded and verified. Zero when the restore did not run to
	// its end.
	RTO    time.Duration
	MaxRTO time.Duration
	// RTOExceeded is set when MaxRTO is positive and RTO is over it.
	RTOExceeded bool

	Tenants []TenantResult
	// Checks holds one entry per restored database.
	Checks []DatabaseChecks
	Rows   int64 // rows of the passed tenants
	Bytes  int64 // uncompressed bytes of the passed tenants

	// Interrupted is set when the context ended before the drill did.
	Interrupted bool
	// Error is an error that stopped the drill before every tenant had a
	// result (the restore could not start, the context ended).
	Error string
	// Passed is true when every tenant passed, every check came back clean,
	// the budget held and the databases were cleaned up as asked.
	Passed bool
}

// TenantResult is one tenant's part of a drill.
type TenantResult struct {
	Tenant   string
	Database string // the database holding its rows
	// Tables, Rows and Bytes are what the set holds for the tenant
	// (chunks, rows, uncompressed bytes).
	Tables int
	Rows   int64
	Bytes  int64
	// Duration is the tenant's own restore transaction: load, foreign-key
	// check, digests, commit. Tenants restored in parallel overlap.
	Duration time.Duration
	// Verified is true when every table's content digest matched.
	Verified bool
	// Problems are the database checks that failed on the tenant's tables
	// (schema and database models; column-model tables are shared, so
	// their problems are the database's: see Report.Checks).
	Problems []Problem
	Passed   bool
	// Failure says why the tenant failed, for people; "" when it passed.
	Failure string
	// Integrity is set when the failure means the restored data is not
	// what was snapshotted (the error wraps tenantvault.ErrIntegrity).
	Integrity bool
	// Err is the restore's error, if any.
	Err error
}

// FailedTenants returns the tenants that did not pass.
func (r *Report) FailedTenants() []TenantResult {
	var out []TenantResult
	for _, t := range r.Tenants {
		if !t.Passed {
			out = append(out, t)
		}
	}
	return out
}

// DatabaseProblems returns the check problems that belong to no single
// tenant (column model: shared tables).
func (r *Report) DatabaseProblems() []Problem {
	var out []Problem
	for _, dc := range r.Checks {
		for _, p := range dc.Problems {
			if p.Tenant == "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// Run drills a repository: it chooses the set and the tenants, restores them
// into a new database on the scratch server, checks and times them, and
// drops what it created unless Keep.
//
// The restore is the one an incident would run: restore.Run with
// CreateSchema into a fresh database named tenantvault_drill_<time>_<random>,
// which verifies every table's content digest before it commits a tenant.
// Then the server checks the result with its own code (foreign keys and CHECK
// constraints validated again, amcheck on every btree index), the restore's
// wall-clock time is held against MaxRTO, and the databases are dropped with
// a context of their own, so also when the drill fails or ctx is cancelled.
// Report.WriteJUnit and Report.WriteJSON render the outcome for CI systems.
//
// Bad input found before the tenants are chosen (no such set, an unknown
// tenant, a bad scratch URL) returns an *InputError and no report. From then
// on the report is always returned, so that CI can publish it, with any
// error: one wrapping ErrFailed when the drill ran and did not pass, one
// wrapping the context's error when it was interrupted, or what stopped it
// (an unreachable scratch server; an *InputError when it already holds
// databases named like the tenants, in the database model).
func Run(ctx context.Context, o Options) (*Report, error) {
	start := time.Now()
	if err := o.normalize(); err != nil {
		return nil, err
	}
	cfg, err := tenancy.ParseURL(o.Scratch)
	if err != nil {
		return nil, err
	}
	opened, err := chooseSet(ctx, o.Repo, o.SetID)
	if err != nil {
		return nil, err
	}
	set := opened.Header()
	if o.Template == "" && !set.HasSchemaArchive() {
		return nil, &tenantvault.InputError{
			Msg: fmt.Sprintf("snapshot set %s has no schema archive (it was taken with --schema-archive=none): "+
				"a drill creates its database from the set's schema", set.ID),
			Err:  restore.ErrNoSchemaArchive,
			Hint: "nothing was created; give --template DB, a database on the scratch server that holds the schema and no rows (e.g. made by your migrations), or drill a set taken with pg_dump",
		}
	}
	if o.Template != "" && set.Tenancy.Model != tenancy.ModelColumn {
		return nil, tenantvault.Inputf("--template works for the column tenancy model only; set %s uses the %s model", set.ID, set.Tenancy.Model)
	}
	rep := &Report{
		Repository: o.Repo.Location(), Set: set.ID, SetTime: set.ConsistentAt, Model: set.Tenancy.Model,
		Started: o.Now().UTC(), MaxRTO: o.MaxRTO,
	}
	tenants, err := chooseTenants(ctx, opened, &o, rep)
	if err != nil {
		return nil, err
	}
	entries := map[string]*manifest.Tenant{}
	for _, id := range tenants {
		t, err := opened.Tenant(ctx, id)
		if err != nil {
			return nil, err
		}
		entries[id] = t
	}
	rep.Scratch = tenancy.Describe(cfg)
	d := &drill{o: o, cfg: cfg, set: set, entries: entries, rep: rep, tenants: tenants}
	err = d.run(ctx)
	rep.Duration = time.Since(start)
	return rep, d.finish(ctx, err)
}

func (o *Options) normalize() error {
	if o.Repo == nil {
		return errors.New("drill: no repository")
	}
	if strings.TrimSpace(o.Scratch) == "" {
		return tenantvault.Inputf("no scratch server: give a database URL on it (e.g. postgres://user@host/postgres)")
	}
	if o.Count < 0 {
		return tenantvault.Inputf("cannot drill %d tenants", o.Count)
	}
	if o.Count == 0 {
		o.Count = DefaultCount
	}
	if o.Parallel < 0 || o.Parallel > 64 {
		return tenantvault.Inputf("cannot restore %d tenants at once (1 to 64)", o.Parallel)
	}
	if o.MaxRTO < 0 {
		return tenantvault.Inputf("the RTO budget %s is negative", o.MaxRTO)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// chooseSet reads the given set, or finds the newest complete one: a
// pre-restore set holds what a restore replaced, not a backup, and a partial
// set would narrow the sample to the few tenants someone snapshotted by hand.
func chooseSet(ctx context.Context, v *vault.Vault, id string) (*vault.Set, error) {
	if id != "" {
		return v.OpenSet(ctx, id)
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	var partial *vault.Set
	for i := len(ids) - 1; i >= 0; i-- {
		s, err := v.OpenSet(ctx, ids[i])
		if err != nil {
			return nil, err
		}
		m := s.Header()
		switch {
		case m.Kind == manifest.KindPreRestore:
		case !m.Partial:
			return s, nil
		case partial == nil:
			partial = s
		}
	}
	if partial != nil {
		return partial, nil
	}
	return nil, tenantvault.Inputf("repository %s holds no snapshot set to drill", v.Location())
}

// chooseTenants checks the given tenants against the set, or samples.
func chooseTenants(ctx context.Context, s *vault.Set, o *Options, rep *Report) ([]string, error) {
	set := s.Header()
	erased, err := o.Repo.ErasedTenants(ctx)
	if err != nil {
		return nil, err
	}
	if len(o.Tenants) > 0 {
		if err := o.Repo.RefuseErased(ctx, o.Tenants); err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		var ids, missing []string
		for _, id := range o.Tenants {
			if seen[id] {
				continue
			}
			seen[id] = true
			t, err := s.Tenant(ctx, id)
			if err != nil {
				return nil, err
			}
			if t == nil {
				missing = append(missing, id)
			}
			ids = append(ids, id)
		}
		if len(missing) > 0 {
			return nil, &tenantvault.InputError{Err: &restore.UnknownTenantsError{IDs: missing, Reason: "in snapshot set " + set.ID},
				Hint: "nothing was created; list a tenant's sets with: tenantvault list --tenant ID"}
		}
		sort.Strings(ids)
		return ids, nil
	}
	// What sampling weighs, a few bytes a tenant: not their chunks.
	var all []manifest.Tenant
	if err := s.HeldTenants(ctx, func(t *manifest.Tenant) error {
		if erased.Has(t.ID) {
			// Erased after this set was taken and not yet rewritten, or
			// taken while the source still held its rows: never restored.
			rep.ErasedSkipped++
			return nil
		}
		all = append(all, manifest.Tenant{ID: t.ID, Size: t.Size})
		return nil
	}); err != nil {
		return nil, err
	}
	if rep.ErasedSkipped > 0 {
		o.Logger.Warn("the sample skips erased tenants that the set still holds (tenantvault forget)", "set", set.ID, "erased", rep.ErasedSkipped)
	}
	if len(all) == 0 {
		return nil, tenantvault.Inputf("snapshot set %s holds no tenants", set.ID)
	}
	if o.Seed == 0 {
		o.Seed = newSeed()
	}
	rep.Seed, rep.Sampled = o.Seed, true
	return sample(all, o.Count, o.Seed), nil
}

// drill is the state of one run.
type drill struct {
	o       Options
	cfg     *pgx.ConnConfig // the scratch URL
	set     *manifest.Manifest
	entries map[string]*manifest.Tenant // the drilled tenants' entries in set
	rep     *Report
	tenants []string
	// created lists the databases this drill made and must drop.
	created []string
	// cause is the error that stopped the drill before the tenants had
	// results, or the first operational error of the checks.
	cause error
}

func (d *drill) run(ctx context.Context) error {
	rep, o := d.rep, &d.o
	admin, err := tenancy.Connect(ctx, d.cfg)
	if err != nil {
		return err
	}
	defer admin.Close(context.Background())
	if d.set.Tenancy.Model == tenancy.ModelDatabase {
		if err := d.guardTenantDatabases(ctx, admin); err != nil {
			return err
		}
	}
	rep.Database = d.databaseName()
	// template0 holds nothing a site may have added to template1, so the
	// database is truly empty; UTF8 takes any text the snapshot holds (it
	// was read with client_encoding UTF8). A server whose default locale
	// cannot do UTF8 gets the C locale, which can.
	create := "CREATE DATABASE " + tenancy.Ident(rep.Database) + " TEMPLATE template0 ENCODING 'UTF8'"
	if o.Template != "" {
		// A copy of the template holds its schema; its encoding is the
		// template's.
		create = "CREATE DATABASE " + tenancy.Ident(rep.Database) + " TEMPLATE " + tenancy.Ident(o.Template)
	}
	_, err = admin.Exec(ctx, create)
	var pg *pgconn.PgError
	if o.Template == "" && errors.As(err, &pg) && pg.Code == "22023" {
		_, err = admin.Exec(ctx, create+" LC_COLLATE 'C' LC_CTYPE 'C'")
	}
	if err != nil {
		return fmt.Errorf("create scratch database %s on %s: %w", rep.Database, rep.Scratch, err)
	}
	d.created = append(d.created, rep.Database)
	defer d.cleanup(ctx)
	o.Logger.Info("drill started", "set", d.set.ID, "tenants", len(d.tenants), "database", rep.Database, "scratch", rep.Scratch, "seed", rep.Seed)

	target, err := tenancy.URLWithDatabase(o.Scratch, rep.Database)
	if err != nil {
		return err
	}
	results := map[string]*TenantResult{}
	for _, id := range d.tenants {
		t := d.entries[id]
		db := rep.Database
		if d.set.Tenancy.Model == tenancy.ModelDatabase {
			db = id
		}
		rep.Tenants = append(rep.Tenants, TenantResult{Tenant: id, Database: db, Tables: len(t.Chunks), Rows: t.Rows, Bytes: t.Size})
	}
	for i := range rep.Tenants {
		results[rep.Tenants[i].Tenant] = &rep.Tenants[i]
	}
	var progressMu sync.Mutex
	restoreStart := time.Now()
	rr, err := restore.Run(ctx, restore.Options{
		Vault: o.Repo, Target: target, Tenants: d.tenants, Select: restore.Selector{SetID: d.set.ID},
		CreateSchema: true, SchemaInPlace: o.Template != "", Parallel: o.Parallel, PgRestore: o.PgRestore, Logger: o.Logger,
		Started: o.Started, Loaded: o.Loaded,
		Progress: func(tr restore.TenantResult) {
			if o.Progress == nil {
				return
			}
			progressMu.Lock()
			defer progressMu.Unlock()
			t := *results[tr.Tenant]
			applyRestore(&t, tr)
			o.Progress(t)
		},
	})
	restoreTime := time.Since(restoreStart)
	if rr == nil || rr.Tenants == nil {
		// Nothing was restored: the plan, the schema or the global
		// tables failed, or the context ended first.
		if err == nil {
			err = errors.New("the restore restored nothing")
		}
		return fmt.Errorf("restore: %w", err)
	}
	for _, tr := range rr.Tenants {
		applyRestore(results[tr.Tenant], tr)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	rep.RTO = restoreTime
	rep.RTOExceeded = o.MaxRTO > 0 && rep.RTO > o.MaxRTO
	d.runChecks(ctx)
	return nil
}

// applyRestore copies a tenant's restore outcome into its result.
func applyRestore(t *TenantResult, tr restore.TenantResult) {
	t.Duration, t.Verified, t.Err = tr.Duration, tr.Verified, tr.Err
}

// guardTenantDatabases makes the database model safe on a shared server: its
// restore creates one database per tenant, named after the tenant, so the
// drill refuses a server that already has a database of such a name (it
// could be the live one) and holds an advisory lock so that two drills
// connected to the same database cannot both count one as theirs.
func (d *drill) guardTenantDatabases(ctx context.Context, admin *pgx.Conn) error {
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock(hashtext('tenantvault drill: tenant databases'))"); err != nil {
		return fmt.Errorf("wait for other drills on %s: %w", d.rep.Scratch, err)
	}
	rows, err := admin.Query(ctx, "SELECT datname FROM pg_database WHERE datname = ANY($1) ORDER BY datname", d.tenants)
	if err != nil {
		return err
	}
	existing, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	if len(existing) > 0 {
		q := make([]string, len(existing))
		for i, n := range existing {
			q[i] = fmt.Sprintf("%q", n)
		}
		return &tenantvault.InputError{
			Msg: fmt.Sprintf("the scratch server %s already has database(s) named like the tenants to drill: %s", d.rep.Scratch, strings.Join(q, ", ")),
			Hint: "nothing was created; in the database model every tenant is restored into a database of its name, " +
				"so drill on a server that does not hold them (never the live one), or drill other tenants",
		}
	}
	// Databases that do not exist now and do after the restore are ours.
	d.created = append(d.created, d.tenants...)
	d.rep.TenantDatabases = append([]string(nil), d.tenants...)
	return nil
}

// databaseName is tenantvault_drill_<UTC time>_<6 random hex digits>:
// lower case, so it needs no quoting in psql, and unique per run.
func (d *drill) databaseName() string {
	b := make([]byte, 3)
	rand.Read(b)
	return DatabasePrefix + d.o.Now().UTC().Format("20060102_150405") + "_" + hex.EncodeToString(b)
}

// runChecks checks every database that holds restored tenants.
func (d *drill) runChecks(ctx context.Context) {
	rep := d.rep
	byDB := map[string][]string{}
	for _, t := range rep.Tenants {
		if t.Err == nil {
			byDB[t.Database] = append(byDB[t.Database], t.Tenant)
		}
	}
	model := d.set.Tenancy.Model
	for _, db := range sortedKeys(byDB) {
		owner := func(string) string { return "" }
		switch model {
		case tenancy.ModelDatabase:
			owner = func(string) string { return db }
		case tenancy.ModelSchema:
			owner = func(schema string) string {
				for _, id := range byDB[db] {
					if id == schema {
						return id
					}
				}
				return ""
			}
		}
		dc, err := checkDatabase(ctx, tenancy.WithDatabase(d.cfg, db), owner)
		if model == tenancy.ModelDatabase {
			dc.Tenant = db
		}
		if err != nil {
			dc.Err = err.Error()
			d.cause = fmt.Errorf("checks of database %s: %w", db, err)
			d.o.Logger.Error("database checks did not finish", "database", db, "err", err)
			rep.Checks = append(rep.Checks, dc)
			return
		}
		d.o.Logger.Info("database checked", "database", db, "foreign_keys", dc.ForeignKeys, "constraints", dc.Constraints,
			"indexes", dc.Indexes, "problems", len(dc.Problems), "skipped", len(dc.Skipped))
		rep.Checks = append(rep.Checks, dc)
	}
}

// cleanup drops the databases the drill created, unless Keep. It runs with a
// context of its own, so a cancelled drill still cleans up, and FORCE ends
// any session a cancelled restore left behind.
func (d *drill) cleanup(ctx context.Context) {
	rep := d.rep
	if d.o.Keep {
		rep.Kept, rep.Cleanup = true, "kept"
		d.o.Logger.Warn("scratch databases kept; drop them when done", "databases", strings.Join(d.created, ", "), "scratch", rep.Scratch)
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	conn, err := tenancy.Connect(cctx, d.cfg)
	if err != nil {
		rep.Cleanup = fmt.Sprintf("not dropped (%s): %v", strings.Join(d.created, ", "), err)
		d.o.Logger.Error("scratch databases not dropped", "databases", strings.Join(d.created, ", "), "err", err)
		return
	}
	defer conn.Close(context.Background())
	var failed []string
	for _, name := range d.created {
		if err := dropDatabase(cctx, conn, name); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", name, err))
		}
	}
	if len(failed) > 0 {
		rep.Cleanup = "not dropped: " + strings.Join(failed, "; ")
		d.o.Logger.Error("scratch databases not dropped", "problems", rep.Cleanup)
		return
	}
	rep.Cleanup = "dropped"
	d.o.Logger.Info("scratch databases dropped", "databases", strings.Join(d.created, ", "))
}

func dropDatabase(ctx context.Context, conn *pgx.Conn, name string) error {
	_, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+tenancy.Ident(name)+" WITH (FORCE)")
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "42601" {
		// Before PostgreSQL 13 there is no FORCE: end the sessions first.
		if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name); err != nil {
			return err
		}
		_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+tenancy.Ident(name))
	}
	return err
}

// finish decides the verdict and the error Run returns.
func (d *drill) finish(ctx context.Context, runErr error) error {
	rep := d.rep
	if runErr == nil {
		runErr = d.cause
	}
	if ctx.Err() != nil {
		rep.Interrupted = true
		if runErr == nil || errors.Is(runErr, ctx.Err()) {
			runErr = fmt.Errorf("drill interrupted: %w", ctx.Err())
		} else {
			runErr = fmt.Errorf("drill interrupted: %w (%v)", ctx.Err(), runErr)
		}
	}
	if runErr != nil {
		rep.Error = runErr.Error()
	}
	problems := map[string][]Problem{}
	for _, dc := range rep.Checks {
		for _, p := range dc.Problems {
			if p.Tenant != "" {
				problems[p.Tenant] = append(problems[p.Tenant], p)
			}
		}
	}
	var failed []string
	var integrity error
	rep.Rows, rep.Bytes = 0, 0
	for i := range rep.Tenants {
		t := &rep.Tenants[i]
		t.Problems = problems[t.Tenant]
		switch {
		case t.Err != nil:
			t.Failure = t.Err.Error()
			t.Integrity = errors.Is(t.Err, tenantvault.ErrIntegrity)
			if t.Integrity && integrity == nil {
				integrity = t.Err
			}
		case !t.Verified && runErr != nil:
			t.Failure = "not restored: " + runErr.Error()
		case !t.Verified:
			t.Failure = "not restored"
		case len(t.Problems) > 0:
			t.Failure = fmt.Sprintf("%d database check(s) failed: %s", len(t.Problems), t.Problems[0])
		}
		t.Passed = t.Failure == ""
		if t.Passed {
			rep.Rows += t.Rows
			rep.Bytes += t.Bytes
		} else {
			failed = append(failed, fmt.Sprintf("%q", t.Tenant))
		}
	}
	var reasons []string
	if len(failed) > 0 {
		reasons = append(reasons, fmt.Sprintf("%d of %d tenant(s) failed (%s)", len(failed), len(rep.Tenants), strings.Join(failed, ", ")))
	}
	if n := len(rep.DatabaseProblems()); n > 0 {
		reasons = append(reasons, fmt.Sprintf("%d database check(s) failed, first: %s", n, rep.DatabaseProblems()[0]))
	}
	if rep.RTOExceeded {
		reasons = append(reasons, fmt.Sprintf("the restore took %s, over the RTO budget of %s", rep.RTO.Round(time.Millisecond), rep.MaxRTO))
	}
	if rep.Cleanup != "dropped" && rep.Cleanup != "kept" && rep.Cleanup != "" {
		reasons = append(reasons, "scratch database(s) "+rep.Cleanup)
	}
	rep.Passed = runErr == nil && len(reasons) == 0
	log := d.o.Logger.With("set", rep.Set, "tenants", len(rep.Tenants), "seconds", rep.Duration.Seconds(), "rto_seconds", rep.RTO.Seconds())
	if rep.Passed {
		log.Info("drill passed")
		return nil
	}
	log.Error("drill failed", "reasons", strings.Join(reasons, "; "), "err", runErr)
	if runErr != nil {
		// What stopped the drill decides the exit code (a cancelled
		// context, a server that went away, bad input found late).
		if integrity != nil && !errors.Is(runErr, tenantvault.ErrIntegrity) {
			return &failure{msg: runErr.Error(), integrity: integrity}
		}
		return runErr
	}
	return &failure{msg: strings.Join(reasons, "; "), integrity: integrity}
}

// failure is the error of a drill that ran and did not pass.
type failure struct {
	msg       string
	integrity error // the first tenant error wrapping ErrIntegrity
}

func (f *failure) Error() string { return ErrFailed.Error() + ": " + f.msg }

func (f *failure) Unwrap() []error {
	if f.integrity != nil {
		return []error{ErrFailed, f.integrity}
	}
	return []error{ErrFailed}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
