package s3_test

import (
	"bytes"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/repo/s3"
)

func TestParseObjectLock(t *testing.T) {
	for _, c := range []struct {
		url       string
		mode      minio.RetentionMode
		retention time.Duration
		err       string
	}{
		{"s3://bucket/p?object-lock=governance&retention=720h", minio.Governance, 720 * time.Hour, ""},
		{"s3://bucket/p?object-lock=COMPLIANCE&retention=30d", minio.Compliance, 30 * 24 * time.Hour, ""},
		{"s3://bucket/p?object-lock=governance&retention=1d12h", minio.Governance, 36 * time.Hour, ""},
		{"s3://bucket/p?object-lock=governance", "", 0, "object-lock and retention go together"},
		{"s3://bucket/p?retention=1h", "", 0, "object-lock and retention go together"},
		{"s3://bucket/p?object-lock=forever&retention=1h", "", 0, `object-lock "forever" must be governance or compliance`},
		{"s3://bucket/p?object-lock=governance&retention=soon", "", 0, `retention "soon" must be a duration`},
		{"s3://bucket/p?object-lock=governance&retention=0s", "", 0, `retention "0s" must be a duration of at least 1s`},
	} {
		u, _ := url.Parse(c.url)
		cfg, err := s3.ParseURL(u)
		if c.err != "" {
			var ue *repo.URLError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want a URL error with %q", c.url, err, c.err)
			}
			continue
		}
		if err != nil || cfg.LockMode != c.mode || cfg.LockRetention != c.retention {
			t.Errorf("%s: %+v, %v", c.url, cfg, err)
			continue
		}
		u2, _ := url.Parse(cfg.String())
		again, err := s3.ParseURL(u2)
		if err != nil || again.LockMode != cfg.LockMode || again.LockRetention != cfg.LockRetention {
			t.Errorf("%s: round trip through %s: %+v, %v", c.url, cfg.String(), again, err)
		}
	}
}

// TestObjectLock runs against MinIO with a lock-enabled bucket: every
// object is put under retention; deleting one fails with repo.ErrLocked
// (permanent, naming the end of the retention) and leaves it readable,
// not hidden behind a delete marker; records written WithoutRetention stay
// deletable; and once the retention ends the delete removes every version.
func TestObjectLock(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	const retention = 4 * time.Second
	u := testenv.LockedRepoURL(t, "governance", retention)
	b, err := repo.Open(ctx, u, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !strings.Contains(b.Location(), "object-lock=governance&retention=4s") {
		t.Fatalf("location %s", b.Location())
	}
	data := []byte("locked pack")
	start := time.Now()
	if err := b.Put(ctx, "packs/a.pack", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	info, err := b.Stat(ctx, "packs/a.pack")
	if err != nil || info.RetainUntil.Before(start.Add(retention-time.Second)) || info.RetainUntil.After(start.Add(retention+5*time.Second)) {
		t.Fatalf("stat: %+v, %v", info, err)
	}
	err = b.Delete(ctx, "packs/a.pack")
	if !errors.Is(err, repo.ErrLocked) || !repo.IsPermanent(err) || !strings.Contains(err.Error(), "S3 Object Lock retains it until") {
		t.Fatalf("delete of a locked object: %v", err)
	}
	// Still there, readable as before.
	if got, err := repo.ReadAll(ctx, b, "packs/a.pack"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after the refused delete: %q, %v", got, err)
	}
	// A record (deletion marker, verification record) is not locked.
	if err := b.Put(repo.WithoutRetention(ctx), "deletions/x.json", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if info, err := b.Stat(ctx, "deletions/x.json"); err != nil || !info.RetainUntil.IsZero() {
		t.Fatalf("record: %+v, %v", info, err)
	}
	if err := b.Delete(ctx, "deletions/x.json"); err != nil {
		t.Fatalf("delete of an unlocked record: %v", err)
	}
	if _, err := b.Stat(ctx, "deletions/x.json"); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("record after delete: %v", err)
	}
	// After the retention, the delete removes every version.
	time.Sleep(time.Until(info.RetainUntil.Add(1500 * time.Millisecond)))
	if err := b.Delete(ctx, "packs/a.pack"); err != nil {
		t.Fatalf("delete after the retention: %v", err)
	}
	bucket := strings.SplitN(u, "/", 4)[2]
	n := 0
	for o := range testenv.S3Client(t).ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true, WithVersions: true}) {
		if o.Err == nil {
			n++
		}
	}
	if n != 0 {
		t.Fatalf("%d versions left after deleting everything", n)
	}
}

func TestObjectLockNeedsLockedBucket(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	u := testenv.S3RepoURL(t, testenv.NewBucket(t), "repo") + "&object-lock=governance&retention=1h"
	_, err := repo.Open(ctx, u, repo.Options{})
	if err == nil || !strings.Contains(err.Error(), "does not have S3 Object Lock enabled") || !repo.IsPermanent(err) {
		t.Fatalf("open of a bucket without object lock: %v", err)
	}
	// --init creates a missing bucket with object lock enabled.
	bucket := testenv.RandomName("tvtest-lockinit-")
	t.Cleanup(func() { testenv.RemoveLockedBucket(t, bucket) })
	b, err := repo.Open(ctx, testenv.S3RepoURL(t, bucket, "repo")+"&object-lock=compliance&retention=1s", repo.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	enabled, _, _, _, err := testenv.S3Client(t).GetObjectLockConfig(ctx, bucket)
	if err != nil || enabled != "Enabled" {
		t.Fatalf("lock config of the created bucket: %q, %v", enabled, err)
	}
}
