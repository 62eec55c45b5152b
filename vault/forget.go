package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
)

// Erasing a tenant from a plaintext repository (docs/FORMAT.md, "Erased
// tenants"), restic's rewrite applied to one tenant:
//
//  1. a tombstone (state "erasing") and a journal holding the plan;
//  2. new packs holding every chunk of the old ones except the tenant's,
//     their stored bytes copied verbatim (checksums unchanged), under
//     generation-suffixed keys beside the old packs;
//  3. every set that holds the tenant or points into such a pack: a new
//     tenant index (generation-suffixed key) without the tenant and with
//     the chunks moved to the new packs, then the manifest, replaced in
//     place: the one atomic commit point of each set, which keeps its ID;
//  4. every change-log segment with a frame of the tenant: a new data
//     object without it, then the segment index, replaced in place;
//  5. once no manifest references them (checked afresh), the old packs,
//     indexes and segment data are deleted: a snapshot that reused an old
//     pack meanwhile gets a further round of 2-3 first;
//  6. the tombstone (state "erased"), an audit record, the journal deleted.
//
// Every step is idempotent and checks what is done, so a forget that is
// interrupted anywhere leaves a consistent repository (every manifest
// points at objects that exist) and a rerun completes it.

// PlanSummary is what forget shows before it changes anything.
type PlanSummary struct {
	// SetsHolding are the sets that hold the tenant (pre-restore sets
	// included); PreRestore counts those of kind pre-restore.
	SetsHolding []string `json:"sets_holding"`
	PreRestore  int      `json:"pre_restore_sets"`
	// SetsRewritten are all sets whose manifest is replaced: those that
	// hold the tenant and those whose chunks share a pack with its chunks.
	SetsRewritten []string `json:"sets_rewritten"`
	Packs         int      `json:"packs_rewritten"`
	PacksDropped  int      `json:"packs_deleted_without_replacement"`
	Segments      int      `json:"segments_rewritten"`
	// BytesCopied are copied into new packs and segment data objects;
	// BytesDeleted are the old objects deleted afterwards; TenantBytes
	// the tenant's own stored bytes among them.
	BytesCopied  int64 `json:"bytes_copied"`
	BytesDeleted int64 `json:"bytes_deleted"`
	TenantBytes  int64 `json:"tenant_bytes"`
	// SharedRecords are the change log's records whose tenant was unknown
	// at capture (and every TRUNCATE). Forget attributes them
	// (forget_shared.go): SharedDropped are the tenant's and removed;
	// SharedUndecided may be the tenant's and are kept (not erased:
	// UndecidedWhy says why); Truncates hold no row data and are kept.
	SharedRecords   int `json:"shared_change_records"`
	SharedDropped   int `json:"shared_change_records_dropped"`
	SharedUndecided int `json:"shared_change_records_undecided"`
	// SharedBlanked are records of rows that moved between the tenant and
	// another: kept for the other, the tenant's side blanked.
	SharedBlanked int `json:"shared_change_records_blanked,omitempty"`
	// MovesBlanked are move records in other tenants' streams of rows
	// that moved between them and the tenant, both rows blanked but for
	// the key.
	MovesBlanked int           `json:"move_records_blanked,omitempty"`
	UndecidedWhy *UndecidedWhy `json:"shared_change_records_undecided_why,omitempty"`
	Truncates    int           `json:"truncate_records"`
}

// UndecidedWhy counts the shared records forget kept because it could not
// tell whether they are the tenant's, by reason.
type UndecidedWhy struct {
	// KeyHeldByOthers: a key the record references passed between the
	// tenant and another tenant inside the record's transaction, on the
	// same side of the record (its old or its new row).
	KeyHeldByOthers int `json:"key_also_held_by_others,omitempty"`
	// OwnerUnknown: who held a key the record references at its LSN is
	// not known (only partial sets before it, or a row of a table without
	// a scope took the key).
	OwnerUnknown int `json:"key_owner_unknown,omitempty"`
	// BeforeAnySet is no longer used (such records are dropped: no
	// restore can replay them); kept for plans and tombstones written
	// before.
	BeforeAnySet int `json:"before_any_set_the_log_continues,omitempty"`
	// NoScope: its table is not scoped through a foreign key in any set
	// (or the record lacks the key's columns).
	NoScope int `json:"table_not_scoped_through_a_foreign_key,omitempty"`
}

// Empty reports whether the plan changes nothing.
func (p *PlanSummary) Empty() bool {
	return len(p.SetsRewritten) == 0 && p.Segments == 0
}

// ForgetPlan is one round of an erasure. It names the tenant only by its
// hash: a resumed forget is given the tenant ID again.
type ForgetPlan struct {
	Sets     []forgetSet     `json:"sets"`
	Packs    []forgetPack    `json:"packs"`
	Segments []forgetSegment `json:"segments"`
	Summary  PlanSummary     `json:"summary"`
}

type forgetSet struct {
	ID string `json:"id"`
	// Gen is the generation the rewrite would write as planned; the
	// rewrite takes the manifest's generation as it finds it, plus one.
	Gen   int  `json:"gen"`
	Holds bool `json:"holds"`
}

type forgetPack struct {
	Old  string `json:"old"`
	New  string `json:"new"` // "" when nothing else remains in it
	Size int64  `json:"size"`
	// Keep are the chunks copied, [offset, length] in the old pack, by
	// offset; each lands at the sum of the lengths before it.
	Keep [][2]int64 `json:"keep"`
}

type forgetSegment struct {
	Stream  string `json:"stream"`
	Start   uint64 `json:"start"`
	End     uint64 `json:"end"`
	OldData string `json:"old_data"`
	NewData string `json:"new_data"` // "" when nothing else remains
	Size    int64  `json:"size"`
	// Drop are the shared records attributed to the tenant; Blank those
	// of rows that moved between it and another (its side blanked).
	Drop  []RecordID    `json:"drop,omitempty"`
	Blank []BlankRecord `json:"blank,omitempty"`
	// Moves are other tenants' move records of rows that moved between
	// them and the tenant, blanked (by stream: the tenant's hash).
	Moves []BlankRecord `json:"moves,omitempty"`
}

