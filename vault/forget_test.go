package vault_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/s3"
	"github.com/tenantvault/tenantvault/vault"
)

const forgetMarker = "ERASE-ME-7f3a9c"

// forgetRepo writes a repository in which the tenant "victim" is
// everywhere forget must look: a set format 1 set, a set format 2 set
// that reuses the first one's packs (so it points into them), a
// pre-restore set, and change-log segments with a frame of its own.
func forgetRepo(t *testing.T, b repo.Backend) {
	t.Helper()
	ctx := context.Background()
	v1, err := vault.Open(ctx, b, vault.Options{Init: true, SetFormat: manifest.Version1})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	content := func(tenant string, n int) string {
		var sb strings.Builder
		for i := range n {
			fmt.Fprintf(&sb, "%d\t%s\trow %d of %s\n", i, tenant, i, tenant)
		}
		return sb.String()
	}
	victim := func(n int) string {
		var sb strings.Builder
		for i := range n {
			fmt.Fprintf(&sb, "%d\tvictim\t%s %d\n", i, forgetMarker, i)
		}
		return sb.String()
	}
	tenants := map[string]string{"acme": content("acme", 40), "globex": content("globex", 30), "victim": victim(50), "zeta": content("zeta", 20)}
	writeTenantSet(t, v1, tenantSet{at: t0, tenants: tenants, global: "1\tde\n2\tfr\n", schema: "schema"})
	v2 := openWith(t, b, nil, false)
	prev := &manifest.Manifest{Source: manifest.Source{Name: "main", Host: "h:5432", Database: "db", SystemID: "42"}, Tenancy: manifest.Tenancy{Model: "column", TenantColumn: "tenant_id"}}
	reuse, err := v2.PreviousChunks(ctx, prev)
	if err != nil || reuse.Set == "" {
		t.Fatalf("reuse: %v", err)
	}
	tenants["globex"] = content("globex", 31) // changed: stored anew; the rest reused
	writeTenantSet(t, v2, tenantSet{at: t0.Add(time.Hour), tenants: tenants, global: "1\tde\n2\tfr\n", schema: "schema", reuse: reuse})
	pre := writeTenantSet(t, v2, tenantSet{at: t0.Add(2 * time.Hour), tenants: map[string]string{"victim": victim(3)}})
	_ = pre

	stream := vault.StreamName("42", "db")
	lsn := uint64(0x3000000)
	for seg := range 3 {
		sb := vault.NewSegmentBuilder(stream, "e1", lsn)
		sb.AddRelation(vault.Relation{OID: 1, Schema: "public", Name: "items", Columns: []string{"id", "tenant_id", "body"}, Types: []string{"bigint", "text", "text"}})
		row := func(tenant, body string) []vault.Value {
			return []vault.Value{{Kind: vault.ValueText, Data: []byte("1")}, {Kind: vault.ValueText, Data: []byte(tenant)}, {Kind: vault.ValueText, Data: []byte(body)}}
		}
		at := t0.Add(3*time.Hour + time.Duration(seg)*time.Minute)
		sb.Add("acme", false, &vault.Change{LSN: lsn + 1, Time: at, Rel: 1, Op: vault.OpInsert, New: row("acme", "hello")})
		if seg != 1 {
			sb.Add("victim", false, &vault.Change{LSN: lsn + 2, Time: at, Rel: 1, Op: vault.OpInsert, New: row("victim", forgetMarker+" in the log")})
		}
		sb.Add("", true, &vault.Change{LSN: lsn + 3, Time: at, Rel: 1, Op: vault.OpDelete, Old: row("?", "shared")})
		if _, err := v2.WriteSegment(ctx, sb, lsn+0x100, at); err != nil {
			t.Fatal(err)
		}
		lsn += 0x100
	}
	// A segment that holds only the victim's records.
	sb := vault.NewSegmentBuilder(stream, "e1", lsn)
	sb.Add("victim", false, &vault.Change{LSN: lsn + 1, Time: t0.Add(4 * time.Hour), Rel: 1, Op: vault.OpInsert, New: []vault.Value{{Kind: vault.ValueText, Data: []byte(forgetMarker)}}})
	if _, err := v2.WriteSegment(ctx, sb, lsn+0x100, t0.Add(4*time.Hour)); err != nil {
		t.Fatal(err)
	}
}

