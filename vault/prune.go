package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
)

// Deleting a set takes two steps that are never the same operation:
//
//  1. Mark: a small marker object deletions/<set>.json records when, why and
//     by whom the set was marked. The manifest stays untouched (manifests are
//     immutable); restore's default and --at selection skip marked sets, but
//     --snapshot ID still restores one, and Unmark takes the mark back.
//  2. Purge, only once the grace period has passed since the mark: the
//     manifest is deleted first (the set stops existing), then the marker,
//     then GC removes the packs and schema archives no remaining manifest
//     references.
//
// Retention only ever does step 1 automatically.

// More object key prefixes; every key under them ends in ".json", so none is
// a directory-like prefix of another.
const (
	DeletionsPrefix = "deletions/"
	VerifiedPrefix  = "verified/"
	recordExt       = ".json"
)

// MarkKey is where the deletion marker of set id lives.
func MarkKey(id string) string { return DeletionsPrefix + id + recordExt }

// VerifiedKey is where the verification record of set id lives.
func VerifiedKey(id string) string { return VerifiedPrefix + id + recordExt }

// Mark is a set marked for deletion.
type Mark struct {
	Set      string    `json:"set"`
	MarkedAt time.Time `json:"marked_at"`
	// PurgeAfter is MarkedAt plus the grace period in force when the set
	// was marked. A purge waits for it and for its own grace period,
	// whichever ends later.
	PurgeAfter time.Time `json:"purge_after"`
	Reason     string    `json:"reason"`
	By         string    `json:"by"`
	// stored is the marker object's modification time, from the storage's
	// clock: a purge counts the grace period from the later of it and
	// MarkedAt, so a marker written by a host whose clock runs late is not
	// purged early.
	stored time.Time
}

// Due reports whether the set may be purged at now with the given grace.
func (m Mark) Due(now time.Time, grace time.Duration) bool {
	return !now.Before(m.DueAt(grace))
}

// DueAt is the earliest time the set may be purged with the given grace.
func (m Mark) DueAt(grace time.Duration) time.Time {
	from := m.MarkedAt
	if m.stored.After(from) {
		from = m.stored
	}
	due := from.Add(grace)
	if m.PurgeAfter.After(due) {
		due = m.PurgeAfter
	}
	return due
}

// MarkSet marks set id for deletion. Marking a set that is already marked
// keeps the first mark (its time is what the grace period counts from).
func (v *Vault) MarkSet(ctx context.Context, id, reason, by string, grace time.Duration) (Mark, error) {
	if _, err := v.ReadIndex(ctx, id); err != nil {
		return Mark{}, err
	}
	if old, err := v.readMark(ctx, id); err == nil {
		return old, nil
	} else if !errors.Is(err, repo.ErrNotFound) {
		return Mark{}, err
	}
	now := v.now().UTC()
	m := Mark{Set: id, MarkedAt: now, PurgeAfter: now.Add(grace), Reason: reason, By: by}
	if err := v.putJSON(ctx, MarkKey(id), m); err != nil {
		return Mark{}, fmt.Errorf("mark set %s: %w", id, err)
	}
	return m, nil
}

// UnmarkSet takes back the mark of set id. A set that is not marked is an
// *InputError: there is nothing to undo, and the caller may have mistyped.
func (v *Vault) UnmarkSet(ctx context.Context, id string) (Mark, error) {
	if !ValidSetID(id) {
		return Mark{}, tenantvault.Inputf("%q is not a snapshot set ID (they look like 20261128T110145.123Z-1a2b3c4d)", id)
	}
	m, err := v.readMark(ctx, id)
	if errors.Is(err, repo.ErrNotFound) {
		return Mark{}, tenantvault.Inputf("snapshot set %s is not marked for deletion", id)
	}
	if err != nil {
		return Mark{}, err
	}
	if err := v.b.Delete(ctx, MarkKey(id)); err != nil {
		return Mark{}, fmt.Errorf("unmark set %s: %w", id, err)
	}
	return m, nil
}

