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
	// After the log below: tasks and notes truncated, task 40 zeta's and
	// task 50 the victim's for a while before.
	writeScopedSet(t, openWith(t, b, keys, false), t0.Add(time.Hour), lsn+0x210, map[string][3]string{
		"acme":   {"1\tacme\tAcme project\n", "", ""},
		"victim": {"4\tvictim\tsecond\n8\tvictim\t" + forgetMarker + " own stream\n", "", ""},
		"zeta":   {"5\tzeta\tZeta project\n6\tzeta\tnew\n", "", ""},
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
		// A note of task 40 while the victim held it (zeta holds the key
		// later): the victim's.
		sb.Add("", true, &vault.Change{LSN: l, Seq: 1, Time: at2, Rel: 3, Op: vault.OpInsert, New: []vault.Value{text("401"), text("40"), text(forgetMarker + " before the move")}})
		// Task 40 moves to zeta's project 5: its old row is the victim's,
		// its new one zeta's; then a note of it, zeta's.
		sb.Add("", true, &vault.Change{LSN: l + 2, Seq: 1, Time: at2, Rel: 2, Op: vault.OpUpdate, Old: []vault.Value{text("40"), text("4"), text(forgetMarker + " moved away")}, New: []vault.Value{text("40"), text("5"), text("now zeta's")}})
		sb.Add("", true, &vault.Change{LSN: l + 3, Seq: 1, Time: at2, Rel: 3, Op: vault.OpInsert, New: []vault.Value{text("402"), text("40"), text("zeta's note")}})
		// Zeta's task 50 moves to the victim's project 4, and its note goes
		// while it is the victim's.
		sb.Add("", true, &vault.Change{LSN: l + 4, Seq: 1, Time: at2, Rel: 2, Op: vault.OpUpdate, Old: []vault.Value{text("50"), text("5"), text("zeta task")}, New: []vault.Value{text("50"), text("4"), text(forgetMarker + " moved in")}})
		sb.Add("", true, &vault.Change{LSN: l + 5, Seq: 1, Time: at2, Rel: 3, Op: vault.OpDelete, Old: []vault.Value{text("500"), text("50"), text(forgetMarker + " note of a moved task")}})
		// In one transaction a task is made in the victim's project, moved
		// to zeta's, and given a note: whose the note is cannot be told
		// from the keys (undecided).
		sb.Add("", true, &vault.Change{LSN: l + 6, Seq: 1, Time: at2, Rel: 2, Op: vault.OpInsert, New: []vault.Value{text("60"), text("4"), text(forgetMarker + " made")}})
		sb.Add("", true, &vault.Change{LSN: l + 6, Seq: 2, Time: at2, Rel: 2, Op: vault.OpUpdate, Old: []vault.Value{text("60"), text("4"), text(forgetMarker + " made")}, New: []vault.Value{text("60"), text("5"), text("zeta's now")}})
		sb.Add("", true, &vault.Change{LSN: l + 6, Seq: 3, Time: at2, Rel: 3, Op: vault.OpInsert, New: []vault.Value{text("600"), text("60"), text("undecidable " + forgetMarker)}})
		sb.Add("", true, &vault.Change{LSN: l + 0x40, Seq: 1, Time: at2, Rel: 2, Op: vault.OpTruncate, Rels: []uint32{2, 3}})
		sb.Add("zeta", false, &vault.Change{LSN: l + 0x41, Seq: 1, Time: at2, Rel: 1, Op: vault.OpInsert, New: []vault.Value{text("6"), text("zeta"), text("new")}})
		sb.Add("victim", false, &vault.Change{LSN: l + 0x42, Seq: 1, Time: at2, Rel: 1, Op: vault.OpInsert, New: []vault.Value{text("8"), text("victim"), text(forgetMarker + " own stream")}})
		// Zeta's project 5 moves to the victim (tasks scoped through it go
		// along): a move record in both streams, zeta's holding the row
		// as the victim's.
		sb.Add("victim", false, &vault.Change{LSN: l + 0x43, Seq: 1, Time: at2, Rel: 1, Op: vault.OpMoved, New: []vault.Value{text("5"), text("victim"), text(forgetMarker + " moved project")}, Old: []vault.Value{text("5"), text("zeta"), text("Zeta project")}})
		sb.Add("zeta", false, &vault.Change{LSN: l + 0x43, Seq: 2, Time: at2, Rel: 1, Op: vault.OpMoved, New: []vault.Value{text("5"), text("victim"), text(forgetMarker + " moved project")}, Old: []vault.Value{text("5"), text("zeta"), text("Zeta project")}})
	})
}

