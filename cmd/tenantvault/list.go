package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/vault"
)

type listOptions struct {
	repo   repoFlags
	tenant string
}

func (a *app) listCmd() *cobra.Command {
	var o listOptions
	cmd := &cobra.Command{
		Use:   "list --repo URL [--tenant ID]",
		Short: "List snapshot sets, or one tenant's history",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return a.runList(cmd.Context(), &o) },
	}
	o.repo.add(cmd.Flags(), false)
	o.repo.keys.addReader(cmd.Flags())
	cmd.Flags().StringVar(&o.tenant, "tenant", "", "show this tenant's snapshots (time, rows, bytes, set)")
	return cmd
}

type tenantHistoryJSON struct {
	Set          string    `json:"set"`
	Kind         string    `json:"kind"`
	ConsistentAt time.Time `json:"consistent_at"`
	Rows         int64     `json:"rows"`
	Bytes        int64     `json:"bytes"`
	Stored       int64     `json:"stored"`
	Tables       int       `json:"tables"`
	Status       string    `json:"status,omitempty"`
}

// listSetJSON is a set in list --json: its summary and, when it is marked
// for deletion, the mark.
type listSetJSON struct {
	setJSON
	Marked *markJSON `json:"marked,omitempty"`
}

type markJSON struct {
	MarkedAt   time.Time `json:"marked_at"`
	PurgeAfter time.Time `json:"purge_after"`
	Reason     string    `json:"reason"`
	By         string    `json:"by"`
}

func (a *app) runList(ctx context.Context, o *listOptions) error {
	v, closeRepo, err := a.openVault(ctx, &o.repo, false)
	if err != nil {
		return err
	}
	defer closeRepo()
	ids, err := v.ListSets(ctx)
	if err != nil {
		return err
	}
	if !v.CanDecrypt() && o.tenant == "" {
		return a.listSealed(ctx, v, ids)
	}
	// Headers only: a set's tenants are read (one page of its index) only
	// for --tenant.
	var sets []*manifest.Manifest
	var entries []vault.TenantInSet
	var tomb *vault.Tombstone
	var shredded int
	if o.tenant == "" {
		if sets, err = v.SetHeaders(ctx, ids); err != nil {
			return err
		}
	} else {
		if tomb, err = v.Erased(ctx, o.tenant); err != nil {
			return err
		}
		// An erased tenant is gone from the catalogs; the sets say which
		// of them still hold its (unreadable) entries.
		history := v.TenantHistory
		if tomb != nil {
			history = v.TenantHistoryFromSets
		}
		if entries, err = history(ctx, ids, o.tenant); err != nil {
			return err
		}
		if tomb != nil {
			// Crypto-shredding leaves the entries and destroys their
			// keys: such an entry is erased, not held.
			if entries, shredded, err = heldEntries(ctx, v, entries); err != nil {
				return err
			}
		}
		for _, e := range entries {
			sets = append(sets, e.Set)
		}
	}
	marks, err := v.Marks(ctx)
	if err != nil {
		return err
	}
	// status tells a set marked for deletion, and when a purge may take it.
	status := func(id string) string {
		if m, ok := marks[id]; ok {
			return "marked, purge after " + m.DueAt(0).UTC().Format(time.RFC3339)
		}
		return ""
	}
	if o.tenant == "" {
		if a.jsonOut {
			out := make([]listSetJSON, len(sets))
			for i, m := range sets {
				out[i] = listSetJSON{setJSON: setSummary(m)}
				if mk, ok := marks[m.ID]; ok {
					out[i].Marked = &markJSON{MarkedAt: mk.MarkedAt, PurgeAfter: mk.DueAt(0), Reason: mk.Reason, By: mk.By}
				}
			}
			return a.printJSON(out)
		}
		tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SET\tKIND\tCONSISTENT AT\tTENANTS\tROWS\tDATA\tSTORED\tWRITTEN\tSTATUS")
		for _, m := range sets {
			s := m.Stats
			kind := m.Kind
			if m.Partial {
				kind += " (partial)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", m.ID, kind, m.ConsistentAt.Format(time.RFC3339), s.Tenants, s.Rows,
				humanBytes(s.Size), humanBytes(s.Stored), humanBytes(s.Written), status(m.ID))
		}
		return tw.Flush()
	}
	var hist []tenantHistoryJSON
	for _, t := range entries {
		m := t.Set
		hist = append(hist, tenantHistoryJSON{Set: m.ID, Kind: m.Kind, ConsistentAt: m.ConsistentAt, Rows: t.Rows, Bytes: t.Size, Stored: t.Stored, Tables: t.Tables, Status: status(m.ID)})
	}
	if tomb != nil {
		return a.listErased(o.tenant, tomb, hist, shredded)
	}
	if len(hist) == 0 {
		return tenantvault.Inputf("tenant %q is in no snapshot set of %s", o.tenant, v.Location())
	}
	rng, err := restorableRange(ctx, v, sets, o.tenant)
	if err != nil {
		return err
	}
	if a.jsonOut {
		rng.Sets = hist
		return a.printJSON(rng)
	}
	if rng.ChangeLog {
		fmt.Fprintf(a.stdout, "restorable to any second from %s to %s (snapshot sets plus the change log)\n\n", rng.From.Format(time.RFC3339), rng.Until.Format(time.RFC3339))
	} else {
		fmt.Fprintf(a.stdout, "restorable as of each set below, %s to %s (no change log: --at picks the newest set before the time)\n\n", rng.From.Format(time.RFC3339), rng.Until.Format(time.RFC3339))
	}
	tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSISTENT AT\tSET\tKIND\tTABLES\tROWS\tDATA\tSTORED\tSTATUS")
	for _, h := range hist {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", h.ConsistentAt.Format(time.RFC3339), h.Set, h.Kind, h.Tables, h.Rows, humanBytes(h.Bytes), humanBytes(h.Stored), h.Status)
	}
	return tw.Flush()
}