func (v *Vault) readMark(ctx context.Context, id string) (Mark, error) {
	var m Mark
	info, err := v.b.Stat(ctx, MarkKey(id))
	if err != nil {
		return m, err
	}
	if err := v.getJSON(ctx, MarkKey(id), &m); err != nil {
		return m, err
	}
	m.stored = info.ModTime
	return m, nil
}

// Marks returns every deletion marker, by set ID. Markers whose set no
// longer has a manifest (left by an interrupted purge) are included; GC
// removes them.
func (v *Vault) Marks(ctx context.Context) (map[string]Mark, error) {
	out := map[string]Mark{}
	err := v.listRecords(ctx, DeletionsPrefix, func(id string, info repo.ObjectInfo) error {
		var m Mark
		if err := v.getJSON(ctx, info.Key, &m); err != nil {
			if errors.Is(err, repo.ErrNotFound) {
				return nil // purged meanwhile
			}
			return err
		}
		if m.Set != id {
			// A damaged or hand-made marker still marks its set: being
			// careful here means keeping the set out of restore's way.
			m.Set = id
		}
		m.stored = info.ModTime
		out[id] = m
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list deletion marks in %s: %w", v.b.Location(), err)
	}
	return out, nil
}

// Verification records that a set passed Verify.
type Verification struct {
	Set        string    `json:"set"`
	VerifiedAt time.Time `json:"verified_at"`
	ReadData   bool      `json:"read_data"`
	Chunks     int64     `json:"chunks"`
	Packs      int       `json:"packs"`
	BytesRead  int64     `json:"bytes_read"`
	By         string    `json:"by"`
}

// VerifySet runs Verify on one set and, when it finds no problem, records
// the success at verified/<set>.json, which retention uses to keep the
// newest verified set of every source. Problems are returned in the result,
// not recorded.
func (v *Vault) VerifySet(ctx context.Context, id string, readData bool, by string) (*VerifyResult, error) {
	res, err := v.Verify(ctx, []string{id}, readData, nil)
	if err != nil || len(res.Problems) > 0 {
		return res, err
	}
	rec := Verification{Set: id, ReadData: readData, Chunks: res.Chunks, Packs: res.Packs, BytesRead: res.BytesRead, By: by}
	return res, v.RecordVerification(ctx, rec)
}

// RecordVerification stores that a set passed Verify (VerifiedAt is set to
// now when zero).
func (v *Vault) RecordVerification(ctx context.Context, rec Verification) error {
	if rec.VerifiedAt.IsZero() {
		rec.VerifiedAt = v.now().UTC()
	}
	if err := v.putJSON(ctx, VerifiedKey(rec.Set), rec); err != nil {
		return fmt.Errorf("record verification of set %s: %w", rec.Set, err)
	}
	return nil
}

// Verifications returns every verification record, by set ID.
func (v *Vault) Verifications(ctx context.Context) (map[string]Verification, error) {
	out := map[string]Verification{}
	err := v.listRecords(ctx, VerifiedPrefix, func(id string, info repo.ObjectInfo) error {
		var rec Verification
		if err := v.getJSON(ctx, info.Key, &rec); err != nil {
			if errors.Is(err, repo.ErrNotFound) {
				return nil
			}
			// An unreadable record proves nothing: the set counts as
			// unverified, which only ever keeps more.
			v.log.Warn("ignoring unreadable verification record", "key", info.Key, "err", err)
			return nil
		}
		rec.Set = id
		out[id] = rec
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list verification records in %s: %w", v.b.Location(), err)
	}
	return out, nil
}

// listRecords calls fn for every <prefix><set ID>.json object.
func (v *Vault) listRecords(ctx context.Context, prefix string, fn func(id string, info repo.ObjectInfo) error) error {
	var infos []repo.ObjectInfo
	err := v.b.List(ctx, prefix, func(o repo.ObjectInfo) error {
		infos = append(infos, o)
		return nil
	})
	if err != nil {
		return err
	}
	for _, o := range infos {
		id, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, prefix), recordExt)
		if !ok || !ValidSetID(id) {
			continue
		}
		if err := fn(id, o); err != nil {
			return err
		}
	}
	return nil
}