// forgetJournal is the plan of an erasure in progress, at
// forget/<tenant hash>.json: rounds run in order, each idempotent.
type forgetJournal struct {
	Version    int           `json:"version"`
	TenantHash string        `json:"tenant_hash"`
	Started    time.Time     `json:"started"`
	By         string        `json:"by"`
	Reason     string        `json:"reason,omitempty"`
	Rounds     []*ForgetPlan `json:"rounds"`
}

// ErrForgetLocked is wrapped when forget would have to delete objects the
// storage keeps under retention.
var ErrForgetLocked = errors.New("repository under object retention")

// ErrForgetEncrypted is wrapped when a rewrite is asked of an encrypted
// repository, which is erased by destroying keys (CryptoShredTenant).
var ErrForgetEncrypted = errors.New("an encrypted repository is erased by destroying the tenant's own data keys, not by rewriting")

func (v *Vault) refuseRewrite() error {
	return &tenantvault.InputError{Msg: ErrForgetEncrypted.Error(), Hint: "use CryptoShredPlan and CryptoShredTenant", Err: ErrForgetEncrypted}
}

// ShredPlan is what erasing a tenant from an encrypted repository does.
type ShredPlan struct {
	// Sets hold the tenant; SetKeyed are those of them that seal its
	// chunks with the set's data key (set format 1, or written before
	// per-tenant keys), which destroying its keys does not reach.
	Sets, SetKeyed []string
	// Keys are the tenant's key objects, all to be deleted.
	Keys []string
}

// CryptoShredPlan finds what erasing tenant by its keys destroys and what
// it would not reach. It needs an identity (it reads the sets' entries).
func (v *Vault) CryptoShredPlan(ctx context.Context, tenant string) (*ShredPlan, error) {
	if !v.CanDecrypt() {
		return nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("repository %s is encrypted: forget reads every set to find the tenant's keys, which needs the identity file", v.b.Location()),
			Hint: "give --identity FILE (or TENANTVAULT_IDENTITY); nothing was changed",
			Err:  ErrNoIdentity,
		}
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	hist, err := v.tenantHistory(ctx, ids, tenant, false) // the keys: from the sets themselves
	if err != nil {
		return nil, err
	}
	p := &ShredPlan{}
	for _, h := range hist {
		p.Sets = append(p.Sets, h.Set.ID)
		if h.Key == "" && h.Tables > 0 {
			p.SetKeyed = append(p.SetKeyed, h.Set.ID)
		}
	}
	if p.Keys, err = v.TenantKeys(ctx, tenant); err != nil {
		return nil, err
	}
	return p, nil
}

// CryptoShredTenant erases tenant from an encrypted repository: it destroys
// every key object of the tenant (DestroyTenantKeys), so that no set and no
// change-log stream sealed with them yields its rows to anyone, then writes
// the tombstone and the audit record. Nothing large is rewritten. It is
// safe to run again.
func (v *Vault) CryptoShredTenant(ctx context.Context, tenant, reason, by string) ([]string, *Tombstone, error) {
	return v.CryptoShredTenantWith(ctx, tenant, reason, by, nil)
}

// CheckForgettable refuses repositories forget cannot rewrite: those under
// object retention (encrypted ones are erased by CryptoShredTenant).
func (v *Vault) CheckForgettable() error {
	if r, ok := repo.AsRetainer(v.b); ok {
		return &tenantvault.InputError{
			Msg: fmt.Sprintf("repository %s keeps every object under S3 Object Lock retention (%s): forget would have to delete the packs, indexes and change-log segments that hold the tenant, and the storage refuses that until each object's retention ends",
				v.b.Location(), r.Retention()),
			Hint: "nothing was changed; retention exists so that no one can delete backups early. Erase after the retention of the sets that hold the tenant has ended (retention keeps them immutable: prune collects them then), or keep such tenants in an encrypted repository, where erasing destroys a key instead of rewriting data",
			Err:  ErrForgetLocked,
		}
	}
	return nil
}

type span struct{ off, length int64 }

type setScan struct {
	s     *Set
	entry *manifest.Tenant
}

