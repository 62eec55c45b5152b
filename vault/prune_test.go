package vault_test

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file"
	"github.com/tenantvault/tenantvault/vault"
)

// day is a fixed reference instant for retention tests.
var base = time.Date(2026, 3, 31, 22, 0, 0, 0, time.UTC)

func sets(at ...time.Time) []vault.SetInfo {
	out := make([]vault.SetInfo, len(at))
	for i, t := range at {
		out[i] = vault.SetInfo{ID: vault.NewSetID(t), Group: "g", Kind: manifest.KindScheduled, At: t}
	}
	return out
}

func kept(p vault.GroupPlan) []time.Time {
	var out []time.Time
	for _, d := range p.Decisions {
		if d.Keep {
			out = append(out, d.Set.At)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

func TestRetentionKeepDailyOverAMonth(t *testing.T) {
	// Every 6 hours for 31 days, at 00, 06, 12 and 18 UTC.
	var at []time.Time
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 31*4; i++ {
		at = append(at, start.Add(time.Duration(i)*6*time.Hour))
	}
	plan := vault.Retention(vault.Policy{KeepDaily: 7}, sets(at...), base)
	var want []time.Time
	for d := 25; d <= 31; d++ {
		want = append(want, time.Date(2026, 3, d, 18, 0, 0, 0, time.UTC))
	}
	if got := kept(plan); !reflect.DeepEqual(got, want) {
		t.Fatalf("kept %v\nwant %v", got, want)
	}
	if n := len(plan.ToMark()); n != 31*4-7 {
		t.Fatalf("%d to mark, want %d", n, 31*4-7)
	}
	// Reasons name the rule and the count.
	if r := plan.Decisions[0].Reason; !reflect.DeepEqual(r, []string{"newest set", "daily 1/7"}) {
		t.Fatalf("reasons of the newest set: %q", r)
	}
}

func TestRetentionCombinedRules(t *testing.T) {
	// One set a day for 100 days ending 2026-03-31.
	var at []time.Time
	for i := 0; i < 100; i++ {
		at = append(at, time.Date(2026, 3, 31, 12, 0, 0, 0, time.UTC).AddDate(0, 0, -i))
	}
	plan := vault.Retention(vault.Policy{KeepLast: 2, KeepWeekly: 3, KeepMonthly: 3}, sets(at...), base)
	d := func(m time.Month, day int) time.Time { return time.Date(2026, m, day, 12, 0, 0, 0, time.UTC) }
	want := []time.Time{
		d(1, 31),           // monthly 3/3 (newest of January)
		d(2, 28),           // monthly 2/3
		d(3, 22),           // weekly 3/3: Sunday of ISO week 12
		d(3, 29),           // weekly 2/3: Sunday of week 13
		d(3, 30), d(3, 31), // last 2 (31st is also weekly 1/3 and monthly 1/3)
	}
	sort.Slice(want, func(i, j int) bool { return want[i].Before(want[j]) })
	if got := kept(plan); !reflect.DeepEqual(got, want) {
		t.Fatalf("kept %v\nwant %v", got, want)
	}
}

func TestRetentionHourlyAndTimeZone(t *testing.T) {
	// 23:30 UTC and 00:30 UTC the next day are one day in New York
	// (UTC-4 in April) but two in UTC.
	a := time.Date(2026, 4, 10, 23, 30, 0, 0, time.UTC)
	b := a.Add(time.Hour)
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	in := sets(a, b)
	if got := kept(vault.Retention(vault.Policy{KeepDaily: 2}, in, b)); len(got) != 2 {
		t.Fatalf("UTC: kept %v, want both", got)
	}
	if got := kept(vault.Retention(vault.Policy{KeepDaily: 2, Location: ny}, in, b)); len(got) != 1 || !got[0].Equal(b) {
		t.Fatalf("New York: kept %v, want only %v", got, b)
	}
	// Hourly: three sets in one hour, one in the next: 2 kept.
	h := time.Date(2026, 4, 10, 10, 5, 0, 0, time.UTC)
	in = sets(h, h.Add(10*time.Minute), h.Add(20*time.Minute), h.Add(60*time.Minute))
	if got := kept(vault.Retention(vault.Policy{KeepHourly: 5}, in, h.Add(time.Hour))); !reflect.DeepEqual(got, []time.Time{h.Add(20 * time.Minute), h.Add(60 * time.Minute)}) {
		t.Fatalf("hourly kept %v", got)
	}
}

func TestRetentionNewestVerifiedAndSpecialSets(t *testing.T) {
	now := base
	in := sets(now.Add(-5*time.Hour), now.Add(-4*time.Hour), now.Add(-3*time.Hour), now.Add(-2*time.Hour), now.Add(-time.Hour))
	in[1].Verified = true // the newest verified is old
	pre := vault.SetInfo{ID: "pre-young", Kind: manifest.KindPreRestore, At: now.Add(-29 * 24 * time.Hour)}
	preOld := vault.SetInfo{ID: "pre-old", Kind: manifest.KindPreRestore, At: now.Add(-31 * 24 * time.Hour)}
	partial := vault.SetInfo{ID: "partial-new", Kind: manifest.KindManual, Partial: true, At: now.Add(-30 * time.Minute)}
	partialOld := vault.SetInfo{ID: "partial-old", Kind: manifest.KindManual, Partial: true, At: now.Add(-40 * 24 * time.Hour)}
	in = append(in, pre, preOld, partial, partialOld)
	p := vault.Policy{KeepLast: 1, KeepPreRestore: vault.DefaultKeepPreRestore, KeepPartial: vault.DefaultKeepPartial}
	plan := vault.Retention(p, in, now)
	got := map[string]string{}
	for _, d := range plan.Decisions {
		got[d.ID] = fmt.Sprint(d.Keep, " ", strings.Join(d.Reason, ", "))
	}
	want := map[string]string{
		in[4].ID:      "true newest set, last 1/1", // the partial set does not count as newest
		in[3].ID:      "false kept by no rule",
		in[2].ID:      "false kept by no rule",
		in[1].ID:      "true newest verified set",
		in[0].ID:      "false kept by no rule",
		"pre-young":   "true pre-restore set, kept for 30d",
		"pre-old":     "false pre-restore set older than 30d",
		"partial-new": "true partial set, kept for 30d",
		"partial-old": "false partial set older than 30d",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decisions:\n%v\nwant\n%v", got, want)
	}
	// Already marked sets are not listed to mark again.
	in[0].Marked = true
	for _, d := range vault.Retention(p, in, now).ToMark() {
		if d.ID == in[0].ID {
			t.Fatal("marked set listed to mark again")
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	if err := (vault.Policy{KeepPreRestore: time.Hour}).Validate(); err == nil || !strings.Contains(err.Error(), "shorter than 24h") {
		t.Fatalf("short keep_pre_restore: %v", err)
	}
	if err := (vault.Policy{KeepLast: -1, KeepPreRestore: vault.DefaultKeepPreRestore}).Validate(); err == nil {
		t.Fatal("negative keep_last accepted")
	}
}

// clock is a settable clock for the vault.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newFileVault opens a fresh repository in a temporary directory.
func newFileVault(t *testing.T, c *clock) (*vault.Vault, repo.Backend) {
	t.Helper()
	ctx := context.Background()
	b, err := repo.Open(ctx, "file://"+t.TempDir()+"/repo", repo.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	v, err := vault.Open(ctx, b, vault.Options{Init: true, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return v, b
}

// writeSet stores a set with one global chunk of content in a pack of its
// own and, when reuse is given, a second chunk pointing into reuse's pack.
func writeSet(t *testing.T, v *vault.Vault, at time.Time, content string, reuse *manifest.Manifest) *manifest.Manifest {
	t.Helper()
	ctx := context.Background()
	id := vault.NewSetID(at)
	w, err := v.NewSetWriter(ctx, id, vault.WriterOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	p, err := w.NewPacker()
	if err != nil {
		t.Fatal(err)
	}
	cw := p.StartChunk()
	cw.Write([]byte(content))
	ref, err := cw.Finish(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	schema, err := v.PutSchema(ctx, "db", []byte("schema of "+content))
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{
		Version: manifest.Version, ID: id, Kind: manifest.KindScheduled,
		Source:    manifest.Source{Host: "h:5432", Database: "db"},
		Tenancy:   manifest.Tenancy{Model: "column", TenantColumn: "tenant_id"},
		StartedAt: at, ConsistentAt: at, FinishedAt: at,
		Schemas: []manifest.SchemaDump{schema},
		Tables:  []manifest.Table{{Schema: "public", Name: "t", Kind: manifest.TableGlobal}},
		Packs:   []string{ref.Pack},
		Global:  []manifest.Chunk{{Table: 0, Rows: 1, Size: ref.Size, Digest: ref.Digest, Pack: 0, Offset: ref.Offset, Length: ref.Length, SHA256: ref.SHA256}},
	}
	if reuse != nil {
		c := reuse.Global[0]
		c.Pack = 1
		c.Reused = true
		m.Packs = append(m.Packs, reuse.Packs[0])
		m.Global = append(m.Global, c)
	}
	if err := v.WriteManifest(ctx, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func keys(t *testing.T, b repo.Backend, prefix string) []string {
	t.Helper()
	var out []string
	if err := b.List(context.Background(), prefix, func(o repo.ObjectInfo) error { out = append(out, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestMarkUnmarkPurgeAndGC(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Now()}
	v, b := newFileVault(t, c)
	old := writeSet(t, v, c.Now().Add(-2*time.Hour), "old", nil)
	newer := writeSet(t, v, c.Now().Add(-time.Hour), "newer", old) // reuses old's pack

	// Marking an unknown set fails; marking twice keeps the first mark.
	if _, err := v.MarkSet(ctx, vault.NewSetID(c.Now()), "x", "test", vault.DefaultGrace); err == nil {
		t.Fatal("marked a set that does not exist")
	}
	m1, err := v.MarkSet(ctx, old.ID, "first", "test", vault.DefaultGrace)
	if err != nil {
		t.Fatal(err)
	}
	c.Add(time.Minute)
	if m2, _ := v.MarkSet(ctx, old.ID, "second", "test", vault.DefaultGrace); m2.Reason != "first" || !m2.MarkedAt.Equal(m1.MarkedAt) {
		t.Fatalf("second mark replaced the first: %+v", m2)
	}

	// Unmark, then unmark again (nothing to undo), then mark again.
	if _, err := v.UnmarkSet(ctx, old.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := v.UnmarkSet(ctx, old.ID); err == nil || !strings.Contains(err.Error(), "not marked") {
		t.Fatalf("second unmark: %v", err)
	}
	if _, err := v.MarkSet(ctx, old.ID, "retention", "test", vault.DefaultGrace); err != nil {
		t.Fatal(err)
	}

	// Before the grace period: nothing is purged.
	res, err := v.Purge(ctx, vault.PurgeOptions{Grace: vault.DefaultGrace, GC: vault.GCOptions{MinAge: -1}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Purged) != 0 || len(res.Waiting) != 1 || len(res.GC.Collected) != 0 {
		t.Fatalf("purge before grace: %+v, gc %+v", res, res.GC)
	}
	if ids, _ := v.ListSets(ctx); len(ids) != 2 {
		t.Fatalf("sets after early purge: %v", ids)
	}

	// A dry run after the grace period shows the purge and what it frees,
	// and changes nothing.
	c.Add(vault.DefaultGrace + time.Minute)
	before := keys(t, b, "")
	res, err = v.Purge(ctx, vault.PurgeOptions{Grace: vault.DefaultGrace, DryRun: true, GC: vault.GCOptions{MinAge: -1}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Purged) != 1 || res.Purged[0].Set != old.ID {
		t.Fatalf("dry purge: %+v", res)
	}
	if after := keys(t, b, ""); !reflect.DeepEqual(before, after) {
		t.Fatalf("dry run changed the repository:\n%v\n%v", before, after)
	}

	// The real purge: old's manifest and marker go; its pack stays because
	// newer reuses a chunk in it; its schema archive is collected.
	res, err = v.Purge(ctx, vault.PurgeOptions{Grace: vault.DefaultGrace, GC: vault.GCOptions{MinAge: -1}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Purged) != 1 || len(res.Failed) != 0 {
		t.Fatalf("purge: %+v", res)
	}
	if ids, _ := v.ListSets(ctx); !reflect.DeepEqual(ids, []string{newer.ID}) {
		t.Fatalf("sets after purge: %v", ids)
	}
	if got := keys(t, b, vault.DeletionsPrefix); len(got) != 0 {
		t.Fatalf("markers left: %v", got)
	}
	var collected []string
	for _, g := range res.GC.Collected {
		collected = append(collected, g.Key)
	}
	sort.Strings(collected)
	if !reflect.DeepEqual(collected, []string{old.Schemas[0].Key, vault.IndexKey(old.ID)}) {
		t.Fatalf("collected %v, want only old's schema archive and tenant index", collected)
	}
	if _, err := b.Stat(ctx, old.Packs[0]); err != nil {
		t.Fatalf("old's pack, still referenced by newer, is gone: %v", err)
	}
	if r, err := v.Verify(ctx, nil, true, nil); err != nil || len(r.Problems) != 0 {
		t.Fatalf("verify after purge: %v %+v", err, r)
	}
}

func TestGCLeftoversMinAgeAndUnreadableManifest(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Now()}
	v, b := newFileVault(t, c)
	writeSet(t, v, c.Now().Add(-time.Hour), "kept", nil)
	// An interrupted snapshot: a pack without a manifest.
	leftover := vault.PacksPrefix + vault.NewSetID(c.Now().Add(-time.Minute)) + "/000001.pack"
	if err := b.Put(ctx, leftover, strings.NewReader("junk"), 4); err != nil {
		t.Fatal(err)
	}
	// Too young for the default minimum age: a running snapshot's pack.
	res, err := v.GC(ctx, vault.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Collected) != 0 || res.Young != 1 {
		t.Fatalf("default min age: %+v", res)
	}
	// Old enough (by the clock; the set ID says when it started).
	c.Add(25 * time.Hour)
	res, err = v.GC(ctx, vault.GCOptions{DryRun: true})
	if err != nil || len(res.Collected) != 1 || res.Collected[0].Key != leftover {
		t.Fatalf("dry GC: %v %+v", err, res)
	}
	if _, err := b.Stat(ctx, leftover); err != nil {
		t.Fatal("dry GC deleted")
	}

	// A manifest that cannot be read stops GC before it deletes anything.
	bad := vault.ManifestKey(vault.NewSetID(c.Now().Add(-48 * time.Hour)))
	if err := b.Put(ctx, bad, strings.NewReader("not a manifest"), 14); err != nil {
		t.Fatal(err)
	}
	if _, err := v.GC(ctx, vault.GCOptions{}); err == nil || !strings.Contains(err.Error(), "nothing was deleted") {
		t.Fatalf("GC with a damaged manifest: %v", err)
	}
	if _, err := b.Stat(ctx, leftover); err != nil {
		t.Fatal("GC deleted despite a damaged manifest")
	}
	b.Delete(ctx, bad)
	res, err = v.GC(ctx, vault.GCOptions{})
	if err != nil || len(res.Collected) != 1 {
		t.Fatalf("GC: %v %+v", err, res)
	}
	if _, err := b.Stat(ctx, leftover); err == nil {
		t.Fatal("leftover pack not collected")
	}
}

func TestPurgeReportsFailedDeletes(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Now()}
	v, b := newFileVault(t, c)
	old := writeSet(t, v, c.Now().Add(-2*time.Hour), "a", nil)
	writeSet(t, v, c.Now().Add(-time.Hour), "b", nil)
	if _, err := v.MarkSet(ctx, old.ID, "test", "test", 0); err != nil {
		t.Fatal(err)
	}
	c.Add(time.Minute) // past the marker's storage time too
	// Deletes fail as under S3 Object Lock.
	locked := &denyDeletes{Backend: b}
	lv, err := vault.Open(ctx, locked, vault.Options{Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	res, err := lv.Purge(ctx, vault.PurgeOptions{Grace: 0, GC: vault.GCOptions{MinAge: -1}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Purged) != 0 || len(res.Failed) != 1 || !strings.Contains(res.Failed[0].Err, "object lock") {
		t.Fatalf("purge under object lock: %+v", res)
	}
	marks, _ := v.Marks(ctx)
	if _, ok := marks[old.ID]; !ok {
		t.Fatal("a set whose manifest could not be deleted lost its mark")
	}
}

type denyDeletes struct{ repo.Backend }

func (d *denyDeletes) Delete(ctx context.Context, key string) error {
	return repo.Permanent(fmt.Errorf("delete %s: access denied: object lock retention in force", key))
}

func TestWriteManifestRefusesMissingSharedPack(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Now()}
	v, b := newFileVault(t, c)
	old := writeSet(t, v, c.Now().Add(-2*time.Hour), "a", nil)
	// GC took old's pack while a new snapshot was reusing it.
	b.Delete(ctx, old.Packs[0])
	m := *old
	m.ID = vault.NewSetID(c.Now())
	m.Packs = []string{old.Packs[0]}
	if err := v.WriteManifest(ctx, &m); err == nil || !strings.Contains(err.Error(), "deleted while the snapshot ran") {
		t.Fatalf("WriteManifest: %v", err)
	}
}
