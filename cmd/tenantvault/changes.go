package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/triage"
)

type changesOptions struct {
	repo        repoFlags
	from, to    string
	tenants     []string
	deletedOnly bool
	output      string
	stream      string
}

func (a *app) changesCmd() *cobra.Command {
	var o changesOptions
	cmd := &cobra.Command{
		Use:   "changes --repo URL --from TIME --to TIME [--tenant ID ...] [--deleted-only] [--output FILE]",
		Short: "Find the tenants an incident hit: rows inserted, updated and deleted in a window, from the change log",
		Long: `Sum up, per tenant and table, the rows inserted, updated and deleted by the
transactions committed from --from to --to (both included, RFC 3339), from the
change log that tenantvault capture archives. --deleted-only keeps the tenants
that lost rows; --output FILE writes their IDs one per line, ready for
restore --tenants-file.

A TRUNCATE carries neither rows nor tenants: it is counted as taking a
tenant's rows of a table when the newest complete snapshot set before it holds
rows of that tenant there, or the tenant inserted into that table earlier in
the window; its rows are not added to DELETED.

Changes the capture could not tie to a tenant (their parent row was already
gone) are listed as unattributed; tenantvault diff finds whose they were.

The window is checked against the change log before anything is read: it
must lie where the log is complete, with no gap. In an encrypted repository
that check needs no key (segment index headers are plaintext and signed);
counting needs --identity, because which tenants and tables changed is in
the sealed records.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runChanges(cmd.Context(), &o) },
	}
	fs := cmd.Flags()
	o.repo.add(fs, false)
	o.repo.keys.addReader(fs)
	fs.StringVar(&o.from, "from", "", "start of the window (RFC 3339, included)")
	fs.StringVar(&o.to, "to", "", "end of the window (RFC 3339, included)")
	fs.StringArrayVar(&o.tenants, "tenant", nil, "only this tenant (repeatable; any characters)")
	fs.BoolVar(&o.deletedOnly, "deleted-only", false, "only the tenants that lost rows (deleted or truncated)")
	fs.StringVar(&o.output, "output", "", "write the IDs of the tenants listed to this file, one per line (for restore --tenants-file)")
	fs.StringVar(&o.stream, "stream", "", "the change stream to read, when the repository holds several databases' logs")
	return cmd
}

func parseWindowTime(flag, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, &usageError{fmt.Sprintf("--%s is required (an RFC 3339 time, like 2026-11-28T10:15:00Z)", flag)}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, tenantvault.Inputf("--%s %q is not an RFC 3339 time (like 2026-11-28T10:15:00Z)", flag, s)
	}
	return t, nil
}

func (a *app) runChanges(ctx context.Context, o *changesOptions) error {
	from, err := parseWindowTime("from", o.from)
	if err != nil {
		return err
	}
	to, err := parseWindowTime("to", o.to)
	if err != nil {
		return err
	}
	if from.After(to) {
		return tenantvault.Inputf("--from %s is after --to %s", from.UTC().Format(time.RFC3339Nano), to.UTC().Format(time.RFC3339Nano))
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
	prog := &triage.ChangesProgress{}
	stop := a.progress(func() string {
		return fmt.Sprintf("changes: read %d/%d segments, %d changes in the window", prog.SegmentsDone.Load(), prog.SegmentsTotal.Load(), prog.Records.Load())
	})
	rep, err := triage.Changes(ctx, triage.ChangesOptions{Vault: v, From: from, To: to, Tenants: o.tenants, Stream: o.stream, Logger: a.log, Progress: prog})
	stop()
	if err != nil {
		return err
	}
	if len(o.tenants) > 0 {
		want := map[string]bool{}
		for _, id := range o.tenants {
			want[id] = true
		}
		kept := rep.Tenants[:0]
		for _, t := range rep.Tenants {
			if want[t.Tenant] {
				kept = append(kept, t)
			}
		}
		rep.Tenants = kept
	}
	if o.deletedOnly {
		kept := rep.Tenants[:0]
		for _, t := range rep.Tenants {
			if t.LostRows {
				kept = append(kept, t)
			}
		}
		rep.Tenants = kept
	}
	rep.FirstLoss = time.Time{} // of the tenants listed
	for _, t := range rep.Tenants {
		if !t.FirstLoss.IsZero() && (rep.FirstLoss.IsZero() || t.FirstLoss.Before(rep.FirstLoss)) {
			rep.FirstLoss = t.FirstLoss
		}
	}
	if out != nil {
		for _, t := range rep.Tenants {
			if err := out.add(t.Tenant); err != nil {
				return err
			}
		}
		if err := out.commit(); err != nil {
			return err
		}
	}
	if lost := unattributedDeletes(rep); lost > 0 {
		tables := sortedKeys(rep.Unattributed)
		a.log.Warn(fmt.Sprintf("%d row change(s) in the window could not be tied to a tenant when captured (%d of them deletions); tenantvault diff finds whose rows are missing", unattributedTotal(rep), lost),
			"tables", strings.Join(tables, ","))
	}
	if a.jsonOut {
		return a.printJSON(rep)
	}
	a.printChanges(rep, o)
	return nil
}

func unattributedDeletes(rep *triage.ChangesReport) int64 {
	var n int64
	for _, c := range rep.Unattributed {
		n += c.Deleted
	}
	return n
}

func unattributedTotal(rep *triage.ChangesReport) int64 {
	var n int64
	for _, c := range rep.Unattributed {
		n += c.Inserted + c.Updated + c.Deleted
	}
	return n
}

func (a *app) printChanges(rep *triage.ChangesReport, o *changesOptions) {
	w := a.stdout
	fmt.Fprintf(w, "changes committed from %s to %s: %d in %d segment(s) (the log is complete from %s to %s)\n\n",
		rep.From.Format(time.RFC3339Nano), rep.To.Format(time.RFC3339Nano), rep.Records, rep.Segments,
		rep.Complete.Format(time.RFC3339), rep.Until.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tTABLE\tINSERTED\tUPDATED\tDELETED\tTRUNCATED")
	lost := 0
	for _, t := range rep.Tenants {
		if t.LostRows {
			lost++
		}
		tables := sortedKeys(t.Tables)
		for _, name := range tables {
			c := t.Tables[name]
			trunc := ""
			if c.Truncated > 0 {
				trunc = fmt.Sprintf("%dx", c.Truncated)
			}
			fmt.Fprintf(tw, "%q\t%s\t%d\t%d\t%d\t%s\n", t.Tenant, name, c.Inserted, c.Updated, c.Deleted, trunc)
		}
	}
	for _, name := range sortedKeys(rep.Unattributed) {
		c := rep.Unattributed[name]
		fmt.Fprintf(tw, "(unattributed)\t%s\t%d\t%d\t%d\t\n", name, c.Inserted, c.Updated, c.Deleted)
	}
	tw.Flush()
	for _, tr := range rep.Truncates {
		fmt.Fprintf(w, "TRUNCATE at %s of %s", tr.At.Format(time.RFC3339Nano), strings.Join(tr.Tables, ", "))
		if rep.TruncateBase != "" {
			fmt.Fprintf(w, " (tenants with rows there in set %s, or inserted earlier in the window)", rep.TruncateBase)
		}
		fmt.Fprintln(w)
	}
	what := "tenant(s) changed"
	if o.deletedOnly {
		what = "tenant(s) lost rows"
	}
	fmt.Fprintf(w, "\n%d %s", len(rep.Tenants), what)
	if !o.deletedOnly {
		fmt.Fprintf(w, ", %d of them lost rows", lost)
	}
	fmt.Fprintln(w)
	if !rep.FirstLoss.IsZero() {
		fmt.Fprintf(w, "first rows lost at %s: restore them as of one second before, --at %s\n",
			rep.FirstLoss.Format(time.RFC3339Nano), rep.FirstLoss.Add(-time.Second).Format(time.RFC3339Nano))
	}
	if o.output != "" {
		fmt.Fprintf(w, "wrote %d tenant ID(s) to %s\n", len(rep.Tenants), o.output)
	}
}
