package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/vault"
)

type forgetOptions struct {
	repo        repoFlags
	tenants     []string
	tenantsFile string
	reason      string
	dryRun      bool
	yes         bool
	status      bool
	tempDir     string
}

func (a *app) forgetCmd() *cobra.Command {
	var o forgetOptions
	cmd := &cobra.Command{
		Use:   "forget --repo URL --tenant ID ... [--reason TEXT] [--dry-run] [--yes]",
		Short: "Erase tenants from every snapshot set and the change log (irreversible)",
		Long: `Erase tenants from the repository: afterwards no snapshot set, no
pre-restore set and no change-log segment yields their rows, and restore,
drill and list refuse or mark them (a tombstone under erased/ records the
erasure by a keyed hash of the ID, never the ID itself).

In a plaintext repository forget rewrites what holds a tenant: new packs
without its chunks (every other chunk copied byte for byte), a new tenant
index and manifest for every set that holds it or shares a pack with it
(set IDs stay), new change-log segments without its records; then it deletes
the old objects. It is journaled: interrupted, it leaves a consistent
repository, and running the same command again completes it. Records the
change log could not attribute to a tenant when it captured them (shared
records) are attributed now, from the keys the tenant held in the sets and
the log: those that are its are dropped; those forget cannot decide (a key
another tenant also held, say) are kept, and the plan, the output and the
tombstone count them as not erased (docs/SECURITY.md).

forget prints its plan first (--dry-run stops there) and asks for
confirmation on a terminal; without a terminal it runs only with --yes.
An audit record of each erasure is kept under audit/. Repositories under
S3 Object Lock retention are refused: their objects cannot be deleted
before the retention ends. In an encrypted repository (with --identity)
forget destroys the tenant's own data keys instead (crypto-shredding):
the tenant's chunks in every set can no longer be decrypted by anyone, and
Object Lock does not stand in the way (the keys are never locked); only the
change-log segments whose records of the tenant are sealed with a segment's
key (shared records attributed to it, segments written before per-tenant
keys) are rewritten, under new segment keys signed with the identity file's
signing key, which Object Lock refuses. A tenant still held under a set's
own key (older sets) is refused. --reason is stored in the tombstone and audit record as given: do
not put personal data in it. --status lists erasures in progress.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runForget(cmd.Context(), &o) },
	}
	fs := cmd.Flags()
	o.repo.add(fs, false)
	o.repo.keys.addReader(fs)
	fs.StringArrayVar(&o.tenants, "tenant", nil, "tenant to erase (repeatable; any characters)")
	fs.StringVar(&o.tenantsFile, "tenants-file", "", "file with one tenant ID per line")
	fs.StringVar(&o.reason, "reason", "", "why (e.g. a ticket number; stored as given, so no personal data)")
	fs.BoolVar(&o.dryRun, "dry-run", false, "print the plan and change nothing")
	fs.BoolVar(&o.yes, "yes", false, "do not ask for confirmation (required without a terminal)")
	fs.BoolVar(&o.status, "status", false, "list erasures that were started and not completed, and the number of erased tenants")
	fs.StringVar(&o.tempDir, "temp-dir", "", "directory for a pack while it is copied")
	return cmd
}

// forgetJSON is forget's --json output, one element per tenant.
type forgetJSON struct {
	Tenant    string             `json:"tenant"`
	Hash      string             `json:"tenant_hash"`
	Resumed   bool               `json:"resumed,omitempty"`
	Plan      *vault.PlanSummary `json:"plan,omitempty"`
	Done      *vault.ForgetDone  `json:"done,omitempty"`
	Erased    string             `json:"erased_at,omitempty"`
	Tombstone string             `json:"tombstone"`
}

type forgetItem struct {
	tenant  string
	plan    *vault.ForgetPlan // nil when resuming from a journal
	resumed bool
	again   *vault.Tombstone // erased before, held again by later sets
}

func (a *app) runForget(ctx context.Context, o *forgetOptions) error {
	tenants := o.tenants
	if o.tenantsFile != "" {
		ids, err := readTenantsFile(o.tenantsFile)
		if err != nil {
			return err
		}
		tenants = append(tenants, ids...)
	}
	if o.status {
		if len(tenants) > 0 || o.dryRun || o.yes {
			return &usageError{"--status takes no --tenant, --dry-run or --yes"}
		}
	} else if len(tenants) == 0 {
		return &usageError{"no tenants given: use --tenant ID (repeatable) or --tenants-file FILE"}
	}
	if o.dryRun && o.yes {
		return &usageError{"--dry-run excludes --yes"}
	}
	seen := map[string]bool{}
	var ids []string
	for _, id := range tenants {
		if strings.ContainsRune(id, 0) {
			return tenantvault.Inputf("tenant ID %q contains a NUL byte", id)
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	v, closeRepo, err := a.openVault(ctx, &o.repo, false)
	if err != nil {
		return err
	}
	defer closeRepo()
	if o.status {
		return a.forgetStatus(ctx, v)
	}
	if v.Encrypted() {
		return a.forgetEncrypted(ctx, v, ids, o)
	}
	if err := v.CheckForgettable(); err != nil {
		return err
	}

	// Every tenant is checked and planned before anything is written.
	var items []forgetItem
	var unknown, erased []string
	for _, id := range ids {
		tomb, err := v.Erased(ctx, id)
		if err != nil {
			return err
		}
		pending, err := v.PendingForget(ctx, id)
		if err != nil {
			return err
		}
		if pending {
			items = append(items, forgetItem{tenant: id, resumed: true})
			continue
		}
		p, err := v.PlanForget(ctx, id, 1, nil)
		if err != nil {
			return err
		}
		switch {
		case !p.Summary.Empty() && tomb != nil && tomb.State == vault.TombstoneErased:
			items = append(items, forgetItem{tenant: id, plan: p, again: tomb})
		case !p.Summary.Empty():
			items = append(items, forgetItem{tenant: id, plan: p})
		case tomb != nil && tomb.State == vault.TombstoneErased:
			erased = append(erased, fmt.Sprintf("%q (erased on %s)", id, tomb.When()))
		case tomb != nil:
			// Started, and interrupted before its journal was written:
			// nothing was rewritten yet, and nothing holds the tenant.
			items = append(items, forgetItem{tenant: id, plan: p})
		default:
			unknown = append(unknown, fmt.Sprintf("%q", id))
		}
	}
	switch {
	case len(unknown) > 0 && len(erased) > 0:
		return tenantvault.Inputf("%d unknown tenant(s), in no snapshot set or change-log segment of %s: %s; %d tenant(s) already erased: %s; nothing was changed",
			len(unknown), v.Location(), strings.Join(unknown, ", "), len(erased), strings.Join(erased, ", "))
	case len(unknown) > 0:
		return tenantvault.Inputf("%d unknown tenant(s), in no snapshot set or change-log segment of %s: %s; nothing was changed", len(unknown), v.Location(), strings.Join(unknown, ", "))
	case len(erased) > 0:
		return &tenantvault.InputError{
			Msg:  fmt.Sprintf("%d tenant(s) already erased: %s; nothing was changed", len(erased), strings.Join(erased, ", ")),
			Hint: "no set or change-log segment holds them; the tombstones stay, so restores keep refusing them",
		}
	}

	w := a.stdout
	if a.jsonOut {
		w = a.stderr
	}
	for _, it := range items {
		a.printForgetPlan(w, v, it)
	}
	if o.dryRun {
		if a.jsonOut {
			return a.printJSON(forgetResults(v, items, nil))
		}
		fmt.Fprintln(a.stdout, "dry run: nothing was changed")
		return nil
	}
	if err := a.confirmed(ctx, o, len(items)); err != nil {
		return err
	}
	by := whoAmI()
	results := make([]*vault.ForgetResult, len(items))
	for i, it := range items {
		if it.plan != nil && i > 0 {
			// The erasures before this one rewrote sets and packs this
			// tenant's plan named: plan it again as the repository is now.
			p, err := v.PlanForget(ctx, it.tenant, 1, nil)
			if err != nil {
				return err
			}
			it.plan = p
		}
		res, err := v.Forget(ctx, it.tenant, it.plan, vault.ForgetOptions{
			Reason: o.reason, By: by, TempDir: o.tempDir,
			Progress: func(step string) { a.log.Info("forget: "+step, "tenant_hash", v.TenantHash(it.tenant)[:12]) },
		})
		if err != nil {
			return fmt.Errorf("forget %q (stopped part way; the repository is consistent, and running the same command again completes the erasure): %w", it.tenant, err)
		}
		results[i] = res
		if !a.jsonOut {
			d := res.Done
			fmt.Fprintf(a.stdout, "erased tenant %q: %d set(s) rewritten (%d held it), %d change-log segment(s) (%d shared record(s) of it dropped), %d pack(s); %s copied, %s of old objects deleted\n",
				it.tenant, d.Sets, d.SetsHeld, d.Segments, d.SharedDropped, d.Packs, humanBytes(d.BytesCopied), humanBytes(d.BytesDeleted))
			if d.SharedBlanked > 0 {
				fmt.Fprintf(a.stdout, "  %d shared record(s) of rows that moved between %q and another tenant kept for the other, its side blanked\n", d.SharedBlanked, it.tenant)
			}
			if d.SharedRecords > 0 {
				fmt.Fprintf(a.stdout, "  not erased: %d shared change-log record(s) forget could not attribute were kept and may hold rows of %q (recorded in the tombstone; docs/SECURITY.md, Known limits)\n", d.SharedRecords, it.tenant)
			}
		}
	}
	if a.jsonOut {
		return a.printJSON(forgetResults(v, items, results))
	}
	fmt.Fprintln(a.stdout, "tombstones written under erased/ and audit records under audit/; run verify --read-data to prove the rewritten sets")
	return nil
}

func forgetResults(v *vault.Vault, items []forgetItem, results []*vault.ForgetResult) []forgetJSON {
	out := make([]forgetJSON, len(items))
	for i, it := range items {
		h := v.TenantHash(it.tenant)
		out[i] = forgetJSON{Tenant: it.tenant, Hash: h, Resumed: it.resumed, Tombstone: vault.TombstoneKey(h)}
		if it.plan != nil {
			out[i].Plan = &it.plan.Summary
		}
		if results != nil && results[i] != nil {
			out[i].Done = &results[i].Done
			out[i].Erased = results[i].Tombstone.Completed.Format(time.RFC3339)
		}
	}
	return out
}

func (a *app) printForgetPlan(w io.Writer, v *vault.Vault, it forgetItem) {
	if it.resumed {
		fmt.Fprintf(w, "plan: complete the interrupted erasure of tenant %q from %s (its journal says what is left)\n", it.tenant, v.Location())
		return
	}
	s := it.plan.Summary
	fmt.Fprintf(w, "plan: erase tenant %q from %s\n", it.tenant, v.Location())
	if it.again != nil {
		fmt.Fprintf(w, "  note: it was erased on %s, and sets taken since hold it again (its rows are still in the source?)\n", it.again.When())
	}
	fmt.Fprintf(w, "  sets holding it:       %d (%d pre-restore)%s\n", len(s.SetsHolding), s.PreRestore, listIDs(s.SetsHolding))
	fmt.Fprintf(w, "  sets rewritten:        %d (same IDs; new tenant index and manifest)%s\n", len(s.SetsRewritten), listIDs(s.SetsRewritten))
	fmt.Fprintf(w, "  change-log segments:   %d rewritten without its records\n", s.Segments)
	fmt.Fprintf(w, "  packs:                 %d rewritten (%d deleted with nothing left to keep)\n", s.Packs, s.PacksDropped)
	fmt.Fprintf(w, "  bytes:                 %s to copy, %s of old objects to delete (%s of them the tenant's)\n", humanBytes(s.BytesCopied), humanBytes(s.BytesDeleted), humanBytes(s.TenantBytes))
	if s.SharedRecords > 0 {
		fmt.Fprintf(w, "  shared change records: %d in the log (tenant unknown when captured): %d attributed to it and dropped (by who held their keys at their LSN; those no restore can replay unless provably another's)\n", s.SharedRecords, s.SharedDropped)
	}
	printSharedPlan(w, &s, "")
	fmt.Fprintf(w, "  afterwards:            tombstone %s; restore and drill refuse the tenant, list marks it; this cannot be undone\n", vault.TombstoneKey(v.TenantHash(it.tenant)))
}

// printSharedPlan prints what forget does with the change log's shared and
// move records beyond dropping them; kept says how undecided records stay.
func printSharedPlan(w io.Writer, s *vault.PlanSummary, kept string) {
	if s.SharedBlanked > 0 {
		fmt.Fprintf(w, "  split:                 %d shared record(s) of rows that moved between it and another tenant: kept for the other, its side blanked\n", s.SharedBlanked)
	}
	if s.MovesBlanked > 0 {
		fmt.Fprintf(w, "  moves:                 %d move record(s) in other tenants' streams of rows that moved between them and it: blanked but for the row's key\n", s.MovesBlanked)
	}
	if s.Truncates > 0 {
		fmt.Fprintf(w, "  kept:                  %d TRUNCATE record(s): they name tables, not rows\n", s.Truncates)
	}
	if s.SharedUndecided > 0 {
		fmt.Fprintf(w, "  NOT ERASED:            %d shared change-log record(s) that may hold rows of this tenant are kept%s: %s (docs/SECURITY.md, Known limits)\n", s.SharedUndecided, kept, undecidedWhy(s.UndecidedWhy))
	}
}

// undecidedWhy says why forget could not attribute shared records.
func undecidedWhy(w *vault.UndecidedWhy) string {
	if w == nil {
		return "forget could not tell whose they are"
	}
	var parts []string
	if w.KeyHeldByOthers > 0 {
		parts = append(parts, fmt.Sprintf("%d reference a key that passed between it and another tenant inside the record's own transaction", w.KeyHeldByOthers))
	}
	if w.OwnerUnknown > 0 {
		parts = append(parts, fmt.Sprintf("%d reference a key whose holder at the record's LSN is not known", w.OwnerUnknown))
	}
	if w.BeforeAnySet > 0 {
		parts = append(parts, fmt.Sprintf("%d lie where the log continues no snapshot set", w.BeforeAnySet))
	}
	if w.NoScope > 0 {
		parts = append(parts, fmt.Sprintf("%d are of tables no set scopes through a foreign key", w.NoScope))
	}
	return strings.Join(parts, "; ")
}

func listIDs(ids []string) string {
	switch {
	case len(ids) == 0:
		return ""
	case len(ids) <= 5:
		return ": " + strings.Join(ids, ", ")
	}
	return fmt.Sprintf(": %s, ... and %d more", strings.Join(ids[:5], ", "), len(ids)-5)
}

// confirmed refuses unless --yes, or "yes" typed on a terminal.
func (a *app) confirmed(ctx context.Context, o *forgetOptions, n int) error {
	if o.yes {
		return nil
	}
	if !terminal(a.stdin) {
		return &tenantvault.InputError{
			Msg:  "forget is irreversible and there is no terminal to confirm it on; nothing was changed",
			Hint: "review the plan (--dry-run), then run again with --yes",
		}
	}
	if !a.askYes(ctx, fmt.Sprintf("Erase %d tenant(s) from every backup in this repository? This cannot be undone.", n)) {
		return tenantvault.Inputf("not confirmed; nothing was changed")
	}
	return nil
}

// whoAmI is who an erasure is recorded as done by: user@host.
func whoAmI() string {
	by := "unknown"
	if u, err := user.Current(); err == nil {
		by = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		by += "@" + h
	}
	return by
}

// shredJSON is forget's --json output in an encrypted repository.
type shredJSON struct {
	Tenant    string   `json:"tenant"`
	Hash      string   `json:"tenant_hash"`
	Method    string   `json:"method"`
	Sets      []string `json:"sets"`
	Keys      []string `json:"keys"`
	Destroyed []string `json:"keys_destroyed,omitempty"`
	// Segments are the change-log segments rewritten; Shared what forget
	// decided about the shared records (as in the plaintext plan).
	Segments  int                `json:"segments_rewritten"`
	Shared    *vault.PlanSummary `json:"change_log,omitempty"`
	Done      *vault.ForgetDone  `json:"done,omitempty"`
	Erased    string             `json:"erased_at,omitempty"`
	Tombstone string             `json:"tombstone"`
}

// forgetEncrypted erases tenants from an encrypted repository by
// destroying their own data keys (crypto-shredding): nothing is rewritten.
// A tenant still held somewhere under a set's key, which that would not
// reach, is refused with the sets named.
func (a *app) forgetEncrypted(ctx context.Context, v *vault.Vault, ids []string, o *forgetOptions) error {
	plans := make([]*vault.ShredPlan, len(ids))
	segPlans := make([]*vault.ForgetPlan, len(ids))
	resumed := make([]bool, len(ids))
	var unknown, erased, setKeyed []string
	for i, id := range ids {
		p, err := v.CryptoShredPlan(ctx, id)
		if err != nil {
			return err
		}
		tomb, err := v.Erased(ctx, id)
		if err != nil {
			return err
		}
		if resumed[i], err = v.PendingForget(ctx, id); err != nil {
			return err
		}
		plans[i] = p
		if resumed[i] {
			continue // the journal says what is left
		}
		if segPlans[i], err = v.PlanShredSegments(ctx, id); err != nil {
			return err
		}
		if err := v.CheckSegmentRewrites(segPlans[i]); err != nil {
			return err
		}
		switch {
		case len(p.SetKeyed) > 0:
			setKeyed = append(setKeyed, fmt.Sprintf("%q in %d set(s)%s", id, len(p.SetKeyed), listIDs(p.SetKeyed)))
		case len(p.Keys) == 0 && len(segPlans[i].Segments) == 0 && tomb != nil:
			erased = append(erased, fmt.Sprintf("%q (erased on %s)", id, tomb.When()))
		case len(p.Keys) == 0 && len(p.Sets) == 0 && len(segPlans[i].Segments) == 0:
			unknown = append(unknown, fmt.Sprintf("%q", id))
		}
	}
	switch {
	case len(setKeyed) > 0:
		return &tenantvault.InputError{
			Msg:  fmt.Sprintf("destroying the tenants' own keys would not erase them from sets that seal their rows with the set's data key (written in set format 1 or before per-tenant keys): %s; nothing was changed", strings.Join(setKeyed, "; ")),
			Hint: "those sets go when retention prunes them (prune); run forget again then",
		}
	case len(unknown) > 0:
		return tenantvault.Inputf("%d unknown tenant(s), in no snapshot set of %s and with no key: %s; nothing was changed", len(unknown), v.Location(), strings.Join(unknown, ", "))
	case len(erased) > 0:
		return &tenantvault.InputError{
			Msg:  fmt.Sprintf("%d tenant(s) already erased: %s; nothing was changed", len(erased), strings.Join(erased, ", ")),
			Hint: "their keys are destroyed; the tombstones stay, so restores keep refusing them",
		}
	}
	w := a.stdout
	if a.jsonOut {
		w = a.stderr
	}
	out := make([]shredJSON, len(ids))
	for i, id := range ids {
		p := plans[i]
		h := v.TenantHash(id)
		out[i] = shredJSON{Tenant: id, Hash: h, Method: "crypto-shred", Sets: p.Sets, Keys: p.Keys, Tombstone: vault.TombstoneKey(h)}
		fmt.Fprintf(w, "plan: erase tenant %q from %s by destroying its own data keys (nothing is rewritten)\n", id, v.Location())
		fmt.Fprintf(w, "  sets holding it:       %d%s\n", len(p.Sets), listIDs(p.Sets))
		fmt.Fprintf(w, "  key objects to delete: %d (every version)%s\n", len(p.Keys), listIDs(p.Keys))
		if resumed[i] {
			fmt.Fprintf(w, "  change-log segments:   complete the interrupted rewrite (its journal says what is left)\n")
		} else if sp := segPlans[i]; sp != nil {
			s := sp.Summary
			out[i].Segments, out[i].Shared = s.Segments, &sp.Summary
			fmt.Fprintf(w, "  change-log segments:   %d rewritten under new segment keys (records sealed with a segment's key: %d shared record(s) attributed to it, and its streams in segments written before per-tenant keys)\n", s.Segments, s.SharedDropped)
			printSharedPlan(w, &s, ", readable with the identity")
		}
		fmt.Fprintf(w, "  afterwards:            no one can decrypt its chunks in any of those sets, the identity holder included; tombstone %s; this cannot be undone\n", vault.TombstoneKey(h))
	}
	if o.dryRun {
		if a.jsonOut {
			return a.printJSON(out)
		}
		fmt.Fprintln(a.stdout, "dry run: nothing was changed")
		return nil
	}
	if err := a.confirmed(ctx, o, len(ids)); err != nil {
		return err
	}
	by := whoAmI()
	for i, id := range ids {
		sp := segPlans[i]
		if sp != nil && i > 0 && len(sp.Segments) > 0 {
			// The erasures before this one rewrote segments this plan
			// named: plan it again as the log is now.
			var err error
			if sp, err = v.PlanShredSegments(ctx, id); err != nil {
				return err
			}
		}
		destroyed, tomb, err := v.CryptoShredTenantWith(ctx, id, o.reason, by, sp)
		if err != nil {
			return fmt.Errorf("forget %q (stopped part way; running the same command again completes the erasure): %w", id, err)
		}
		out[i].Destroyed, out[i].Erased, out[i].Done = destroyed, tomb.Completed.Format(time.RFC3339), tomb.Done
		if !a.jsonOut {
			segs := ""
			if d := tomb.Done; d != nil {
				segs = fmt.Sprintf("; %d change-log segment(s) rewritten (%d shared record(s) of it dropped, %d of rows that moved to or from it blanked on its side)", d.Segments, d.SharedDropped, d.SharedBlanked)
				if d.SharedRecords > 0 {
					segs += fmt.Sprintf("; not erased: %d shared record(s) forget could not attribute were kept (recorded in the tombstone)", d.SharedRecords)
				}
			}
			fmt.Fprintf(a.stdout, "erased tenant %q: %d key object(s) destroyed; its chunks in %d set(s) can no longer be decrypted%s\n", id, len(destroyed), len(out[i].Sets), segs)
		}
	}
	if a.jsonOut {
		return a.printJSON(out)
	}
	fmt.Fprintln(a.stdout, "tombstones written under erased/ and audit records under audit/")
	return nil
}

func (a *app) forgetStatus(ctx context.Context, v *vault.Vault) error {
	pending, err := v.PendingForgets(ctx)
	if err != nil {
		return err
	}
	erased, err := v.ErasedTenants(ctx)
	if err != nil {
		return err
	}
	if a.jsonOut {
		return a.printJSON(map[string]any{"in_progress": pending, "tombstones": erased.Len()})
	}
	for _, p := range pending {
		fmt.Fprintf(a.stdout, "in progress: tenant hash %s, started %s by %s (%s): %d set(s) and %d segment(s) to rewrite; rerun forget --tenant ID to complete it\n",
			p.TenantHash[:16], p.Started.Format(time.RFC3339), p.By, p.Reason, len(p.Plan.SetsRewritten), p.Plan.Segments)
	}
	fmt.Fprintf(a.stdout, "%d erasure(s) in progress; %d tombstone(s) in %s\n", len(pending), erased.Len(), v.Location())
	return nil
}
