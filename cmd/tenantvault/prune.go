package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault/agent"
	"github.com/tenantvault/tenantvault/vault"
)

type pruneOptions struct {
	repo           repoFlags
	policy         vault.Policy
	keepPreRestore string
	keepPartial    string
	timezone       string
	grace          string
	gcMinAge       string
	mark           bool
	purge          bool
	unmark         []string
	dryRun         bool
}

func (a *app) pruneCmd() *cobra.Command {
	var o pruneOptions
	cmd := &cobra.Command{
		Use:   "prune --repo URL [--keep-last N ...] [--mark] [--purge] [--unmark ID]",
		Short: "Apply retention: show, mark, purge and garbage-collect snapshot sets",
		Long: `Deleting a snapshot set takes two separate steps. --mark marks the sets the
--keep-* rules no longer keep (restore then skips them unless asked for by
--snapshot ID); --purge deletes the sets marked at least --grace ago, then
garbage-collects packs and schema archives no remaining set references,
catalogs of purged sets only, and leftovers of interrupted snapshots older
than --gc-min-age. A set marked by
this same command is never purged by it. --unmark ID takes a mark back.

Without --mark, --purge or --unmark nothing changes: prune prints what it
would mark, purge and collect.

Rules count per source (and tenancy), in --timezone: --keep-last N keeps the
newest N sets; --keep-hourly/daily/weekly/monthly N keep the newest set of
each of the last N hours/days/ISO weeks/months that have sets. The newest set
and the newest verified set of every source are always kept. Pre-restore and
partial sets are outside the rules and kept for --keep-pre-restore and
--keep-partial.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runPrune(cmd.Context(), &o) },
	}
	fs := cmd.Flags()
	o.repo.add(fs, false)
	o.repo.keys.addReader(fs)
	fs.StringVar(&o.repo.keys.signingKey, "signing-key", "", "signing key file: with it (or --identity), retention trusts only sets its signer signed")
	fs.IntVar(&o.policy.KeepLast, "keep-last", 0, "keep the newest N sets of each source")
	fs.IntVar(&o.policy.KeepHourly, "keep-hourly", 0, "keep the newest set of each of the last N hours that have sets")
	fs.IntVar(&o.policy.KeepDaily, "keep-daily", 0, "keep the newest set of each of the last N days that have sets")
	fs.IntVar(&o.policy.KeepWeekly, "keep-weekly", 0, "keep the newest set of each of the last N ISO weeks that have sets")
	fs.IntVar(&o.policy.KeepMonthly, "keep-monthly", 0, "keep the newest set of each of the last N months that have sets")
	fs.StringVar(&o.keepPreRestore, "keep-pre-restore", "30d", "keep pre-restore sets this long (at least 24h)")
	fs.StringVar(&o.keepPartial, "keep-partial", "30d", "keep partial sets (snapshot --tenant) this long")
	fs.StringVar(&o.timezone, "timezone", "UTC", "time zone of the hour/day/week/month boundaries (e.g. Europe/Berlin)")
	fs.StringVar(&o.grace, "grace", "7d", "with --purge: purge only sets marked at least this long ago; with --mark: the grace period recorded in the mark (a purge waits for both)")
	fs.StringVar(&o.gcMinAge, "gc-min-age", "24h", "never collect an unreferenced object younger than this (a running snapshot's packs)")
	fs.BoolVar(&o.mark, "mark", false, "mark the sets the rules do not keep")
	fs.BoolVar(&o.purge, "purge", false, "delete sets marked at least --grace ago and collect garbage")
	fs.StringArrayVar(&o.unmark, "unmark", nil, "take back the mark of this set (repeatable)")
	fs.BoolVar(&o.dryRun, "dry-run", false, "only show what would be done (the default without --mark, --purge or --unmark)")
	return cmd
}

// pruneJSON is prune's --json output.
type pruneJSON struct {
	DryRun   bool               `json:"dry_run"`
	Unmarked []vault.Mark       `json:"unmarked,omitempty"`
	Groups   []vault.GroupPlan  `json:"retention,omitempty"`
	Marked   []vault.Mark       `json:"marked,omitempty"`
	Purge    *vault.PurgeResult `json:"purge,omitempty"`
}

func (a *app) runPrune(ctx context.Context, o *pruneOptions) error {
	if o.dryRun && (o.mark || o.purge || len(o.unmark) > 0) {
		return &usageError{"--dry-run excludes --mark, --purge and --unmark"}
	}
	p := o.policy
	var grace, minAge time.Duration
	var err error
	for _, d := range []struct {
		flag, s string
		d       *time.Duration
	}{{"--keep-pre-restore", o.keepPreRestore, &p.KeepPreRestore}, {"--keep-partial", o.keepPartial, &p.KeepPartial}, {"--grace", o.grace, &grace}, {"--gc-min-age", o.gcMinAge, &minAge}} {
		if *d.d, err = agent.ParseDuration(d.s); err != nil {
			return &usageError{fmt.Sprintf("%s: %v", d.flag, err)}
		}
		if *d.d < 0 {
			return &usageError{fmt.Sprintf("%s %s is negative", d.flag, d.s)}
		}
	}
	if p.Location, err = time.LoadLocation(o.timezone); err != nil {
		return &usageError{fmt.Sprintf("--timezone: unknown time zone %q", o.timezone)}
	}
	if err := p.Validate(); err != nil {
		return err
	}
	if o.mark && !p.HasRules() {
		return &usageError{"--mark needs at least one --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly rule"}
	}
	v, closeRepo, err := a.openVault(ctx, &o.repo, false)
	if err != nil {
		return err
	}
	defer closeRepo()
	out := pruneJSON{DryRun: !o.mark && !o.purge && len(o.unmark) == 0}
	by := "prune"
	if h, err := os.Hostname(); err == nil {
		by += " on " + h
	}

	for _, id := range o.unmark {
		m, err := v.UnmarkSet(ctx, id)
		if err != nil {
			return err
		}
		out.Unmarked = append(out.Unmarked, m)
		if !a.jsonOut {
			fmt.Fprintf(a.stdout, "unmarked set %s (marked %s by %s: %s)\n", id, m.MarkedAt.Format(time.RFC3339), m.By, m.Reason)
		}
	}
	if len(o.unmark) > 0 && !o.mark && !o.purge {
		if !a.jsonOut && p.HasRules() {
			fmt.Fprintln(a.stdout, "note: a retention run with rules that do not keep these sets marks them again")
		}
		if a.jsonOut {
			return a.printJSON(out)
		}
		return nil
	}

	justMarked := map[string]bool{}
	if p.HasRules() {
		out.Groups, err = v.RetentionPlan(ctx, p, nil)
		if err != nil {
			return err
		}
		if o.mark {
			for _, g := range out.Groups {
				for _, d := range g.ToMark() {
					m, err := v.MarkSet(ctx, d.ID, "prune: "+d.Reason[0], by, grace)
					if err != nil {
						return err
					}
					justMarked[d.ID] = true
					out.Marked = append(out.Marked, m)
				}
			}
		}
		if !a.jsonOut {
			a.printRetention(ctx, v, out.Groups, o.mark, grace)
		}
	} else if !a.jsonOut {
		fmt.Fprintln(a.stdout, "retention: no --keep-* rule given, so no set is marked")
	}

	res, err := v.Purge(ctx, vault.PurgeOptions{Grace: grace, Skip: justMarked, DryRun: !o.purge, GC: vault.GCOptions{MinAge: gcAge(minAge)}})
	if err != nil {
		return err
	}
	out.Purge = res
	if a.jsonOut {
		if err := a.printJSON(out); err != nil {
			return err
		}
	} else {
		a.printPurge(res, o.purge, grace)
	}
	// Objects still under object retention are expected to refuse
	// deletion (they are reported, and collected once the lock ends);
	// any other failed delete fails the command.
	n := 0
	for _, f := range append(append([]vault.DeleteFailure(nil), res.Failed...), res.GC.Failed...) {
		if !f.Locked {
			n++
		}
	}
	if n > 0 {
		return fmt.Errorf("%d delete(s) failed (permissions?); the sets stay marked and the next purge tries again", n)
	}
	return nil
}

// gcAge maps the flag's 0 ("nothing is too young") to GC's "none".
func gcAge(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func (a *app) printRetention(ctx context.Context, v *vault.Vault, groups []vault.GroupPlan, marked bool, grace time.Duration) {
	marks, _ := v.Marks(ctx)
	for _, g := range groups {
		fmt.Fprintf(a.stdout, "source %s:\n", g.Group)
		tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  SET\tKIND\tCONSISTENT AT\tACTION\tWHY")
		for _, d := range g.Decisions {
			action := "keep"
			switch {
			case d.Set.Marked:
				action = "marked"
				if m, ok := marks[d.ID]; ok {
					action += ", purge after " + m.DueAt(grace).UTC().Format(time.RFC3339)
				}
			case !d.Keep && marked:
				action = "MARKED now"
			case !d.Keep:
				action = "would mark"
			}
			kind := d.Set.Kind
			if d.Set.Partial {
				kind += " (partial)"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", d.ID, kind, d.Set.At.UTC().Format(time.RFC3339), action, strings.Join(d.Reason, ", "))
		}
		tw.Flush()
	}
}

func (a *app) printPurge(res *vault.PurgeResult, purge bool, grace time.Duration) {
	verb, gcVerb := "would purge", "would collect"
	if purge {
		verb, gcVerb = "purged", "collected"
	}
	for _, m := range res.Purged {
		fmt.Fprintf(a.stdout, "%s set %s (marked %s by %s: %s)\n", verb, m.Set, m.MarkedAt.UTC().Format(time.RFC3339), m.By, m.Reason)
	}
	for _, m := range res.Waiting {
		fmt.Fprintf(a.stdout, "waiting: set %s is marked; purge after %s\n", m.Set, m.DueAt(grace).UTC().Format(time.RFC3339))
	}
	for _, l := range res.Locked {
		fmt.Fprintf(a.stdout, "locked: set %s is due, but S3 Object Lock retains it until %s; it is purged after that\n", l.Set, l.Until.UTC().Format(time.RFC3339))
	}
	gc := res.GC
	for i, g := range gc.Collected {
		if i == 20 {
			fmt.Fprintf(a.stdout, "  ... and %d more\n", len(gc.Collected)-20)
			break
		}
		fmt.Fprintf(a.stdout, "%s %s (%s, %s)\n", gcVerb, g.Key, humanBytes(g.Size), g.Why)
	}
	for _, f := range append(append([]vault.DeleteFailure(nil), res.Failed...), gc.Failed...) {
		if f.Locked {
			fmt.Fprintf(a.stdout, "LOCKED, not deleted yet: %s: %s\n", f.Key, f.Err)
			continue
		}
		fmt.Fprintf(a.stdout, "FAILED to delete %s: %s\n", f.Key, f.Err)
	}
	fmt.Fprintf(a.stdout, "%s %d set(s); %d waiting for their grace period; %s %d unreferenced object(s), %s; %d too young to collect\n",
		verb, len(res.Purged), len(res.Waiting), gcVerb, len(gc.Collected), humanBytes(gc.Bytes), gc.Young)
	if !purge {
		fmt.Fprintln(a.stdout, "dry run: nothing was deleted (use --mark and/or --purge)")
	}
}
