package vault_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/vault"
)

// TestEncryptedSetFormat2: an encrypted repository writes set format 2
// (sealed pages and directory, a plaintext locator), one tenant costs the
// header, the directory and one page, no tenant ID is stored in the clear,
// and set format 1 written into the same repository stays readable.
func TestEncryptedSetFormat2(t *testing.T) {
	ctx := context.Background()
	dir, b := newRepoDir(t)
	ks := newKeySet(t)
	w := openWith(t, b, ks.writer, true)
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	content := map[string]string{}
	for i := range 300 {
		content["tenant-"+marker+"-"+string(rune('a'+i%26))+strings.Repeat("x", i/26)] = strings.Repeat("1\tsome rows "+marker+"\n", 1+i%40)
	}
	m2 := writeTenantSet(t, w, tenantSet{at: at, tenants: content, global: "DE\tGermany\n"})

	v1w, err := vault.Open(ctx, b, vault.Options{Keys: ks.writer, SetFormat: 1})
	if err != nil {
		t.Fatal(err)
	}
	m1 := writeTenantSet(t, v1w, tenantSet{at: at.Add(time.Hour), tenants: map[string]string{"old-" + marker: "2\told\n"}})
	grepRepo(t, dir, marker)

	anon := openWith(t, b, nil, false)
	x2, err := anon.ReadIndex(ctx, m2.ID)
	if err != nil || x2.Version != 2 || x2.Index == nil || len(x2.Chunks) != 0 || x2.Stats.Chunks != 301 {
		t.Fatalf("set format 2 header: %+v, %v", x2, err)
	}
	x1, err := anon.ReadIndex(ctx, m1.ID)
	if err != nil || x1.Version != 1 || x1.Index != nil || len(x1.Chunks) != 1 {
		t.Fatalf("set format 1 header: %+v, %v", x1, err)
	}
	n := 0
	if err := anon.EachIndexChunk(ctx, x2, func(c vault.IndexChunk) error {
		if c.Tag == "" {
			t.Error("a locator line without its reuse tag")
		}
		n++
		return nil
	}); err != nil || n != 301 {
		t.Fatalf("locator: %d chunks, %v", n, err)
	}
	res, err := anon.Verify(ctx, nil, true, nil)
	if err != nil || len(res.Problems) != 0 || !res.StoredOnly || res.Chunks != 302 {
		t.Fatalf("verify without keys: %+v, %v", res, err)
	}

	// One tenant with the identity: header, directory, one page.
	cb := &countingBackend{Backend: b, bytes: map[string]int64{}}
	reader, err := vault.Open(ctx, cb, vault.Options{Keys: ks.reader})
	if err != nil {
		t.Fatal(err)
	}
	cb.gets = 0
	s, err := reader.OpenSet(ctx, m2.ID)
	if err != nil || !s.Indexed() || s.TenantCount() != 300 {
		t.Fatalf("open set: %v", err)
	}
	id := sortedKeys(content)[150]
	tn, err := s.Tenant(ctx, id)
	if err != nil || tn == nil {
		t.Fatalf("tenant %q: %v, %v", id, tn, err)
	}
	if cb.gets != 3 {
		t.Errorf("one tenant took %d GETs, want 3 (header, directory, page)", cb.gets)
	}
	got, err := readChunk(t, reader, s.Header(), tn.Chunks[0])
	if err != nil || got != content[id] {
		t.Fatalf("chunk of %q: %v", id, err)
	}
	if _, err := s.Tenant(ctx, "no such tenant"); err != nil {
		t.Fatal(err)
	}
	// The whole set and the old format, with the identity.
	full, err := reader.ReadManifest(ctx, m2.ID)
	if err != nil || len(full.Tenants) != 300 {
		t.Fatalf("whole set: %v", err)
	}
	old, err := reader.ReadManifest(ctx, m1.ID)
	if err != nil || len(old.Tenants) != 1 || old.Version != manifest.Version1 {
		t.Fatalf("set format 1: %v", err)
	}
	if got, err := readChunk(t, reader, old, old.Tenants[0].Chunks[0]); err != nil || got != "2\told\n" {
		t.Fatalf("set format 1 chunk: %v", err)
	}
	hist, err := reader.TenantHistory(ctx, []string{m2.ID, m1.ID}, id)
	if err != nil || len(hist) != 1 || hist[0].Set.ID != m2.ID {
		t.Fatalf("history: %+v, %v", hist, err)
	}
	// (countingBackend is not safe for verify's parallel reads.)
	res, err = openWith(t, b, ks.reader, false).Verify(ctx, nil, true, nil)
	if err != nil || len(res.Problems) != 0 || res.StoredOnly || res.Chunks != 302 {
		t.Fatalf("verify with the identity: %+v, %v", res, err)
	}
	// The writer cannot read back the pages it sealed.
	if _, err := openWith(t, b, ks.writer, false).ReadManifest(ctx, m2.ID); err == nil {
		t.Fatal("the writer read an encrypted set back")
	}
}
