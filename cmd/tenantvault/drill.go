package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault/drill"
	"github.com/tenantvault/tenantvault/restore"
)

type drillOptions struct {
	repo      repoFlags
	scratch   string
	count     int
	tenants   []string
	snapshot  string
	seed      int64
	report    string
	maxRTO    time.Duration
	keep      bool
	parallel  int
	pgRestore string
	template  string
}

func (a *app) drillCmd() *cobra.Command {
	var o drillOptions
	cmd := &cobra.Command{
		Use:   "drill --repo URL --scratch URL [--tenants N | --tenant ID ...] [--report FILE]",
		Short: "Restore sample tenants into a scratch database, check, time and report",
		Long: `Prove the backups: pick tenants from the newest complete snapshot set (or
--snapshot), create a fresh database named tenantvault_drill_<time>_<random>
on the scratch server, restore them there as an incident restore would
(schema and global tables from the set, each tenant in one transaction with
every table's content digest checked before commit), let the server check
the result (foreign keys and CHECK constraints validated again over every
row; amcheck on every btree index, when the extension can be created), time
each tenant and the whole restore, and drop the database again, also when
the drill fails or is interrupted (unless --keep).

Without --tenant, --tenants N are sampled at random, weighted half by size
and half uniformly, so large tenants come up often and small ones still do.
The seed is printed; --snapshot SET --seed S repeats a drill exactly.

--report FILE writes JUnit XML (FILE.xml: one test case per tenant, one for
the database checks, one for the RTO budget) or JSON (FILE.json) for CI.
Exit codes: 0 passed; 1 a tenant or check failed, or the restore took longer
than --max-rto; 2 bad input; 3 a tenant's data did not match the snapshot.

In the database model each tenant is restored into a database named after
it on the scratch server; the drill refuses a server that already has one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runDrill(cmd.Context(), &o, cmd.Flags().Changed("tenants"))
		},
	}
	fs := cmd.Flags()
	o.repo.add(fs, false)
	o.repo.keys.addReader(fs)
	fs.StringVar(&o.scratch, "scratch", "", "database URL on a scratch server (never the live one); the drill creates and drops its own database there (a superuser is simplest)")
	fs.IntVar(&o.count, "tenants", drill.DefaultCount, "how many tenants to sample")
	fs.StringArrayVar(&o.tenants, "tenant", nil, "drill this tenant instead of a sample (repeatable)")
	fs.StringVar(&o.snapshot, "snapshot", "", "drill this snapshot set (default: the newest complete one)")
	fs.Int64Var(&o.seed, "seed", 0, "seed of the sample, to repeat a drill (default: random, printed)")
	fs.StringVar(&o.report, "report", "", "write the report to FILE.xml (JUnit) or FILE.json")
	fs.DurationVar(&o.maxRTO, "max-rto", 0, "fail when the restore takes longer than this (e.g. 15m)")
	fs.BoolVar(&o.keep, "keep", false, "keep the scratch database for inspection instead of dropping it")
	fs.IntVar(&o.parallel, "parallel", 2, "tenants restored at once")
	fs.StringVar(&o.pgRestore, "pg-restore", "pg_restore", "pg_restore binary, to create the schema")
	fs.StringVar(&o.template, "template", "", "create the drill's database as a copy of this database on the scratch server, which holds the schema and no rows (e.g. made by your migrations); needed for sets taken with --schema-archive=none")
	return cmd
}

// reportFormat tells the report's format by the file's extension.
func reportFormat(path string) (string, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".xml":
		return "junit", nil
	case ".json":
		return "json", nil
	}
	return "", &usageError{fmt.Sprintf("--report %s: name a .xml (JUnit) or .json file", path)}
}

func (a *app) runDrill(ctx context.Context, o *drillOptions, countSet bool) error {
	if o.scratch == "" {
		return &usageError{"--scratch is required (or TENANTVAULT_SCRATCH)"}
	}
	if countSet && len(o.tenants) > 0 {
		return &usageError{"--tenants N and --tenant ID exclude each other"}
	}
	if o.count < 1 {
		return &usageError{fmt.Sprintf("--tenants %d: drill at least one tenant", o.count)}
	}
	if o.maxRTO < 0 {
		return &usageError{fmt.Sprintf("--max-rto %s is negative", o.maxRTO)}
	}
	format := ""
	if o.report != "" {
		var err error
		if format, err = reportFormat(o.report); err != nil {
			return err
		}
		// Found out now, not after a long drill.
		if st, err := os.Stat(filepath.Dir(o.report)); err != nil || !st.IsDir() {
			return &usageError{fmt.Sprintf("--report %s: directory %s does not exist", o.report, filepath.Dir(o.report))}
		}
	}
	v, closeRepo, err := a.openVault(ctx, &o.repo, false)
	if err != nil {
		return err
	}
	defer closeRepo()
	var c planCounts
	var m *meter
	rep, err := drill.Run(ctx, drill.Options{
		Repo: v, Scratch: o.scratch, Tenants: o.tenants, Count: o.count, Seed: o.seed, SetID: o.snapshot,
		MaxRTO: o.maxRTO, Keep: o.keep, Parallel: o.parallel, PgRestore: o.pgRestore, Template: o.template, Logger: a.log,
		Progress: func(t drill.TenantResult) { c.add(t.Err) },
		Loaded:   &c.loaded,
		Started: func(p *restore.Plan) {
			spec := c.meter("drill: restored", p)
			spec.after = "checking the database"
			m = a.startMeter(spec)
		},
	})
	m.finish(rep != nil && rep.RTO > 0 && ctx.Err() == nil)
	if rep == nil {
		return err
	}
	if a.jsonOut {
		if jerr := rep.WriteJSON(a.stdout); jerr != nil && err == nil {
			err = jerr
		}
	} else {
		a.printDrillReport(rep)
	}
	if o.report != "" {
		if werr := writeDrillReport(o.report, format, rep); werr != nil {
			if err == nil {
				return werr
			}
			fmt.Fprintf(a.stderr, "tenantvault: %v\n", werr)
		}
	}
	return err
}

// writeDrillReport writes the report next to its final name and renames it,
// so that a CI step never reads half a file.
func writeDrillReport(path, format string, rep *drill.Report) error {
	var buf bytes.Buffer
	var err error
	if format == "junit" {
		err = rep.WriteJUnit(&buf)
	} else {
		err = rep.WriteJSON(&buf)
	}
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func (a *app) printDrillReport(rep *drill.Report) {
	w := a.stdout
	fmt.Fprintf(w, "drill of set %s (%s model, consistent at %s) from %s\n", rep.Set, rep.Model, rep.SetTime.UTC().Format(time.RFC3339), rep.Repository)
	if rep.Sampled {
		fmt.Fprintf(w, "tenants: %d sampled with seed %d (repeat with: --snapshot %s --seed %d --tenants %d)\n", len(rep.Tenants), rep.Seed, rep.Set, rep.Seed, len(rep.Tenants))
	} else {
		fmt.Fprintf(w, "tenants: %d given\n", len(rep.Tenants))
	}
	if rep.ErasedSkipped > 0 {
		fmt.Fprintf(w, "skipped: %d erased tenant(s) the set still holds (tenantvault forget); they are never restored\n", rep.ErasedSkipped)
	}
	if rep.Database != "" {
		dbs := rep.Database
		if len(rep.TenantDatabases) > 0 {
			dbs += " and the tenant databases"
		}
		fmt.Fprintf(w, "scratch: %s on %s: %s\n", dbs, rep.Scratch, rep.Cleanup)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tTABLES\tROWS\tDATA\tTIME\tCHECKS\tRESULT")
	passed := 0
	for _, t := range rep.Tenants {
		checks := "-"
		if t.Verified {
			checks = "digests ok"
		}
		if len(t.Problems) > 0 {
			checks += fmt.Sprintf(", %d check(s) failed", len(t.Problems))
		}
		result := "PASS"
		switch {
		case t.Passed:
			passed++
		case t.Integrity:
			result = "FAIL (integrity): " + t.Failure
		default:
			result = "FAIL: " + t.Failure
		}
		fmt.Fprintf(tw, "%q\t%d\t%d\t%s\t%.2fs\t%s\t%s\n", t.Tenant, t.Tables, t.Rows, humanBytes(t.Bytes), t.Duration.Seconds(), checks, firstLineOf(result))
	}
	tw.Flush()
	for _, dc := range rep.Checks {
		verdict := "PASS"
		if len(dc.Problems) > 0 {
			verdict = fmt.Sprintf("FAIL: %d problem(s)", len(dc.Problems))
		}
		fmt.Fprintf(w, "database checks of %s: %d foreign key(s), %d check constraint(s), %d btree index(es) in %.2fs: %s\n",
			dc.Database, dc.ForeignKeys, dc.Constraints, dc.Indexes, dc.Duration.Seconds(), verdict)
		for _, p := range dc.Problems {
			fmt.Fprintf(w, "  PROBLEM %s\n", p)
		}
		for _, s := range dc.Skipped {
			fmt.Fprintf(w, "  not checked: %s\n", s)
		}
	}
	fmt.Fprintf(w, "total: %d of %d tenant(s) passed, %d rows, %s; restore (RTO) %.2fs, drill %.2fs\n",
		passed, len(rep.Tenants), rep.Rows, humanBytes(rep.Bytes), rep.RTO.Seconds(), rep.Duration.Seconds())
	switch rep.RTOVerdict() {
	case "ok":
		fmt.Fprintf(w, "RTO budget %s: PASS (the restore took %.2fs)\n", rep.MaxRTO, rep.RTO.Seconds())
	case "exceeded":
		fmt.Fprintf(w, "RTO budget %s: FAIL (the restore took %.2fs)\n", rep.MaxRTO, rep.RTO.Seconds())
	case "no budget":
		fmt.Fprintln(w, "RTO budget: none set (--max-rto)")
	default:
		fmt.Fprintln(w, "RTO budget: not measured (the restore did not run to its end)")
	}
	switch {
	case rep.Passed:
		fmt.Fprintln(w, "result: PASS")
	case rep.Interrupted:
		fmt.Fprintln(w, "result: FAIL (interrupted)")
	default:
		fmt.Fprintln(w, "result: FAIL")
	}
}

func firstLineOf(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