// PlanForget computes what erasing tenant from this repository rewrites,
// reading every set's header, the tenant's entry in each, the whole index
// of the sets that must be rewritten and every segment index. tainted are
// old packs of earlier rounds still on the storage: sets that point into
// them are rewritten too. Nothing is written.
func (v *Vault) PlanForget(ctx context.Context, tenant string, round int, tainted map[string]bool) (*ForgetPlan, error) {
	if v.cfg.Encrypted() {
		return nil, v.refuseRewrite()
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		v.uncache(id) // another process may have rewritten it
	}
	scans, err := parallelReadN(ctx, ids, 16, func(ctx context.Context, id string) (setScan, error) {
		s, err := v.OpenSet(ctx, id)
		if errors.Is(err, repo.ErrNotFound) {
			return setScan{}, nil
		}
		if err != nil {
			return setScan{}, err
		}
		defer s.release()
		t, err := s.Entry(ctx, tenant)
		return setScan{s: s, entry: t}, err
	})
	if err != nil {
		return nil, fmt.Errorf("forget needs every snapshot set, and one cannot be read (nothing was changed): %w", err)
	}
	plan := &ForgetPlan{}
	sum := &plan.Summary
	drop := map[string][]span{} // pack -> the tenant's chunks in it
	for _, sc := range scans {
		if sc.entry == nil {
			continue
		}
		m := sc.s.Header()
		sum.SetsHolding = append(sum.SetsHolding, m.ID)
		if m.Kind == manifest.KindPreRestore {
			sum.PreRestore++
		}
		for _, c := range sc.entry.Chunks {
			drop[m.Packs[c.Pack]] = append(drop[m.Packs[c.Pack]], span{c.Offset, c.Length})
		}
	}
	affected := func(p string) bool { _, ok := drop[p]; return ok || tainted[p] }
	keep := map[string]map[span]bool{}
	for p := range drop {
		keep[p] = map[span]bool{}
	}
	for p := range tainted {
		keep[p] = map[span]bool{}
	}
	for _, sc := range scans {
		if sc.s == nil {
			continue
		}
		m := sc.s.Header()
		touches := sc.entry != nil
		for _, p := range m.Packs {
			touches = touches || affected(p)
		}
		if !touches {
			continue
		}
		plan.Sets = append(plan.Sets, forgetSet{ID: m.ID, Gen: m.Generation + 1, Holds: sc.entry != nil})
		sum.SetsRewritten = append(sum.SetsRewritten, m.ID)
		add := func(c manifest.Chunk) {
			if p := m.Packs[c.Pack]; affected(p) {
				keep[p][span{c.Offset, c.Length}] = true
			}
		}
		for _, c := range m.Global {
			add(c)
		}
		err := sc.s.Tenants(ctx, func(t *manifest.Tenant) error {
			if t.ID != tenant {
				for _, c := range t.Chunks {
					add(c)
				}
			}
			return nil
		})
		sc.s.release()
		if err != nil {
			return nil, fmt.Errorf("forget: read set %s: %w", m.ID, err)
		}
	}
	packKeys := make([]string, 0, len(keep))
	for p := range keep {
		packKeys = append(packKeys, p)
	}
	sort.Strings(packKeys)
	for _, p := range packKeys {
		info, err := v.b.Stat(ctx, p)
		if errors.Is(err, repo.ErrNotFound) {
			if tainted[p] {
				continue
			}
			return nil, tenantvault.Integrityf("pack %s, which holds chunks of the tenant, is missing: run verify", p)
		}
		if err != nil {
			return nil, err
		}
		spans := make([]span, 0, len(keep[p]))
		for s := range keep[p] {
			spans = append(spans, s)
		}
		sort.Slice(spans, func(i, j int) bool { return spans[i].off < spans[j].off })
		dropped := append([]span(nil), drop[p]...)
		sort.Slice(dropped, func(i, j int) bool { return dropped[i].off < dropped[j].off })
		fp := forgetPack{Old: p, Size: info.Size}
		var kept int64
		for i, s := range spans {
			if i > 0 && spans[i-1].off+spans[i-1].length > s.off {
				return nil, tenantvault.Integrityf("pack %s: chunks at %d and %d overlap", p, spans[i-1].off, s.off)
			}
			if s.off+s.length > info.Size {
				return nil, tenantvault.Integrityf("pack %s: a chunk at %d+%d lies past its end (%d bytes)", p, s.off, s.length, info.Size)
			}
			fp.Keep = append(fp.Keep, [2]int64{s.off, s.length})
			kept += s.length
		}
		for _, d := range dropped {
			if keep[p][d] {
				return nil, fmt.Errorf("pack %s: the chunk at %d+%d belongs to the tenant and to another entry; refusing to guess", p, d.off, d.length)
			}
		}
		if len(fp.Keep) > 0 {
			fp.New = packKeyGen(p, round)
		} else {
			sum.PacksDropped++
		}
		plan.Packs = append(plan.Packs, fp)
		sum.Packs++
		sum.BytesCopied += kept
		sum.BytesDeleted += info.Size
		for _, d := range dropped {
			sum.TenantBytes += d.length
		}
	}
	var headers []*manifest.Manifest
	var holding []setScan
	for _, sc := range scans {
		if sc.s != nil {
			headers = append(headers, sc.s.Header())
			if sc.entry != nil {
				holding = append(holding, sc)
			}
		}
	}
	if err := v.planSegments(ctx, tenant, plan, headers, holding); err != nil {
		return nil, err
	}
	return plan, nil
}

// planSegments adds the change-log segments that hold a frame of tenant
// or shared records attributed to it.
func (v *Vault) planSegments(ctx context.Context, tenant string, plan *ForgetPlan, headers []*manifest.Manifest, holding []setScan) error {
	streams, err := v.readStreams(ctx)
	if err != nil {
		return err
	}
	verdict, err := v.attributeShared(ctx, tenant, headers, holding, streams)
	if err != nil {
		return err
	}
	verdict.summarize(&plan.Summary)
	for _, st := range streams {
		for _, idx := range st.segs {
			ref := SegmentRef{Stream: idx.Stream, Start: idx.Start, End: idx.End}
			drop, blank, moves := verdict.drop[ref], verdict.blank[ref], verdict.moves[ref]
			var tenantBytes, rest int64
			for _, s := range idx.Streams {
				switch {
				case !s.Shared && s.Tenant == tenant:
					tenantBytes += s.Length
				default:
					rest += s.Length
				}
			}
			if tenantBytes == 0 && len(drop)+len(blank)+len(moves) == 0 {
				continue
			}
			fs := forgetSegment{Stream: st.stream, Start: idx.Start, End: idx.End, OldData: idx.Key(), Size: idx.Size, Drop: drop, Blank: blank, Moves: moves}
			if rest > 0 {
				fs.NewData = ChangesPrefix + st.stream + "/" + fmt.Sprintf("%016x-%016x.g%d.seg", idx.Start, idx.End, dataGen(idx.Data)+1)
			}
			plan.Segments = append(plan.Segments, fs)
			plan.Summary.Segments++
			plan.Summary.BytesCopied += rest
			plan.Summary.BytesDeleted += idx.Size
			plan.Summary.TenantBytes += tenantBytes
		}
	}
	return nil
}

// readStreams reads every segment index of every change stream.
func (v *Vault) readStreams(ctx context.Context) ([]segmentStreams, error) {
	names, err := v.ListStreams(ctx)
	if err != nil {
		return nil, err
	}
	var out []segmentStreams
	for _, stream := range names {
		refs, err := v.ListSegments(ctx, stream)
		if err != nil {
			return nil, err
		}
		st := segmentStreams{stream: stream}
		for _, ref := range refs {
			idx, err := v.ReadSegmentIndex(ctx, ref)
			if err != nil {
				return nil, fmt.Errorf("forget needs every change-log segment index (nothing was changed): %w", err)
			}
			st.segs = append(st.segs, idx)
		}
		out = append(out, st)
	}
	return out, nil
}

// summarize puts the verdict's counts into a plan summary.
func (vd *sharedVerdict) summarize(s *PlanSummary) {
	s.SharedRecords += vd.total
	s.SharedDropped += vd.dropped
	s.SharedBlanked += vd.blanked
	s.MovesBlanked += vd.movesN
	s.SharedUndecided += vd.undecided
	s.Truncates += vd.truncates
	if vd.undecided > 0 {
		s.UndecidedWhy = &UndecidedWhy{KeyHeldByOthers: vd.other, OwnerUnknown: vd.unknown, NoScope: vd.unscoped}
	}
}

