package vault_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// keySet is what keygen produces, parsed: the reader's identity file and
// the writer's signing key file.
type keySet struct {
	reader, writer         *vault.Keys
	recipient, signer      string
	identityText, signText string
}

func newKeySet(t testing.TB) keySet {
	t.Helper()
	id, sign, recipient, signer, err := vault.NewKeyPair("2026-01-01T00:00:00Z")
	if err != nil {
		t.Fatal(err)
	}
	r, err := vault.ParseKeyFile(strings.NewReader(id))
	if err != nil {
		t.Fatal(err)
	}
	w, err := vault.ParseKeyFile(strings.NewReader(sign))
	if err != nil {
		t.Fatal(err)
	}
	return keySet{reader: r, writer: w, recipient: recipient, signer: signer, identityText: id, signText: sign}
}

// repoDir is a file repository's directory and its URL.
func newRepoDir(t testing.TB) (string, repo.Backend) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	b, err := repo.Open(context.Background(), "file://"+dir, repo.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return dir, b
}

func openWith(t testing.TB, b repo.Backend, keys *vault.Keys, init bool) *vault.Vault {
	t.Helper()
	v, err := vault.Open(context.Background(), b, vault.Options{Init: init, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// tenantSet describes a set to write: per tenant, the content of one
// table's chunk.
type tenantSet struct {
	at      time.Time
	tenants map[string]string
	global  string
	schema  string
	reuse   *vault.ReuseIndex
	// edit changes the manifest before it is written.
	edit func(*manifest.Manifest)
}

const testSignature = "sig-of-public.items"

// writeTenantSet writes a set with one scoped table (a chunk per tenant)
// and one global table, the way snapshot.Run does.
func writeTenantSet(t testing.TB, v *vault.Vault, s tenantSet) *manifest.Manifest {
	t.Helper()
	ctx := context.Background()
	id := vault.NewSetID(s.at)
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
		StartedAt: s.at, ConsistentAt: s.at, FinishedAt: s.at,
		Tables: []manifest.Table{
			{Schema: "public", Name: "items", Kind: manifest.TableScoped, Signature: testSignature},
			{Schema: "public", Name: "countries", Kind: manifest.TableGlobal, Signature: "sig-of-countries"},
		},
	}
	packs := map[string]int{}
	chunk := func(tenant string, global bool, table int, content string) manifest.Chunk {
		cw := p.StartChunk()
		cw.Write([]byte(content))
		ref, err := cw.Finish(s.reuse.Lookup(tenant, global, m.Tables[table].Signature))
		if err != nil {
			t.Fatal(err)
		}
		i, ok := packs[ref.Pack]
		if !ok {
			i = len(m.Packs)
			packs[ref.Pack] = i
			m.Packs = append(m.Packs, ref.Pack)
		}
		c := manifest.Chunk{Table: table, Rows: int64(strings.Count(content, "\n")), Size: ref.Size, Digest: ref.Digest,
			Pack: i, Offset: ref.Offset, Length: ref.Length, SHA256: ref.SHA256, Reused: ref.Reused}
		if c.Reused {
			m.Stats.Reused += c.Length
			m.Stats.ReusedChunks++
		}
		return c
	}
	if s.global != "" {
		m.Global = append(m.Global, chunk("", true, 1, s.global))
	}
	for _, id := range sortedKeys(s.tenants) {
		m.Tenants = append(m.Tenants, manifest.Tenant{ID: id, Chunks: []manifest.Chunk{chunk(id, false, 0, s.tenants[id])}})
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if s.schema != "" {
		d, err := w.PutSchema(ctx, "db", []byte(s.schema))
		if err != nil {
			t.Fatal(err)
		}
		m.Schemas = []manifest.SchemaDump{d}
	}
	if s.edit != nil {
		s.edit(m)
	}
	if err := v.WriteManifest(ctx, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func sortedKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func readChunk(t testing.TB, v *vault.Vault, m *manifest.Manifest, c manifest.Chunk) (string, error) {
	t.Helper()
	rc, err := v.OpenChunk(context.Background(), m, c)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	return string(data), err
}

// grepRepo fails the test when any stored object holds marker.
func grepRepo(t testing.TB, dir, marker string) int {
	t.Helper()
	n := 0
	filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		n++
		if bytes.Contains(data, []byte(marker)) {
			t.Errorf("%s holds the plaintext marker %q", path, marker)
		}
		return nil
	})
	return n
}

const marker = "PLAINTEXT-MARKER-7f3a"

func TestEncryptedRepository(t *testing.T) {
	ctx := context.Background()
	dir, b := newRepoDir(t)
	ks := newKeySet(t)
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

	writer := openWith(t, b, ks.writer, true)
	if !writer.Encrypted() || writer.CanDecrypt() {
		t.Fatalf("encrypted %v, writer can decrypt %v", writer.Encrypted(), writer.CanDecrypt())
	}
	cfg := writer.Config()
	if cfg.Version != vault.FormatEncrypted || cfg.Encryption.Recipients[0] != ks.recipient || cfg.Encryption.Signers[0] != ks.signer {
		t.Fatalf("config %+v", cfg)
	}
	content := map[string]string{
		"acme":          "1\t" + marker + " acme's secret row\n2\tmore\n",
		"o'brien & co":  "3\t" + marker + " another tenant\n",
		"tenant-marker": strings.Repeat("4\t"+marker+" a big chunk over several segments\n", 5000),
	}
	m1 := writeTenantSet(t, writer, tenantSet{at: at, tenants: content, global: "DE\tGermany " + marker + "\n", schema: "PGDMP schema " + marker})
	if n := grepRepo(t, dir, marker); n < 4 {
		t.Fatalf("only %d objects", n)
	}
	for _, name := range []string{"acme", "o'brien", "items", "countries", "tenant_id"} {
		grepRepo(t, dir, name)
	}

	// The writer cannot read back what it wrote, but can verify that
	// every stored byte is intact.
	w2 := openWith(t, b, ks.writer, false)
	if _, err := w2.ReadManifest(ctx, m1.ID); !errors.Is(err, vault.ErrNoIdentity) || !errors.As(err, new(*tenantvault.InputError)) {
		t.Fatalf("writer reads the manifest: %v", err)
	}
	res, err := w2.Verify(ctx, nil, true, nil)
	if err != nil || len(res.Problems) != 0 || !res.StoredOnly || res.Chunks != 4 || res.BytesRead == 0 {
		t.Fatalf("stored-only verify: %+v, %v", res, err)
	}
	x, err := w2.ReadIndex(ctx, m1.ID)
	if err != nil || !x.Encrypted() || !x.Authenticated() || x.SourceName != "main" {
		t.Fatalf("index: %+v, %v", x, err)
	}

	// Without any keys: the index is readable (integrity only), nothing else.
	anon := openWith(t, b, nil, false)
	if _, err := anon.ReadManifest(ctx, m1.ID); !errors.Is(err, vault.ErrNoIdentity) {
		t.Fatalf("no keys: %v", err)
	}
	if x, err := anon.ReadIndex(ctx, m1.ID); err != nil || x.Authenticated() {
		t.Fatalf("no keys: index %v, authenticated %v", err, x != nil && x.Authenticated())
	}

	// The reader decrypts everything exactly.
	reader := openWith(t, b, ks.reader, false)
	m, err := reader.ReadManifest(ctx, m1.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range m.Tenants {
		got, err := readChunk(t, reader, m, tn.Chunks[0])
		if err != nil || got != content[tn.ID] {
			t.Fatalf("tenant %q: %v; equal %v", tn.ID, err, got == content[tn.ID])
		}
	}
	schema, err := reader.GetSchema(ctx, m.Schemas[0])
	if err != nil || string(schema) != "PGDMP schema "+marker {
		t.Fatalf("schema: %q, %v", schema, err)
	}
	res, err = reader.Verify(ctx, nil, true, nil)
	if err != nil || len(res.Problems) != 0 || res.StoredOnly {
		t.Fatalf("verify with identity: %+v, %v", res, err)
	}

	// A second set reuses the unchanged chunks (found by tag) and stores
	// the changed one; the reader reads both.
	writer3 := openWith(t, b, ks.writer, false)
	prev := &manifest.Manifest{Source: m1.Source, Tenancy: m1.Tenancy}
	ix, err := writer3.PreviousChunks(ctx, prev)
	if err != nil || ix.Set != m1.ID {
		t.Fatalf("previous chunks: %v, %+v", err, ix)
	}
	content2 := map[string]string{"acme": content["acme"], "o'brien & co": "3\tchanged\n", "tenant-marker": content["tenant-marker"]}
	m2 := writeTenantSet(t, writer3, tenantSet{at: at.Add(time.Hour), tenants: content2, global: "DE\tGermany " + marker + "\n", schema: "PGDMP schema " + marker, reuse: ix})
	if m2.Stats.ReusedChunks != 3 {
		t.Fatalf("reused %d chunks, want 3 (acme, tenant-marker, global)", m2.Stats.ReusedChunks)
	}
	reader2 := openWith(t, b, ks.reader, false)
	m, err = reader2.ReadManifest(ctx, m2.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range m.Tenants {
		got, err := readChunk(t, reader2, m, tn.Chunks[0])
		if err != nil || got != content2[tn.ID] {
			t.Fatalf("set 2 tenant %q: %v", tn.ID, err)
		}
	}
	if res, err := reader2.Verify(ctx, nil, true, nil); err != nil || len(res.Problems) != 0 {
		t.Fatalf("verify: %+v, %v", res, err)
	}
}

// TestEncryptedRepositoryRules: who may write and read what.
func TestEncryptedRepositoryRules(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ks := newKeySet(t)

	// Plaintext repository: any key is refused.
	_, plain := newRepoDir(t)
	pv := openWith(t, plain, nil, true)
	writeTenantSet(t, pv, tenantSet{at: at, tenants: map[string]string{"a": "1\n"}})
	for _, keys := range []*vault.Keys{ks.reader, ks.writer} {
		_, err := vault.Open(ctx, plain, vault.Options{Keys: keys})
		if !errors.As(err, new(*tenantvault.InputError)) || !strings.Contains(err.Error(), "is not encrypted") {
			t.Fatalf("keys for a plaintext repository: %v", err)
		}
	}

	// Encrypted repository: a writer without recipients is refused before
	// it writes anything.
	_, enc := newRepoDir(t)
	openWith(t, enc, ks.writer, true)
	ev := openWith(t, enc, nil, false)
	_, err := ev.NewSetWriter(ctx, vault.NewSetID(at), vault.WriterOptions{})
	if !errors.As(err, new(*tenantvault.InputError)) || !strings.Contains(err.Error(), "need the recipients") {
		t.Fatalf("writer without recipients: %v", err)
	}
	// Initialising with recipients but no signing key is refused.
	_, other := newRepoDir(t)
	noSign := &vault.Keys{Recipients: ks.writer.Recipients}
	if _, err := vault.Open(ctx, other, vault.Options{Init: true, Keys: noSign}); !errors.As(err, new(*tenantvault.InputError)) {
		t.Fatalf("init without signing key: %v", err)
	}

	// A config replaced by a plaintext one (a downgrade) is refused by a
	// reader that holds an identity.
	dir, b := newRepoDir(t)
	w := openWith(t, b, ks.writer, true)
	writeTenantSet(t, w, tenantSet{at: at, tenants: map[string]string{"a": "1\n"}})
	os.WriteFile(filepath.Join(dir, "tenantvault.json"), []byte(`{"format":"tenantvault","version":1,"id":"0011223344556677","created":"2026-01-01T00:00:00Z"}`), 0o600)
	if _, err := vault.Open(ctx, b, vault.Options{Keys: ks.reader}); !errors.As(err, new(*tenantvault.InputError)) {
		t.Fatalf("downgraded config: %v", err)
	}
}

// TestForgedManifestRefused: someone who can write to the bucket and knows
// the recipient (public) can encrypt a manifest, but cannot sign it with
// the snapshotting side's key: the reader refuses it.
func TestForgedManifestRefused(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ks := newKeySet(t)
	dir, b := newRepoDir(t)
	w := openWith(t, b, ks.writer, true)
	good := writeTenantSet(t, w, tenantSet{at: at, tenants: map[string]string{"acme": "1\tgood\n"}})

	// The attacker's own signing key, and the real recipient.
	attacker := newKeySet(t)
	forgerKeys := &vault.Keys{Recipients: ks.writer.Recipients, Signing: attacker.writer.Signing}
	fv := openWith(t, b, forgerKeys, false)
	forged := writeTenantSet(t, fv, tenantSet{at: at.Add(time.Hour), tenants: map[string]string{"acme": "1\tevil\n"}})

	reader := openWith(t, b, ks.reader, false)
	if _, err := reader.ReadManifest(ctx, good.ID); err != nil {
		t.Fatal(err)
	}
	_, err := reader.ReadManifest(ctx, forged.ID)
	if !errors.Is(err, tenantvault.ErrIntegrity) || !strings.Contains(err.Error(), "does not trust") {
		t.Fatalf("forged manifest: %v", err)
	}
	res, err := reader.Verify(ctx, nil, false, nil)
	if err != nil || len(res.Problems) != 1 || res.Problems[0].Set != forged.ID {
		t.Fatalf("verify: %+v, %v", res, err)
	}
	// Retention leaves the forged set out: it neither counts nor gets marked.
	plans, err := reader.RetentionPlan(ctx, vault.Policy{KeepLast: 1, KeepPreRestore: 48 * time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(plans) != 1 || len(plans[0].Decisions) != 1 || plans[0].Decisions[0].ID != good.ID || !plans[0].Decisions[0].Keep {
		t.Fatalf("retention: %+v", plans)
	}

	// Moving the forger's signature onto the good manifest's bytes, or
	// any altered byte, fails the signature.
	data, _ := os.ReadFile(filepath.Join(dir, vault.ManifestKey(good.ID)))
	data[len(data)-100] ^= 1
	os.WriteFile(filepath.Join(dir, vault.ManifestKey(good.ID)), data, 0o600)
	fresh := openWith(t, b, ks.reader, false)
	if _, err := fresh.ReadManifest(ctx, good.ID); !errors.Is(err, tenantvault.ErrIntegrity) {
		t.Fatalf("altered manifest: %v", err)
	}
}

// TestKeyRotation: after new keys, new sets go to the new recipient; old
// sets stay readable with an identity file that holds both identities, and
// not with the new one alone.
func TestKeyRotation(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	old, neu := newKeySet(t), newKeySet(t)
	_, b := newRepoDir(t)
	w := openWith(t, b, old.writer, true)
	content := map[string]string{"acme": "1\tkept across the rotation\n"}
	m1 := writeTenantSet(t, w, tenantSet{at: at, tenants: content})

	w2 := openWith(t, b, neu.writer, false)
	ix, err := w2.PreviousChunks(ctx, &manifest.Manifest{Source: m1.Source, Tenancy: m1.Tenancy})
	if err != nil {
		t.Fatal(err)
	}
	if ix.Set != "" {
		t.Fatalf("reuse across a rotation from %s: old chunks would need the old identity", ix.Set)
	}
	m2 := writeTenantSet(t, w2, tenantSet{at: at.Add(time.Hour), tenants: content, reuse: ix})
	if m2.Stats.ReusedChunks != 0 {
		t.Fatal("reused")
	}

	both, err := vault.ParseKeyFile(strings.NewReader(old.identityText + neu.identityText))
	if err != nil {
		t.Fatal(err)
	}
	rb := openWith(t, b, both, false)
	for _, id := range []string{m1.ID, m2.ID} {
		m, err := rb.ReadManifest(ctx, id)
		if err != nil {
			t.Fatalf("set %s with both identities: %v", id, err)
		}
		if got, err := readChunk(t, rb, m, m.Tenants[0].Chunks[0]); err != nil || got != content["acme"] {
			t.Fatalf("set %s: %v", id, err)
		}
	}
	rn := openWith(t, b, neu.reader, false)
	if _, err := rn.ReadManifest(ctx, m2.ID); err != nil {
		t.Fatal(err)
	}
	// The old set is signed by the old signer, which the new identity
	// file does not trust, and encrypted to the old recipient.
	if _, err := rn.ReadManifest(ctx, m1.ID); err == nil {
		t.Fatal("old set read with the new identity alone")
	}
}

// TestPreviousChunksPlaintext: the same reuse index serves plaintext
// repositories, by tenant, table and digest.
func TestPreviousChunksPlaintext(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	_, b := newRepoDir(t)
	v := openWith(t, b, nil, true)
	content := map[string]string{"acme": "1\tsame\n", "globex": "2\tbefore\n"}
	m1 := writeTenantSet(t, v, tenantSet{at: at, tenants: content})
	ix, err := v.PreviousChunks(ctx, &manifest.Manifest{Source: m1.Source, Tenancy: m1.Tenancy})
	if err != nil || ix.Set != m1.ID {
		t.Fatalf("previous chunks: %+v, %v", ix, err)
	}
	other, err := v.PreviousChunks(ctx, &manifest.Manifest{Source: manifest.Source{Host: "elsewhere:5432", Database: "db"}, Tenancy: m1.Tenancy})
	if err != nil || other.Set != "" {
		t.Fatalf("another source found %q, %v", other.Set, err)
	}
	content["globex"] = "2\tafter\n"
	m2 := writeTenantSet(t, v, tenantSet{at: at.Add(time.Hour), tenants: content, reuse: ix})
	if m2.Stats.ReusedChunks != 1 || !m2.Tenants[0].Chunks[0].Reused || m2.Tenants[1].Chunks[0].Reused {
		t.Fatalf("reuse: %+v", m2.Tenants)
	}
}

// TestManifestUploadAnswerLost: the manifest upload reaches the storage but
// its answer is lost (a reset after the last byte). The set exists, and
// WriteManifest says so; when the upload really failed, the packs stay
// (the manifest may still appear) for GC to collect.
func TestManifestUploadAnswerLost(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, encrypted := range []bool{false, true} {
		_, b := newRepoDir(t)
		var ks keySet
		var writer, reader *vault.Keys
		if encrypted {
			ks = newKeySet(t)
			writer, reader = ks.writer, ks.reader
		}
		openWith(t, b, writer, true)
		f := repo.NewFaulty(b)
		isManifest := func(k string) bool {
			return strings.HasPrefix(k, vault.SetsPrefix) && strings.HasSuffix(k, ".json.zst")
		}
		f.Inject(repo.Fault{Op: repo.OpPut, Match: isManifest, Err: errors.New("connection reset by peer"), Lost: true})
		v := openWith(t, f, writer, false)
		m := writeTenantSet(t, v, tenantSet{at: at, tenants: map[string]string{"acme": "1\tx\n"}})
		rv := openWith(t, b, reader, false)
		if res, err := rv.Verify(ctx, nil, true, nil); err != nil || res.Sets != 1 || len(res.Problems) != 0 {
			t.Fatalf("encrypted %v: verify: %+v, %v", encrypted, res, err)
		}

		// Now the upload fails without reaching the storage: no set, and
		// Abort keeps the packs.
		f.Clear()
		f.Inject(repo.Fault{Op: repo.OpPut, Match: isManifest, Err: repo.Permanent(errors.New("503"))})
		id := vault.NewSetID(at.Add(time.Hour))
		w, err := v.NewSetWriter(ctx, id, vault.WriterOptions{TempDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		p, _ := w.NewPacker()
		cw := p.StartChunk()
		cw.Write([]byte("2\ty\n"))
		ref, _ := cw.Finish(nil)
		p.Close()
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		m2 := *m
		m2.ID, m2.Packs, m2.Global, m2.Schemas = id, []string{ref.Pack}, nil, nil
		m2.Tenants = []manifest.Tenant{{ID: "acme", Chunks: []manifest.Chunk{{Table: 0, Size: ref.Size, Digest: ref.Digest, Pack: 0, Offset: ref.Offset, Length: ref.Length, SHA256: ref.SHA256}}}}
		if err := v.WriteManifest(ctx, &m2); err == nil || !v.ManifestAttempted(id) {
			t.Fatalf("failed upload: %v, attempted %v", err, v.ManifestAttempted(id))
		}
		w.Abort()
		if _, err := b.Stat(ctx, ref.Pack); err != nil {
			t.Fatalf("Abort deleted the pack of a set whose manifest upload was attempted: %v", err)
		}
	}
}