// forgetBackends are the storages the forget tests run on: a directory,
// and a MinIO bucket.
func forgetBackends(t *testing.T) map[string]func(t *testing.T) repo.Backend {
	return map[string]func(t *testing.T) repo.Backend{
		"file": func(t *testing.T) repo.Backend { _, b := newRepoDir(t); return b },
		"s3": func(t *testing.T) repo.Backend {
			b, err := repo.Open(context.Background(), testenv.NewS3Repo(t), repo.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
	}
}

// copyRepo copies every object of from into to.
func copyRepo(t *testing.T, from, to repo.Backend) {
	t.Helper()
	ctx := context.Background()
	var keys []string
	if err := from.List(ctx, "", func(o repo.ObjectInfo) error { keys = append(keys, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		data, err := repo.ReadAll(ctx, from, k)
		if err != nil {
			t.Fatal(err)
		}
		if err := to.Put(ctx, k, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
}

// findMarker searches every stored byte, raw and inside every zstd frame
// found anywhere in an object, for forgetMarker.
func findMarker(t *testing.T, b repo.Backend) []string {
	t.Helper()
	ctx := context.Background()
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	magic := []byte{0x28, 0xb5, 0x2f, 0xfd}
	var keys, hits []string
	if err := b.List(ctx, "", func(o repo.ObjectInfo) error { keys = append(keys, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		data, err := repo.ReadAll(ctx, b, k)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte(forgetMarker)) {
			hits = append(hits, k+" (raw)")
		}
		for i := 0; i+4 <= len(data); i++ {
			if !bytes.Equal(data[i:i+4], magic) {
				continue
			}
			if err := dec.Reset(bytes.NewReader(data[i:])); err != nil {
				continue
			}
			out, _ := io.ReadAll(io.LimitReader(dec, 64<<20))
			if bytes.Contains(out, []byte(forgetMarker)) {
				hits = append(hits, fmt.Sprintf("%s (zstd frame at %d)", k, i))
			}
		}
	}
	return hits
}

// contents reads every tenant's chunks of every set (what a restore
// loads) and every tenant's change records, checked against their digests.
func contents(t *testing.T, v *vault.Vault) map[string]string {
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
		read := func(who string, c manifest.Chunk) {
			rc, err := v.OpenChunk(ctx, m, c)
			if err != nil {
				t.Fatalf("set %s %s: %v", id, who, err)
			}
			data, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatalf("set %s %s: %v", id, who, err)
			}
			out[id+"/"+who] += string(data)
		}
		for _, c := range m.Global {
			read("(global)", c)
		}
		for _, tn := range m.Tenants {
			for _, c := range tn.Chunks {
				read(tn.ID, c)
			}
		}
	}
	streams, err := v.ListStreams(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range streams {
		refs, err := v.ListSegments(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		for _, ref := range refs {
			idx, err := v.ReadSegmentIndex(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			for _, tenant := range []string{"acme", "globex", "victim", "zeta"} {
				ch, err := v.ReadChanges(ctx, idx, tenant)
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range ch {
					who := tenant
					if c.Shared {
						who = "(shared, read by " + tenant + ")"
					}
					out[fmt.Sprintf("log/%x/%s", ref.Start, who)] += fmt.Sprintf("%d %c %q %q\n", c.LSN, c.Op, c.New, c.Old)
				}
			}
		}
	}
	return out
}

func withoutVictim(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if !strings.HasSuffix(k, "/victim") && !strings.HasSuffix(k, "read by victim)") {
			out[k] = v
		}
	}
	return out
}

func mustVerify(t *testing.T, v *vault.Vault) {
	t.Helper()
	ctx := context.Background()
	res, err := v.Verify(ctx, nil, true, nil)
	if err != nil || len(res.Problems) > 0 {
		t.Fatalf("verify --read-data: %v %+v", err, res)
	}
	sc, err := v.VerifySegments(ctx, true)
	if err != nil || len(sc.Problems) > 0 {
		t.Fatalf("verify segments: %v %+v", err, sc)
	}
}

func forget(ctx context.Context, v *vault.Vault, tenant string) (*vault.ForgetResult, error) {
	pending, err := v.PendingForget(ctx, tenant)
	if err != nil {
		return nil, err
	}
	var plan *vault.ForgetPlan
	if !pending {
		if plan, err = v.PlanForget(ctx, tenant, 1, nil); err != nil {
			return nil, err
		}
	}
	return v.Forget(ctx, tenant, plan, vault.ForgetOptions{Reason: "test", By: "tester"})
}

func listing(t *testing.T, b repo.Backend) string {
	t.Helper()
	var sb strings.Builder
	if err := b.List(context.Background(), "", func(o repo.ObjectInfo) error {
		fmt.Fprintf(&sb, "%s %d %s\n", o.Key, o.Size, o.ModTime)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return sb.String()
}

// TestForgetRewrites: after forget no stored byte holds the tenant's
// marker, every other tenant's chunks and change records read back
// identical, verify passes, a tombstone and an audit record name the
// tenant only by hash, and a plan changes nothing.
func countCatalog(t *testing.T, b repo.Backend) int {
	t.Helper()
	n := 0
	if err := b.List(context.Background(), vault.CatalogPrefix, func(repo.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestForgetRewrites(t *testing.T) {
	for name, mk := range forgetBackends(t) {
		t.Run(name, func(t *testing.T) { testForgetRewrites(t, mk(t)) })
	}
}

func testForgetRewrites(t *testing.T, b repo.Backend) {
	ctx := context.Background()
	forgetRepo(t, b)
	v := openWith(t, b, nil, false)
	before := contents(t, v)
	if len(findMarker(t, b)) == 0 {
		t.Fatal("the marker is not in the repository to begin with")
	}
	// A catalog over the sets holds the tenant's ID and numbers: forget
	// drops it with the sets it rewrites.
	defer vault.SetCatalogFanout(2)()
	if err := v.UpdateCatalog(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if n := countCatalog(t, b); n == 0 {
		t.Fatal("no catalog was built")
	}
	list := listing(t, b)
	plan, err := v.PlanForget(ctx, "victim", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := plan.Summary
	if len(s.SetsHolding) != 3 || len(s.SetsRewritten) != 3 || s.Segments != 3 || s.SharedRecords != 3 || s.TenantBytes == 0 || s.PacksDropped == 0 {
		t.Fatalf("plan: %+v", s)
	}
	if listing(t, b) != list {
		t.Fatal("planning changed the repository")
	}
	res, err := v.Forget(ctx, "victim", plan, vault.ForgetOptions{Reason: "art. 17", By: "tester"})
	if err != nil {
		t.Fatal(err)
	}
	if hits := findMarker(t, b); len(hits) > 0 {
		t.Fatalf("the erased tenant's marker is still stored: %v", hits)
	}
	after := openWith(t, b, nil, false)
	mustVerify(t, after)
	if n := countCatalog(t, b); n != 0 {
		t.Fatalf("%d catalog objects left after forget", n)
	}
	ids, err := after.ListSets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := after.TenantHistory(ctx, ids, "victim"); err != nil || len(h) != 0 {
		t.Fatalf("history of the erased tenant: %+v, %v", h, err)
	}
	got := contents(t, after)
	want := withoutVictim(before)
	for k, w := range want {
		if got[k] != w {
			t.Fatalf("%s changed:\n%q\nwant\n%q", k, got[k], w)
		}
	}
	for k := range got {
		if strings.HasSuffix(k, "/victim") {
			t.Fatalf("%s still readable", k)
		}
	}
	if res.Done.Sets != 3 || res.Done.SetsHeld != 3 || res.Tombstone.State != vault.TombstoneErased {
		t.Fatalf("result: %+v %+v", res.Done, res.Tombstone)
	}
	tomb, err := after.Erased(ctx, "victim")
	if err != nil || tomb == nil || tomb.State != vault.TombstoneErased || tomb.Reason != "art. 17" {
		t.Fatalf("tombstone: %+v %v", tomb, err)
	}
	if err := after.RefuseErased(ctx, []string{"acme", "victim"}); !errors.Is(err, vault.ErrErased) || !strings.Contains(err.Error(), `tenant "victim" (erased on `) {
		t.Fatalf("refuse: %v", err)
	}
	recs, err := after.AuditRecords(ctx)
	if err != nil || len(recs) != 1 || recs[0].Outcome != "erased" || recs[0].TenantHash != after.TenantHash("victim") {
		t.Fatalf("audit: %+v %v", recs, err)
	}
	// Nothing in the repository names the tenant, not even a key.
	if strings.Contains(listing(t, b), "victim") {
		t.Fatal("a key names the erased tenant")
	}
	// GC finds nothing left over; nothing plans to rewrite anything.
	gc, err := after.GC(ctx, vault.GCOptions{MinAge: -1, DryRun: true})
	if err != nil || len(gc.Collected) != 0 {
		t.Fatalf("gc after forget: %+v %v", gc, err)
	}
	again, err := after.PlanForget(ctx, "victim", 1, nil)
	if err != nil || !again.Summary.Empty() {
		t.Fatalf("plan after forget: %+v %v", again, err)
	}
	if p, _ := after.PendingForgets(ctx); len(p) != 0 {
		t.Fatalf("pending after forget: %+v", p)
	}

	// A second erasure rewrites the packs and sets the first one wrote
	// (generation 2), and leaves the rest as it was.
	if _, err := forget(ctx, after, "acme"); err != nil {
		t.Fatal(err)
	}
	last := openWith(t, b, nil, false)
	mustVerify(t, last)
	got = contents(t, last)
	for k, w := range want {
		if strings.Contains(k, "acme") {
			continue
		}
		if got[k] != w {
			t.Fatalf("after a second erasure %s changed", k)
		}
	}
	for k := range got {
		if strings.HasSuffix(k, "/acme") {
			t.Fatalf("%s still readable", k)
		}
	}
	if !strings.Contains(listing(t, b), ".g2.") {
		t.Fatalf("no second generation:\n%s", listing(t, b))
	}
	if tomb, _ := last.Erased(ctx, "victim"); tomb == nil || tomb.State != vault.TombstoneErased {
		t.Fatalf("the first tombstone: %+v", tomb)
	}
}

// TestForgetInterrupted: a forget that fails at any write or delete
// leaves a repository that verifies and reads back every other tenant
// unchanged, and a rerun completes the erasure.
func TestForgetInterrupted(t *testing.T) {
	ctx := context.Background()
	t.Run("file", func(t *testing.T) {
		testForgetInterrupted(t, func(t *testing.T, _ string) repo.Backend { _, b := newRepoDir(t); return b }, 1, true)
	})
	t.Run("s3", func(t *testing.T) {
		// One bucket, a prefix per run; every third interruption point
		// (MinIO is slower than a directory).
		bucket := testenv.NewBucket(t)
		testForgetInterrupted(t, func(t *testing.T, prefix string) repo.Backend {
			b, err := repo.Open(ctx, testenv.S3RepoURL(t, bucket, prefix), repo.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}, 3, false)
	})
}

func testForgetInterrupted(t *testing.T, open func(t *testing.T, prefix string) repo.Backend, step int, lost bool) {
	ctx := context.Background()
	tmpl := open(t, "template")
	defer tmpl.Close()
	forgetRepo(t, tmpl)
	want := withoutVictim(contents(t, openWith(t, tmpl, nil, false)))
	faults := []repo.Fault{{Op: repo.OpPut}, {Op: repo.OpDelete}}
	if lost {
		// The call reaches the storage and succeeds; its answer is lost.
		faults = append(faults, repo.Fault{Op: repo.OpPut, Lost: true}, repo.Fault{Op: repo.OpDelete, Lost: true})
	}
	for _, fault := range faults {
		op := fault.Op
		if fault.Lost {
			op += " (answer lost)"
		}
		for k := 0; ; k += step {
			fb := open(t, fmt.Sprintf("%s-%v-%d", fault.Op, fault.Lost, k))
			copyRepo(t, tmpl, fb)
			f := repo.NewFaulty(fb)
			v := openWith(t, f, nil, false)
			f.Inject(repo.Fault{Op: fault.Op, Lost: fault.Lost, After: k, Times: 1, Err: repo.Permanent(fmt.Errorf("%w: crash", repo.ErrInjected))})
			_, err := forget(ctx, v, "victim")
			if err == nil {
				if k < 3 {
					t.Fatalf("%s: only %d call(s) to interrupt", op, k)
				}
				t.Logf("interrupted forget at %d of its %s calls (every %d)", (k+step-1)/step, op, step)
				fb.Close()
				break
			}
			if !errors.Is(err, repo.ErrInjected) {
				t.Fatalf("%s %d: %v", op, k, err)
			}
			fresh := openWith(t, fb, nil, false)
			mustVerify(t, fresh)
			got := withoutVictim(contents(t, fresh))
			for key, w := range want {
				if got[key] != w {
					t.Fatalf("interrupted at %s %d: %s changed", op, k, key)
				}
			}
			if err := fresh.RefuseErased(ctx, []string{"victim"}); (k > 0 || fault.Lost) && fault.Op == repo.OpPut && !errors.Is(err, vault.ErrErased) {
				t.Fatalf("interrupted at %s %d: the tenant is not refused: %v", op, k, err)
			}
			if _, err := forget(ctx, openWith(t, fb, nil, false), "victim"); err != nil {
				t.Fatalf("rerun after %s %d: %v", op, k, err)
			}
			done := openWith(t, fb, nil, false)
			mustVerify(t, done)
			if hits := findMarker(t, fb); len(hits) > 0 {
				t.Fatalf("after %s %d and a rerun, the marker is still stored: %v", op, k, hits)
			}
			got = contents(t, done)
			for key, w := range want {
				if got[key] != w {
					t.Fatalf("after %s %d and a rerun: %s changed", op, k, key)
				}
			}
			if p, _ := done.PendingForgets(ctx); len(p) != 0 {
				t.Fatalf("after %s %d and a rerun: still pending", op, k)
			}
			fb.Close()
		}
	}
}

// TestForgetRefusesEncrypted: an encrypted repository is not rewritten
// (exit code 2: it is erased by destroying keys); RecordErased leaves the
// tombstone and audit record crypto-shredding needs.
func TestForgetRefusesEncrypted(t *testing.T) {
	ctx := context.Background()
	_, b := newRepoDir(t)
	v := openWith(t, b, newKeySet(t).writer, true)
	_, err := v.PlanForget(ctx, "acme", 1, nil)
	var ie *tenantvault.InputError
	if !errors.As(err, &ie) || !errors.Is(err, vault.ErrForgetEncrypted) || err.Error() != "an encrypted repository is erased by destroying the tenant's own data keys, not by rewriting" {
		t.Fatalf("encrypted: %v", err)
	}
	// What crypto-shredding will record: the same tombstone and audit
	// record, so restores refuse the tenant the same way.
	if _, err := v.RecordErased(ctx, "acme", "ticket 9", "tester", "crypto-shred", nil); err != nil {
		t.Fatal(err)
	}
	if err := v.RefuseErased(ctx, []string{"acme", "globex"}); !errors.Is(err, vault.ErrErased) || !strings.Contains(err.Error(), `tenant "acme" (erased on `) {
		t.Fatalf("after RecordErased: %v", err)
	}
	if recs, err := v.AuditRecords(ctx); err != nil || len(recs) != 1 || recs[0].TenantHash != v.TenantHash("acme") {
		t.Fatalf("audit: %+v %v", recs, err)
	}
}
