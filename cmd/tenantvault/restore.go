package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/vault"
)

type restoreOptions struct {
	repo         repoFlags
	target       string
	tenants      []string
	tenantsFile  string
	at           string
	snapshot     string
	ifExists     string
	createSchema bool
	dryRun       bool
	parallel     int
	yes          bool
	shard        string
	pgRestore    string
	pgDump       string
	tempDir      string
}

func (a *app) restoreCmd() *cobra.Command {
	var o restoreOptions
	cmd := &cobra.Command{
		Use:   "restore --repo URL --target URL (--tenant ID ... | --tenants-file FILE)",
		Short: "Restore chosen tenants, as of a chosen time, with proof",
		Long: `Restore chosen tenants from the newest snapshot set (or the one given by
--snapshot, or the newest taken at or before --at) into the target database.
Every tenant ID is checked against the sets before anything is written. Each
tenant is restored in one transaction: its tables loaded with COPY in
foreign-key order with triggers suppressed, foreign keys checked, sequences
moved forward, and every table's content digest recomputed from the target
and compared with the snapshot before commit.

A tenant that already has rows in the target is refused unless
--if-exists replace is given; then its current rows are first saved as a
pre-restore snapshot set (its ID is printed), so the replace can be undone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runRestore(cmd.Context(), &o) },
	}
	fs := cmd.Flags()
	o.repo.add(fs, false)
	o.repo.keys.addReader(fs)
	fs.StringVar(&o.target, "target", "", "target database URL (the live database or a scratch one)")
	fs.StringArrayVar(&o.tenants, "tenant", nil, "tenant to restore (repeatable; any characters)")
	fs.StringVar(&o.tenantsFile, "tenants-file", "", "file with one tenant ID per line")
	fs.StringVar(&o.at, "at", "", "restore each tenant as of this RFC 3339 time (the newest set at or before it)")
	fs.StringVar(&o.snapshot, "snapshot", "", "restore from this snapshot set ID")
	fs.StringVar(&o.ifExists, "if-exists", restore.IfExistsFail, "when a tenant already has rows: fail, or replace (after a pre-restore snapshot)")
	fs.BoolVar(&o.createSchema, "create-schema", false, "prepare an empty target from the set's schema and global tables first")
	fs.BoolVar(&o.dryRun, "dry-run", false, "print the plan and conflicts, and write nothing")
	fs.IntVar(&o.parallel, "parallel", 2, "tenants restored at once")
	fs.BoolVar(&o.yes, "yes", false, "do not ask for confirmation on a terminal")
	fs.StringVar(&o.shard, "shard", "", "restore only slice i of N of the tenants (i/N), for mass restores split over N jobs")
	fs.StringVar(&o.pgRestore, "pg-restore", "pg_restore", "pg_restore binary, for --create-schema")
	fs.StringVar(&o.pgDump, "pg-dump", "pg_dump", "pg_dump binary, for the pre-restore snapshot")
	fs.StringVar(&o.tempDir, "temp-dir", "", "directory for temporary files")
	return cmd
}

// readTenantsFile reads one tenant ID per line; only the line ending is
// removed, because IDs may contain any character.
func readTenantsFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, tenantvault.Inputf("--tenants-file: %v", err)
	}
	defer f.Close()
	var ids []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if line := strings.TrimSuffix(sc.Text(), "\r"); line != "" {
			ids = append(ids, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, tenantvault.Inputf("--tenants-file %s: %v", path, err)
	}
	if len(ids) == 0 {
		return nil, tenantvault.Inputf("--tenants-file %s lists no tenants", path)
	}
	return ids, nil
}

func parseAt(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, tenantvault.Inputf("--at %q is not an RFC 3339 time (like 2026-11-28T10:15:00Z)", s)
	}
	return t, nil
}

func (a *app) runRestore(ctx context.Context, o *restoreOptions) error {
	if o.target == "" {
		return &usageError{"--target is required (or TENANTVAULT_TARGET)"}
	}
	tenants := o.tenants
	if o.tenantsFile != "" {
		ids, err := readTenantsFile(o.tenantsFile)
		if err != nil {
			return err
		}
		tenants = append(tenants, ids...)
	}
	if len(tenants) == 0 {
		return &usageError{"no tenants given: use --tenant ID (repeatable) or --tenants-file FILE"}
	}
	var sel restore.Selector
	if o.at != "" && o.snapshot != "" {
		return &usageError{"--at and --snapshot exclude each other"}
	}
	if o.at != "" {
		at, err := parseAt(o.at)
		if err != nil {
			return err
		}
		sel.At = at
	}
	sel.SetID = o.snapshot
	shard, err := restore.ParseShard(o.shard)
	if err != nil {
		return err
	}
	v, closeRepo, err := a.openVault(ctx, &o.repo, false)
	if err != nil {
		return err
	}
	defer closeRepo()
	ro := restore.Options{
		Vault: v, Target: o.target, Tenants: tenants, Select: sel, IfExists: o.ifExists,
		CreateSchema: o.createSchema, DryRun: o.dryRun, Parallel: o.parallel, Shard: shard,
		PgRestore: o.pgRestore, Logger: a.log,
		Snapshot: snapshot.Options{PgDump: o.pgDump, TempDir: o.tempDir, Logger: a.log},
		Announce: func(id string) {
			a.notef("pre-restore snapshot set %s holds the rows being replaced; to undo: tenantvault restore --snapshot %s --if-exists replace ...", id, id)
		},
	}
	shown := false // the plan, by the confirmation prompt
	if !o.yes && !o.dryRun && terminal(a.stdin) {
		ro.Confirm = func(p *restore.Plan) bool {
			shown = true
			return a.confirm(ctx, p)
		}
	}
	// The bar starts once the plan is confirmed, never over the prompt.
	var c planCounts
	var m *meter
	ro.Progress = func(t restore.TenantResult) { c.add(t.Err) }
	ro.Loaded = &c.loaded
	ro.Started = func(p *restore.Plan) { m = a.startMeter(c.meter("restored", p)) }
	rep, err := restore.Run(ctx, ro)
	m.finish(rep != nil && rep.Tenants != nil && ctx.Err() == nil)
	if rep != nil && rep.Plan != nil && (o.dryRun || rep.Tenants == nil) && !a.jsonOut && !shown {
		a.printRestorePlan(a.stdout, rep.Plan)
	}
	if rep != nil && rep.Tenants != nil {
		if a.jsonOut {
			if jerr := a.printJSON(restoreJSON(rep)); jerr != nil {
				return jerr
			}
		} else {
			a.printRestoreReport(rep)
		}
	} else if rep != nil && a.jsonOut && o.dryRun && err == nil {
		return a.printJSON(planJSON(rep.Plan))
	}
	return err
}

// confirm shows the plan and asks on the terminal; anything but "yes", an
// end of input or an interrupt (Ctrl-C) refuses.
func (a *app) confirm(ctx context.Context, p *restore.Plan) bool {
	w := a.stdout
	if a.jsonOut {
		w = a.stderr // stdout is for the JSON result
	}
	a.printRestorePlan(w, p)
	return a.askYes(ctx, fmt.Sprintf("Restore %d tenant(s) into %s? This writes to the database.", len(p.Items), p.Target))
}

// askYes asks question on the terminal; anything but "yes", an end of
// input or an interrupt (Ctrl-C) refuses.
func (a *app) askYes(ctx context.Context, question string) bool {
	prompt := a.stderr
	if !terminal(a.stderr) && terminal(a.stdout) {
		prompt = a.stdout // stderr goes to a file: the question must still be seen
	}
	fmt.Fprintf(prompt, "%s Type 'yes' to go on: ", question)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(a.stdin).ReadString('\n')
		answer <- line
	}()
	select {
	case line := <-answer:
		return strings.TrimSpace(line) == "yes"
	case <-ctx.Done():
		fmt.Fprintln(prompt)
		return false
	}
}

// planCounts counts a restore's progress for its bar.
type planCounts struct {
	ok, failed, loaded atomic.Int64
}

func (c *planCounts) add(err error) {
	if err != nil {
		c.failed.Add(1)
	} else {
		c.ok.Add(1)
	}
}

// meter is the progress bar of a restore's plan: tenants, and bytes when
// the tenants hold any.
func (c *planCounts) meter(verb string, p *restore.Plan) meterSpec {
	var total int64
	for _, it := range p.Items {
		total += it.T.Size
	}
	if p.CreateSchema && p.SchemaSet != nil {
		for _, c := range p.SchemaSet.Global {
			total += c.Size
		}
	}
	spec := meterSpec{verb: verb, noun: "tenants", failed: c.failed.Load,
		items: func() (int64, int64) { return c.ok.Load(), int64(len(p.Items)) }}
	if total > 0 {
		spec.bytes = func() (int64, int64) { return c.loaded.Load(), total }
	}
	return spec
}

func (a *app) printRestorePlan(w io.Writer, p *restore.Plan) {
	fmt.Fprintf(w, "plan: restore %d tenant(s) into %s", len(p.Items), p.Target)
	if p.CreateSchema {
		fmt.Fprintf(w, " (empty: schema and global tables from set %s first)", p.SchemaSet.ID)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tSET\tTABLES\tROWS\tDATA\tSTORED\tIN TARGET NOW")
	for _, it := range p.Items {
		now := "-"
		if n := it.ExistingRows(); n > 0 {
			now = fmt.Sprintf("%d rows in %d table(s): %s", n, len(it.Existing), strings.Join(sortedKeys(it.Existing), ", "))
		} else if it.MissingSchema {
			now = "schema missing (created)"
		}
		fmt.Fprintf(tw, "%q\t%s\t%d\t%d\t%s\t%s\t%s\n", it.Tenant, it.Set.ID, len(it.T.Chunks), it.T.Rows, humanBytes(it.T.Size), humanBytes(it.T.Stored), now)
	}
	tw.Flush()
}

func (a *app) printRestoreReport(rep *restore.Report) {
	tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tSET\tTABLES\tROWS\tBYTES\tREPLACED\tTIME\tVERIFIED")
	ok, replayed := 0, 0
	for _, t := range rep.Tenants {
		var verified string
		switch {
		case !t.Verified:
			verified = "NO, rolled back: " + t.Err.Error()
		case t.Replayed != nil:
			// Not a bare yes: the digests prove the base, not the changes.
			verified = fmt.Sprintf("base: %d digests; then %d change(s) replayed", t.Digests, t.Replayed.Changes)
			if !t.Replayed.LastCommit.IsZero() {
				verified += ", last committed " + t.Replayed.LastCommit.UTC().Format(time.RFC3339Nano)
			}
			replayed++
		default:
			verified = fmt.Sprintf("yes: %d digests", t.Digests)
		}
		if t.Verified {
			ok++
		}
		fmt.Fprintf(tw, "%q\t%s\t%d\t%d\t%s\t%d\t%.2fs\t%s\n", t.Tenant, t.Set, t.Tables, t.Rows, humanBytes(t.Bytes), t.Deleted, t.Duration.Seconds(), verified)
	}
	tw.Flush()
	fmt.Fprintf(a.stdout, "restored %d of %d tenant(s) in %.1fs", ok, len(rep.Tenants), rep.Duration.Seconds())
	if rep.PreRestoreSet != "" {
		fmt.Fprintf(a.stdout, "; replaced rows saved in set %s", rep.PreRestoreSet)
	}
	fmt.Fprintln(a.stdout)
	if replayed > 0 {
		fmt.Fprintln(a.stdout, "note: for tenants restored to a time after their set, every table's content digest proved the set's rows; the changes replayed on top were checked by row counts and foreign keys, not digests (verify --replay proves the change log against the next set)")
	}
}

type restoreTenantJSON struct {
	Tenant   string  `json:"tenant"`
	Set      string  `json:"set"`
	Tables   int     `json:"tables"`
	Rows     int64   `json:"rows"`
	Bytes    int64   `json:"bytes"`
	Replaced int64   `json:"replaced_rows"`
	Seconds  float64 `json:"seconds"`
	// Verified: every check ran and passed; Proof says which.
	Verified bool      `json:"verified"`
	Proof    proofJSON `json:"proof"`
	Error    string    `json:"error,omitempty"`
}

// proofJSON is what a tenant's restore proved, and how.
type proofJSON struct {
	// Digests: tables whose content digest was recomputed from the target
	// and matched the set.
	Digests  int           `json:"digests_matched"`
	Replayed *replayedJSON `json:"replayed,omitempty"`
	Method   string        `json:"method"`
}

type replayedJSON struct {
	Changes    int    `json:"changes"`
	Skipped    int    `json:"skipped"`
	LastCommit string `json:"last_commit,omitempty"`
	LastLSN    string `json:"last_lsn,omitempty"`
	At         string `json:"at"`
	CheckedBy  string `json:"checked_by"`
}

type planItemJSON struct {
	Tenant   string           `json:"tenant"`
	Set      string           `json:"set"`
	Tables   int              `json:"tables"`
	Rows     int64            `json:"rows"`
	Bytes    int64            `json:"bytes"`
	Existing map[string]int64 `json:"existing_rows,omitempty"`
}

func planJSON(p *restore.Plan) any {
	items := make([]planItemJSON, len(p.Items))
	for i, it := range p.Items {
		items[i] = planItemJSON{Tenant: it.Tenant, Set: it.Set.ID, Tables: len(it.T.Chunks), Rows: it.T.Rows, Bytes: it.T.Size, Existing: it.Existing}
	}
	return map[string]any{"target": p.Target, "create_schema": p.CreateSchema, "tenants": items}
}

func restoreJSON(rep *restore.Report) any {
	out := make([]restoreTenantJSON, len(rep.Tenants))
	for i, t := range rep.Tenants {
		out[i] = restoreTenantJSON{Tenant: t.Tenant, Set: t.Set, Tables: t.Tables, Rows: t.Rows, Bytes: t.Bytes, Replaced: t.Deleted, Seconds: t.Duration.Seconds(), Verified: t.Verified,
			Proof: proofJSON{Digests: t.Digests, Method: "content digests of every table"}}
		if r := t.Replayed; r != nil {
			p := &replayedJSON{Changes: r.Changes, Skipped: r.Skipped, At: r.At.UTC().Format(time.RFC3339Nano), CheckedBy: "row counts and foreign keys"}
			if !r.LastCommit.IsZero() {
				p.LastCommit, p.LastLSN = r.LastCommit.UTC().Format(time.RFC3339Nano), vault.LSNString(r.LastLSN)
			}
			out[i].Proof.Replayed, out[i].Proof.Method = p, "content digests of the set's rows; replayed changes checked by row counts and foreign keys"
		}
		if t.Err != nil {
			out[i].Error = t.Err.Error()
		}
	}
	return map[string]any{"pre_restore_set": rep.PreRestoreSet, "seconds": rep.Duration.Seconds(), "tenants": out}
}
