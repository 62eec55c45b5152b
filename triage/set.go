package triage

// This file is the one place where triage reads a snapshot set: its header
// (tables, fingerprint, tenancy, source) and its per-tenant entries (rows
// and content digest per table). Everything else goes through Set, so a
// new repository reader (a paged tenant index) replaces only this file.

import (
	"context"
	"fmt"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/vault"
)

// Selector chooses the set a diff compares with.
type Selector struct {
	// SetID names the set (any kind).
	SetID string
	// At picks the newest complete set taken at or before it; zero means
	// the newest complete set. Pre-restore, partial and marked sets are
	// only used when named by ID.
	At time.Time
	// Stream, when set, keeps only the sets of the source database whose
	// change stream it is.
	Stream string
}

// Set is one snapshot set as triage sees it.
type Set struct {
	ID           string
	Kind         string
	ConsistentAt time.Time
	Source       manifest.Source
	Tenancy      manifest.Tenancy
	Fingerprint  string
	Tables       []manifest.Table
	Tenants      int

	s *vault.Set
}

// TenantEntry is one tenant of a set: its rows and digest per table.
type TenantEntry struct {
	Tenant string
	Tables []TableEntry // by table index; tables without rows are left out
}

// TableEntry is one table's rows of a tenant in a set.
type TableEntry struct {
	Table  int
	Rows   int64
	Digest string
}

// OpenSet resolves sel to a set and reads its header.
func OpenSet(ctx context.Context, v *vault.Vault, sel Selector) (*Set, error) {
	if sel.SetID != "" {
		vs, err := v.OpenSet(ctx, sel.SetID)
		if err != nil {
			return nil, err
		}
		return newSet(vs), nil
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, tenantvault.Inputf("repository %s holds no snapshot sets", v.Location())
	}
	marks, err := v.Marks(ctx)
	if err != nil {
		return nil, err
	}
	for i := len(ids) - 1; i >= 0; i-- {
		if !sel.At.IsZero() && vault.StartedAfter(ids[i], sel.At) {
			continue
		}
		if _, marked := marks[ids[i]]; marked {
			continue
		}
		vs, err := v.OpenSet(ctx, ids[i])
		if err != nil {
			return nil, err
		}
		m := vs.Header()
		if m.Kind == manifest.KindPreRestore || m.Partial ||
			sel.Stream != "" && vault.StreamName(m.Source.SystemID, m.Source.Database) != sel.Stream {
			continue
		}
		if !sel.At.IsZero() && m.ConsistentAt.After(sel.At) {
			continue
		}
		return newSet(vs), nil
	}
	if !sel.At.IsZero() {
		fs, err := v.OpenSet(ctx, ids[0])
		if err != nil {
			return nil, err
		}
		first := fs.Header()
		return nil, tenantvault.Inputf("--at %s is before the oldest complete snapshot set (%s, taken at %s)",
			sel.At.UTC().Format(time.RFC3339), first.ID, first.ConsistentAt.Format(time.RFC3339))
	}
	return nil, tenantvault.WithHint(fmt.Sprintf("repository %s holds no complete snapshot set (only partial, pre-restore or marked ones)", v.Location()),
		"name one with --snapshot ID (tenantvault list shows them)")
}

// newSet holds the header; tenants are read from the set's index page by
// page (set format 2), so memory does not grow with the tenant count.
func newSet(vs *vault.Set) *Set {
	m := vs.Header()
	return &Set{ID: m.ID, Kind: m.Kind, ConsistentAt: m.ConsistentAt, Source: m.Source, Tenancy: m.Tenancy,
		Fingerprint: m.Fingerprint, Tables: m.Tables, Tenants: vs.TenantCount(), s: vs}
}

// Has reports whether the set holds tenant id.
func (s *Set) Has(ctx context.Context, id string) (bool, error) {
	t, err := s.s.Tenant(ctx, id)
	return t != nil, err
}

// Entries calls fn for every tenant of the set in ascending ID order (byte
// order), or only for the tenants in only when it is non-nil. The entry
// passed to fn is reused: fn must copy what it keeps.
func (s *Set) Entries(ctx context.Context, only map[string]bool, fn func(*TenantEntry) error) error {
	var e TenantEntry
	return s.s.HeldTenants(ctx, func(t *manifest.Tenant) error {
		if only != nil && !only[t.ID] {
			return nil
		}
		e.Tenant = t.ID
		e.Tables = e.Tables[:0]
		for _, c := range t.Chunks {
			e.Tables = append(e.Tables, TableEntry{Table: c.Table, Rows: c.Rows, Digest: c.Digest})
		}
		return fn(&e)
	})
}
