package vault

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tenantvault/tenantvault/repo"
)

// DefaultGCMinAge keeps GC away from everything a running snapshot may
// still reference: its own packs (written before its manifest) and the
// schema archive it stored or refreshed.
const DefaultGCMinAge = 24 * time.Hour

// GCOptions tune GC.
type GCOptions struct {
	// MinAge: no object younger than this is collected, judged both by
	// its modification time and, for packs, by the start time in its
	// set's ID. Zero means DefaultGCMinAge; use a negative value for none
	// (tests, or a repository nothing writes to).
	MinAge time.Duration
	// DryRun lists what would be collected and deletes nothing.
	DryRun bool

	// assumeGone are sets a dry-run purge would have deleted.
	assumeGone map[string]bool
}

// Garbage is one object GC collects, and why.
type Garbage struct {
	Key    string    `json:"key"`
	Size   int64     `json:"size"`
	Stored time.Time `json:"stored"`
	Why    string    `json:"why"`
}

// GCResult is what GC found and did.
type GCResult struct {
	// Collected are the objects deleted (or, dry, to be deleted).
	Collected []Garbage `json:"collected"`
	Bytes     int64     `json:"bytes"`
	// Young counts unreferenced objects left alone because they are
	// younger than the minimum age.
	Young  int             `json:"young"`
	Failed []DeleteFailure `json:"failed,omitempty"`
}

// GC deletes what no snapshot set needs: packs and schema archives that no
// manifest references (leftovers of interrupted snapshots, and what purged
// sets used alone), catalogs none of whose sets exists any more, and
// deletion markers and verification records whose set is gone. It reads
// every manifest first and stops, deleting nothing, if any of them cannot
// be read: an unreadable manifest may reference anything.
// Chunks are shared between sets, so a pack under packs/<set>/ may be
// referenced by a later set; only the union of every manifest's Packs and
// Schemas decides.
func (v *Vault) GC(ctx context.Context, opts GCOptions) (*GCResult, error) {
	minAge := opts.MinAge
	if minAge == 0 {
		minAge = DefaultGCMinAge
	}
	if minAge < 0 {
		minAge = 0
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	var liveIDs []string
	for _, id := range ids {
		if !opts.assumeGone[id] {
			liveIDs = append(liveIDs, id)
		}
	}
	sets, err := v.ReadIndexes(ctx, liveIDs)
	if err != nil {
		return nil, fmt.Errorf("garbage collection needs every manifest, and one cannot be read (nothing was deleted): %w", err)
	}
	live := map[string]bool{}
	referenced := map[string]bool{}
	// replaced are tenant indexes of live sets that their manifest no
	// longer names (older generations): known once the manifest is read.
	replaced := map[string]bool{}
	for _, m := range sets {
		live[m.ID] = true
		if m.indexKey != "" {
			for g := 0; g < m.indexGen; g++ {
				replaced[indexKeyGen(m.ID, g)] = true
			}
		}
		for _, p := range m.Packs {
			referenced[p] = true
		}
		for _, s := range m.Schemas {
			referenced[s.Key] = true
		}
	}
	now := v.now()
	cutoff := now.Add(-minAge)
	res := &GCResult{}
	var garbage []Garbage
	consider := func(o repo.ObjectInfo, started time.Time, why string) bool {
		if o.ModTime.After(cutoff) || started.After(cutoff) {
			res.Young++
			return false
		}
		garbage = append(garbage, Garbage{Key: o.Key, Size: o.Size, Stored: o.ModTime, Why: why})
		return true
	}
	err = v.b.List(ctx, PacksPrefix, func(o repo.ObjectInfo) error {
		if referenced[o.Key] {
			return nil
		}
		setID, _, ok := strings.Cut(strings.TrimPrefix(o.Key, PacksPrefix), "/")
		if !ok || !ValidSetID(setID) {
			return nil // not a key this layout writes: never ours to delete
		}
		started, _ := time.Parse(setIDLayout, setID[:len(setIDLayout)])
		why := "pack of a snapshot that never finished"
		if live[setID] {
			why = "pack its own set does not reference"
		} else if opts.assumeGone[setID] {
			why = "pack only purged sets referenced"
		}
		consider(o, started, why)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	err = v.b.List(ctx, SchemasPrefix, func(o repo.ObjectInfo) error {
		if !referenced[o.Key] && (strings.HasSuffix(o.Key, ".dump") || strings.HasSuffix(o.Key, ".parts")) {
			consider(o, time.Time{}, "schema archive no set references")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list schema archives: %w", err)
	}
	err = v.b.List(ctx, SetsPrefix, func(o repo.ObjectInfo) error {
		id, ok := indexSetID(o.Key)
		if !ok || (live[id] && !replaced[o.Key]) {
			return nil
		}
		started, _ := time.Parse(setIDLayout, id[:len(setIDLayout)])
		why := "tenant index of a set that does not exist"
		if live[id] {
			// forget wrote a newer generation; the manifest uses that one
			why = "tenant index its set no longer uses"
			started = time.Time{}
		}
		consider(o, started, why)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tenant indexes: %w", err)
	}
	// A catalog none of whose sets exists any more describes nothing
	// (readers skip purged sets' positions), yet names their tenants: it
	// goes with them, header first. One that cannot be read is left to
	// the writers (UpdateCatalog), which judge it with keys.
	catalogs := map[string]repo.ObjectInfo{}
	if err := v.b.List(ctx, CatalogPrefix, func(o repo.ObjectInfo) error { catalogs[o.Key] = o; return nil }); err != nil {
		return nil, fmt.Errorf("list catalogs: %w", err)
	}
	for _, key := range sortedIDs(catalogs) {
		base, ok := strings.CutSuffix(key, catalogExt)
		if !ok {
			continue
		}
		covered, err := v.catalogSets(ctx, key)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			v.log.Debug("garbage collection leaves a catalog it cannot read", "catalog", key, "err", err)
			continue
		}
		if slices.ContainsFunc(covered, func(id string) bool { return live[id] }) {
			continue
		}
		if consider(catalogs[key], time.Time{}, "catalog of sets that no longer exist") {
			if ix, ok := catalogs[base+indexExt]; ok {
				garbage = append(garbage, Garbage{Key: ix.Key, Size: ix.Size, Stored: ix.ModTime, Why: "index of a collected catalog"})
			}
		}
	}
	for _, prefix := range []string{DeletionsPrefix, VerifiedPrefix} {
		err := v.listRecords(ctx, prefix, func(id string, o repo.ObjectInfo) error {
			if !live[id] {
				consider(o, time.Time{}, "record of a set that no longer exists")
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
	}
	for _, g := range garbage {
		if !opts.DryRun {
			if err := v.b.Delete(ctx, g.Key); err != nil {
				if ctx.Err() != nil {
					return res, ctx.Err()
				}
				res.Failed = append(res.Failed, deleteFailure(g.Key, err))
				v.log.Warn("cannot delete unreferenced object", "key", g.Key, "err", err)
				continue
			}
			v.log.Debug("collected", "key", g.Key, "why", g.Why, "bytes", g.Size)
		}
		res.Collected = append(res.Collected, g)
		res.Bytes += g.Size
	}
	return res, nil
}