// dataGen is the generation in a segment's data name ("" is 0).
func dataGen(data string) int {
	if i := strings.LastIndex(data, ".g"); i >= 0 {
		n, _ := strconv.Atoi(strings.TrimSuffix(data[i+2:], ".seg"))
		return n
	}
	return 0
}

// packKeyGen names the rewrite of pack p in round r of an erasure:
// packs/<set>/<n>.pack becomes packs/<set>/<n>.g1.pack, .g<k>.pack
// becomes .g<k+r>.pack. It stays under its set's prefix, so GC reasons
// about it as about the pack it replaces.
func packKeyGen(p string, r int) string {
	base := strings.TrimSuffix(p, ".pack")
	gen := 0
	if i := strings.LastIndex(base, ".g"); i >= 0 && !strings.Contains(base[i:], "/") {
		if n, err := strconv.Atoi(base[i+2:]); err == nil {
			base, gen = base[:i], n
		}
	}
	return fmt.Sprintf("%s.g%d.pack", base, gen+r)
}

// uncache drops what this vault remembers of set id.
func (v *Vault) uncache(id string) {
	v.mcache.Delete(id)
	v.icache.Delete(id)
	v.sets.Delete(id)
}

// ForgetOptions tune Forget.
type ForgetOptions struct {
	Reason string
	By     string
	// TempDir holds a pack while it is copied; "" means the system's.
	TempDir string
	// Progress, when set, hears of each step as it is done.
	Progress func(step string)
}

// ForgetResult is what an erasure did.
type ForgetResult struct {
	Tombstone *Tombstone
	Done      ForgetDone
	Rounds    int
}

// maxForgetRounds bounds how often forget plans again because snapshots
// wrote sets while it ran.
const maxForgetRounds = 4

