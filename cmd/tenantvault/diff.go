package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/triage"
)

type diffOptions struct {
	repo        repoFlags
	source      string
	snapshot    string
	at          string
	tenants     []string
	tenantsFile string
	exact       bool
	selectFlag  string
	output      string
}

func (a *app) diffCmd() *cobra.Command {
	var o diffOptions
	cmd := &cobra.Command{
		Use:   "diff --repo URL --source URL [--snapshot ID | --at TIME] [--exact] [--output FILE]",
		Short: "Find the tenants an incident hit: compare the live database with a snapshot set",
		Long: `Compare the source database with a snapshot set (the newest complete one,
the one given by --snapshot, or the newest taken at or before --at), tenant by
tenant and table by table, and classify every tenant:

  deleted       no rows left
  missing-rows  fewer rows than the set in some table
  changed       no table lost rows, but more rows, or (with --exact) other content
  new           in the source, not in the set
  unchanged

Counting runs one grouped count per table; --exact recomputes every tenant's
content digests on the source with the canonical rendering snapshots use
(one streamed COPY per table) and finds changed rows whose counts agree.
Everything runs in one read-only REPEATABLE READ transaction: diff cannot
write to the source, and every number is of one instant.

--output FILE writes the IDs of the tenants in the classes --select names
(default deleted,missing-rows), one per line, ready for
restore --tenants-file. With --json every tenant is printed with its status
and per-table counts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runDiff(cmd.Context(), &o) },
	}
	fs := cmd.Flags()
	o.repo.add(fs, false)
	o.repo.keys.addReader(fs)
	fs.StringVar(&o.source, "source", "", "the live database URL to compare (read only)")
	fs.StringVar(&o.snapshot, "snapshot", "", "compare with this snapshot set ID")
	fs.StringVar(&o.at, "at", "", "compare with the newest complete set taken at or before this RFC 3339 time")
	fs.StringArrayVar(&o.tenants, "tenant", nil, "compare only this tenant (repeatable; any characters)")
	fs.StringVar(&o.tenantsFile, "tenants-file", "", "compare only the tenants in this file, one ID per line")
	fs.BoolVar(&o.exact, "exact", false, "recompute content digests on the source (reads every row; finds changes that keep the counts)")
	fs.StringVar(&o.selectFlag, "select", "deleted,missing-rows", "classes whose tenants --output writes (comma-separated: "+strings.Join(triage.Classes, ", ")+")")
	fs.StringVar(&o.output, "output", "", "write the IDs of the selected tenants to this file, one per line (for restore --tenants-file)")
	return cmd
}

// parseClasses reads --select.
func parseClasses(s string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, c := range strings.Split(s, ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		ok := false
		for _, k := range triage.Classes {
			ok = ok || k == c
		}
		if !ok {
			return nil, tenantvault.Inputf("--select: unknown class %q (use %s)", c, strings.Join(triage.Classes, ", "))
		}
		out[c] = true
	}
	if len(out) == 0 {
		return nil, tenantvault.Inputf("--select names no class (use %s)", strings.Join(triage.Classes, ", "))
	}
	return out, nil
}

func (a *app) runDiff(ctx context.Context, o *diffOptions) error {
	if o.source == "" {
		return &usageError{"--source is required (or TENANTVAULT_SOURCE)"}
	}
	if o.at != "" && o.snapshot != "" {
		return &usageError{"--at and --snapshot exclude each other"}
	}
	var sel triage.Selector
	sel.SetID = o.snapshot
	if o.at != "" {
		at, err := parseAt(o.at)
		if err != nil {
			return err
		}
		sel.At = at
	}
	classes, err := parseClasses(o.selectFlag)
	if err != nil {
		return err
	}
	tenants := o.tenants
	if o.tenantsFile != "" {
		ids, err := readTenantsFile(o.tenantsFile)
		if err != nil {
			return err
		}
		tenants = append(tenants, ids...)
	}
	var out *idFile
	if o.output != "" {
		if out, err = createIDFile(o.output); err != nil {
			return err
		}
		defer out.abort()
	}
	v, closeRepo, err := a.openVault(ctx, &o.repo, false)
	if err != nil {
		return err
	}
	defer closeRepo()

	prog := &triage.DiffProgress{}
	verb := "counted"
	if o.exact {
		verb = "digested"
	}
	stop := a.progress(func() string {
		line := fmt.Sprintf("diff: %s %d/%d tables, %d rows", verb, prog.TablesDone.Load(), prog.TablesTotal.Load(), prog.Rows.Load())
		if o.exact {
			line += ", " + humanBytes(prog.Bytes.Load())
		}
		return line
	})
	jw := &jsonTenants{w: a.stdout}
	emit := func(d *triage.TenantDiff) error {
		if out != nil && classes[d.Status] {
			if err := out.add(d.Tenant); err != nil {
				return err
			}
		}
		if a.jsonOut {
			return jw.add(d)
		}
		return nil
	}
	rep, err := triage.Diff(ctx, triage.DiffOptions{Vault: v, Source: o.source, Select: sel, Tenants: tenants, Exact: o.exact, Logger: a.log, Progress: prog}, emit)
	stop()
	if err != nil {
		return err
	}
	if out != nil {
		if err := out.commit(); err != nil {
			return err
		}
	}
	if a.jsonOut {
		return jw.finish(diffSummaryJSON(rep, o.output, classes, out))
	}
	a.printDiff(rep, o.output, classes, out)
	return nil
}

// jsonTenants streams {"tenants": [...], ...}: one tenant at a time, so a
// diff over 100,000 tenants never holds them all.
type jsonTenants struct {
	w       io.Writer
	started bool
}

func (j *jsonTenants) add(d *triage.TenantDiff) error {
	sep := ",\n    "
	if !j.started {
		sep = "{\n  \"tenants\": [\n    "
		j.started = true
	}
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(j.w, "%s%s", sep, b)
	return err
}

// finish closes the array and adds the summary's fields.
func (j *jsonTenants) finish(rest map[string]any) error {
	if !j.started {
		fmt.Fprint(j.w, "{\n  \"tenants\": [")
	} else {
		fmt.Fprint(j.w, "\n  ")
	}
	fmt.Fprint(j.w, "]")
	for _, k := range sortedKeys(rest) {
		b, err := json.MarshalIndent(rest[k], "  ", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(j.w, ",\n  %q: %s", k, b)
	}
	_, err := fmt.Fprint(j.w, "\n}\n")
	return err
}

func selectedList(classes map[string]bool) []string {
	var out []string
	for _, c := range triage.Classes {
		if classes[c] {
			out = append(out, c)
		}
	}
	return out
}

func diffSummaryJSON(rep *triage.DiffReport, output string, classes map[string]bool, out *idFile) map[string]any {
	m := map[string]any{
		"set":                map[string]any{"id": rep.Set.ID, "kind": rep.Set.Kind, "consistent_at": rep.Set.ConsistentAt},
		"source":             rep.Source,
		"exact":              rep.Exact,
		"classes":            rep.Classes,
		"rows_lost":          rep.RowsLost,
		"rows_lost_by_table": rep.LostByTable,
		"seconds":            rep.Duration.Seconds(),
	}
	if out != nil {
		m["output"] = map[string]any{"file": output, "tenants": out.n, "classes": selectedList(classes)}
	}
	return m
}

func (a *app) printDiff(rep *triage.DiffReport, output string, classes map[string]bool, out *idFile) {
	w := a.stdout
	mode := "row counts"
	if rep.Exact {
		mode = "row counts and content digests"
	}
	fmt.Fprintf(w, "diff of %s against snapshot set %s (taken at %s), by %s, in %.1fs\n\n",
		rep.Source, rep.Set.ID, rep.Set.ConsistentAt.Format(time.RFC3339), mode, rep.Duration.Seconds())
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLASS\tTENANTS")
	for _, c := range triage.Classes {
		fmt.Fprintf(tw, "%s\t%d\n", c, rep.Classes[c])
	}
	fmt.Fprintf(tw, "total\t%d\n", rep.Tenants)
	tw.Flush()
	if len(rep.LostByTable) > 0 {
		fmt.Fprintf(w, "\nrows lost per table (%d in all):\n", rep.RowsLost)
		tables := sortedKeys(rep.LostByTable)
		sort.SliceStable(tables, func(i, j int) bool { return rep.LostByTable[tables[i]] > rep.LostByTable[tables[j]] })
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TABLE\tROWS LOST")
		for _, t := range tables {
			fmt.Fprintf(tw, "%s\t%d\n", t, rep.LostByTable[t])
		}
		tw.Flush()
	}
	if len(rep.Worst) > 0 {
		hit := 0
		for _, c := range triage.Classes {
			if c != triage.Unchanged {
				hit += rep.Classes[c]
			}
		}
		fmt.Fprintf(w, "\nworst tenants first:\n")
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TENANT\tSTATUS\tROWS LOST\tTABLES (source/set rows)")
		for _, d := range rep.Worst {
			var parts []string
			for _, t := range d.Tables {
				if t.SourceRows != t.SetRows || t.Digest == "differs" {
					p := fmt.Sprintf("%s %d/%d", t.Table, t.SourceRows, t.SetRows)
					if t.Digest == "differs" {
						p += " (content differs)"
					}
					parts = append(parts, p)
				}
			}
			fmt.Fprintf(tw, "%q\t%s\t%d\t%s\n", d.Tenant, d.Status, d.RowsLost, strings.Join(parts, ", "))
		}
		tw.Flush()
		if hit > len(rep.Worst) {
			fmt.Fprintf(w, "... and %d more: --json lists every tenant, --output writes their IDs\n", hit-len(rep.Worst))
		}
	}
	if out != nil {
		fmt.Fprintf(w, "\nwrote %d tenant ID(s) (%s) to %s\n", out.n, strings.Join(selectedList(classes), ", "), output)
	}
}
