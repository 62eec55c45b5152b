package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// TestTenantKeysCryptoShredding: in an encrypted repository every tenant's
// chunks are sealed with a key of its own, one key object per tenant kept
// across sets (so the second set reuses chunks and makes no new keys);
// destroying one tenant's keys (what forget calls) leaves that tenant
// unreadable to the identity holder (exit 2), every other tenant restores
// exactly, and verify with and without keys passes and says what it could
// not prove. On MinIO with Object Lock the key objects carry no retention
// and no version of a destroyed one is left.
func TestTenantKeysCryptoShredding(t *testing.T) {
	src := testenv.NewDatabase(t)
	fixture.Create(t, src)
	identity, signing, recipient := keygen(t, t.TempDir())
	for _, kind := range []string{"file", "s3-locked"} {
		t.Run(kind, func(t *testing.T) {
			repoURL := "file://" + t.TempDir() + "/repo"
			if kind == "s3-locked" {
				repoURL = testenv.LockedRepoURL(t, "governance", time.Hour)
			}
			ctx := testenv.Context(t, 3*time.Minute)
			expect(t, 0, "", "snapshot", "--source", src, "--repo", repoURL, "--init", "--recipient", recipient, "--signing-key", signing)
			b, err := repo.Open(ctx, repoURL, repo.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			keyObjects := func() []repo.ObjectInfo {
				var out []repo.ObjectInfo
				if err := b.List(ctx, vault.TenantKeysPrefix, func(o repo.ObjectInfo) error { out = append(out, o); return nil }); err != nil {
					t.Fatal(err)
				}
				return out
			}
			first := keyObjects()
			if len(first) != len(fixture.Tenants) {
				t.Fatalf("%d tenant key objects after the first set, want one per tenant (%d)", len(first), len(fixture.Tenants))
			}
			testenv.Exec(t, src, `UPDATE projects SET name = name || ' v2' WHERE tenant_id = 'globex'`)
			out := expect(t, 0, "", "snapshot", "--source", src, "--repo", repoURL, "--signing-key", signing)
			if again := keyObjects(); len(again) != len(first) {
				t.Fatalf("the second set made new tenant keys: %d, then %d", len(first), len(again))
			}
			if !strings.Contains(out, "reused") {
				t.Logf("snapshot output:\n%s", out)
			}
			reader := &vault.Keys{}
			if _, err := reader.LoadKeyFile(identity); err != nil {
				t.Fatal(err)
			}
			rv, err := vault.Open(ctx, b, vault.Options{Keys: reader})
			if err != nil {
				t.Fatal(err)
			}
			ids, err := rv.ListSets(ctx)
			if err != nil || len(ids) != 2 {
				t.Fatalf("sets %v, %v", ids, err)
			}
			second, err := rv.ReadManifest(ctx, ids[1])
			if err != nil {
				t.Fatal(err)
			}
			if second.Stats.ReusedChunks == 0 {
				t.Fatal("the second set reused no chunk under the tenants' own keys")
			}
			for _, tn := range second.Tenants {
				if len(tn.Chunks) > 0 && !vault.ValidTenantKeyName(tn.Key) {
					t.Fatalf("tenant %q: entry key %q", tn.ID, tn.Key)
				}
			}
			if kind == "s3-locked" {
				info, err := b.Stat(ctx, first[0].Key)
				if err != nil || !info.RetainUntil.IsZero() {
					t.Fatalf("a tenant key object is under retention: %+v, %v", info, err)
				}
			}

			keys, err := rv.TenantKeys(ctx, "acme")
			if err != nil || len(keys) != 1 {
				t.Fatalf("acme's keys: %v, %v", keys, err)
			}
			destroyed, err := rv.DestroyTenantKeys(ctx, "acme")
			if err != nil || len(destroyed) != 1 || destroyed[0] != keys[0] {
				t.Fatalf("destroy: %v, %v", destroyed, err)
			}
			if again, err := rv.DestroyTenantKeys(ctx, "acme"); err != nil || len(again) != 0 {
				t.Fatalf("destroying again: %v, %v", again, err)
			}
			if kind == "s3-locked" {
				bucket, prefix, _ := strings.Cut(strings.TrimPrefix(strings.SplitN(repoURL, "?", 2)[0], "s3://"), "/")
				name := strings.TrimSuffix(prefix, "/") + "/" + keys[0]
				for o := range testenv.S3Client(t).ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: name, WithVersions: true}) {
					if o.Err != nil {
						t.Fatal(o.Err)
					}
					t.Errorf("a version of the destroyed key is left: %s %s", o.Key, o.VersionID)
				}
			}

			// acme: gone for everyone, in both sets.
			dst := testenv.NewDatabase(t)
			for _, set := range ids {
				code, _, errOut := tv(t, "restore", "--repo", repoURL, "--target", dst, "--tenant", "acme", "--snapshot", set, "--create-schema", "--yes", "--identity", identity)
				if code != 2 || !strings.Contains(errOut, "is destroyed") {
					t.Fatalf("restore of the shredded tenant from %s: exit %d\n%s", set, code, errOut)
				}
			}
			// Everyone else: exactly as in the source.
			restoreOthersExactly(t, ctx, repoURL, identity, src, dst, "acme")
			dc := testenv.Connect(t, dst)
			if got, err := fixture.Read(ctx, dc, "acme"); err != nil || got.Rows() != 0 {
				t.Fatalf("acme has %d rows in the target, %v", got.Rows(), err)
			}
			out = expect(t, 0, "", "verify", "--repo", repoURL, "--read-data")
			if !strings.Contains(out, "stored bytes read back and checksummed") || !strings.Contains(out, "0 problem(s)") {
				t.Fatalf("verify without keys:\n%s", out)
			}
			out = expect(t, 0, "", "verify", "--repo", repoURL, "--read-data", "--identity", identity)
			if !strings.Contains(out, "0 problem(s)") || !strings.Contains(out, "destroyed tenant data key") || !strings.Contains(out, "of 2 tenant snapshot(s)") {
				t.Fatalf("verify --read-data with the identity does not say what it could not prove:\n%s", out)
			}
			// A later snapshot of a tenant whose key is gone makes a new key.
			expect(t, 0, "", "snapshot", "--source", src, "--repo", repoURL, "--signing-key", signing)
			if now := keyObjects(); len(now) != len(first) {
				t.Fatalf("%d key objects after a new snapshot, want %d", len(now), len(first))
			}
		})
	}
}

// restoreOthersExactly restores every fixture tenant but skip from
// repoURL into dst (with identity) and checks each equals the source.
func restoreOthersExactly(t *testing.T, ctx context.Context, repoURL, identity, src, dst, skip string) {
	t.Helper()
	args := []string{"restore", "--repo", repoURL, "--target", dst, "--create-schema", "--yes", "--identity", identity}
	var others []string
	for _, tn := range fixture.Tenants {
		if tn != skip {
			others = append(others, tn)
			args = append(args, "--tenant", tn)
		}
	}
	expect(t, 0, "", args...)
	sc, dc := testenv.Connect(t, src), testenv.Connect(t, dst)
	for _, tn := range others {
		want, err := fixture.Read(ctx, sc, tn)
		if err != nil {
			t.Fatal(err)
		}
		got, err := fixture.Read(ctx, dc, tn)
		if err != nil {
			t.Fatal(err)
		}
		if d := fixture.Diff(want, got); d != "" {
			t.Fatalf("tenant %q restored differs (%q erased):\n%s", tn, skip, d)
		}
	}
}