// TestForgetSharedRecords: forget decides each shared record by who held
// the keys it references at its LSN: it drops the erased tenant's (a
// cascade's deletes, a shared insert and a record two hops down through
// it; a note of a task the tenant held then, though zeta holds the key
// later; a note of a task that had moved to the tenant; a record before
// the log continues any set, which no restore can replay), blanks the
// tenant's side of tasks that moved between it and zeta, keeps every
// other tenant's and the TRUNCATE as they were, and keeps and counts the
// one it cannot decide (a key that passed between them inside one
// transaction).
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
			if s.SharedRecords != 16 || s.SharedDropped != 9 || s.SharedBlanked != 3 || s.MovesBlanked != 1 || s.SharedUndecided != 1 || s.Truncates != 1 || why.KeyHeldByOthers != 1 || s.Segments != 2 {
				t.Fatalf("plan: %+v %+v", s, why)
			}
			res, err := v.Forget(ctx, "victim", plan, vault.ForgetOptions{By: "tester"})
			if err != nil {
				t.Fatal(err)
			}
			if res.Done.SharedDropped != 9 || res.Done.SharedBlanked != 3 || res.Done.SharedRecords != 1 || res.Done.Truncates != 1 {
				t.Fatalf("done: %+v", res.Done)
			}
			after := openWith(t, b, nil, false)
			mustVerify(t, after)
			got := sharedContents(t, after)
			if res.Done.MovesBlanked != 1 {
				t.Fatalf("done: %+v", res.Done)
			}
			for k, w := range movedAfter(t, before) {
				if strings.HasPrefix(k, "shared") || strings.Contains(k, "victim") {
					continue
				}
				if g := got[k]; g != w {
					t.Fatalf("%s changed:\n%s\nwant\n%s", k, g, w)
				}
			}
			checkSharedAfter(t, allShared(before), allShared(got))
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

// movedAfter is sharedContents after forget for the other tenants: zeta's
// move record of the project that moved to the victim blanked but for
// its key.
func movedAfter(t *testing.T, m map[string]string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	from := fmt.Sprintf(`%d/2 M [{'t' "5"} {'t' "victim"} {'t' "%s moved project"}] [{'t' "5"} {'t' "zeta"} {'t' "Zeta project"}] []`, 0x3000120+0x43, forgetMarker)
	to := fmt.Sprintf(`%d/2 M [{'t' "5"} {'u' ""} {'u' ""}] [{'t' "5"} {'a' ""} {'a' ""}] []`, 0x3000120+0x43)
	if !strings.Contains(out["log/zeta"], from) {
		t.Fatalf("no move record in zeta's stream:\n%s", out["log/zeta"])
	}
	out["log/zeta"] = strings.Replace(out["log/zeta"], from, to, 1)
	return out
}

// allShared joins the shared records of every segment.
func allShared(m map[string]string) string {
	var b strings.Builder
	for _, k := range sortedKeys(m) {
		if strings.HasPrefix(k, "shared") {
			b.WriteString(m[k])
		}
	}
	return b.String()
}

// sharedAfter is what forget leaves of sharedRepo's shared records, by
// record (LSN/seq): "" dropped, else the record as it must read.
func sharedAfter() map[string]string {
	l1, l2 := 0x3000020, 0x3000120
	r := func(l, seq int) string { return fmt.Sprintf("%d/%d", l, seq) }
	return map[string]string{
		r(0x3000001, 1): "", // before any set the log continues
		r(l1, 2):        "", r(l1, 3): "", r(l1, 4): "", r(l1+1, 1): "", r(l1+1, 2): "",
		r(l2, 1):   "", // task 40 was the victim's then
		r(l2+5, 1): "", // task 50 was the victim's then
		r(l2+6, 1): "",
		// Moves: the victim's side blanked, the other's as it was.
		r(l2+2, 1): `U [{'t' "40"} {'t' "5"} {'t' "now zeta's"}] [{'t' "40"} {'t' "4"} {'a' ""}] []`,
		r(l2+4, 1): `U [{'t' "50"} {'t' "4"} {'u' ""}] [{'t' "50"} {'t' "5"} {'t' "zeta task"}] []`,
		r(l2+6, 2): `U [{'t' "60"} {'t' "5"} {'t' "zeta's now"}] [{'t' "60"} {'t' "4"} {'a' ""}] []`,
	}
}

