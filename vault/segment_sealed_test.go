package vault_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/vault"
)

// writeTestSegment archives one segment with a change for acme (holding
// payload) and a shared change, as the capture does.
func writeTestSegment(t testing.TB, v *vault.Vault, start, end uint64, payload string) *vault.SegmentIndex {
	t.Helper()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b := vault.NewSegmentBuilder("sys_db", "slot@0/1", start)
	b.AddRelation(vault.Relation{OID: 42, Schema: "public", Name: "items", Columns: []string{"tenant_id", "body"}, Types: []string{"text", "text"}})
	b.Add("acme", false, &vault.Change{LSN: start + 1, Time: at, Rel: 42, Op: vault.OpInsert,
		New: []vault.Value{{Kind: vault.ValueText, Data: []byte("acme")}, {Kind: vault.ValueText, Data: []byte(payload)}}})
	b.Add("", true, &vault.Change{LSN: start + 2, Time: at.Add(time.Second), Rel: 42, Op: vault.OpTruncate, Rels: []uint32{42}})
	idx, err := v.WriteSegment(context.Background(), b, end, at.Add(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// TestEncryptedChangeLog: in an encrypted repository the change log is
// sealed like the sets: the capturing side reads back only the signed
// header it needs to continue, readers with the identity get every record,
// and the stored bytes hold neither the data nor the tenant IDs.
func TestEncryptedChangeLog(t *testing.T) {
	ctx := context.Background()
	ks := newKeySet(t)
	dir, b := newRepoDir(t)
	w := openWith(t, b, ks.writer, true)
	writeTestSegment(t, w, 0x100, 0x200, marker)
	ref := vault.SegmentRef{Stream: "sys_db", Start: 0x100, End: 0x200}
	if n := grepRepo(t, dir, marker); n < 3 {
		t.Fatalf("only %d objects", n)
	}
	grepRepo(t, dir, `"acme"`)
	grepRepo(t, dir, "items")

	// The capturing side: the header, no records.
	hdr, err := w.ReadSegmentIndex(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if hdr.Opened() || hdr.End != 0x200 || hdr.Epoch != "slot@0/1" || hdr.Records != 2 || len(hdr.Streams) != 0 {
		t.Fatalf("header read by the writer: %+v", hdr)
	}
	if _, until, err := w.ArchivedUntil(ctx, "sys_db"); err != nil || !until.Equal(time.Date(2026, 3, 1, 12, 0, 2, 0, time.UTC)) {
		t.Fatalf("archived until: %v %v", until, err)
	}
	if _, err := w.ReadChanges(ctx, hdr, "acme"); !errors.Is(err, vault.ErrNoIdentity) {
		t.Fatalf("records read without the identity: %v", err)
	}
	if res, err := w.VerifySegments(ctx, true); err != nil || len(res.Problems) != 0 || res.Segments != 1 {
		t.Fatalf("verify without identity: %+v %v", res, err)
	}

	// The reader: everything.
	r := openWith(t, b, ks.reader, false)
	idx, err := r.ReadSegmentIndex(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	changes, err := r.ReadChanges(ctx, idx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 2 || string(changes[0].New[1].Data) != marker || !changes[1].Shared || changes[1].Op != vault.OpTruncate {
		t.Fatalf("changes: %+v", changes)
	}
	if res, err := r.VerifySegments(ctx, true); err != nil || len(res.Problems) != 0 || res.Records != 2 {
		t.Fatalf("verify with identity: %+v %v", res, err)
	}

	// A log signed by someone the identity file does not trust is refused.
	other := newKeySet(t)
	other.writer.Recipients = ks.writer.Recipients
	forger := openWith(t, b, other.writer, false)
	writeTestSegment(t, forger, 0x200, 0x300, "forged")
	_, err = r.ReadSegmentIndex(ctx, vault.SegmentRef{Stream: "sys_db", Start: 0x200, End: 0x300})
	if !errors.Is(err, tenantvault.ErrIntegrity) {
		t.Fatalf("forged segment: %v", err)
	}

	// A plaintext index in an encrypted repository (a downgrade) is refused.
	_, pb := newRepoDir(t)
	plain := openWith(t, pb, nil, true)
	writeTestSegment(t, plain, 0x300, 0x400, "plain")
	data, _ := os.ReadFile(filepath.Join(pb.Location()[len("file://"):], "changes/sys_db/0000000000000300-0000000000000400.idx"))
	os.WriteFile(filepath.Join(dir, "changes/sys_db/0000000000000300-0000000000000400.idx"), data, 0o600)
	_, err = w.ReadSegmentIndex(ctx, vault.SegmentRef{Stream: "sys_db", Start: 0x300, End: 0x400})
	if !errors.Is(err, tenantvault.ErrIntegrity) {
		t.Fatalf("plaintext index in an encrypted repository: %v", err)
	}
	if got, err := plain.ReadSegmentIndex(ctx, vault.SegmentRef{Stream: "sys_db", Start: 0x300, End: 0x400}); err != nil || len(got.Streams) != 2 || got.Streams[1].Tenant != "acme" {
		t.Fatalf("plaintext segment: %+v %v", got, err)
	}
}