// putJSON stores a record (a deletion marker, a verification record).
// Records are never locked by object retention: unmarking a set and
// collecting the records of purged sets must stay possible.
func (v *Vault) putJSON(ctx context.Context, key string, x any) error {
	data, err := json.MarshalIndent(x, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	return v.b.Put(repo.WithoutRetention(ctx), key, bytes.NewReader(data), int64(len(data)))
}

func (v *Vault) getJSON(ctx context.Context, key string, x any) error {
	data, err := repo.ReadAll(ctx, v.b, key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, x); err != nil {
		return fmt.Errorf("%s is damaged: %v", key, err)
	}
	return nil
}

// DeleteFailure is an object a purge or GC could not delete, e.g. because
// S3 Object Lock still protects it. It is reported, never fatal: the next
// run tries again.
type DeleteFailure struct {
	Key string `json:"key"`
	Err string `json:"error"`
	// Locked is set when the storage keeps the object immutable for a
	// while yet (repo.ErrLocked): expected under S3 Object Lock, and the
	// delete succeeds once the retention ends.
	Locked bool `json:"locked,omitempty"`
}

func deleteFailure(key string, err error) DeleteFailure {
	return DeleteFailure{Key: key, Err: err.Error(), Locked: errors.Is(err, repo.ErrLocked)}
}

// PurgeOptions tune Purge.
type PurgeOptions struct {
	// Grace is how long a set must have been marked before it is purged.
	Grace time.Duration
	// Skip lists sets not to purge in this run even when due (e.g. those
	// the same command has just marked: marking and purging are never one
	// step).
	Skip map[string]bool
	// DryRun reports what would be purged and collected, and deletes
	// nothing.
	DryRun bool
	// GC tunes the garbage collection that follows the purge.
	GC GCOptions
}

// LockedSet is a set due for purging that object retention still protects.
type LockedSet struct {
	Mark
	Until time.Time `json:"retain_until"`
}

// PurgeResult is what Purge did (or, dry, would do).
type PurgeResult struct {
	// Purged are the sets whose manifest was deleted.
	Purged []Mark `json:"purged"`
	// Waiting are marked sets whose grace period has not passed.
	Waiting []Mark `json:"waiting"`
	// Locked are marked sets past their grace period whose manifest the
	// storage still keeps immutable (S3 Object Lock): they are purged
	// once the retention ends.
	Locked []LockedSet `json:"locked,omitempty"`
	// Failed lists deletes that failed; their sets stay marked.
	Failed []DeleteFailure `json:"failed,omitempty"`
	GC     *GCResult       `json:"gc"`
}

// Purge deletes the sets marked at least opts.Grace ago (manifest first,
// then marker and verification record), then runs GC. A delete that fails
// is reported in the result and the rest goes on; an error means the purge
// could not run at all.
func (v *Vault) Purge(ctx context.Context, opts PurgeOptions) (*PurgeResult, error) {
	if opts.Grace < 0 {
		return nil, tenantvault.Inputf("grace period %s is negative", opts.Grace)
	}
	marks, err := v.Marks(ctx)
	if err != nil {
		return nil, err
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	for _, id := range ids {
		live[id] = true
	}
	now := v.now()
	res := &PurgeResult{}
	for _, id := range sortedIDs(marks) {
		m := marks[id]
		if !live[id] {
			continue // manifest already gone: GC removes the marker
		}
		if opts.Skip[id] || !m.Due(now, opts.Grace) {
			res.Waiting = append(res.Waiting, m)
			continue
		}
		// A manifest under object retention cannot be deleted yet: rather
		// than fail on it (and on every pack it holds) each run, the set
		// waits, still marked, until the retention ends.
		if info, err := v.b.Stat(ctx, ManifestKey(id)); err == nil && info.RetainUntil.After(now) {
			res.Locked = append(res.Locked, LockedSet{Mark: m, Until: info.RetainUntil})
			v.log.Info("marked set is due but locked by object retention; it is purged once the lock expires", "set", id, "retain_until", info.RetainUntil)
			continue
		} else if err != nil && !errors.Is(err, repo.ErrNotFound) {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			res.Failed = append(res.Failed, DeleteFailure{Key: ManifestKey(id), Err: err.Error()})
			continue
		}
		if opts.DryRun {
			res.Purged = append(res.Purged, m)
			continue
		}
		// The manifest goes first: once it is gone the set does not
		// exist, whatever else a crash leaves behind for GC.
		if err := v.b.Delete(ctx, ManifestKey(id)); err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			res.Failed = append(res.Failed, deleteFailure(ManifestKey(id), err))
			v.log.Warn("cannot delete manifest of marked set; it stays marked", "set", id, "err", err)
			continue
		}
		v.mcache.Delete(id)
		v.icache.Delete(id)
		v.sets.Delete(id)
		live[id] = false
		res.Purged = append(res.Purged, m)
		v.log.Info("purged snapshot set", "set", id, "marked_at", m.MarkedAt, "reason", m.Reason)
		for _, k := range []string{MarkKey(id), VerifiedKey(id)} {
			if err := v.b.Delete(ctx, k); err != nil {
				res.Failed = append(res.Failed, deleteFailure(k, err))
			}
		}
	}
	gcOpts := opts.GC
	gcOpts.DryRun = opts.DryRun
	if opts.DryRun {
		// A dry run must show what the purge would free too.
		gcOpts.assumeGone = map[string]bool{}
		for _, m := range res.Purged {
			gcOpts.assumeGone[m.Set] = true
		}
	}
	res.GC, err = v.GC(ctx, gcOpts)
	if err != nil {
		return res, err
	}
	return res, nil
}

func sortedIDs[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Policy is a retention policy over the complete sets of one source. Each
// keep rule keeps, walking from the newest set back, the newest set of each
// of the last N hours (days, ISO weeks, months) that have sets, counted in
// Location; KeepLast keeps the newest N. A set kept by any rule is kept.
// Whatever the rules say, the newest set and the newest verified set of
// every source are kept.
type Policy struct {
	KeepLast    int `json:"keep_last"`
	KeepHourly  int `json:"keep_hourly"`
	KeepDaily   int `json:"keep_daily"`
	KeepWeekly  int `json:"keep_weekly"`
	KeepMonthly int `json:"keep_monthly"`
	// KeepPreRestore is how long pre-restore sets are kept; they are
	// outside the rules above (they hold rows a restore replaced).
	KeepPreRestore time.Duration `json:"keep_pre_restore"`
	// KeepPartial is how long partial sets (taken with --tenant) are kept;
	// they are outside the rules too, so that one tenant's capture never
	// takes the place of a whole source's set.
	KeepPartial time.Duration `json:"keep_partial"`
	// Location is the time zone of the hour, day, week and month
	// boundaries; nil means UTC.
	Location *time.Location `json:"-"`
}

// Defaults of the durations of Policy.
const (
	DefaultKeepPreRestore = 30 * 24 * time.Hour
	DefaultKeepPartial    = 30 * 24 * time.Hour
	DefaultGrace          = 7 * 24 * time.Hour
)

// HasRules reports whether any keep rule is set; a policy without one
// marks nothing but expired pre-restore and partial sets.
func (p Policy) HasRules() bool {
	return p.KeepLast > 0 || p.KeepHourly > 0 || p.KeepDaily > 0 || p.KeepWeekly > 0 || p.KeepMonthly > 0
}

// Validate checks the numbers.
func (p Policy) Validate() error {
	for _, n := range []struct {
		name string
		v    int
	}{{"keep_last", p.KeepLast}, {"keep_hourly", p.KeepHourly}, {"keep_daily", p.KeepDaily}, {"keep_weekly", p.KeepWeekly}, {"keep_monthly", p.KeepMonthly}} {
		if n.v < 0 {
			return tenantvault.Inputf("%s %d is negative", n.name, n.v)
		}
	}
	if p.KeepPreRestore < 24*time.Hour {
		return tenantvault.Inputf("keep_pre_restore %s is shorter than 24h: pre-restore sets hold the only copy of the rows a restore replaced", p.KeepPreRestore)
	}
	if p.KeepPartial < 0 {
		return tenantvault.Inputf("keep_partial %s is negative", p.KeepPartial)
	}
	return nil
}

// SetInfo is what retention needs to know about a set.
type SetInfo struct {
	ID       string
	Group    string // GroupKey of the manifest
	Kind     string
	Partial  bool
	At       time.Time // the set's consistent instant
	Verified bool
	Marked   bool
}

// GroupKey names the source and tenancy of a set: retention counts the sets
// of one group. The source is its system identifier and database when
// known, else its host and database.
func GroupKey(m *manifest.Manifest) string {
	src := m.Source.Host + "/" + m.Source.Database
	if m.Source.SystemID != "" {
		src = "system " + m.Source.SystemID + "/" + m.Source.Database
	}
	t := m.Tenancy
	tn := t.Model
	switch t.Model {
	case "column":
		tn += ":" + t.TenantColumn
		if t.TenantTable != "" {
			tn += ":" + t.TenantTable
		}
	case "schema":
		tn += ":" + t.SchemaPattern
	case "database":
		tn += ":" + t.DatabasePattern
	}
	return src + " (" + tn + ")"
}

// Decision is retention's verdict on one set.
type Decision struct {
	Set    SetInfo  `json:"-"`
	ID     string   `json:"set"`
	Keep   bool     `json:"keep"`
	Reason []string `json:"reasons"`
}

// GroupPlan is retention's verdict on the sets of one group, newest first.
type GroupPlan struct {
	Group     string     `json:"group"`
	Decisions []Decision `json:"sets"`
}

// ToMark lists the sets of the plan that are to be marked and are not yet.
func (g GroupPlan) ToMark() []Decision {
	var out []Decision
	for _, d := range g.Decisions {
		if !d.Keep && !d.Set.Marked {
			out = append(out, d)
		}
	}
	return out
}

// Retention decides, for every set of one group, whether p keeps it at now.
// Sets already marked take part like any other (a kept set that is marked
// stays marked: only Unmark takes a mark back), so that marking them does
// not shift which sets the rules keep.
func Retention(p Policy, sets []SetInfo, now time.Time) GroupPlan {
	loc := p.Location
	if loc == nil {
		loc = time.UTC
	}
	sorted := append([]SetInfo(nil), sets...)
	sort.Slice(sorted, func(i, j int) bool {
		if !sorted[i].At.Equal(sorted[j].At) {
			return sorted[i].At.After(sorted[j].At)
		}
		return sorted[i].ID > sorted[j].ID
	})
	plan := GroupPlan{}
	if len(sorted) > 0 {
		plan.Group = sorted[0].Group
	}
	reasons := make([][]string, len(sorted))
	type rule struct {
		name   string
		n      int
		bucket func(time.Time) string
		last   string
		count  int
	}
	rules := []*rule{
		{name: "last", n: p.KeepLast, bucket: func(t time.Time) string { return t.Format(time.RFC3339Nano) }},
		{name: "hourly", n: p.KeepHourly, bucket: func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{name: "daily", n: p.KeepDaily, bucket: func(t time.Time) string { return t.Format("2006-01-02") }},
		{name: "weekly", n: p.KeepWeekly, bucket: func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%04d-W%02d", y, w) }},
		{name: "monthly", n: p.KeepMonthly, bucket: func(t time.Time) string { return t.Format("2006-01") }},
	}
	newestComplete, newestVerified := -1, -1
	for i, s := range sorted {
		switch {
		case s.Kind == manifest.KindPreRestore:
			if age := now.Sub(s.At); age < p.KeepPreRestore {
				reasons[i] = append(reasons[i], fmt.Sprintf("pre-restore set, kept for %s", durationText(p.KeepPreRestore)))
			}
			continue
		case s.Partial:
			if age := now.Sub(s.At); age < p.KeepPartial {
				reasons[i] = append(reasons[i], fmt.Sprintf("partial set, kept for %s", durationText(p.KeepPartial)))
			}
			continue
		}
		if newestComplete < 0 {
			newestComplete = i
			reasons[i] = append(reasons[i], "newest set")
		}
		if s.Verified && newestVerified < 0 {
			newestVerified = i
			reasons[i] = append(reasons[i], "newest verified set")
		}
		local := s.At.In(loc)
		for _, r := range rules {
			if r.count >= r.n {
				continue
			}
			if b := r.bucket(local); b != r.last {
				r.last = b
				r.count++
				reasons[i] = append(reasons[i], fmt.Sprintf("%s %d/%d", r.name, r.count, r.n))
			}
		}
	}
	for i, s := range sorted {
		d := Decision{Set: s, ID: s.ID, Keep: len(reasons[i]) > 0, Reason: reasons[i]}
		if !d.Keep {
			switch {
			case s.Kind == manifest.KindPreRestore:
				d.Reason = []string{fmt.Sprintf("pre-restore set older than %s", durationText(p.KeepPreRestore))}
			case s.Partial:
				d.Reason = []string{fmt.Sprintf("partial set older than %s", durationText(p.KeepPartial))}
			default:
				d.Reason = []string{"kept by no rule"}
			}
		}
		plan.Decisions = append(plan.Decisions, d)
	}
	return plan
}

// durationText renders whole days as days, which is how retention is
// usually thought of.
func durationText(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// RetentionPlan loads every set with its marks and verification records
// and applies p to each group. When only is non-empty, just the groups of
// those keys (GroupKey) are planned.
//
// In an encrypted repository, when this side trusts some signers, a set
// whose manifest is signed by none of them is left out of retention
// altogether: it is neither counted as a kept set (a forged "newest" set
// must not push genuine ones out) nor marked (what is not proven forged is
// not deleted either). It is logged.
func (v *Vault) RetentionPlan(ctx context.Context, p Policy, only map[string]bool) ([]GroupPlan, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	ids, err := v.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	sets, err := v.ReadIndexes(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("retention needs every manifest: %w", err)
	}
	marks, err := v.Marks(ctx)
	if err != nil {
		return nil, err
	}
	verified, err := v.Verifications(ctx)
	if err != nil {
		return nil, err
	}
	wanted := map[string]bool{}
	for g := range only {
		wanted[g], wanted[groupHashOf(g)] = true, true
	}
	groups := map[string][]SetInfo{}
	for _, x := range sets {
		g := x.Group
		if len(only) > 0 && !wanted[g] {
			continue
		}
		if x.Encrypted() && v.keys.hasTrust() && !x.Authenticated() {
			v.log.Warn("leaving out of retention a set signed by an untrusted signer", "set", x.ID, "signer", x.Signer)
			continue
		}
		_, ver := verified[x.ID]
		_, marked := marks[x.ID]
		groups[g] = append(groups[g], SetInfo{ID: x.ID, Group: g, Kind: x.Kind, Partial: x.Partial, At: x.ConsistentAt, Verified: ver, Marked: marked})
	}
	now := v.now()
	var out []GroupPlan
	for _, g := range sortedIDs(groups) {
		plan := Retention(p, groups[g], now)
		plan.Group = g
		out = append(out, plan)
	}
	return out, nil
}

// Now is the vault's clock.
func (v *Vault) Now() time.Time { return v.now() }