// listSealed lists the sets of an encrypted repository without an
// identity: what their signed headers tell, which is no tenant's data.
func (a *app) listSealed(ctx context.Context, v *vault.Vault, ids []string) error {
	sets, err := v.ReadIndexes(ctx, ids)
	if err != nil {
		return err
	}
	marks, err := v.Marks(ctx)
	if err != nil {
		return err
	}
	if a.jsonOut {
		out := make([]listSetJSON, len(sets))
		for i, x := range sets {
			out[i] = listSetJSON{setJSON: setJSON{ID: x.ID, Kind: x.Kind, Source: manifest.Source{Name: x.SourceName}, ConsistentAt: x.ConsistentAt, Partial: x.Partial,
				Stats: manifest.Stats{Chunks: x.Stats.Chunks, Stored: x.Stats.Stored, Written: x.Stats.Written}}}
			if mk, ok := marks[x.ID]; ok {
				out[i].Marked = &markJSON{MarkedAt: mk.MarkedAt, PurgeAfter: mk.DueAt(0), Reason: mk.Reason, By: mk.By}
			}
		}
		return a.printJSON(out)
	}
	tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SET\tKIND\tCONSISTENT AT\tCHUNKS\tSTORED\tWRITTEN\tSTATUS")
	for _, x := range sets {
		kind := x.Kind
		if x.Partial {
			kind += " (partial)"
		}
		status := ""
		if m, ok := marks[x.ID]; ok {
			status = "marked, purge after " + m.DueAt(0).UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", x.ID, kind, x.ConsistentAt.Format(time.RFC3339), x.Stats.Chunks, humanBytes(x.Stats.Stored), humanBytes(x.Stats.Written), status)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.stderr, "note: the repository is encrypted; give --identity to see tenants, rows and sizes")
	return nil
}

// tenantRangeJSON is a tenant's restorable range and history.
type tenantRangeJSON struct {
	Tenant    string              `json:"tenant"`
	From      time.Time           `json:"restorable_from"`
	Until     time.Time           `json:"restorable_until"`
	ChangeLog bool                `json:"change_log"`
	Sets      []tenantHistoryJSON `json:"sets"`
}

// restorableRange spans from the tenant's oldest set to the newest archived
// change after its newest exact set, or to its newest set without a log.
// sets are those that hold the tenant.
func restorableRange(ctx context.Context, v *vault.Vault, sets []*manifest.Manifest, tenant string) (tenantRangeJSON, error) {
	r := tenantRangeJSON{Tenant: tenant}
	var newestExact *manifest.Manifest
	for _, m := range sets {
		if m.Kind == manifest.KindPreRestore {
			continue
		}
		if r.From.IsZero() || m.ConsistentAt.Before(r.From) {
			r.From = m.ConsistentAt
		}
		if m.ConsistentAt.After(r.Until) {
			r.Until = m.ConsistentAt
		}
		if m.LSNExact && (newestExact == nil || m.ConsistentAt.After(newestExact.ConsistentAt)) {
			newestExact = m
		}
	}
	if newestExact != nil {
		_, until, err := v.ArchivedUntil(ctx, vault.StreamName(newestExact.Source.SystemID, newestExact.Source.Database))
		if err != nil {
			return r, err
		}
		if until.After(r.Until) {
			r.Until, r.ChangeLog = until, true
		}
	}
	r.From, r.Until = r.From.UTC(), r.Until.UTC()
	return r, nil
}

// erasedJSON is list --tenant's answer for an erased tenant.
type erasedJSON struct {
	Tenant string              `json:"tenant"`
	Erased *vault.Tombstone    `json:"erased"`
	Sets   []tenantHistoryJSON `json:"sets"`
	// Shredded counts the sets that keep an entry of the tenant sealed
	// with a destroyed key (encrypted repositories): not in Sets.
	Shredded int `json:"shredded_sets,omitempty"`
}

// heldEntries leaves out the entries sealed with a destroyed tenant key
// and counts them. Sets taken under one key share it: each key is looked
// up once.
func heldEntries(ctx context.Context, v *vault.Vault, entries []vault.TenantInSet) ([]vault.TenantInSet, int, error) {
	var held []vault.TenantInSet
	shredded := 0
	destroyed := map[string]bool{}
	for _, e := range entries {
		if e.Key != "" {
			gone, seen := destroyed[e.Key]
			if !seen {
				var err error
				if gone, err = v.TenantKeyDestroyed(ctx, e.Key); err != nil {
					return nil, 0, err
				}
				destroyed[e.Key] = gone
			}
			if gone {
				shredded++
				continue
			}
		}
		held = append(held, e)
	}
	return held, shredded, nil
}

// listErased says that a tenant was erased: restore refuses it whatever
// sets still hold it (an erasure in progress, or sets taken since while
// the source still had its rows).
func (a *app) listErased(tenant string, tomb *vault.Tombstone, hist []tenantHistoryJSON, shredded int) error {
	if a.jsonOut {
		if hist == nil {
			hist = []tenantHistoryJSON{}
		}
		return a.printJSON(erasedJSON{Tenant: tenant, Erased: tomb, Sets: hist, Shredded: shredded})
	}
	state := "erased"
	if tomb.State == vault.TombstoneErasing {
		state = "being erased (interrupted: rerun tenantvault forget to complete it)"
	}
	fmt.Fprintf(a.stdout, "tenant %q: %s on %s by tenantvault forget", tenant, state, tomb.When())
	if tomb.Reason != "" {
		fmt.Fprintf(a.stdout, " (reason: %s)", tomb.Reason)
	}
	fmt.Fprintln(a.stdout, "; restore and drill refuse it")
	if shredded > 0 {
		fmt.Fprintf(a.stdout, "%d snapshot set(s) keep its entries sealed with its destroyed keys: no one can read them\n", shredded)
	}
	if len(hist) == 0 {
		fmt.Fprintln(a.stdout, "no snapshot set holds it")
		return nil
	}
	fmt.Fprintf(a.stdout, "%d snapshot set(s) still hold it (never restored; forget --tenant erases them):\n", len(hist))
	tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSISTENT AT\tSET\tKIND\tROWS")
	for _, h := range hist {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", h.ConsistentAt.Format(time.RFC3339), h.Set, h.Kind, h.Rows)
	}
	return tw.Flush()
}
