package vault

import (
	"context"
	"slices"

	"github.com/tenantvault/tenantvault/manifest"
)

// ReuseIndex holds the chunks of an earlier set that a new set may point
// at instead of storing equal content again (see ChunkWriter.Finish).
// The zero value (and nil) finds nothing.
type ReuseIndex struct {
	// Set is the earlier set, "" when there is none.
	Set string
	// plaintext sets: the earlier set's global chunks by table signature,
	// its tenants' looked up in its tenant index (a few pages cached)
	prev   *Set
	pages  *pageCache
	global map[string]ChunkRef
	log    func(msg string, args ...any)
	// encrypted sets: by tag (which covers the content digest and size)
	byTag  map[string]ChunkRef
	tagKey []byte
}

// maxReuseLookback is how many of the newest sets PreviousChunks looks at.
const maxReuseLookback = 20

// PreviousChunks indexes the newest set among the last 20 that was taken
// from the same source with the same tenancy as m (whose Source and Tenancy
// must be filled in), is not marked for deletion (a marked set may be
// purged while the new one runs) and has all its packs.
//
// In an encrypted repository only a set signed by this side's own signing
// key and encrypted to exactly this side's recipients qualifies: reuse
// tags are keyed with the signing key, and a chunk encrypted to other
// recipients would be unreadable to the new set's readers (after a key
// rotation the first set stores everything again).
func (v *Vault) PreviousChunks(ctx context.Context, m *manifest.Manifest) (*ReuseIndex, error) {
	ids, err := v.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	marks, err := v.Marks(ctx)
	if err != nil {
		return nil, err
	}
	var signer string
	if len(v.keys.Signing) > 0 {
		signer = v.keys.Signing[0].Signer()
	}
	for i := len(ids) - 1; i >= 0 && i >= len(ids)-maxReuseLookback; i-- {
		if _, marked := marks[ids[i]]; marked {
			continue
		}
		if v.cfg.Encrypted() {
			if signer == "" || !v.WritesIndexed() {
				// A set format 1 writer writes what older builds read:
				// an earlier set's chunks may be columnar (set format 6),
				// which a sealed header does not tell.
				return &ReuseIndex{}, nil
			}
			x, err := v.ReadIndex(ctx, ids[i])
			if err != nil {
				v.log.Warn("skipping unreadable earlier set for deduplication", "set", ids[i], "err", err)
				continue
			}
			if x.Group != groupHash(m) || x.Signer != signer || !slices.Equal(x.Recipients, v.keys.RecipientStrings()) {
				continue
			}
			if !v.packsPresent(ctx, x.ID, x.Packs) {
				continue
			}
			ix := &ReuseIndex{Set: x.ID, byTag: map[string]ChunkRef{}, tagKey: v.keys.Signing[0].tagKey()}
			err = v.EachIndexChunk(ctx, x, func(c IndexChunk) error {
				if c.Tag != "" {
					ix.byTag[c.Tag] = ChunkRef{Pack: x.Packs[c.Pack], Offset: c.Offset, Length: c.Length, SHA256: c.SHA256}
				}
				return nil
			})
			if err != nil {
				v.log.Warn("skipping unreadable earlier set for deduplication", "set", ids[i], "err", err)
				continue
			}
			v.log.Debug("deduplicating against earlier set", "set", x.ID)
			return ix, nil
		}
		ps, err := v.OpenSet(ctx, ids[i])
		if err != nil {
			v.log.Warn("skipping unreadable earlier set for deduplication", "set", ids[i], "err", err)
			continue
		}
		prev := ps.Header()
		if !sameSource(prev.Source, m.Source) || prev.Tenancy != m.Tenancy || !v.WritesIndexed() && prev.Version >= manifest.Version6 {
			continue
		}
		if !v.packsPresent(ctx, prev.ID, prev.Packs) {
			continue
		}
		ix := &ReuseIndex{Set: prev.ID, prev: ps, pages: newPageCache(ps, reusePages), global: map[string]ChunkRef{}, log: v.log.Warn}
		for _, c := range prev.Global {
			ix.global[prev.Tables[c.Table].Signature] = prevRef(prev, c)
		}
		v.log.Debug("deduplicating against earlier set", "set", prev.ID)
		return ix, nil
	}
	return &ReuseIndex{}, nil
}

// packsPresent reports whether every pack of a set exists. A set whose
// packs are gone (deleted behind tenantvault's back) is no base to build
// on: every later set would point at nothing, and WriteManifest would
// refuse them all.
func (v *Vault) packsPresent(ctx context.Context, id string, packs []string) bool {
	for _, p := range packs {
		if _, err := v.b.Stat(ctx, p); err != nil {
			v.log.Warn("not deduplicating against an earlier set whose pack cannot be found", "set", id, "pack", p, "err", err)
			return false
		}
	}
	return true
}

func sameSource(a, b manifest.Source) bool {
	if a.SystemID != "" && b.SystemID != "" {
		return a.SystemID == b.SystemID && a.Database == b.Database
	}
	return a.Host == b.Host && a.Database == b.Database
}

// Lookup returns what to pass to ChunkWriter.Finish for the chunk of
// tenant (or the global rows) of the table with the given signature: the
// earlier chunk in the same place, or for an encrypted set a reference
// that finds an earlier chunk by content. Nil means nothing to reuse.
func (ix *ReuseIndex) Lookup(tenant string, global bool, signature string) *ChunkRef {
	switch {
	case ix == nil:
		return nil
	case ix.prev != nil && global:
		if r, ok := ix.global[signature]; ok {
			return &r
		}
	case ix.prev != nil:
		// The snapshot's table workers each walk the tenants in order, so
		// consecutive lookups hit the same cached page: in effect a merge
		// with the earlier set's index, not a map of it.
		t, err := ix.pages.tenant(context.Background(), tenant)
		if err != nil {
			ix.log("not reusing chunks of an earlier set whose tenant index cannot be read", "set", ix.Set, "err", err)
			return nil
		}
		if t == nil {
			return nil
		}
		m := ix.prev.Header()
		for _, c := range t.Chunks {
			if m.Tables[c.Table].Signature == signature {
				r := prevRef(m, c)
				return &r
			}
		}
	case ix.byTag != nil:
		return &ChunkRef{find: func(digest string, size int64, keyName string) (ChunkRef, bool) {
			r, ok := ix.byTag[reuseTag(ix.tagKey, tenant, global, signature, digest, size, keyName)]
			return r, ok
		}}
	}
	return nil
}

// reusePages is how many pages of the earlier set a snapshot keeps for
// reuse lookups: a few per table worker.
const reusePages = 32

func prevRef(m *manifest.Manifest, c manifest.Chunk) ChunkRef {
	return ChunkRef{Pack: m.Packs[c.Pack], Offset: c.Offset, Length: c.Length, SHA256: c.SHA256, Size: c.Size, Digest: c.Digest}
}
