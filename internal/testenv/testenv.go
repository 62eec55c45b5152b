// Package testenv connects tests to the real PostgreSQL and MinIO servers started by scripts/services.sh, and fails instead of skipping when CI=true.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Environment variables exported by scripts/services.sh.
const (
	// EnvPostgres is a superuser URL to the throwaway cluster's "postgres" database.
	EnvPostgres = "TENANTVAULT_TEST_PG_URL"
	// EnvS3Endpoint is the MinIO endpoint, e.g. http://127.0.0.1:9123; the
	// credentials are in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
	EnvS3Endpoint = "TENANTVAULT_TEST_S3_ENDPOINT"
)

// Region is the region every test bucket is created in.
const Region = "us-east-1"

// InCI reports whether the tests run under CI, where a missing service is a
// failure, never a skip.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

func require(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v != "" {
		return v
	}
	msg := fmt.Sprintf("%s is not set: run the tests through scripts/test.sh, which starts PostgreSQL and MinIO", name)
	if InCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// Context returns a context that ends with the test or after d.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// RandomName returns prefix followed by 12 random lower-case hex digits.
func RandomName(prefix string) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b[:])
}

// PostgresURL returns the superuser URL of the test cluster's maintenance
// database.
func PostgresURL(t testing.TB) string {
	t.Helper()
	return require(t, EnvPostgres)
}

// DatabaseURL returns the URL of database name on the test cluster.
func DatabaseURL(t testing.TB, name string) string {
	t.Helper()
	u, err := url.Parse(PostgresURL(t))
	if err != nil {
		t.Fatalf("parse %s: %v", EnvPostgres, err)
	}
	u.Path = "/" + name
	return u.String()
}

// NewDatabase creates an empty database with a random name, drops it when the
// test ends, and returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	name := RandomName("tvtest_")
	Exec(t, PostgresURL(t), "CREATE DATABASE "+name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, PostgresURL(t))
		if err != nil {
			t.Logf("drop database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})
	return DatabaseURL(t, name)
}

// Exec runs sql (one or more statements, no parameters) on the database at
// dbURL and fails the test on error.
func Exec(t testing.TB, dbURL, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("exec %.200s: %v", sql, err)
	}
}

// Connect opens a connection to dbURL that is closed when the test ends.
func Connect(t testing.TB, dbURL string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// S3Endpoint returns the MinIO endpoint URL (http://host:port).
func S3Endpoint(t testing.TB) string {
	t.Helper()
	return require(t, EnvS3Endpoint)
}

// S3Client returns a minio-go client for the test server.
func S3Client(t testing.TB) *minio.Client {
	t.Helper()
	ep, err := url.Parse(S3Endpoint(t))
	if err != nil {
		t.Fatalf("parse %s: %v", EnvS3Endpoint, err)
	}
	c, err := minio.New(ep.Host, &minio.Options{
		Creds:  credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		Secure: ep.Scheme == "https",
		Region: Region,
	})
	if err != nil {
		t.Fatalf("minio client: %v", err)
	}
	return c
}

// NewBucket creates a bucket with a random name, empties and removes it when
// the test ends, and returns its name.
func NewBucket(t testing.TB) string {
	t.Helper()
	c := S3Client(t)
	name := RandomName("tvtest-")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: Region}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for obj := range c.ListObjects(ctx, name, minio.ListObjectsOptions{Recursive: true}) {
			if obj.Err == nil {
				_ = c.RemoveObject(ctx, name, obj.Key, minio.RemoveObjectOptions{})
			}
		}
		if err := c.RemoveBucket(ctx, name); err != nil {
			t.Logf("remove bucket %s: %v", name, err)
		}
	})
	return name
}

// S3RepoURL returns a repository URL for prefix in bucket on the test server.
func S3RepoURL(t testing.TB, bucket, prefix string) string {
	t.Helper()
	u := url.URL{Scheme: "s3", Host: bucket, Path: "/" + strings.TrimPrefix(prefix, "/")}
	q := url.Values{}
	q.Set("endpoint", S3Endpoint(t))
	q.Set("region", Region)
	u.RawQuery = q.Encode()
	return u.String()
}

// NewS3Repo creates a fresh bucket and returns a repository URL inside it.
func NewS3Repo(t testing.TB) string {
	t.Helper()
	return S3RepoURL(t, NewBucket(t), "repo")
}

// NewLockedBucket creates a bucket with S3 Object Lock enabled (and so
// versioning), and removes it when the test ends: every version, bypassing
// governance-mode retention (tests lock objects in governance mode, or in
// compliance mode for a few seconds only, which cannot be bypassed).
func NewLockedBucket(t testing.TB) string {
	t.Helper()
	c := S3Client(t)
	name := RandomName("tvtest-lock-")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: Region, ObjectLocking: true}); err != nil {
		t.Fatalf("make bucket %s with object lock: %v", name, err)
	}
	t.Cleanup(func() { RemoveLockedBucket(t, name) })
	return name
}

// RemoveLockedBucket removes every version of every object of a
// lock-enabled bucket, bypassing governance retention, then the bucket.
func RemoveLockedBucket(t testing.TB, name string) {
	t.Helper()
	c := S3Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for obj := range c.ListObjects(ctx, name, minio.ListObjectsOptions{Recursive: true, WithVersions: true}) {
		if obj.Err != nil {
			continue
		}
		err := c.RemoveObject(ctx, name, obj.Key, minio.RemoveObjectOptions{VersionID: obj.VersionID, GovernanceBypass: true})
		if err != nil {
			t.Logf("remove %s version %s: %v", obj.Key, obj.VersionID, err)
		}
	}
	if err := c.RemoveBucket(ctx, name); err != nil {
		t.Logf("remove bucket %s: %v", name, err)
	}
}

// LockedRepoURL returns a repository URL in a fresh lock-enabled bucket
// whose objects are locked in mode for retention.
func LockedRepoURL(t testing.TB, mode string, retention time.Duration) string {
	t.Helper()
	return S3RepoURL(t, NewLockedBucket(t), "repo") + "&object-lock=" + mode + "&retention=" + retention.String()
}

// EnvReport names a file that Report appends to: scripts/test.sh sets it
// and prints the file after the tests, because go test shows nothing of a
// passing package's output.
const EnvReport = "TENANTVAULT_TEST_REPORT"

// Report logs a summary line (fault-injection counts, for instance) and
// appends it to the file named by TENANTVAULT_TEST_REPORT, if set.
func Report(t testing.TB, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	path := os.Getenv(EnvReport)
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Logf("report: %v", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s: %s\n", t.Name(), line)
}
