package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault"
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
	sets, err := v.ReadManifests(ctx, ids)
	if err != nil {
		return err
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
	for _, m := range sets {
		t := m.Tenant(o.tenant)
		if t == nil {
			continue
		}
		hist = append(hist, tenantHistoryJSON{Set: m.ID, Kind: m.Kind, ConsistentAt: m.ConsistentAt, Rows: t.Rows, Bytes: t.Size, Stored: t.Stored, Tables: len(t.Chunks), Status: status(m.ID)})
	}
	if len(hist) == 0 {
		return tenantvault.Inputf("tenant %q is in no snapshot set of %s", o.tenant, v.Location())
	}
	if a.jsonOut {
		return a.printJSON(hist)
	}
	tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSISTENT AT\tSET\tKIND\tTABLES\tROWS\tDATA\tSTORED\tSTATUS")
	for _, h := range hist {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", h.ConsistentAt.Format(time.RFC3339), h.Set, h.Kind, h.Tables, h.Rows, humanBytes(h.Bytes), humanBytes(h.Stored), h.Status)
	}
	return tw.Flush()
}
