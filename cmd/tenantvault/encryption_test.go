package main

import (
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
)

// encMarker is a plaintext marker put into the source database: no stored
// object of an encrypted repository may contain it.
const encMarker = "CONFIDENTIAL-MARKER-5c1e"

// keygen runs tenantvault keygen into dir and returns the identity file,
// the signing key file and the recipient.
func keygen(t *testing.T, dir string) (identity, signing, recipient string) {
	t.Helper()
	identity, signing = filepath.Join(dir, "restore.key"), filepath.Join(dir, "snapshot.key")
	out := expect(t, 0, "", "keygen", "--output", identity, "--signing-output", signing)
	m := regexp.MustCompile(`recipient: (age1[a-z0-9]+)`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "signer:    tvsign1") {
		t.Fatalf("keygen output:\n%s", out)
	}
	return identity, signing, m[1]
}

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	identity, signing, recipient := keygen(t, dir)
	for _, p := range []string{identity, signing} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v", p, err, fi.Mode())
		}
	}
	id, _ := os.ReadFile(identity)
	sign, _ := os.ReadFile(signing)
	if !bytes.Contains(id, []byte("AGE-SECRET-KEY-1")) || !bytes.Contains(id, []byte(recipient)) {
		t.Fatalf("identity file:\n%s", id)
	}
	if bytes.Contains(sign, []byte("AGE-SECRET-KEY")) || !bytes.Contains(sign, []byte("TENANTVAULT-SIGNING-KEY-1")) {
		t.Fatalf("the signing key file holds an identity or no signing key:\n%s", sign)
	}
	// Never overwrites, and leaves the existing files alone.
	expect(t, 2, "already exists", "keygen", "--output", identity, "--signing-output", filepath.Join(dir, "other"))
	expect(t, 2, "already exists", "keygen", "--output", filepath.Join(dir, "new"), "--signing-output", signing)
	if again, _ := os.ReadFile(identity); !bytes.Equal(again, id) {
		t.Fatal("identity file changed")
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); err == nil {
		t.Fatal("half a key pair was left behind")
	}
	expect(t, 2, "needs --output", "keygen", "--output", filepath.Join(dir, "x"))
	// The identity file must never reach the snapshotting side.
	expect(t, 2, "holds an age identity", "snapshot", "--source", "postgres://x@127.0.0.1:1/x", "--repo", "file://"+t.TempDir(), "--signing-key", identity)
	expect(t, 2, "secret key", "snapshot", "--source", "postgres://x@127.0.0.1:1/x", "--repo", "file://"+t.TempDir(), "--recipient", "AGE-SECRET-KEY-1QQQQ")
}

// objectBytes returns every stored object of a repository, by key.
func objectBytes(t *testing.T, repoURL string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	if dir, ok := strings.CutPrefix(repoURL, "file://"); ok {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			out[strings.TrimPrefix(p, dir+"/")] = data
			return nil
		})
		return out
	}
	bucket := strings.SplitN(strings.TrimPrefix(repoURL, "s3://"), "/", 2)[0]
	c := testenv.S3Client(t)
	ctx := testenv.Context(t, time.Minute)
	for o := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		obj, err := c.GetObject(ctx, bucket, o.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(obj)
		obj.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[o.Key] = data
	}
	return out
}

