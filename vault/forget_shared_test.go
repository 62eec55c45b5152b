package vault_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// The shape of the shared-records scenario: projects carry the tenant
// column; tasks are scoped through projects, notes through tasks (two
// hops). A cascade that deletes a project deletes its tasks and their
// notes, and the capture, finding no parent, archives those deletes shared.
var sharedTables = []manifest.Table{
	{Schema: "public", Name: "projects", Kind: manifest.TableScoped, Signature: "sig-projects",
		Columns: []manifest.Column{{Name: "id", Type: "bigint"}, {Name: "tenant_id", Type: "text"}, {Name: "name", Type: "text"}},
		Key:     []string{"id"}, Scope: &manifest.Scope{Column: "tenant_id"}},
	{Schema: "public", Name: "tasks", Kind: manifest.TableScoped, Signature: "sig-tasks",
		Columns: []manifest.Column{{Name: "id", Type: "bigint"}, {Name: "project_id", Type: "bigint"}, {Name: "body", Type: "text"}},
		Key:     []string{"id"}, Scope: &manifest.Scope{Column: "tenant_id", Hops: []manifest.Hop{{Columns: []string{"project_id"}, RefSchema: "public", RefTable: "projects", RefCols: []string{"id"}}}}},
	{Schema: "public", Name: "notes", Kind: manifest.TableScoped, Signature: "sig-notes",
		Columns: []manifest.Column{{Name: "id", Type: "bigint"}, {Name: "task_id", Type: "bigint"}, {Name: "body", Type: "text"}},
		Key:     []string{"id"}, Scope: &manifest.Scope{Column: "tenant_id", Hops: []manifest.Hop{
			{Columns: []string{"task_id"}, RefSchema: "public", RefTable: "tasks", RefCols: []string{"id"}},
			{Columns: []string{"project_id"}, RefSchema: "public", RefTable: "projects", RefCols: []string{"id"}}}}},
}

