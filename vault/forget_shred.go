package vault

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
)

// Change-log segments an encrypted repository's erasure must rewrite:
// destroying the tenant's own key reaches its streams of segment version
// 2, but not what is sealed with a segment's data key, which every other
// tenant's replay needs too: the shared records (some of which forget
// attributes to the tenant, forget_shared.go), and, in segments written
// before per-tenant keys (version 1, one key per segment), the tenant's own
// stream. Such a segment is decrypted with the identity, the tenant's
// stream and records dropped, everything sealed with the segment key
// sealed again under a new one, wrapped to this side's recipients, and the
// index signed with the identity file's signing key; streams sealed with
// other tenants' own keys are copied as they are.

// PlanShredSegments finds the segments erasing tenant from an encrypted
// repository must rewrite, and what it decides about the shared records.
// It needs the identity (it reads the tenant's rows and the log).
func (v *Vault) PlanShredSegments(ctx context.Context, tenant string) (*ForgetPlan, error) {
	if !v.CanDecrypt() {
		return nil, &tenantvault.InputError{Msg: "forget reads the change log, which needs the identity file", Err: ErrNoIdentity}
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	var headers []*manifest.Manifest
	var holding []setScan
	for _, id := range ids {
		v.uncache(id)
		s, err := v.OpenSet(ctx, id)
		if errors.Is(err, repo.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("forget needs every snapshot set, and one cannot be read (nothing was changed): %w", err)
		}
		headers = append(headers, s.Header())
		t, err := s.Entry(ctx, tenant)
		s.release()
		if err != nil {
			return nil, err
		}
		if t != nil && v.TenantReadable(ctx, t) == nil {
			holding = append(holding, setScan{s: s, entry: t})
		}
	}
	streams, err := v.readStreams(ctx)
	if err != nil {
		return nil, err
	}
	verdict, err := v.attributeShared(ctx, tenant, headers, holding, streams)
	if err != nil {
		return nil, err
	}
	plan := &ForgetPlan{}
	verdict.summarize(&plan.Summary)
	for _, st := range streams {
		for _, idx := range st.segs {
			ref := SegmentRef{Stream: idx.Stream, Start: idx.Start, End: idx.End}
			drop, blank, moves := verdict.drop[ref], verdict.blank[ref], verdict.moves[ref]
			var segKeyed int64
			for _, s := range idx.Streams {
				if !s.Shared && s.Tenant == tenant && s.Key == "" {
					segKeyed += s.Length
				}
			}
			if segKeyed == 0 && len(drop)+len(blank)+len(moves) == 0 {
				continue
			}
			plan.Segments = append(plan.Segments, forgetSegment{Stream: st.stream, Start: idx.Start, End: idx.End, OldData: idx.Key(), Size: idx.Size, Drop: drop, Blank: blank, Moves: moves,
				NewData: ChangesPrefix + st.stream + "/" + fmt.Sprintf("%016x-%016x.g%d.seg", idx.Start, idx.End, dataGen(idx.Data)+1)})
			plan.Summary.Segments++
			plan.Summary.BytesCopied += idx.Size - segKeyed
			plan.Summary.BytesDeleted += idx.Size
			plan.Summary.TenantBytes += segKeyed
		}
	}
	return plan, nil
}

// CheckSegmentRewrites refuses rewriting segments under object retention:
// the old data objects, which hold the tenant's records under a key the
// identity holder can still unwrap from the old index's versions, could
// not be deleted.
func (v *Vault) CheckSegmentRewrites(plan *ForgetPlan) error {
	r, ok := repo.AsRetainer(v.b)
	if !ok || plan == nil || len(plan.Segments) == 0 {
		return nil
	}
	return &tenantvault.InputError{
		Msg: fmt.Sprintf("repository %s keeps every object under S3 Object Lock retention (%s): erasing the tenant needs %d change-log segment(s) rewritten (its records sealed with a segment's key, which destroying its own key does not reach: shared records attributed to it, or segments written before per-tenant keys), and the storage refuses to delete the old segments (and the old index versions that wrap their keys) until their retention ends",
			v.b.Location(), r.Retention(), len(plan.Segments)),
		Hint: "nothing was changed; run forget again once the retention of those segments has ended (or prune lets them expire)",
		Err:  ErrForgetLocked,
	}
}

// CryptoShredTenantWith erases tenant from an encrypted repository: the
// segments of plan (PlanShredSegments) rewritten first, journaled, then the
// tenant's keys destroyed, the old segment data deleted, the tombstone and
// audit record written. A journal left by an interrupted run is resumed
// (plan is then ignored: the tenant's keys may be gone, and with them what
// attributed its records).
func (v *Vault) CryptoShredTenantWith(ctx context.Context, tenant, reason, by string, plan *ForgetPlan) ([]string, *Tombstone, error) {
	hash := v.TenantHash(tenant)
	j, err := v.readJournal(ctx, hash)
	if err != nil {
		return nil, nil, err
	}
	if j == nil && plan != nil && len(plan.Segments) > 0 {
		if err := v.CheckSegmentRewrites(plan); err != nil {
			return nil, nil, err
		}
		if len(v.keys.Signing) == 0 {
			return nil, nil, &tenantvault.InputError{
				Msg:  "forget must rewrite change-log segments of this encrypted repository and sign their indexes, and the identity file holds no signing key; nothing was changed",
				Hint: "use the identity file tenantvault keygen wrote (it holds the signing key), or add the signing key to it",
			}
		}
		if err := v.otherJournal(ctx, hash); err != nil {
			return nil, nil, err
		}
		j = &forgetJournal{Version: tombstoneVersion, TenantHash: hash, Started: v.now().UTC(), By: by, Reason: reason, Rounds: []*ForgetPlan{plan}}
		if tomb, err := v.tombstone(ctx, hash); err != nil {
			return nil, nil, err
		} else if tomb == nil {
			// Restores refuse the tenant from here on.
			tomb = &Tombstone{Version: tombstoneVersion, TenantHash: hash, State: TombstoneErasing, Requested: j.Started, Reason: reason, By: by, Method: "crypto-shred"}
			if err := v.putJSON(ctx, TombstoneKey(hash), tomb); err != nil {
				return nil, nil, fmt.Errorf("write tombstone: %w", err)
			}
		}
		if err := v.putJSON(ctx, journalKey(hash), j); err != nil {
			return nil, nil, fmt.Errorf("write forget journal: %w", err)
		}
	}
	var done *ForgetDone
	if j != nil {
		done = &ForgetDone{}
		for _, p := range j.Rounds {
			for _, s := range p.Segments {
				if _, err := v.rewriteSegment(ctx, tenant, s, true); err != nil {
					return nil, nil, err
				}
			}
			done.Segments += len(p.Segments)
			done.BytesCopied += p.Summary.BytesCopied
			done.TenantBytes += p.Summary.TenantBytes
			done.SharedDropped += p.Summary.SharedDropped
			done.SharedBlanked += p.Summary.SharedBlanked
			done.MovesBlanked += p.Summary.MovesBlanked
		}
		done.SharedRecords, done.Truncates = j.Rounds[0].Summary.SharedUndecided, j.Rounds[0].Summary.Truncates
	}
	// The catalogs name the tenant (in the clear to the identity holder).
	if err := v.EraseFromCatalogs(ctx, tenant, ""); err != nil {
		return nil, nil, err
	}
	destroyed, err := v.DestroyTenantKeys(ctx, tenant)
	if err != nil {
		return nil, nil, err
	}
	if j != nil {
		deleted, err := v.collectSegments(ctx, j, func(string, ...any) {})
		done.BytesDeleted = deleted
		if err != nil {
			return nil, nil, err
		}
	}
	tomb, err := v.RecordErased(ctx, tenant, reason, by, "crypto-shred", done)
	if err != nil {
		return nil, nil, err
	}
	if j != nil {
		if err := v.b.Delete(ctx, journalKey(hash)); err != nil {
			return nil, nil, fmt.Errorf("delete forget journal (the erasure is complete): %w", err)
		}
	}
	return destroyed, tomb, nil
}

// collectSegments deletes every data object of the journal's segments but
// the one each index names now (found by listing: a resumed forget cannot
// know which generation an interrupted one wrote); it returns the bytes
// deleted.
func (v *Vault) collectSegments(ctx context.Context, j *forgetJournal, note func(string, ...any)) (int64, error) {
	segs := map[SegmentRef]bool{}
	for _, p := range j.Rounds {
		for _, s := range p.Segments {
			segs[SegmentRef{Stream: s.Stream, Start: s.Start, End: s.End}] = true
		}
	}
	var deleted int64
	for ref := range segs {
		idx, err := v.ReadSegmentIndex(ctx, ref)
		if err != nil {
			return deleted, err
		}
		var old []repo.ObjectInfo
		prefix := segmentKey(ref.Stream, ref.Start, ref.End, "")
		if err := v.b.List(ctx, prefix, func(o repo.ObjectInfo) error {
			if strings.HasSuffix(o.Key, ".seg") && (idx.Size == 0 || o.Key != idx.Key()) {
				old = append(old, o)
			}
			return nil
		}); err != nil {
			return deleted, err
		}
		for _, o := range old {
			if err := v.b.Delete(ctx, o.Key); err != nil {
				return deleted, fmt.Errorf("delete %s: %w", o.Key, err)
			}
			deleted += o.Size
			note("deleted %s", o.Key)
		}
	}
	return deleted, nil
}
