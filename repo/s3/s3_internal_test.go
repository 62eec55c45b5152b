package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/tenantvault/tenantvault/repo"
)

func TestErrorMapping(t *testing.T) {
	b := &Backend{cfg: Config{Bucket: "bucket"}, credFrom: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"}
	netErr := &url.Error{Op: "Get", URL: "http://127.0.0.1:9000/bucket/x", Err: &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}}
	for _, c := range []struct {
		err                                 error
		notFound, bucketNotFound, permanent bool
	}{
		{minio.ErrorResponse{Code: "NoSuchKey", StatusCode: 404}, true, false, true},
		{minio.ErrorResponse{Code: "NoSuchBucket", StatusCode: 404}, false, true, true},
		{minio.ErrorResponse{Code: "AccessDenied", StatusCode: 403}, false, false, true},
		{minio.ErrorResponse{Code: "InvalidAccessKeyId", StatusCode: 403}, false, false, true},
		{minio.ErrorResponse{Code: "SignatureDoesNotMatch", StatusCode: 403}, false, false, true},
		{minio.ErrorResponse{Code: "InvalidArgument", StatusCode: 400}, false, false, true},
		{minio.ErrorResponse{Code: "InvalidArgument"}, false, false, true}, // raised by minio-go itself
		{minio.ErrorResponse{Code: "SlowDown", StatusCode: 503}, false, false, false},
		{minio.ErrorResponse{Code: "InternalError", StatusCode: 500}, false, false, false},
		{minio.ErrorResponse{Code: "XMinioServerNotInitialized", StatusCode: 503}, false, false, false},
		{minio.ErrorResponse{Code: "RequestTimeout", StatusCode: 400}, false, false, false},
		{minio.ErrorResponse{Code: "502 Bad Gateway", StatusCode: 502}, false, false, false},
		{minio.ErrorResponse{Code: "TooManyRequests", StatusCode: 429}, false, false, false},
		{netErr, false, false, false},
		{io.ErrUnexpectedEOF, false, false, false},
	} {
		err := b.fail(context.Background(), repo.OpGet, "k", c.err)
		if errors.Is(err, repo.ErrNotFound) != c.notFound ||
			errors.Is(err, repo.ErrBucketNotFound) != c.bucketNotFound ||
			repo.IsPermanent(err) != c.permanent {
			t.Errorf("%#v: got %v (permanent %v), want not found %v, bucket not found %v, permanent %v",
				c.err, err, repo.IsPermanent(err), c.notFound, c.bucketNotFound, c.permanent)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.fail(ctx, repo.OpPut, "k", netErr); !errors.Is(err, context.Canceled) {
		t.Errorf("error after cancel: %v, want context.Canceled", err)
	}
}

func TestNetReason(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{&url.Error{Op: "Head", URL: "http://127.0.0.1:1/b/", Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}, "connection refused"},
		{&url.Error{Op: "Head", URL: "http://nohost.invalid/b/", Err: &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "nohost.invalid", IsNotFound: true}}}, "cannot resolve nohost.invalid: no such host"},
		{fmt.Errorf("head: %w", context.DeadlineExceeded), "no answer within 10s"},
		{&url.Error{Op: "Head", URL: "https://127.0.0.1:9000/b/", Err: errors.New("http: server gave HTTP response to HTTPS client")}, "http: server gave HTTP response to HTTPS client"},
	} {
		if got := netReason(c.err); got != c.want {
			t.Errorf("netReason(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestPartSizeFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		size int64
		want uint64
	}{
		{-1, 16 * mib},
		{0, 16 * mib},
		{40 * mib, 16 * mib},
		{16 * mib * maxParts, 16 * mib},
		{16*mib*maxParts + 1, 17 * mib},
		{200 << 30, 21 * mib},
		{5 << 40, 525 * mib},
	} {
		got := partSizeFor(c.size, 16*mib)
		if got != c.want || (c.size > 0 && int64(got)*maxParts < c.size) {
			t.Errorf("partSizeFor(%d) = %d, want %d", c.size, got, c.want)
		}
	}
}