// Forget erases tenant: it runs first (or, resuming, the journal's rounds),
// then plans again until nothing holds the tenant or points into an old
// pack, deletes the old objects, and records the tombstone and an audit
// record. Call CheckForgettable first; first must be PlanForget's round 1
// plan (nil when resuming from a journal).
func (v *Vault) Forget(ctx context.Context, tenant string, first *ForgetPlan, o ForgetOptions) (*ForgetResult, error) {
	if v.cfg.Encrypted() {
		return nil, v.refuseRewrite()
	}
	if err := v.CheckForgettable(); err != nil {
		return nil, err
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	note := func(format string, args ...any) {
		if o.Progress != nil {
			o.Progress(fmt.Sprintf(format, args...))
		}
	}
	hash := v.TenantHash(tenant)
	j, err := v.readJournal(ctx, hash)
	if err != nil {
		return nil, err
	}
	tomb, err := v.tombstone(ctx, hash)
	if err != nil {
		return nil, err
	}
	now := v.now().UTC()
	if j == nil {
		if first == nil {
			return nil, errors.New("forget: no plan and no journal to resume")
		}
		if err := v.otherJournal(ctx, hash); err != nil {
			return nil, err
		}
		j = &forgetJournal{Version: tombstoneVersion, TenantHash: hash, Started: now, By: o.By, Reason: o.Reason, Rounds: []*ForgetPlan{first}}
	}
	if tomb == nil || tomb.State != TombstoneErasing {
		// The tombstone first: from here on restores refuse the tenant,
		// even while its data is still being removed.
		requested := j.Started
		if tomb != nil {
			// Erased before, and snapshotted again since: the tenant was
			// erased on the first date.
			requested = tomb.Requested
		}
		tomb = &Tombstone{Version: tombstoneVersion, TenantHash: hash, State: TombstoneErasing, Requested: requested, Reason: j.Reason, By: j.By, Method: "rewrite"}
		if err := v.putJSON(ctx, TombstoneKey(hash), tomb); err != nil {
			return nil, fmt.Errorf("write tombstone: %w", err)
		}
		note("tombstone written: restores refuse the tenant from now on")
	}
	if err := v.putJSON(ctx, journalKey(hash), j); err != nil {
		return nil, fmt.Errorf("write forget journal: %w", err)
	}
	// Catalogs hold the tenant's ID and numbers for the sets they cover:
	// they go before the sets are rewritten, and again after (a snapshot
	// may have folded a set in meanwhile); later snapshots rebuild them.
	var firstSets []string
	for _, s := range j.Rounds[0].Sets {
		firstSets = append(firstSets, s.ID)
	}
	if err := v.DropCatalogs(ctx, firstSets); err != nil {
		return nil, err
	}
	res := &ForgetResult{}
	held := map[string]bool{}
	for round := 1; ; round++ {
		if round > len(j.Rounds) {
			if round > maxForgetRounds {
				return nil, fmt.Errorf("snapshots kept writing sets that hold the tenant or reuse its old packs through %d rounds; stop the snapshots (the agent) and rerun forget to complete the erasure", maxForgetRounds)
			}
			tainted, err := v.taintedPacks(ctx, j)
			if err != nil {
				return nil, err
			}
			p, err := v.PlanForget(ctx, tenant, round, tainted)
			if err != nil {
				return nil, err
			}
			if p.Summary.Empty() {
				break
			}
			note("round %d: %d set(s) written while forget ran need rewriting too", round, len(p.Sets))
			j.Rounds = append(j.Rounds, p)
			if err := v.putJSON(ctx, journalKey(hash), j); err != nil {
				return nil, fmt.Errorf("write forget journal: %w", err)
			}
		}
		p := j.Rounds[round-1]
		if err := v.runRound(ctx, tenant, p, o, note); err != nil {
			return nil, err
		}
		for _, s := range p.Sets {
			if s.Holds {
				held[s.ID] = true
			}
		}
		res.Done.Segments += len(p.Segments)
		res.Done.Packs += len(p.Packs)
		res.Done.PacksDropped += p.Summary.PacksDropped
		res.Done.BytesCopied += p.Summary.BytesCopied
		res.Done.TenantBytes += p.Summary.TenantBytes
		res.Done.SharedDropped += p.Summary.SharedDropped
		res.Done.SharedBlanked += p.Summary.SharedBlanked
		res.Done.MovesBlanked += p.Summary.MovesBlanked
	}
	// What stays undecided is judged by the first round, which still saw
	// the tenant's rows (later rounds plan from what is left).
	res.Done.SharedRecords = j.Rounds[0].Summary.SharedUndecided
	res.Done.Truncates = j.Rounds[0].Summary.Truncates
	res.Rounds = len(j.Rounds)
	sets := map[string]bool{}
	for _, p := range j.Rounds {
		for _, s := range p.Sets {
			sets[s.ID] = true
		}
	}
	res.Done.Sets, res.Done.SetsHeld = len(sets), len(held)
	if err := v.DropCatalogs(ctx, slices.Collect(maps.Keys(sets))); err != nil {
		return nil, err
	}
	deleted, err := v.collectForgotten(ctx, j, note)
	res.Done.BytesDeleted = deleted
	if err != nil {
		return nil, err
	}
	tomb.State, tomb.Completed, tomb.Done = TombstoneErased, v.now().UTC(), &res.Done
	if err := v.putJSON(ctx, TombstoneKey(hash), tomb); err != nil {
		return nil, fmt.Errorf("write tombstone: %w", err)
	}
	rec := &AuditRecord{At: tomb.Completed, Action: "forget", TenantHash: hash, Reason: j.Reason, By: o.By, Outcome: TombstoneErased, Plan: j.Rounds[0].Summary, Done: &res.Done}
	if err := v.WriteAudit(ctx, rec); err != nil {
		return nil, err
	}
	if err := v.b.Delete(ctx, journalKey(hash)); err != nil {
		return nil, fmt.Errorf("delete forget journal (the erasure is complete): %w", err)
	}
	note("erased")
	res.Tombstone = tomb
	return res, nil
}

// PendingForget reports whether an erasure of tenant was started and not
// completed (a journal exists): rerunning forget resumes it.
func (v *Vault) PendingForget(ctx context.Context, tenant string) (bool, error) {
	j, err := v.readJournal(ctx, v.TenantHash(tenant))
	return j != nil, err
}

func (v *Vault) readJournal(ctx context.Context, hash string) (*forgetJournal, error) {
	var j forgetJournal
	err := v.getJSON(ctx, journalKey(hash), &j)
	if errors.Is(err, repo.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read forget journal: %w", err)
	}
	if j.TenantHash != hash || len(j.Rounds) == 0 {
		return nil, tenantvault.Integrityf("forget journal %s is damaged", journalKey(hash))
	}
	return &j, nil
}

// otherJournal refuses to start while another tenant's erasure is
// unfinished: both could rewrite the same pack into the same new key.
func (v *Vault) otherJournal(ctx context.Context, hash string) error {
	var other []string
	err := v.b.List(ctx, journalPrefix, func(o repo.ObjectInfo) error {
		if o.Key != journalKey(hash) {
			other = append(other, o.Key)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(other) > 0 {
		var j forgetJournal
		desc := other[0]
		if v.getJSON(ctx, other[0], &j) == nil {
			desc = fmt.Sprintf("%s, started %s by %s", other[0], j.Started.Format(time.RFC3339), j.By)
		}
		return &tenantvault.InputError{
			Msg:  fmt.Sprintf("another tenant's erasure is not complete (%s); nothing was changed", desc),
			Hint: "rerun tenantvault forget for that tenant to complete it first (forget --status lists erasures in progress)",
		}
	}
	return nil
}

// taintedPacks are the old packs of the journal's rounds still stored.
func (v *Vault) taintedPacks(ctx context.Context, j *forgetJournal) (map[string]bool, error) {
	out := map[string]bool{}
	for _, p := range j.Rounds {
		for _, fp := range p.Packs {
			if _, err := v.b.Stat(ctx, fp.Old); err == nil {
				out[fp.Old] = true
			} else if !errors.Is(err, repo.ErrNotFound) {
				return nil, err
			}
		}
	}
	return out, nil
}

// runRound does steps 2 to 4 of one plan, skipping what is done.
func (v *Vault) runRound(ctx context.Context, tenant string, p *ForgetPlan, o ForgetOptions, note func(string, ...any)) error {
	moved := map[string]*packMove{}
	for i := range p.Packs {
		fp := &p.Packs[i]
		mv := &packMove{new: fp.New, at: map[int64]span{}}
		var n int64
		for _, k := range fp.Keep {
			mv.at[k[0]] = span{n, k[1]}
			n += k[1]
		}
		moved[fp.Old] = mv
		if fp.New == "" {
			continue
		}
		if err := v.copyPack(ctx, fp, n, o.TempDir); err != nil {
			return err
		}
		note("pack %s rewritten as %s (%d of %d bytes kept)", fp.Old, fp.New, n, fp.Size)
	}
	for _, s := range p.Sets {
		done, err := v.rewriteSet(ctx, tenant, s, moved, o.TempDir)
		if err != nil {
			return err
		}
		if done {
			note("set %s rewritten", s.ID)
		}
	}
	for _, s := range p.Segments {
		done, err := v.rewriteSegment(ctx, tenant, s, false)
		if err != nil {
			return err
		}
		if done {
			note("change-log segment %s rewritten", s.OldData)
		}
	}
	return nil
}

type packMove struct {
	new string
	at  map[int64]span // old offset -> new offset and length
}

// copyPack writes the new pack of fp unless it is stored already.
func (v *Vault) copyPack(ctx context.Context, fp *forgetPack, size int64, tempDir string) error {
	if info, err := v.b.Stat(ctx, fp.New); err == nil {
		if info.Size != size {
			return tenantvault.Integrityf("pack %s exists with %d bytes, forget expected %d: not overwriting it", fp.New, info.Size, size)
		}
		return nil
	} else if !errors.Is(err, repo.ErrNotFound) {
		return err
	}
	rc, err := v.b.Get(ctx, fp.Old, 0, -1)
	if errors.Is(err, repo.ErrNotFound) {
		return tenantvault.Integrityf("pack %s is missing and its rewrite %s was never stored", fp.Old, fp.New)
	}
	if err != nil {
		return fmt.Errorf("read pack %s: %w", fp.Old, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(tempDir, "tenantvault-forget-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var pos int64
	for _, k := range fp.Keep {
		if _, err := io.CopyN(io.Discard, rc, k[0]-pos); err != nil {
			return fmt.Errorf("read pack %s: %w", fp.Old, err)
		}
		if _, err := io.CopyN(f, rc, k[1]); err != nil {
			return fmt.Errorf("read pack %s: %w", fp.Old, err)
		}
		pos = k[0] + k[1]
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := v.b.Put(ctx, fp.New, f, size); err != nil {
		return fmt.Errorf("write pack %s: %w", fp.New, err)
	}
	return nil
}

// rewriteSet replaces set s's manifest (and tenant index) unless it is at
// the plan's generation already; a set pruned meanwhile is skipped.
func (v *Vault) rewriteSet(ctx context.Context, tenant string, fs forgetSet, moved map[string]*packMove, tempDir string) (bool, error) {
	v.uncache(fs.ID)
	set, err := v.OpenSet(ctx, fs.ID)
	if err != nil {
		var ie *tenantvault.InputError
		if errors.As(err, &ie) {
			if _, serr := v.b.Stat(ctx, ManifestKey(fs.ID)); errors.Is(serr, repo.ErrNotFound) {
				return false, nil // purged meanwhile: nothing left to rewrite
			}
		}
		return false, err
	}
	old := set.Header()
	// Done when the set neither holds the tenant nor points into a pack
	// this round replaces: judged from the set as it is, so that a plan
	// made before another erasure rewrote the set is still applied right.
	touches := false
	for _, p := range old.Packs {
		_, ok := moved[p]
		touches = touches || ok
	}
	if !touches {
		t, err := set.Entry(ctx, tenant)
		set.release()
		if err != nil {
			return false, err
		}
		if t == nil {
			return false, nil
		}
	}
	m := *old
	m.Generation, m.Tenants = old.Generation+1, nil
	// The packs: moved ones renamed (or dropped when nothing remains),
	// indexes renumbered in the order the old list had.
	newIndex := make([]int, len(old.Packs))
	m.Packs = nil
	for i, p := range old.Packs {
		key := p
		if mv, ok := moved[p]; ok {
			key = mv.new
		}
		newIndex[i] = -1
		if key != "" {
			newIndex[i] = len(m.Packs)
			m.Packs = append(m.Packs, key)
		}
	}
	remap := func(c manifest.Chunk) (manifest.Chunk, error) {
		p := old.Packs[c.Pack]
		if mv, ok := moved[p]; ok {
			to, ok := mv.at[c.Offset]
			if !ok || to.length != c.Length {
				return c, fmt.Errorf("set %s: its chunk at %s:%d+%d is not in forget's plan (was the set written while forget ran?); rerun forget", fs.ID, p, c.Offset, c.Length)
			}
			c.Offset = to.off
		}
		if newIndex[c.Pack] < 0 {
			return c, fmt.Errorf("set %s: a chunk points into %s, which forget drops", fs.ID, p)
		}
		c.Pack = newIndex[c.Pack]
		return c, nil
	}
	m.Global = make([]manifest.Chunk, len(old.Global))
	for i, c := range old.Global {
		if m.Global[i], err = remap(c); err != nil {
			return false, err
		}
	}
	var removed *manifest.Tenant
	each := func(t *manifest.Tenant) (*manifest.Tenant, error) {
		if t.ID == tenant {
			cp := *t
			removed = &cp
			return nil, nil
		}
		nt := *t
		nt.Chunks = make([]manifest.Chunk, len(t.Chunks))
		for i, c := range t.Chunks {
			if nt.Chunks[i], err = remap(c); err != nil {
				return nil, err
			}
		}
		return &nt, nil
	}
	if old.Index == nil {
		for i := range old.Tenants {
			nt, err := each(&old.Tenants[i])
			if err != nil {
				return false, err
			}
			if nt != nil {
				m.Tenants = append(m.Tenants, *nt)
			}
		}
		if m.Tenants == nil {
			m.Tenants = []manifest.Tenant{}
		}
	} else {
		w, err := v.NewIndexWriter(fs.ID, tempDir)
		if err != nil {
			return false, err
		}
		defer w.Close()
		// A leftover of an interrupted attempt at this key is referenced
		// by no manifest: overwriting it is safe.
		w.key = indexKeyGen(fs.ID, m.Generation)
		err = set.Tenants(ctx, func(t *manifest.Tenant) error {
			nt, err := each(t)
			if err != nil || nt == nil {
				return err
			}
			return w.Add(nt)
		})
		set.release()
		if err != nil {
			return false, err
		}
		if m.Index, _, err = w.finish(ctx, &m); err != nil {
			return false, err
		}
	}
	if removed != nil {
		m.Erased++
		st := &m.Stats
		st.Tenants--
		st.Rows -= removed.Rows
		st.Size -= removed.Size
		st.Stored -= removed.Stored
		st.Chunks -= len(removed.Chunks)
		for _, c := range removed.Chunks {
			if c.Reused {
				st.Reused -= c.Length
				st.ReusedChunks--
			} else {
				st.Written -= c.Length
			}
		}
	}
	if m.Index != nil {
		m.Stats.Tenants = m.Index.Tenants
	}
	if err := m.Validate(); err != nil {
		return false, fmt.Errorf("forget: refusing to write an invalid manifest: %w", err)
	}
	data, err := manifest.Encode(&m)
	if err != nil {
		return false, err
	}
	// The commit point of the set: an atomic replacement of its manifest.
	if err := v.b.Put(ctx, ManifestKey(fs.ID), bytes.NewReader(data), int64(len(data))); err != nil {
		return false, fmt.Errorf("write manifest %s: %w", ManifestKey(fs.ID), err)
	}
	v.uncache(fs.ID)
	return true, nil
}

// rewriteSegment replaces a segment's data object and index without the
// tenant's stream, the shared records attributed to it and the erased side
// of rows that moved between it and another tenant, unless that is done.
// In an encrypted repository (sealed) the rewrite is sealed under a new
// segment key (editStream).
func (v *Vault) rewriteSegment(ctx context.Context, tenant string, fs forgetSegment, sealed bool) (bool, error) {
	idx, err := v.ReadSegmentIndex(ctx, SegmentRef{Stream: fs.Stream, Start: fs.Start, End: fs.End})
	if err != nil {
		return false, err
	}
	if sealed && !idx.Opened() {
		return false, errSegmentNeedsIdentity(idx.Key())
	}
	drop := fs.edits()
	holds, shared := false, false
	for _, s := range idx.Streams {
		holds = holds || (!s.Shared && s.Tenant == tenant)
		shared = shared || s.Shared
	}
	if !holds && (drop.none() || !shared) && len(drop.moves) == 0 {
		return false, nil
	}
	var data []byte
	if idx.Size > 0 {
		if data, err = repo.ReadAll(ctx, v.b, idx.Key()); err != nil {
			return false, fmt.Errorf("read change segment %s: %w", idx.Key(), err)
		}
		if int64(len(data)) != idx.Size {
			return false, tenantvault.Integrityf("change segment %s is %d bytes, its index says %d", idx.Key(), len(data), idx.Size)
		}
	}
	var sk *segmentSeal
	var seal func(*SegmentIndex, []byte) ([]byte, error)
	if sealed {
		if sk, err = v.newSegmentSeal(); err != nil {
			return false, err
		}
		defer clear(sk.dk)
		seal = sk.sealIndex
	}
	nx := *idx
	nx.Streams = nil
	var out []byte
	changed := holds
	for _, s := range idx.Streams {
		if !s.Shared && s.Tenant == tenant {
			nx.Records -= s.Records
			continue
		}
		if s.Offset < 0 || s.Offset+s.Length > int64(len(data)) {
			return false, tenantvault.Integrityf("change segment %s: the records of %q lie outside the object", idx.Key(), s.Tenant)
		}
		frame, dropped, edited, err := v.editStream(ctx, idx, &s, data[s.Offset:s.Offset+s.Length], drop.of(v, s), sk)
		if err != nil {
			return false, err
		}
		changed = changed || edited
		nx.Records -= dropped
		if frame == nil {
			continue // every record of the stream dropped
		}
		s.Offset = int64(len(out))
		out = append(out, frame...)
		nx.Streams = append(nx.Streams, s)
	}
	if !changed {
		return false, nil
	}
	return true, v.writeRewrittenSegment(ctx, fs, idx, &nx, out, seal)
}

// editStream applies ed to one stream's frame and returns the frame to
// store (nil when no record is left), the records dropped and whether
// anything changed; s is updated to describe the new frame. A plaintext
// frame (sk nil) is filtered as stored. A sealed one is opened, filtered
// and sealed anew: under the new segment key sk when it was sealed with
// the segment's, under its own tenant's key when it was sealed with that
// (another tenant's stream with move records to blank).
func (v *Vault) editStream(ctx context.Context, idx *SegmentIndex, s *SegmentStream, frame []byte, ed recordEdits, sk *segmentSeal) ([]byte, int, bool, error) {
	ownKey := sk != nil && s.Key != ""
	if (sk == nil || ownKey) && ed.none() || ownKey && s.Shared {
		return frame, 0, false, nil
	}
	plain := frame
	var dk []byte
	if sk != nil {
		if sha256Hex(frame) != s.SHA256 {
			return nil, 0, false, tenantvault.Integrityf("change segment %s is damaged (checksum mismatch in the records of %q)", idx.Key(), s.Tenant)
		}
		dk = idx.dataKey
		if ownKey {
			var err error
			if dk, err = v.streamKey(ctx, idx, *s); err != nil {
				return nil, 0, false, err
			}
		}
		var err error
		if plain, err = openBytes(dk, frame, maxSegmentStream); err != nil {
			return nil, 0, false, tenantvault.Integrityf("change segment %s: records of %q: %v", idx.Key(), s.Tenant, err)
		}
	}
	dropped, changed := 0, false
	if !ed.none() {
		ps := *s
		if sk != nil {
			ps.SHA256 = sha256Hex(plain) // the sealed frame's was checked
		}
		kept, n, d, err := filterFrame(idx, ps, plain, ed)
		if err != nil {
			return nil, 0, false, err
		}
		if kept != nil {
			if n == 0 {
				return nil, d, true, nil
			}
			plain, s.Records, dropped, changed = kept, n, d, true
		}
	}
	if sk == nil || ownKey && !changed {
		if !changed {
			return frame, 0, false, nil
		}
		s.SHA256, s.Length = sha256Hex(plain), int64(len(plain))
		return plain, dropped, true, nil
	}
	if !ownKey {
		dk = sk.dk
	}
	sealedFrame, err := sealBytes(dk, plain)
	if err != nil {
		return nil, 0, false, err
	}
	s.SHA256, s.Length = sha256Hex(sealedFrame), int64(len(sealedFrame))
	return sealedFrame, dropped, changed, nil
}

// writeRewrittenSegment stores the data (out) of nx, the rewrite of
// segment idx, in a new generation, then its index, sealed by seal when
// the repository is encrypted.
func (v *Vault) writeRewrittenSegment(ctx context.Context, fs forgetSegment, idx *SegmentIndex, nx *SegmentIndex, out []byte, seal func(*SegmentIndex, []byte) ([]byte, error)) error {
	nx.Size = int64(len(out))
	nx.Data = ""
	if len(out) > 0 {
		// Named after the index as it is now: never the object it uses.
		nx.Data = fmt.Sprintf("%016x-%016x.g%d.seg", idx.Start, idx.End, dataGen(idx.Data)+1)
		if err := v.b.Put(ctx, nx.Key(), bytes.NewReader(out), int64(len(out))); err != nil {
			return fmt.Errorf("write change segment %s: %w", nx.Key(), err)
		}
	}
	if nx.Streams == nil {
		nx.Streams = []SegmentStream{}
	}
	raw, err := json.Marshal(nx)
	if err != nil {
		return err
	}
	packed := pageEncoder.EncodeAll(raw, nil)
	if seal != nil {
		if packed, err = seal(nx, packed); err != nil {
			return err
		}
	}
	if err := v.b.Put(ctx, segmentKey(fs.Stream, fs.Start, fs.End, ".idx"), bytes.NewReader(packed), int64(len(packed))); err != nil {
		return fmt.Errorf("write change segment index: %w", err)
	}
	return nil
}

// recordEdits are what forget does to a segment's shared records.
type recordEdits struct {
	drop  map[RecordID]bool
	blank map[RecordID]BlankRecord
	// moves are the other tenants' streams' edits, by tenant hash.
	moves map[string]recordEdits
}

func (fs forgetSegment) edits() recordEdits {
	e := recordEdits{drop: map[RecordID]bool{}, blank: map[RecordID]BlankRecord{}, moves: map[string]recordEdits{}}
	for _, id := range fs.Drop {
		e.drop[id] = true
	}
	for _, b := range fs.Blank {
		e.blank[b.ID] = b
	}
	for _, b := range fs.Moves {
		m, ok := e.moves[b.Stream]
		if !ok {
			m = recordEdits{blank: map[RecordID]BlankRecord{}}
			e.moves[b.Stream] = m
		}
		m.blank[b.ID] = b
	}
	return e
}

func (e recordEdits) none() bool { return len(e.drop)+len(e.blank) == 0 }

// of are the edits of stream s (tenant streams' by their hash).
func (e recordEdits) of(v *Vault, s SegmentStream) recordEdits {
	if s.Shared {
		return e
	}
	if len(e.moves) == 0 {
		return recordEdits{}
	}
	return e.moves[v.TenantHash(s.Tenant)]
}

// filterFrame returns a plaintext frame of records without those dropped
// and with those blanked (recompressed; its checksum checked first), or
// nil when that changes nothing; the records kept and dropped.
func filterFrame(idx *SegmentIndex, s SegmentStream, frame []byte, e recordEdits) ([]byte, int, int, error) {
	if sha256Hex(frame) != s.SHA256 {
		return nil, 0, 0, tenantvault.Integrityf("change segment %s is damaged (checksum mismatch in the shared records)", idx.Key())
	}
	if len(frame) == 0 || frame[0] != CodecZstd {
		return nil, 0, 0, tenantvault.Integrityf("change segment %s: unknown codec", idx.Key())
	}
	dec := decoders.Get().(*zstd.Decoder)
	raw, err := dec.DecodeAll(frame[1:], nil)
	decoders.Put(dec)
	if err != nil {
		return nil, 0, 0, tenantvault.Integrityf("change segment %s is damaged: %v", idx.Key(), err)
	}
	recs, kept, dropped, blanked, err := filterRecords(raw, e.drop, e.blank)
	if err != nil {
		return nil, 0, 0, tenantvault.Integrityf("change segment %s: %v", idx.Key(), err)
	}
	if dropped+blanked == 0 {
		return nil, kept, 0, nil
	}
	return pageEncoder.EncodeAll(recs, []byte{CodecZstd}), kept, dropped, nil
}

// collectForgotten deletes the journal's old objects that nothing
// references any more, reading every manifest afresh; it returns the
// bytes deleted.
func (v *Vault) collectForgotten(ctx context.Context, j *forgetJournal, note func(string, ...any)) (int64, error) {
	ids, err := v.ListSets(ctx)
	if err != nil {
		return 0, err
	}
	for _, id := range ids {
		v.uncache(id)
	}
	sets, err := v.ReadIndexes(ctx, ids)
	if err != nil {
		return 0, fmt.Errorf("forget reads every manifest before it deletes the old objects, and one cannot be read (rerun forget to complete the erasure): %w", err)
	}
	referenced := map[string]bool{}
	for _, x := range sets {
		for _, p := range x.Packs {
			referenced[p] = true
		}
		if x.indexKey != "" {
			referenced[x.indexKey] = true
		}
	}
	gen := map[string]int{}
	for _, x := range sets {
		gen[x.ID] = x.indexGen
	}
	var old []string
	segs := map[SegmentRef]bool{}
	for _, p := range j.Rounds {
		for _, fp := range p.Packs {
			old = append(old, fp.Old)
		}
		for _, s := range p.Sets {
			// Every tenant index generation below the manifest's.
			for g := 0; g < gen[s.ID]; g++ {
				old = append(old, indexKeyGen(s.ID, g))
			}
		}
		for _, s := range p.Segments {
			segs[SegmentRef{Stream: s.Stream, Start: s.Start, End: s.End}] = true
		}
	}
	// Every data object of a rewritten segment but the one its index
	// names now (found by listing: a resumed forget cannot know which
	// generation an interrupted one wrote).
	for ref := range segs {
		idx, err := v.ReadSegmentIndex(ctx, ref)
		if err != nil {
			return 0, err
		}
		prefix := segmentKey(ref.Stream, ref.Start, ref.End, "")
		if err := v.b.List(ctx, prefix, func(o repo.ObjectInfo) error {
			if strings.HasSuffix(o.Key, ".seg") && (idx.Size == 0 || o.Key != idx.Key()) {
				old = append(old, o.Key)
			}
			return nil
		}); err != nil {
			return 0, err
		}
	}
	var deleted int64
	for _, k := range old {
		if referenced[k] {
			return deleted, fmt.Errorf("%s is still referenced by a snapshot set (written while forget ran?); rerun forget to rewrite that set too", k)
		}
		info, err := v.b.Stat(ctx, k)
		if errors.Is(err, repo.ErrNotFound) {
			continue
		}
		if err != nil {
			return deleted, err
		}
		if err := v.b.Delete(ctx, k); err != nil {
			return deleted, fmt.Errorf("delete %s: %w", k, err)
		}
		deleted += info.Size
		note("deleted %s", k)
	}
	return deleted, nil
}

// ForgetStatus is an erasure in progress (a journal), for forget --status.
type ForgetStatus struct {
	TenantHash string      `json:"tenant_hash"`
	Started    time.Time   `json:"started"`
	By         string      `json:"by"`
	Reason     string      `json:"reason,omitempty"`
	Rounds     int         `json:"rounds"`
	Plan       PlanSummary `json:"plan"`
}

// PendingForgets lists the erasures that were started and not completed.
func (v *Vault) PendingForgets(ctx context.Context) ([]ForgetStatus, error) {
	var keys []string
	if err := v.b.List(ctx, journalPrefix, func(o repo.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		return nil, err
	}
	var out []ForgetStatus
	for _, k := range keys {
		var j forgetJournal
		if err := v.getJSON(ctx, k, &j); err != nil {
			return nil, err
		}
		st := ForgetStatus{TenantHash: j.TenantHash, Started: j.Started, By: j.By, Reason: j.Reason, Rounds: len(j.Rounds)}
		if len(j.Rounds) > 0 {
			st.Plan = j.Rounds[0].Summary
		}
		out = append(out, st)
	}
	return out, nil
}