// checkSharedAfter compares the shared records after forget with those
// before, as sharedAfter says.
func checkSharedAfter(t *testing.T, before, got string) {
	t.Helper()
	want := sharedAfter()
	var exp []string
	for _, line := range strings.Split(strings.TrimSpace(before), "\n") {
		id, rest, _ := strings.Cut(line, " ")
		w, ok := want[id]
		switch {
		case !ok:
			exp = append(exp, line)
		case w != "":
			exp = append(exp, id+" "+w)
			if w == rest {
				t.Fatalf("test: %s does not change", id)
			}
		}
	}
	if g := strings.Split(strings.TrimSpace(got), "\n"); strings.Join(g, "\n") != strings.Join(exp, "\n") {
		t.Fatalf("shared records after forget:\n%s\nwant\n%s", strings.Join(g, "\n"), strings.Join(exp, "\n"))
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
					who = fmt.Sprintf("shared@%x", idx.Start)
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
			if !strings.Contains(k, "victim") && !strings.HasPrefix(k, "shared") {
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
			if g, w := others(got), others(before); fmt.Sprint(g) != fmt.Sprint(w) && fmt.Sprint(g) != fmt.Sprint(others(movedAfter(t, before))) {
				t.Fatalf("%s %d: other tenants changed:\n%v\nwant\n%v", fault.Op, k, g, w)
			}
			for seg := range before {
				if strings.HasPrefix(seg, "shared") && got[seg] != before[seg] && got[seg] != want[seg] {
					t.Fatalf("%s %d: shared records of %s half rewritten:\n%s", fault.Op, k, seg, got[seg])
				}
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
	// Both segments hold shared records of the victim (v1: its own
	// stream too, sealed with the segment's key).
	wantSegs := 2
	before := sharedContents(t, openWith(t, tmpl, ks.reader, false))
	if !strings.Contains(allShared(before), forgetMarker) {
		t.Fatal("no marker in the shared records to begin with")
	}
	others := func(m map[string]string) string {
		var b strings.Builder
		for _, k := range sortedKeys(m) {
			if !strings.Contains(k, "victim") && !strings.HasPrefix(k, "shared") {
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
			if s := plan.Summary; !pending && (s.SharedDropped != 9 || s.SharedBlanked != 3 || s.MovesBlanked != 1 || s.SharedUndecided != 1 || s.Segments != wantSegs) {
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
		if others(got) != others(movedAfter(t, before)) {
			t.Fatalf("%s: other tenants changed:\n%s\nwant\n%s", what, others(got), others(movedAfter(t, before)))
		}
		checkSharedAfter(t, allShared(before), allShared(got))
		for k, recs := range got {
			if !strings.HasPrefix(k, "log/") && !strings.HasPrefix(k, "shared") {
				continue
			}
			for _, line := range strings.Split(recs, "\n") {
				if strings.Contains(line, forgetMarker) && !strings.Contains(line, "undecidable") {
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
	if d := tomb.Done; d == nil || d.SharedDropped != 9 || d.SharedBlanked != 3 || d.SharedRecords != 1 || d.Segments != wantSegs || tomb.Method != "crypto-shred" {
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
			if got := sharedContents(t, fresh); others(got) != others(before) && others(got) != others(movedAfter(t, before)) {
				t.Fatalf("%s %d: other tenants changed", op, k)
			}
			if _, err := shred(fresh); err != nil {
				t.Fatalf("%s %d: rerun: %v", op, k, err)
			}
			check(fmt.Sprintf("%s %d and a rerun", op, k), fb)
		}
	}
}
