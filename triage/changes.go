package triage

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync/atomic"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/vault"
)

// ChangesOptions configure a summary of the change log over a window.
type ChangesOptions struct {
	Vault    *vault.Vault
	From, To time.Time // inclusive, commit times
	// Tenants limits the summary to these tenants (unattributed changes
	// and truncates are still counted: they may be theirs).
	Tenants []string
	// Stream names the change stream when the repository holds several.
	Stream   string
	Logger   *slog.Logger
	Progress *ChangesProgress
}

// ChangesProgress counts a running summary's work.
type ChangesProgress struct {
	SegmentsTotal, SegmentsDone, Records atomic.Int64
}

// OpCounts are the row changes of one table.
type OpCounts struct {
	Inserted int64 `json:"inserted"`
	Updated  int64 `json:"updated"`
	Deleted  int64 `json:"deleted"`
	// Truncated counts the TRUNCATEs of the table in the window that may
	// have taken rows of this tenant (see Changes).
	Truncated int `json:"truncated,omitempty"`

	firstInsert, firstLoss time.Time
}

func (c *OpCounts) add(op byte, at time.Time) {
	switch op {
	case vault.OpInsert:
		c.Inserted++
		if c.firstInsert.IsZero() || at.Before(c.firstInsert) {
			c.firstInsert = at
		}
	case vault.OpUpdate:
		c.Updated++
	case vault.OpDelete:
		c.Deleted++
		c.lost(at)
	}
}

func (c *OpCounts) lost(at time.Time) {
	if c.firstLoss.IsZero() || at.Before(c.firstLoss) {
		c.firstLoss = at
	}
}

// TenantChanges is one tenant's changes in the window, per table.
type TenantChanges struct {
	Tenant string `json:"tenant"`
	// LostRows is true when rows of the tenant were deleted or truncated.
	LostRows bool `json:"lost_rows"`
	// FirstLoss is the commit time of the first deletion or truncate that
	// took rows of the tenant in the window.
	FirstLoss time.Time            `json:"first_loss,omitzero"`
	Tables    map[string]*OpCounts `json:"tables"`
}

// Truncate is one TRUNCATE in the window.
type Truncate struct {
	At     time.Time `json:"at"`
	LSN    string    `json:"lsn"`
	Tables []string  `json:"tables"`
}