// TestEncryptedSnapshotRestore is the end-to-end proof of client-side
// encryption, against a file repository and MinIO: no stored object holds
// the plaintext; reading without the identity exits 2 with a clear
// message; with it every restored tenant equals its source rows.
func TestEncryptedSnapshotRestore(t *testing.T) {
	src := testenv.NewDatabase(t)
	fixture.Create(t, src)
	testenv.Exec(t, src, `
UPDATE projects SET name = name || ' `+encMarker+`' WHERE tenant_id = 'acme';
UPDATE countries SET name = name || ' `+encMarker+`' WHERE code = 'DE';
COMMENT ON TABLE tasks IS '`+encMarker+`';`)
	keys := t.TempDir()
	identity, signing, recipient := keygen(t, keys)

	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			repoURL := "file://" + filepath.Join(t.TempDir(), "repo")
			if kind == "s3" {
				repoURL = testenv.NewS3Repo(t)
			}
			expect(t, 0, "", "snapshot", "--source", src, "--repo", repoURL, "--init", "--recipient", recipient, "--signing-key", signing)
			expect(t, 0, "", "snapshot", "--source", src, "--repo", repoURL, "--signing-key", signing) // the recipient is in the signing key file

			objects := objectBytes(t, repoURL)
			if len(objects) < 5 {
				t.Fatalf("only %d objects", len(objects))
			}
			for key, data := range objects {
				for _, needle := range []string{encMarker, "o'brien & co", "Ünïcödé GmbH", "task_notes", "tenant_id"} {
					if bytes.Contains(data, []byte(needle)) {
						t.Errorf("object %s holds the plaintext %q", key, needle)
					}
				}
			}

			// Into an encrypted repository only with recipients.
			expect(t, 2, "need the recipients", "snapshot", "--source", src, "--repo", repoURL)
			// Without the identity: list shows sets, verify checks every
			// stored byte, restore and drill exit 2 saying why.
			if out := expect(t, 0, "", "list", "--repo", repoURL); strings.Count(out, "scheduled")+strings.Count(out, "manual") != 2 {
				t.Fatalf("list without identity:\n%s", out)
			}
			out := expect(t, 0, "", "verify", "--repo", repoURL, "--read-data")
			if !strings.Contains(out, "stored bytes read back and checksummed") || !strings.Contains(out, "0 problem(s)") {
				t.Fatalf("verify without identity:\n%s", out)
			}
			dst := testenv.NewDatabase(t)
			code, _, errOut := tv(t, "restore", "--repo", repoURL, "--target", dst, "--tenant", "acme", "--create-schema", "--yes")
			if code != 2 || !strings.Contains(errOut, "is encrypted: reading it needs the identity file (--identity FILE or TENANTVAULT_IDENTITY)") {
				t.Fatalf("restore without identity: exit %d\n%s", code, errOut)
			}
			expect(t, 2, "needs the identity file", "drill", "--repo", repoURL, "--scratch", testenv.PostgresURL(t))
			expect(t, 2, "needs the identity file", "list", "--repo", repoURL, "--tenant", "acme")

			// With it: exact data, and the environment variable works.
			expect(t, 0, "", "restore", "--repo", repoURL, "--target", dst, "--tenant", "acme", "--tenant", "o'brien & co", "--create-schema", "--yes", "--identity", identity)
			t.Setenv("TENANTVAULT_IDENTITY", identity)
			expect(t, 0, "", "restore", "--repo", repoURL, "--target", dst, "--tenant", "Ünïcödé GmbH", "--yes")
			ctx := testenv.Context(t, time.Minute)
			sc, dc := testenv.Connect(t, src), testenv.Connect(t, dst)
			for _, tenant := range []string{"acme", "o'brien & co", "Ünïcödé GmbH"} {
				want, err := fixture.Read(ctx, sc, tenant)
				if err != nil {
					t.Fatal(err)
				}
				got, err := fixture.Read(ctx, dc, tenant)
				if err != nil {
					t.Fatal(err)
				}
				if d := fixture.Diff(want, got); d != "" || want.Rows() == 0 {
					t.Fatalf("tenant %q restored differs (%d rows):\n%s", tenant, want.Rows(), d)
				}
			}
			var name string
			dc.QueryRow(ctx, "SELECT name FROM countries WHERE code = 'DE'").Scan(&name)
			if !strings.Contains(name, encMarker) {
				t.Fatalf("global table not restored exactly: %q", name)
			}
			// A replace writes an encrypted pre-restore set, signed with
			// the identity file's signing key; everything verifies.
			testenv.Exec(t, dst, `UPDATE projects SET name = 'damaged' WHERE tenant_id = 'acme'`)
			_, _, errOut = tv(t, "restore", "--repo", repoURL, "--target", dst, "--tenant", "acme", "--if-exists", "replace", "--yes")
			if !strings.Contains(errOut, "pre-restore snapshot set") {
				t.Fatalf("replace: %s", errOut)
			}
			out = expect(t, 0, "", "verify", "--repo", repoURL, "--read-data")
			if !strings.Contains(out, "verified 3 set(s)") || !strings.Contains(out, "data read back") {
				t.Fatalf("verify with identity:\n%s", out)
			}
			if out := expect(t, 0, "", "list", "--repo", repoURL, "--tenant", "acme"); strings.Count(out, " manual ") != 2 || strings.Count(out, " pre-restore ") != 1 {
				t.Fatalf("list --tenant:\n%s", out)
			}
			for key, data := range objectBytes(t, repoURL) {
				if bytes.Contains(data, []byte(encMarker)) || bytes.Contains(data, []byte("damaged")) {
					t.Errorf("object %s holds plaintext", key)
				}
			}
			expect(t, 0, "", "drill", "--repo", repoURL, "--scratch", testenv.PostgresURL(t), "--tenants", "2")
		})
	}
	t.Run("plaintext repository refuses keys", func(t *testing.T) {
		repoURL := "file://" + filepath.Join(t.TempDir(), "plain")
		expect(t, 0, "", "snapshot", "--source", src, "--repo", repoURL, "--init")
		expect(t, 2, "is not encrypted", "snapshot", "--source", src, "--repo", repoURL, "--recipient", recipient, "--signing-key", signing)
		expect(t, 2, "is not encrypted", "list", "--repo", repoURL, "--identity", identity)
	})
}
