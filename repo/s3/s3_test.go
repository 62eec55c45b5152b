package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/repo/repotest"
	"github.com/tenantvault/tenantvault/repo/s3"
)

func TestConformance(t *testing.T) {
	repotest.TestBackend(t, func(t *testing.T) repo.Backend {
		bucket := testenv.NewBucket(t)
		t.Cleanup(func() { emptyBucket(t, bucket) })
		u := testenv.S3RepoURL(t, bucket, "repo/sub")
		b, err := repo.Open(testenv.Context(t, time.Minute), u, repo.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

// emptyBucket removes the objects of bucket in batches of a thousand, so
// that the one-by-one clean-up of testenv.NewBucket finds little to do.
func emptyBucket(t *testing.T, bucket string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := testenv.S3Client(t)
	objects := make(chan minio.ObjectInfo)
	go func() {
		defer close(objects)
		for obj := range client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
			if obj.Err != nil {
				continue
			}
			select {
			case objects <- obj:
			case <-ctx.Done():
				return
			}
		}
	}()
	for res := range client.RemoveObjects(ctx, bucket, objects, minio.RemoveObjectsOptions{}) {
		t.Logf("remove %s: %v", res.ObjectName, res.Err)
	}
}

// env returns a Getenv that sees only vars.
func env(vars ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(vars); i += 2 {
		m[vars[i]] = vars[i+1]
	}
	return func(k string) string { return m[k] }
}

// testCreds are the test server's credentials, read only where a test needs
// the server.
func testCreds(t *testing.T) func(string) string {
	t.Helper()
	testenv.S3Endpoint(t) // skips or fails without the server
	return env("AWS_ACCESS_KEY_ID", os.Getenv("AWS_ACCESS_KEY_ID"), "AWS_SECRET_ACCESS_KEY", os.Getenv("AWS_SECRET_ACCESS_KEY"))
}

func TestParseURL(t *testing.T) {
	for _, c := range []struct {
		url  string
		want s3.Config
	}{
		{"s3://bucket", s3.Config{Bucket: "bucket"}},
		{"s3://bucket/a/b/", s3.Config{Bucket: "bucket", Prefix: "a/b"}},
		{"s3://bucket/p?region=eu-west-1&path-style=true", s3.Config{Bucket: "bucket", Prefix: "p", Region: "eu-west-1", PathStyle: true}},
		{"s3://bucket/p?endpoint=http://127.0.0.1:9000&region=us-east-1",
			s3.Config{Bucket: "bucket", Prefix: "p", Endpoint: &url.URL{Scheme: "http", Host: "127.0.0.1:9000"}, Region: "us-east-1", PathStyle: true}},
		{"s3://bucket/p?endpoint=https://s3.example.com/&path-style=false&part-size=64MiB",
			s3.Config{Bucket: "bucket", Prefix: "p", Endpoint: &url.URL{Scheme: "https", Host: "s3.example.com"}, PartSize: 64 << 20}},
		{"s3://bucket/p?part-size=5242880", s3.Config{Bucket: "bucket", Prefix: "p", PartSize: 5 << 20}},
	} {
		u, _ := url.Parse(c.url)
		got, err := s3.ParseURL(u)
		if err != nil {
			t.Errorf("parse %s: %v", c.url, err)
			continue
		}
		if got.String() != c.want.String() || got.PathStyle != c.want.PathStyle || got.PartSize != c.want.PartSize {
			t.Errorf("parse %s:\n got %+v\nwant %+v", c.url, got, c.want)
		}
		// String gives a URL that parses back to the same configuration.
		u2, _ := url.Parse(got.String())
		again, err := s3.ParseURL(u2)
		if err != nil || again.String() != got.String() || again.PathStyle != got.PathStyle {
			t.Errorf("parse %s again from %s: %+v, %v", c.url, got.String(), again, err)
		}
	}
}

func TestURLErrors(t *testing.T) {
	for _, c := range []struct{ url, msg string }{
		{"s3:///prefix", `repository URL "s3:///prefix": missing bucket name: use s3://BUCKET/PREFIX`},
		{"s3://bucket/p?foo=1&bar=2", `repository URL "s3://bucket/p?foo=1&bar=2": unknown query parameter(s) bar, foo (known: endpoint, region, path-style, part-size, object-lock, retention)`},
		{"s3://bucket/p?endpoint=http://127.0.0.1:9000&tls-skip-verify=true", `repository URL "s3://bucket/p?endpoint=http://127.0.0.1:9000&tls-skip-verify=true": unknown query parameter(s) tls-skip-verify (known: endpoint, region, path-style, part-size, object-lock, retention)`},
		{"s3://bucket:9000/p", `repository URL "s3://bucket:9000/p": "bucket:9000" is not a bucket name: give the server as ?endpoint=http://HOST:PORT`},
		{"s3://b/p", `repository URL "s3://b/p": invalid bucket name "b": Bucket name cannot be shorter than 3 characters`},
		{"s3://bucket/a/../b", `repository URL "s3://bucket/a/../b": invalid prefix "a/../b": use /-separated segments of printable ASCII, without . or ..`},
		{"s3://bucket/p?endpoint=ftp://host", `repository URL "s3://bucket/p?endpoint=ftp://host": endpoint "ftp://host" must be http://HOST[:PORT] or https://HOST[:PORT]`},
		{"s3://bucket/p?endpoint=127.0.0.1:9000", `repository URL "s3://bucket/p?endpoint=127.0.0.1:9000": endpoint "127.0.0.1:9000" must be http://HOST[:PORT] or https://HOST[:PORT]`},
		{"s3://bucket/p?endpoint=http://host/path", `repository URL "s3://bucket/p?endpoint=http://host/path": endpoint "http://host/path" must not have a path or a query`},
		{"s3://bucket/p?path-style=maybe", `repository URL "s3://bucket/p?path-style=maybe": path-style "maybe" must be true or false`},
		{"s3://bucket/p?part-size=1MiB", `repository URL "s3://bucket/p?part-size=1MiB": part-size "1MiB" must be a size from 5MiB to 5GiB, such as 64MiB`},
		{"s3://bucket/p?region=a&region=b", `repository URL "s3://bucket/p?region=a&region=b": query parameter region is given 2 times`},
	} {
		_, err := repo.Open(context.Background(), c.url, repo.Options{Getenv: env()})
		var ue *repo.URLError
		if !errors.As(err, &ue) || err.Error() != c.msg {
			t.Errorf("open %s:\n got %v\nwant *repo.URLError %s", c.url, err, c.msg)
		}
	}
}

func TestURLErrorHidesEndpointCredentials(t *testing.T) {
	for _, u := range []string{
		"s3://bucket/p?endpoint=http://user:hunter22@127.0.0.1:9000",
		"s3://bucket/p?endpoint=user:hunter22@127.0.0.1:9000",
	} {
		_, err := repo.Open(context.Background(), u, repo.Options{Getenv: env()})
		var ue *repo.URLError
		if !errors.As(err, &ue) || strings.Contains(err.Error(), "hunter22") ||
			!strings.HasSuffix(err.Error(), "endpoint must not contain credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead") {
			t.Errorf("open %s: %v, want a *repo.URLError without the password", u, err)
		}
	}
}

func TestMissingCredentials(t *testing.T) {
	const u = "s3://bucket/p?endpoint=http://127.0.0.1:1"
	for _, c := range []struct {
		env []string
		msg string
	}{
		{nil, "no credentials for S3 endpoint http://127.0.0.1:1: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or TENANTVAULT_S3_ACCESS_KEY and TENANTVAULT_S3_SECRET_KEY)"},
		{[]string{"AWS_ACCESS_KEY_ID", "id"}, "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both"},
		{[]string{"TENANTVAULT_S3_SECRET_KEY", "s3cr3t"}, "TENANTVAULT_S3_SECRET_KEY is set but TENANTVAULT_S3_ACCESS_KEY is not: set both"},
	} {
		_, err := repo.Open(context.Background(), u, repo.Options{Getenv: env(c.env...)})
		if err == nil || err.Error() != c.msg {
			t.Errorf("open with environment %q:\n got %v\nwant %s", c.env, err, c.msg)
		}
	}
}

func TestUnreachableEndpoint(t *testing.T) {
	start := time.Now()
	b, err := repo.Open(context.Background(), "s3://bucket/p?endpoint=http://127.0.0.1:1&region=us-east-1",
		repo.Options{Getenv: env("AWS_ACCESS_KEY_ID", "id", "AWS_SECRET_ACCESS_KEY", "s3cr3t-value")})
	elapsed := time.Since(start)
	if b != nil {
		t.Errorf("open failed but returned a non-nil backend %#v", b)
	}
	const want = "cannot reach S3 endpoint http://127.0.0.1:1: connection refused"
	if err == nil || err.Error() != want {
		t.Errorf("open of an unreachable endpoint:\n got %v\nwant %s", err, want)
	}
	if elapsed > 5*time.Second {
		t.Errorf("open of an unreachable endpoint took %v", elapsed)
	}
}

func TestMissingBucket(t *testing.T) {
	getenv := testCreds(t)
	bucket := testenv.RandomName("tvtest-missing-")
	u := testenv.S3RepoURL(t, bucket, "repo")
	ctx := testenv.Context(t, time.Minute)
	_, err := repo.Open(ctx, u, repo.Options{Getenv: getenv})
	want := `bucket "` + bucket + `" does not exist at ` + testenv.S3Endpoint(t) +
		" (create it with `mc mb ALIAS/" + bucket + "` or `aws s3 mb s3://" + bucket + "`, or pass --init)"
	if err == nil || err.Error() != want || !errors.Is(err, repo.ErrBucketNotFound) || !repo.IsPermanent(err) {
		t.Fatalf("open of a missing bucket:\n got %v\nwant %s", err, want)
	}

	client := testenv.S3Client(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for obj := range client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
			if obj.Err == nil {
				client.RemoveObject(ctx, bucket, obj.Key, minio.RemoveObjectOptions{})
			}
		}
		client.RemoveBucket(ctx, bucket)
	})
	b, err := repo.Open(ctx, u, repo.Options{Getenv: getenv, Create: true})
	if err != nil {
		t.Fatalf("open with Create: %v", err)
	}
	defer b.Close()
	if ok, err := client.BucketExists(ctx, bucket); !ok || err != nil {
		t.Fatalf("bucket not created: %v, %v", ok, err)
	}
	if err := b.Put(ctx, "x", strings.NewReader("x"), 1); err != nil {
		t.Fatalf("put into the new bucket: %v", err)
	}
	// Opening an existing bucket with Create is fine.
	b2, err := repo.Open(ctx, u, repo.Options{Getenv: getenv, Create: true})
	if err != nil {
		t.Fatalf("second open with Create: %v", err)
	}
	b2.Close()

	// A bucket that disappears later is a permanent error of each call.
	if err := client.RemoveObject(ctx, bucket, "repo/x", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.RemoveBucket(ctx, bucket); err != nil {
		t.Fatal(err)
	}
	err = b.Put(ctx, "y", strings.NewReader("y"), 1)
	if !errors.Is(err, repo.ErrBucketNotFound) || !repo.IsPermanent(err) {
		t.Errorf("put into a removed bucket: %v, want a permanent repo.ErrBucketNotFound", err)
	}
	err = b.List(ctx, "", func(repo.ObjectInfo) error { return nil })
	if !errors.Is(err, repo.ErrBucketNotFound) {
		t.Errorf("list of a removed bucket: %v, want repo.ErrBucketNotFound", err)
	}
}

func TestWrongCredentials(t *testing.T) {
	testCreds(t)
	u := testenv.S3RepoURL(t, testenv.NewBucket(t), "repo")
	const secret = "wrong-secret-value-1234"
	for _, c := range []struct {
		env  []string
		code string
	}{
		{[]string{"AWS_ACCESS_KEY_ID", os.Getenv("AWS_ACCESS_KEY_ID"), "AWS_SECRET_ACCESS_KEY", secret}, "SignatureDoesNotMatch"},
		{[]string{"TENANTVAULT_S3_ACCESS_KEY", "nosuchuser", "TENANTVAULT_S3_SECRET_KEY", secret}, "InvalidAccessKeyId"},
	} {
		start := time.Now()
		_, err := repo.Open(testenv.Context(t, time.Minute), u, repo.Options{Getenv: env(c.env...)})
		if err == nil || !repo.IsPermanent(err) {
			t.Fatalf("open with wrong credentials: %v, want a permanent error", err)
		}
		msg := err.Error()
		if !strings.Contains(msg, "denied ("+c.code+")") || strings.Contains(msg, secret) || strings.Contains(msg, "\n") {
			t.Errorf("open with wrong credentials: %q, want one line naming %s and not the secret", msg, c.code)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("open with wrong credentials took %v", d)
		}
	}
}

func TestLayout(t *testing.T) {
	getenv := testCreds(t)
	ctx := testenv.Context(t, time.Minute)
	bucket := testenv.NewBucket(t)
	u := testenv.S3RepoURL(t, bucket, "repo")
	b, err := repo.Open(ctx, u, repo.Options{Getenv: getenv})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if loc := b.Location(); loc != "s3://"+bucket+"/repo?endpoint="+testenv.S3Endpoint(t)+"&region="+testenv.Region {
		t.Errorf("location %q", loc)
	}
	if strings.Contains(b.Location(), os.Getenv("AWS_SECRET_ACCESS_KEY")) {
		t.Errorf("location %q holds the secret", b.Location())
	}
	if err := b.Put(ctx, "a/b", strings.NewReader("ab"), 2); err != nil {
		t.Fatal(err)
	}
	client := testenv.S3Client(t)
	if _, err := client.StatObject(ctx, bucket, "repo/a/b", minio.StatObjectOptions{}); err != nil {
		t.Errorf("object repo/a/b: %v", err)
	}
	// Objects outside the prefix, and folder markers inside it, are not
	// part of the repository.
	for _, name := range []string{"other/x", "repo-x/y", "repox", "repo/dir/"} {
		if _, err := client.PutObject(ctx, bucket, name, strings.NewReader(""), 0, minio.PutObjectOptions{}); err != nil {
			t.Fatalf("put %s: %v", name, err)
		}
	}
	var keys []string
	if err := b.List(ctx, "", func(info repo.ObjectInfo) error {
		keys = append(keys, info.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "a/b" {
		t.Errorf("list: %q, want [a/b]", keys)
	}
}

func TestPartSize(t *testing.T) {
	// With 5 MiB parts, 12 MiB of unknown size take three parts.
	getenv := testCreds(t)
	ctx := testenv.Context(t, 2*time.Minute)
	u := testenv.S3RepoURL(t, testenv.NewBucket(t), "repo") + "&part-size=5MiB"
	b, err := repo.Open(ctx, u, repo.Options{Getenv: getenv})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	data := repotest.Data(1, 12<<20)
	if err := b.Put(ctx, "x", io.MultiReader(bytes.NewReader(data)), -1); err != nil {
		t.Fatal(err)
	}
	got, err := repo.ReadAll(ctx, b, "x")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
}