// writeScopedSet writes a set of sharedTables: per tenant, one chunk per
// table (COPY text), taken at lsn exactly.
func writeScopedSet(t *testing.T, v *vault.Vault, at time.Time, lsn uint64, tenants map[string][3]string) {
	t.Helper()
	ctx := context.Background()
	id := vault.NewSetID(at)
	w, err := v.NewSetWriter(ctx, id, vault.WriterOptions{TempDir: t.TempDir(), PackSize: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	p, err := w.NewPacker()
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{
		Version: manifest.Version, ID: id, Kind: manifest.KindScheduled,
		Source:    manifest.Source{Name: "main", Host: "h:5432", Database: "db", SystemID: "42"},
		Tenancy:   manifest.Tenancy{Model: "column", TenantColumn: "tenant_id"},
		StartedAt: at, ConsistentAt: at, FinishedAt: at, LSN: vault.LSNString(lsn), LSNExact: true,
		Tables: sharedTables,
	}
	iw, err := v.NewIndexWriter(id, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer iw.Close()
	packs := map[string]int{}
	names := map[string]string{}
	for n := range tenants {
		names[n] = ""
	}
	for _, n := range sortedKeys(names) {
		tn := manifest.Tenant{ID: n}
		for ti, content := range tenants[n] {
			if content == "" {
				continue
			}
			cw, err := p.StartTenantChunk(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			cw.Write([]byte(content))
			ref, err := cw.Finish(nil)
			if err != nil {
				t.Fatal(err)
			}
			tn.Key = ref.Key
			i, ok := packs[ref.Pack]
			if !ok {
				i = len(m.Packs)
				packs[ref.Pack] = i
				m.Packs = append(m.Packs, ref.Pack)
			}
			tn.Chunks = append(tn.Chunks, manifest.Chunk{Table: ti, Rows: int64(strings.Count(content, "\n")), Size: ref.Size, Digest: ref.Digest,
				Pack: i, Offset: ref.Offset, Length: ref.Length, SHA256: ref.SHA256})
		}
		if err := iw.Add(&tn); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := v.CommitSet(ctx, m, iw); err != nil {
		t.Fatal(err)
	}
}

func text(s string) vault.Value { return vault.Value{Kind: vault.ValueText, Data: []byte(s)} }

var absent = vault.Value{Kind: vault.ValueAbsent}

// sharedRepo writes a set holding acme (project 1), victim (projects 3,
// 4) and zeta (project 5), then a change log that continues it: the
// victim's cascade deletes archived shared (tasks and notes, key and
// foreign key only, the notes' body in a full old row holding the
// marker), an insert of a task of victim's project 4 archived shared (its
// body holds the marker), a delete of an acme task archived shared, a
// TRUNCATE, a record referencing a task both victim and zeta held (task 40:
// undecided) and one of a project no set or record shows before the set.
func sharedRepo(t *testing.T, b repo.Backend, keys *vault.Keys, segmentsV1 ...bool) {
	t.Helper()
	ctx := context.Background()
	v := openWith(t, b, keys, true)
	if len(segmentsV1) > 0 && segmentsV1[0] {
		vault.WriteSegmentsV1(v)
	}
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	lsn := uint64(0x3000000)
	writeScopedSet(t, v, t0, lsn+0x10, map[string][3]string{
		"acme":   {"1\tacme\tAcme project\n", "10\t1\tacme task\n", "100\t10\tacme note\n"},
		"victim": {"3\tvictim\t" + forgetMarker + " project\n4\tvictim\tsecond\n", "30\t3\t" + forgetMarker + " task\n31\t3\tanother\n40\t4\treused key\n", "300\t30\t" + forgetMarker + " note\n"},
		"zeta":   {"5\tzeta\tZeta project\n", "50\t5\tzeta task\n", "500\t50\tzeta note\n"},
	})
	// Task 40 later belongs to zeta (a key held by two tenants).
	writeScopedSet(t, openWith(t, b, keys, false), t0.Add(time.Hour), lsn+0x210, map[string][3]string{
		"acme": {"1\tacme\tAcme project\n", "10\t1\tacme task\n", ""},
		"zeta": {"5\tzeta\tZeta project\n", "40\t5\tnow zeta's\n50\t5\tzeta task\n", "500\t50\tzeta note\n"},
	})
	stream := vault.StreamName("42", "db")
	rels := []vault.Relation{
		{OID: 1, Schema: "public", Name: "projects", Columns: []string{"id", "tenant_id", "name"}, Types: []string{"bigint", "text", "text"}},
		{OID: 2, Schema: "public", Name: "tasks", Columns: []string{"id", "project_id", "body"}, Types: []string{"bigint", "bigint", "text"}},
		{OID: 3, Schema: "public", Name: "notes", Columns: []string{"id", "task_id", "body"}, Types: []string{"bigint", "bigint", "text"}},
	}
	seg := func(start uint64, at time.Time, add func(sb *vault.SegmentBuilder)) {
		sb := vault.NewSegmentBuilder(stream, "e1", start)
		for _, r := range rels {
			sb.AddRelation(r)
		}
		add(sb)
		if _, err := v.WriteSegment(ctx, sb, start+0x100, at); err != nil {
			t.Fatal(err)
		}
	}
	at := t0.Add(time.Minute)
	seg(lsn, at, func(sb *vault.SegmentBuilder) {
		// Before the set's LSN: the log continues no set there.
		sb.Add("", true, &vault.Change{LSN: lsn + 1, Seq: 1, Time: at, Rel: 2, Op: vault.OpDelete, Old: []vault.Value{text("70"), text("7"), absent}})
		// After it: the victim's cascade.
		l := lsn + 0x20
		sb.Add("victim", false, &vault.Change{LSN: l, Seq: 1, Time: at, Rel: 1, Op: vault.OpDelete, Old: []vault.Value{text("3"), text("victim"), absent}})
		sb.Add("", true, &vault.Change{LSN: l, Seq: 2, Time: at, Rel: 2, Op: vault.OpDelete, Old: []vault.Value{text("30"), text("3"), absent}})
		sb.Add("", true, &vault.Change{LSN: l, Seq: 3, Time: at, Rel: 3, Op: vault.OpDelete, Old: []vault.Value{text("300"), text("30"), text(forgetMarker + " note")}})
		sb.Add("", true, &vault.Change{LSN: l, Seq: 4, Time: at, Rel: 2, Op: vault.OpDelete, Old: []vault.Value{text("31"), text("3"), absent}})
		// A shared insert of a task of the victim's project 4, and a note
		// of that new task (two hops, through a shared record).
		sb.Add("", true, &vault.Change{LSN: l + 1, Seq: 1, Time: at, Rel: 2, Op: vault.OpInsert, New: []vault.Value{text("41"), text("4"), text(forgetMarker + " inserted")}})
		sb.Add("", true, &vault.Change{LSN: l + 1, Seq: 2, Time: at, Rel: 3, Op: vault.OpInsert, New: []vault.Value{text("410"), text("41"), text(forgetMarker + " deep")}})
		// An acme task deleted shared: acme's.
		sb.Add("", true, &vault.Change{LSN: l + 2, Seq: 1, Time: at, Rel: 2, Op: vault.OpDelete, Old: []vault.Value{text("10"), text("1"), absent}})
		sb.Add("acme", false, &vault.Change{LSN: l + 2, Seq: 2, Time: at, Rel: 1, Op: vault.OpUpdate, New: []vault.Value{text("1"), text("acme"), text("renamed")}})
	})
	at2 := at.Add(time.Minute)
	seg(lsn+0x100, at2, func(sb *vault.SegmentBuilder) {
		l := lsn + 0x120
		// A note of task 40, which victim and (later) zeta held: undecided.
		sb.Add("", true, &vault.Change{LSN: l, Seq: 1, Time: at2, Rel: 3, Op: vault.OpInsert, New: []vault.Value{text("401"), text("40"), text("ambiguous " + forgetMarker)}})
		sb.Add("", true, &vault.Change{LSN: l + 1, Seq: 1, Time: at2, Rel: 2, Op: vault.OpTruncate, Rels: []uint32{2, 3}})
		sb.Add("zeta", false, &vault.Change{LSN: l + 2, Seq: 1, Time: at2, Rel: 1, Op: vault.OpInsert, New: []vault.Value{text("6"), text("zeta"), text("new")}})
		sb.Add("victim", false, &vault.Change{LSN: l + 3, Seq: 1, Time: at2, Rel: 1, Op: vault.OpInsert, New: []vault.Value{text("8"), text("victim"), text(forgetMarker + " own stream")}})
	})
}

// TestForgetSharedRecords: forget drops the shared records only the erased
// tenant's keys reach (a cascade's deletes, a shared insert, and a record
// two hops down through it), keeps every other tenant's and the TRUNCATE
// as they were, and keeps and counts the undecided ones (a key two tenants
// held; a record before the log continues any set).
func TestForgetSharedRecords(t *testing.T) {
	for name, mk := range forgetBackends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			b := mk(t)
			sharedRepo(t, b, nil)
			v := openWith(t, b, nil, false)
			before := sharedContents(t, v)
			plan, err := v.PlanForget(ctx, "victim", 1, nil)
			if err != nil {
				t.Fatal(err)
			}
			s := plan.Summary
			why := vault.UndecidedWhy{}
			if s.UndecidedWhy != nil {
				why = *s.UndecidedWhy
			}
			if s.SharedRecords != 9 || s.SharedDropped != 5 || s.SharedUndecided != 2 || s.Truncates != 1 || why.KeyHeldByOthers != 1 || why.BeforeAnySet != 1 || s.Segments != 2 {
				t.Fatalf("plan: %+v %+v", s, why)
			}
			res, err := v.Forget(ctx, "victim", plan, vault.ForgetOptions{By: "tester"})
			if err != nil {
				t.Fatal(err)
			}
			if res.Done.SharedDropped != 5 || res.Done.SharedRecords != 2 || res.Done.Truncates != 1 {
				t.Fatalf("done: %+v", res.Done)
			}
			after := openWith(t, b, nil, false)
			mustVerify(t, after)
			got := sharedContents(t, after)
			// Only the undecided record still holds the marker.
			for k, w := range before {
				g := got[k]
				if k == "shared" {
					l := 0x3000020
					dropped := []string{fmt.Sprintf("%d/2 ", l), fmt.Sprintf("%d/3 ", l), fmt.Sprintf("%d/4 ", l), fmt.Sprintf("%d/1 ", l+1), fmt.Sprintf("%d/2 ", l+1)}
					for _, line := range strings.SplitAfter(w, "\n") {
						keep := true
						for _, d := range dropped {
							keep = keep && !strings.HasPrefix(line, d)
						}
						if strings.Contains(g, line) != keep {
							t.Fatalf("shared record %q: kept %v, want %v", line, !keep, keep)
						}
					}
					continue
				}
				if strings.Contains(k, "victim") {
					continue
				}
				if g != w {
					t.Fatalf("%s changed:\n%s\nwant\n%s", k, g, w)
				}
			}
			hits := findMarker(t, b)
			for _, h := range hits {
				if !strings.HasPrefix(h, "changes/42_db/0000000003000100-0000000003000200.") {
					t.Fatalf("marker hits after forget (want the undecided record's segment only): %v", hits)
				}
			}
			if len(hits) == 0 {
				t.Fatal("the undecided record is gone")
			}
		})
	}
}

// sharedContents reads every tenant's chunks of every set and every
// stream of the change log (the shared one under "shared").
func sharedContents(t *testing.T, v *vault.Vault) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	ids, err := v.ListSets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		m, err := v.ReadManifest(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, tn := range m.Tenants {
			for _, c := range tn.Chunks {
				data, err := readChunk(t, v, m, c)
				if errors.Is(err, vault.ErrTenantKeyDestroyed) {
					out[id+"/"+tn.ID] += "(key destroyed)"
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				out[id+"/"+tn.ID] += data
			}
		}
	}
	refs, err := v.ListSegments(ctx, vault.StreamName("42", "db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs {
		idx, err := v.ReadSegmentIndex(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		err = v.ScanSegment(ctx, idx, nil, func(s vault.SegmentStream, cr *vault.ChangeReader) error {
			for {
				c, err := cr.Next()
				if err != nil {
					break
				}
				who := "log/" + s.Tenant
				if s.Shared {
					who = "shared"
				}
				out[who] += fmt.Sprintf("%d/%d %c %q %q %v\n", c.LSN, c.Seq, c.Op, c.New, c.Old, c.Rels)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestForgetSharedInterrupted: a forget that drops shared records, failing
// at any write or delete (or losing the answer of one that succeeded),
// leaves a repository that verifies, whose other tenants read as before
// and whose shared records are either all as before or all as after; a
// rerun completes it exactly as an uninterrupted forget does.
func TestForgetSharedInterrupted(t *testing.T) {
	ctx := context.Background()
	_, tmpl := newRepoDir(t)
	sharedRepo(t, tmpl, nil)
	before := sharedContents(t, openWith(t, tmpl, nil, false))
	_, ref := newRepoDir(t)
	copyRepo(t, tmpl, ref)
	if _, err := forget(ctx, openWith(t, ref, nil, false), "victim"); err != nil {
		t.Fatal(err)
	}
	want := sharedContents(t, openWith(t, ref, nil, false))
	others := func(m map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			if !strings.Contains(k, "victim") && k != "shared" {
				out[k] = v
			}
		}
		return out
	}
	for _, fault := range []repo.Fault{{Op: repo.OpPut}, {Op: repo.OpDelete}, {Op: repo.OpPut, Lost: true}, {Op: repo.OpDelete, Lost: true}} {
		for k := 0; ; k++ {
			_, fb := newRepoDir(t)
			copyRepo(t, tmpl, fb)
			f := repo.NewFaulty(fb)
			f.Inject(repo.Fault{Op: fault.Op, Lost: fault.Lost, After: k, Times: 1, Err: repo.Permanent(fmt.Errorf("%w: crash", repo.ErrInjected))})
			_, err := forget(ctx, openWith(t, f, nil, false), "victim")
			if err == nil {
				if k < 3 {
					t.Fatalf("%s: only %d call(s) to interrupt", fault.Op, k)
				}
				t.Logf("%s (lost %v): interrupted at each of %d calls", fault.Op, fault.Lost, k)
				break
			}
			fresh := openWith(t, fb, nil, false)
			mustVerify(t, fresh)
			got := sharedContents(t, fresh)
			if g, w := others(got), others(before); fmt.Sprint(g) != fmt.Sprint(w) {
				t.Fatalf("%s %d: other tenants changed:\n%v\nwant\n%v", fault.Op, k, g, w)
			}
			if got["shared"] != before["shared"] && got["shared"] != want["shared"] {
				t.Fatalf("%s %d: shared records half rewritten:\n%s", fault.Op, k, got["shared"])
			}
			if _, err := forget(ctx, openWith(t, fb, nil, false), "victim"); err != nil {
				t.Fatalf("%s %d: rerun: %v", fault.Op, k, err)
			}
			done := openWith(t, fb, nil, false)
			mustVerify(t, done)
			if g := sharedContents(t, done); fmt.Sprint(g) != fmt.Sprint(want) {
				t.Fatalf("%s %d: after a rerun:\n%v\nwant\n%v", fault.Op, k, g, want)
			}
			if p, _ := done.PendingForgets(ctx); len(p) != 0 {
				t.Fatalf("%s %d: still pending", fault.Op, k)
			}
		}
	}
}

// TestForgetSharedEncrypted: in an encrypted repository forget rewrites
// the segments whose shared records it attributes to the tenant (they are
// sealed with the segment's key, which destroying the tenant's own does not
// reach): afterwards, with the identity, no segment decrypts to a record
// holding the tenant's marker but the undecided one, every other tenant's
// records read as before, verify passes; interrupted at every write and
// delete it stays consistent, and a rerun completes it.
func TestForgetSharedEncrypted(t *testing.T) {
	for _, v1 := range []bool{false, true} {
		// v1: segments written before per-tenant keys, the tenant's own
		// stream sealed with the segment's key too.
		t.Run(fmt.Sprintf("segments-v1=%v", v1), func(t *testing.T) { testForgetSharedEncrypted(t, v1) })
	}
}

func testForgetSharedEncrypted(t *testing.T, v1 bool) {
	ctx := context.Background()
	ks := newKeySet(t)
	_, tmpl := newRepoDir(t)
	sharedRepo(t, tmpl, ks.writer, v1)
	wantSegs := 1 // v2: the victim's own stream goes with its key
	if v1 {
		wantSegs = 2
	}
	before := sharedContents(t, openWith(t, tmpl, ks.reader, false))
	if !strings.Contains(before["shared"], forgetMarker) {
		t.Fatal("no marker in the shared records to begin with")
	}
	others := func(m map[string]string) string {
		var b strings.Builder
		for _, k := range sortedKeys(m) {
			if !strings.Contains(k, "victim") && k != "shared" {
				fmt.Fprintf(&b, "%s=%s\n", k, m[k])
			}
		}
		return b.String()
	}
	shred := func(v *vault.Vault) (*vault.Tombstone, error) {
		pending, err := v.PendingForget(ctx, "victim")
		if err != nil {
			return nil, err
		}
		var plan *vault.ForgetPlan
		if !pending {
			if plan, err = v.PlanShredSegments(ctx, "victim"); err != nil {
				return nil, err
			}
			if s := plan.Summary; !pending && (s.SharedDropped != 5 || s.SharedUndecided != 2 || s.Segments != wantSegs) {
				return nil, fmt.Errorf("plan: %+v", s)
			}
		}
		_, tomb, err := v.CryptoShredTenantWith(ctx, "victim", "test", "tester", plan)
		return tomb, err
	}
	check := func(what string, b repo.Backend) {
		t.Helper()
		v := openWith(t, b, ks.reader, false)
		mustVerify(t, v)
		got := sharedContents(t, v)
		if others(got) != others(before) {
			t.Fatalf("%s: other tenants changed:\n%s\nwant\n%s", what, others(got), others(before))
		}
		for k, recs := range got {
			if !strings.HasPrefix(k, "log/") && k != "shared" {
				continue
			}
			for _, line := range strings.Split(recs, "\n") {
				if strings.Contains(line, forgetMarker) && !strings.Contains(line, "ambiguous") {
					t.Fatalf("%s: a segment still decrypts to the tenant's record %s", what, line)
				}
			}
		}
		if keys, err := v.TenantKeys(ctx, "victim"); err != nil || len(keys) != 0 {
			t.Fatalf("%s: keys left: %v %v", what, keys, err)
		}
		if p, _ := v.PendingForgets(ctx); len(p) != 0 {
			t.Fatalf("%s: still pending", what)
		}
	}
	_, whole := newRepoDir(t)
	copyRepo(t, tmpl, whole)
	tomb, err := shred(openWith(t, whole, ks.reader, false))
	if err != nil {
		t.Fatal(err)
	}
	if d := tomb.Done; d == nil || d.SharedDropped != 5 || d.SharedRecords != 2 || d.Segments != wantSegs || tomb.Method != "crypto-shred" {
		t.Fatalf("tombstone: %+v %+v", tomb, tomb.Done)
	}
	check("forget", whole)
	for _, op := range []repo.Op{repo.OpPut, repo.OpDelete} {
		for k := 0; ; k++ {
			_, fb := newRepoDir(t)
			copyRepo(t, tmpl, fb)
			f := repo.NewFaulty(fb)
			f.Inject(repo.Fault{Op: op, After: k, Times: 1, Err: repo.Permanent(fmt.Errorf("%w: crash", repo.ErrInjected))})
			_, err := shred(openWith(t, f, ks.reader, false))
			if err == nil {
				t.Logf("%s: interrupted at each of %d calls", op, k)
				break
			}
			if !errors.Is(err, repo.ErrInjected) {
				t.Fatalf("%s %d: %v", op, k, err)
			}
			fresh := openWith(t, fb, ks.reader, false)
			mustVerify(t, fresh)
			if got := sharedContents(t, fresh); others(got) != others(before) {
				t.Fatalf("%s %d: other tenants changed", op, k)
			}
			if _, err := shred(fresh); err != nil {
				t.Fatalf("%s %d: rerun: %v", op, k, err)
			}
			check(fmt.Sprintf("%s %d and a rerun", op, k), fb)
		}
	}
}