// ChangesReport is the change log's account of a window.
type ChangesReport struct {
	Stream   string    `json:"stream"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	Complete time.Time `json:"log_complete_from"`
	Until    time.Time `json:"log_until"`
	Segments int       `json:"segments_read"`
	Records  int64     `json:"records_in_window"`
	// FirstLoss is the earliest FirstLoss of the tenants: restoring them
	// to just before it undoes the window's damage.
	FirstLoss time.Time `json:"first_loss,omitzero"`
	// Tenants are sorted by ID.
	Tenants []TenantChanges `json:"tenants"`
	// Unattributed are changes the capture could not tie to a tenant
	// (their parent row was already gone); restore --at still applies them
	// to the tenant they belong to.
	Unattributed map[string]*OpCounts `json:"unattributed,omitempty"`
	Truncates    []Truncate           `json:"truncates,omitempty"`
	// TruncateBase is the set whose row counts attributed the truncates.
	TruncateBase string        `json:"truncate_base_set,omitempty"`
	Duration     time.Duration `json:"-"`
}

// Changes sums up, per tenant and table, the rows inserted, updated and
// deleted by transactions committed in [From, To]. A TRUNCATE carries no
// rows and no tenant: it counts as taking a tenant's rows of a table when
// the newest complete set taken before it holds rows of that tenant in
// that table, or the tenant inserted rows into it earlier in the window
// (a tenant whose first rows of the table arrived between that set and
// From is not seen: diff does see it). Its row count is not added to
// Deleted, which counts row deletions only.
//
// Bad input (From after To, a window the log does not cover) fails before
// any record is read. Memory is the per-tenant counters of the tenants
// that changed: about 100 bytes plus 60 per table touched, plus one
// segment being read.
func Changes(ctx context.Context, o ChangesOptions) (*ChangesReport, error) {
	start := time.Now()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = &ChangesProgress{}
	}
	if o.From.After(o.To) {
		return nil, tenantvault.Inputf("--from %s is after --to %s", fmtTime(o.From), fmtTime(o.To))
	}
	stream, err := pickStream(ctx, o.Vault, o.Stream)
	if err != nil {
		return nil, err
	}
	w, err := findWindow(ctx, o.Vault, stream, o.From, o.To)
	if err != nil {
		return nil, err
	}
	o.Logger.Debug("change log window", "stream", stream, "segments", len(w.Segments), "of", w.TotalSegs, "index_reads", w.IndexReads)
	if len(w.Segments) > 0 && !w.Segments[0].Opened() {
		return nil, needIdentity(vault.ErrNoIdentity)
	}
	var only map[string]bool
	if len(o.Tenants) > 0 {
		only = map[string]bool{}
		for _, id := range o.Tenants {
			only[id] = true
		}
	}
	rep := &ChangesReport{Stream: stream, From: o.From.UTC(), To: o.To.UTC(), Complete: w.Complete.UTC(), Until: w.Until.UTC(), Segments: len(w.Segments)}
	tenants := map[string]map[string]*OpCounts{}
	unattributed := map[string]*OpCounts{}
	counts := func(m map[string]*OpCounts, table string) *OpCounts {
		c := m[table]
		if c == nil {
			c = &OpCounts{}
			m[table] = c
		}
		return c
	}
	o.Progress.SegmentsTotal.Store(int64(len(w.Segments)))
	for _, idx := range w.Segments {
		rels := make(map[uint32]string, len(idx.Relations))
		for _, r := range idx.Relations {
			rels[r.OID] = r.Schema + "." + r.Name
		}
		want := func(s vault.SegmentStream) bool { return s.Shared || only == nil || only[s.Tenant] }
		err := o.Vault.ScanSegment(ctx, idx, want, func(s vault.SegmentStream, cr *vault.ChangeReader) error {
			for {
				c, err := cr.Next()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return tenantvault.Integrityf("change segment %s: %v", idx.Key(), err)
				}
				if c.Time.Before(o.From) || c.Time.After(o.To) {
					continue
				}
				rep.Records++
				o.Progress.Records.Add(1)
				if c.Op == vault.OpTruncate {
					tr := Truncate{At: c.Time.UTC(), LSN: vault.LSNString(c.LSN)}
					for _, oid := range c.Rels {
						if name, ok := rels[oid]; ok {
							tr.Tables = append(tr.Tables, name)
						}
					}
					sort.Strings(tr.Tables)
					rep.Truncates = append(rep.Truncates, tr)
					continue
				}
				table, ok := rels[c.Rel]
				if !ok {
					return tenantvault.Integrityf("change segment %s: a change refers to relation %d the segment does not describe", idx.Key(), c.Rel)
				}
				if s.Shared {
					counts(unattributed, table).add(c.Op, c.Time)
					continue
				}
				m := tenants[s.Tenant]
				if m == nil {
					m = map[string]*OpCounts{}
					tenants[s.Tenant] = m
				}
				counts(m, table).add(c.Op, c.Time)
			}
		})
		if err != nil {
			return nil, needIdentity(err)
		}
		o.Progress.SegmentsDone.Add(1)
	}
	sort.Slice(rep.Truncates, func(i, j int) bool { return rep.Truncates[i].At.Before(rep.Truncates[j].At) })
	if len(rep.Truncates) > 0 {
		if err := attributeTruncates(ctx, o, stream, rep, tenants, only, counts); err != nil {
			return nil, err
		}
	}
	ids := make([]string, 0, len(tenants))
	for id := range tenants {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	rep.Tenants = make([]TenantChanges, 0, len(ids))
	for _, id := range ids {
		tc := TenantChanges{Tenant: id, Tables: tenants[id]}
		for _, c := range tc.Tables {
			if c.Deleted > 0 || c.Truncated > 0 {
				tc.LostRows = true
				if tc.FirstLoss.IsZero() || c.firstLoss.Before(tc.FirstLoss) {
					tc.FirstLoss = c.firstLoss
				}
			}
		}
		rep.Tenants = append(rep.Tenants, tc)
		if !tc.FirstLoss.IsZero() && (rep.FirstLoss.IsZero() || tc.FirstLoss.Before(rep.FirstLoss)) {
			rep.FirstLoss = tc.FirstLoss
		}
	}
	if len(unattributed) > 0 {
		rep.Unattributed = unattributed
	}
	rep.Duration = time.Since(start)
	return rep, nil
}

// attributeTruncates finds whose rows each TRUNCATE took: the tenants the
// newest complete set before it holds rows of in the table, and those
// that inserted into the table earlier in the window.
func attributeTruncates(ctx context.Context, o ChangesOptions, stream string, rep *ChangesReport, tenants map[string]map[string]*OpCounts,
	only map[string]bool, counts func(map[string]*OpCounts, string) *OpCounts) error {
	first := map[string]time.Time{} // table -> its first TRUNCATE (they are sorted)
	for _, tr := range rep.Truncates {
		for _, table := range tr.Tables {
			if _, ok := first[table]; !ok {
				first[table] = tr.At
			}
		}
	}
	took := func(id, table string) {
		m := tenants[id]
		if m == nil {
			m = map[string]*OpCounts{}
			tenants[id] = m
		}
		c := counts(m, table)
		c.Truncated++
		c.lost(first[table])
	}
	for _, m := range tenants {
		for _, tr := range rep.Truncates {
			for _, table := range tr.Tables {
				if c := m[table]; c != nil && !c.firstInsert.IsZero() && c.firstInsert.Before(tr.At) {
					c.Truncated++
					c.lost(tr.At)
				}
			}
		}
	}
	set, err := OpenSet(ctx, o.Vault, Selector{At: rep.Truncates[0].At, Stream: stream})
	if err != nil {
		o.Logger.Warn("no snapshot set before the first TRUNCATE of the window: only the tenants that inserted into a truncated table in the window are counted", "error", err)
		return nil
	}
	rep.TruncateBase = set.ID
	index := map[string]int{}
	for i := range set.Tables {
		if set.Tables[i].Database == "" {
			index[set.Tables[i].Schema+"."+set.Tables[i].Name] = i
		}
	}
	hit := map[int][]string{} // set table -> truncated table names (once per TRUNCATE)
	for _, tr := range rep.Truncates {
		for _, table := range tr.Tables {
			if i, ok := index[table]; ok {
				hit[i] = append(hit[i], table)
			}
		}
	}
	return set.Entries(ctx, only, func(e *TenantEntry) error {
		for _, te := range e.Tables {
			names := hit[te.Table]
			if te.Rows == 0 || len(names) == 0 {
				continue
			}
			// Counted once per TRUNCATE; an earlier insert already counted
			// it for this table when the tenant inserted in the window.
			m := tenants[e.Tenant]
			if c := m[names[0]]; c != nil && c.Truncated > 0 {
				continue
			}
			for _, n := range names {
				took(e.Tenant, n)
			}
		}
		return nil
	})
}

// String renders counts for people.
func (c *OpCounts) String() string {
	s := fmt.Sprintf("+%d ~%d -%d", c.Inserted, c.Updated, c.Deleted)
	if c.Truncated > 0 {
		s += fmt.Sprintf(" truncated %dx", c.Truncated)
	}
	return s
}
