// Package s3 stores a repository in an S3-compatible bucket (AWS S3, MinIO and others) through minio-go.
package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/tenantvault/tenantvault/repo"
)

func init() {
	repo.Register("s3", openURL)
}

const (
	// DefaultPartSize is the size of the parts of a multipart upload. A Put
	// holds one part in memory, and an upload of unknown size can have at
	// most 10,000 parts, so this allows objects of unknown size up to
	// 156 GiB; the part-size URL parameter raises both.
	DefaultPartSize = 16 << 20

	minPartSize = 5 << 20 // the S3 minimum for all parts but the last
	maxPartSize = 5 << 30 // the S3 maximum

	// checkTimeout bounds the bucket check in New, so that an unreachable
	// endpoint fails in seconds rather than after a storm of retries.
	checkTimeout = 10 * time.Second

	// dataRetries is how often minio-go tries one request. Its retries stay
	// on below repo.Retry because only minio-go can retry a single part of
	// a multipart upload, whose reader repo.Retry cannot rewind.
	dataRetries = 3

	maxParts = 10000 // the S3 limit of parts in one upload

	awsEndpoint = "https://s3.amazonaws.com"
)

// Config says which bucket and server a Backend uses. ParseURL fills it from
// a repository URL.
type Config struct {
	Bucket string
	// Prefix is put, followed by "/", before every key; empty puts keys at
	// the top of the bucket. It has no leading or trailing slash.
	Prefix string
	// Endpoint is the server's base URL (http://127.0.0.1:9000); nil means
	// AWS S3 over TLS.
	Endpoint *url.URL
	// Region of the bucket; empty lets the client ask the server.
	Region string
	// PathStyle puts the bucket name in the URL path rather than in the host
	// name.
	PathStyle bool
	// PartSize is the part size of multipart uploads; 0 means
	// DefaultPartSize.
	PartSize uint64
	// LockMode, when set, puts every object under S3 Object Lock
	// retention (minio.Governance or minio.Compliance) for LockRetention
	// from its upload, except those written with repo.WithoutRetention.
	// The bucket must have Object Lock enabled.
	LockMode      minio.RetentionMode
	LockRetention time.Duration
}

// String returns the repository URL of c, which never holds credentials.
func (c Config) String() string {
	var b strings.Builder
	b.WriteString("s3://" + c.Bucket)
	if c.Prefix != "" {
		b.WriteString("/" + c.Prefix)
	}
	var q []string
	if c.Endpoint != nil {
		q = append(q, "endpoint="+c.Endpoint.String())
	}
	if c.Region != "" {
		q = append(q, "region="+url.QueryEscape(c.Region))
	}
	if c.PathStyle != (c.Endpoint != nil) {
		q = append(q, "path-style="+strconv.FormatBool(c.PathStyle))
	}
	if c.PartSize != 0 && c.PartSize != DefaultPartSize {
		q = append(q, "part-size="+strconv.FormatUint(c.PartSize, 10))
	}
	if c.LockMode != "" {
		q = append(q, "object-lock="+strings.ToLower(string(c.LockMode)), "retention="+c.LockRetention.String())
	}
	if len(q) > 0 {
		b.WriteString("?" + strings.Join(q, "&"))
	}
	return b.String()
}

func (c Config) endpoint() string {
	if c.Endpoint == nil {
		return awsEndpoint
	}
	return c.Endpoint.String()
}

var knownParams = []string{"endpoint", "region", "path-style", "part-size", "object-lock", "retention"}

// ParseURL reads s3://BUCKET/PREFIX?endpoint=URL&region=R&path-style=BOOL&part-size=SIZE
// &object-lock=governance|compliance&retention=DURATION.
// Without endpoint the bucket is on AWS S3. path-style defaults to true
// with an endpoint (what MinIO and most servers expect) and to virtual-host
// style on AWS. part-size takes bytes or a size such as 64MiB, from 5MiB to
// 5GiB. object-lock and retention (Go duration syntax or whole days, 30d)
// come together: every object is uploaded under that Object Lock mode,
// retained for that long. Any other parameter is an error, so that a typo
// is not silently ignored. Errors are *repo.URLError.
func ParseURL(u *url.URL) (Config, error) {
	bad := func(format string, args ...any) error {
		return &repo.URLError{URL: redact(u), Reason: fmt.Sprintf(format, args...)}
	}
	if u.Scheme != "s3" {
		return Config{}, bad("the scheme must be s3")
	}
	if u.Opaque != "" {
		return Config{}, bad("use s3://BUCKET/PREFIX")
	}
	if u.Host == "" {
		return Config{}, bad("missing bucket name: use s3://BUCKET/PREFIX")
	}
	if strings.Contains(u.Host, ":") {
		return Config{}, bad("%q is not a bucket name: give the server as ?endpoint=http://HOST:PORT", u.Host)
	}
	if err := s3utils.CheckValidBucketName(u.Host); err != nil {
		return Config{}, bad("invalid bucket name %q: %s", u.Host, strings.TrimSuffix(err.Error(), "."))
	}
	if u.Fragment != "" {
		return Config{}, bad("unexpected fragment #%s", u.Fragment)
	}
	c := Config{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/")}
	if c.Prefix != "" && repo.ValidKey(c.Prefix) != nil {
		return Config{}, bad("invalid prefix %q: use /-separated segments of printable ASCII, without . or ..", c.Prefix)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Config{}, bad("cannot parse the query: %v", err)
	}
	var unknown []string
	for k, vs := range q {
		if !slices.Contains(knownParams, k) {
			unknown = append(unknown, k)
		} else if len(vs) > 1 {
			return Config{}, bad("query parameter %s is given %d times", k, len(vs))
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return Config{}, bad("unknown query parameter(s) %s (known: %s)", strings.Join(unknown, ", "), strings.Join(knownParams, ", "))
	}
	if v := q.Get("endpoint"); v != "" {
		ep, err := url.Parse(v)
		switch {
		case strings.Contains(v, "@"):
			// The message must not echo the credentials.
			return Config{}, bad("endpoint must not contain credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
		case err != nil || (ep.Scheme != "http" && ep.Scheme != "https") || ep.Host == "":
			return Config{}, bad("endpoint %q must be http://HOST[:PORT] or https://HOST[:PORT]", v)
		case (ep.Path != "" && ep.Path != "/") || ep.RawQuery != "" || ep.Fragment != "":
			return Config{}, bad("endpoint %q must not have a path or a query", v)
		}
		c.Endpoint = &url.URL{Scheme: ep.Scheme, Host: ep.Host}
	}
	c.Region = q.Get("region")
	c.PathStyle = c.Endpoint != nil
	if v := q.Get("path-style"); v != "" {
		if c.PathStyle, err = strconv.ParseBool(v); err != nil {
			return Config{}, bad("path-style %q must be true or false", v)
		}
	}
	if v := q.Get("part-size"); v != "" {
		n, ok := parseSize(v)
		if !ok || n < minPartSize || n > maxPartSize {
			return Config{}, bad("part-size %q must be a size from 5MiB to 5GiB, such as 64MiB", v)
		}
		c.PartSize = n
	}
	mode, retention := q.Get("object-lock"), q.Get("retention")
	switch {
	case mode == "" && retention == "":
	case mode == "" || retention == "":
		return Config{}, bad("object-lock and retention go together, e.g. ?object-lock=governance&retention=30d")
	default:
		switch strings.ToLower(mode) {
		case "governance":
			c.LockMode = minio.Governance
		case "compliance":
			c.LockMode = minio.Compliance
		default:
			return Config{}, bad("object-lock %q must be governance or compliance", mode)
		}
		d, ok := parseRetention(retention)
		if !ok || d < time.Second {
			return Config{}, bad("retention %q must be a duration of at least 1s, such as 720h or 30d", retention)
		}
		c.LockRetention = d
	}
	return c, nil
}

// parseRetention reads Go duration syntax with an optional leading number
// of days ("30d", "1d12h", "720h").
func parseRetention(s string) (time.Duration, bool) {
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil || n < 0 || n > 36500 {
			return 0, false
		}
		days, s = time.Duration(n)*24*time.Hour, s[i+1:]
		if s == "" {
			return days, true
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, false
	}
	return days + d, true
}

// parseSize reads "1048576", "16MiB" or "1GiB".
func parseSize(s string) (uint64, bool) {
	mult := uint64(1)
	switch {
	case strings.HasSuffix(s, "MiB"):
		mult, s = 1<<20, strings.TrimSuffix(s, "MiB")
	case strings.HasSuffix(s, "GiB"):
		mult, s = 1<<30, strings.TrimSuffix(s, "GiB")
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > math.MaxUint64/mult {
		return 0, false
	}
	return n * mult, true
}

// redact returns u for messages, without credentials in it or in its
// endpoint parameter.
func redact(u *url.URL) string {
	c := *u
	if c.User != nil {
		c.User = url.User("REDACTED")
	}
	if q, err := url.ParseQuery(c.RawQuery); err == nil {
		if ep := q.Get("endpoint"); strings.Contains(ep, "@") {
			// Cut by hand: an endpoint without a scheme does not parse.
			at := strings.LastIndex(ep, "@")
			start := strings.Index(ep, "://") + 3
			if start < 3 || start > at {
				start = 0
			}
			q.Set("endpoint", ep[:start]+"REDACTED"+ep[at:])
			c.RawQuery = q.Encode()
		}
	}
	return c.String()
}

func openURL(ctx context.Context, u *url.URL, opts repo.Options) (repo.Backend, error) {
	c, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	b, err := New(ctx, c, opts)
	if err != nil {
		return nil, err // not a nil *Backend in a non-nil interface
	}
	return b, nil
}

// Backend is a repository in an S3 bucket: object KEY is the S3 object
// PREFIX/KEY. S3 itself makes every PUT atomic; uploads larger than one part
// go through multipart uploads, which minio-go aborts when they fail.
type Backend struct {
	cfg       Config
	client    *minio.Client
	core      minio.Core
	transport *http.Transport
	prefix    string // cfg.Prefix + "/", or ""
	partSize  uint64
	credFrom  string // where the credentials came from, for messages
}

var _ repo.Backend = (*Backend)(nil)

// New connects to the bucket of c and checks, within 10 seconds, that it
// exists and that the credentials are accepted. A missing bucket is created
// when opts.Create is set, and is an error wrapping repo.ErrBucketNotFound
// otherwise.
//
// Credentials come only from the environment, read through opts.Getenv:
// TENANTVAULT_S3_ACCESS_KEY and TENANTVAULT_S3_SECRET_KEY (and
// TENANTVAULT_S3_SESSION_TOKEN), which win so that tenantvault can use
// other credentials than the rest of the machine, or else
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN. Without
// them, AWS S3 is reached with ~/.aws/credentials or the instance's or
// pod's IAM role; another endpoint is an error.
func New(ctx context.Context, c Config, opts repo.Options) (*Backend, error) {
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	creds, from, err := credentialsFor(c, getenv)
	if err != nil {
		return nil, err
	}
	secure := c.Endpoint == nil || c.Endpoint.Scheme == "https"
	transport, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("s3 transport: %w", err)
	}
	host := "s3.amazonaws.com"
	lookup := minio.BucketLookupAuto // virtual-host style wherever the bucket name allows it
	if c.Endpoint != nil {
		host = c.Endpoint.Host
		lookup = minio.BucketLookupDNS
	}
	if c.PathStyle {
		lookup = minio.BucketLookupPath
	}
	newClient := func(retries int) (*minio.Client, error) {
		return minio.New(host, &minio.Options{
			Creds:        creds,
			Secure:       secure,
			Transport:    transport,
			Region:       c.Region,
			BucketLookup: lookup,
			MaxRetries:   retries,
		})
	}
	client, err := newClient(dataRetries)
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", c.endpoint(), err)
	}
	check, err := newClient(1) // 1: no retries
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", c.endpoint(), err)
	}
	b := &Backend{
		cfg:       c,
		client:    client,
		core:      minio.Core{Client: client},
		transport: transport,
		partSize:  c.PartSize,
		credFrom:  from,
	}
	if c.Prefix != "" {
		b.prefix = c.Prefix + "/"
	}
	if b.partSize == 0 {
		b.partSize = DefaultPartSize
	}
	if err := b.checkBucket(ctx, check, opts.Create); err != nil {
		transport.CloseIdleConnections()
		return nil, err
	}
	return b, nil
}

// credentialsFor picks the credentials for c and says where they came from.
// It never puts a secret in an error.
func credentialsFor(c Config, getenv func(string) string) (*credentials.Credentials, string, error) {
	pairs := []struct{ id, secret, token string }{
		{"TENANTVAULT_S3_ACCESS_KEY", "TENANTVAULT_S3_SECRET_KEY", "TENANTVAULT_S3_SESSION_TOKEN"},
		{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"},
	}
	for _, p := range pairs {
		id, secret := getenv(p.id), getenv(p.secret)
		switch {
		case id != "" && secret != "":
			return credentials.NewStaticV4(id, secret, getenv(p.token)), p.id + " and " + p.secret, nil
		case id != "":
			return nil, "", fmt.Errorf("%s is set but %s is not: set both", p.id, p.secret)
		case secret != "":
			return nil, "", fmt.Errorf("%s is set but %s is not: set both", p.secret, p.id)
		}
	}
	if c.Endpoint != nil {
		return nil, "", fmt.Errorf("no credentials for S3 endpoint %s: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or TENANTVAULT_S3_ACCESS_KEY and TENANTVAULT_S3_SECRET_KEY)", c.endpoint())
	}
	// The variables were read through getenv above; minio-go's EnvAWS would
	// read the process environment behind the caller's back.
	return credentials.NewChainCredentials([]credentials.Provider{
		&credentials.FileAWSCredentials{},
		&credentials.IAM{},
	}), "~/.aws/credentials or the IAM role", nil
}

// checkBucket makes sure the bucket exists, creating it if create is set.
func (b *Backend) checkBucket(ctx context.Context, check *minio.Client, create bool) error {
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	exists, err := check.BucketExists(cctx, b.cfg.Bucket)
	if err != nil {
		return b.openFailure(ctx, err)
	}
	if exists {
		return b.checkLock(cctx)
	}
	if !create {
		return repo.Permanent(&openError{
			msg: fmt.Sprintf("bucket %q does not exist at %s (create it with `mc mb ALIAS/%s` or `aws s3 mb s3://%s`, or pass --init)",
				b.cfg.Bucket, b.cfg.endpoint(), b.cfg.Bucket, b.cfg.Bucket),
			err: repo.ErrBucketNotFound,
		})
	}
	region := b.cfg.Region
	if region == "" {
		region = "us-east-1"
	}
	mctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	err = check.MakeBucket(mctx, b.cfg.Bucket, minio.MakeBucketOptions{Region: region, ObjectLocking: b.cfg.LockMode != ""})
	if err != nil && minio.ToErrorResponse(err).Code != minio.BucketAlreadyOwnedByYou {
		if er := minio.ToErrorResponse(err); er.Code != "" && er.StatusCode != 0 {
			return repo.Permanent(&openError{
				msg: fmt.Sprintf("cannot create bucket %q at %s: %s (%s)", b.cfg.Bucket, b.cfg.endpoint(), strings.TrimSuffix(er.Message, "."), er.Code),
				err: err,
			})
		}
		return b.openFailure(ctx, err)
	}
	return nil
}

// checkLock makes sure that a bucket that is to lock objects can: Object
// Lock must be enabled on it (which also turns versioning on). Without
// this check every upload would fail with a less helpful message.
func (b *Backend) checkLock(ctx context.Context) error {
	if b.cfg.LockMode == "" {
		return nil
	}
	enabled, _, _, _, err := b.client.GetObjectLockConfig(ctx, b.cfg.Bucket)
	if err != nil && minio.ToErrorResponse(err).Code != "ObjectLockConfigurationNotFoundError" {
		return b.openFailure(ctx, err)
	}
	if enabled != "Enabled" {
		return repo.Permanent(&openError{
			msg: fmt.Sprintf("bucket %q at %s does not have S3 Object Lock enabled, which object-lock=%s needs (create a bucket with it: --init does, or `mc mb --with-lock`, or `aws s3api create-bucket --object-lock-enabled-for-bucket`)",
				b.cfg.Bucket, b.cfg.endpoint(), strings.ToLower(string(b.cfg.LockMode))),
			err: err,
		})
	}
	return nil
}

// openFailure turns an error of the bucket check into one line for people.
func (b *Backend) openFailure(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("open %s: %w", b.Location(), ctx.Err())
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) && er.Code != "" && er.StatusCode != 0 {
		if denied(er.Code) {
			return repo.Permanent(&openError{
				msg: fmt.Sprintf("access to bucket %q at %s denied (%s): check the credentials in %s", b.cfg.Bucket, b.cfg.endpoint(), er.Code, b.credFrom),
				err: err,
			})
		}
		return &openError{
			msg: fmt.Sprintf("cannot check bucket %q at %s: %s (%s)", b.cfg.Bucket, b.cfg.endpoint(), strings.TrimSuffix(er.Message, "."), er.Code),
			err: err,
		}
	}
	return &openError{
		msg: fmt.Sprintf("cannot reach S3 endpoint %s: %s", b.cfg.endpoint(), netReason(err)),
		err: err,
	}
}

// openError is a one-line message for people that still lets callers test
// the cause with errors.Is.
type openError struct {
	msg string
	err error
}

func (e *openError) Error() string { return e.msg }
func (e *openError) Unwrap() error { return e.err }

// netReason names what went wrong on the way to the server in a few words.
func netReason(err error) string {
	var dnsErr *net.DNSError
	var errno syscall.Errno
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var certErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	var urlErr *url.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within %s", checkTimeout)
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("cannot resolve %s: %s", dnsErr.Name, dnsErr.Err)
	case errors.As(err, &errno):
		return errno.Error()
	case errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &certErr):
		return "TLS certificate not accepted: " + err.Error()
	case errors.As(err, &recordErr):
		return "the server does not speak TLS (use an http:// endpoint?)"
	case errors.As(err, &urlErr):
		return urlErr.Err.Error()
	}
	return err.Error()
}

// denied reports S3 error codes that mean the credentials or the policy
// refuse the request: retrying cannot help, the operator has to.
func denied(code string) bool {
	switch code {
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
		"AllAccessDisabled", "AccountProblem", "InvalidSecurity", "NotSignedUp",
		"InvalidClientTokenId", "UnrecognizedClientException":
		return true
	}
	return false
}

// transient reports S3 error codes worth retrying whatever their HTTP
// status.
func transient(code string) bool {
	switch code {
	case "RequestTimeout", "SlowDown", "SlowDownRead", "SlowDownWrite",
		"InternalError", "ServiceUnavailable", "Throttling", "ThrottlingException",
		"RequestLimitExceeded", "RequestThrottled", "TooManyRequests", "ExpiredToken",
		"ExpiredTokenException", "OperationAborted", "RequestError":
		return true
	}
	return false
}

// fail maps an error of operation op on key to the repo contract: missing
// objects wrap repo.ErrNotFound, refusals and bad requests are permanent,
// and server trouble (5xx, throttling) and network trouble are transient.
func (b *Backend) fail(ctx context.Context, op repo.Op, key string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%s %s: %w", op, key, cerr)
	}
	var er minio.ErrorResponse
	if !errors.As(err, &er) || er.Code == "" {
		return fmt.Errorf("%s %s: %w", op, key, err)
	}
	switch {
	case er.Code == minio.NoSuchKey:
		return fmt.Errorf("%s %s: %w", op, key, repo.ErrNotFound)
	case er.Code == minio.NoSuchBucket:
		return repo.Permanent(fmt.Errorf("%s %s: bucket %q at %s: %w", op, key, b.cfg.Bucket, b.cfg.endpoint(), repo.ErrBucketNotFound))
	case denied(er.Code):
		return repo.Permanent(fmt.Errorf("%s %s: access denied (%s), check the credentials in %s: %w", op, key, er.Code, b.credFrom, err))
	case transient(er.Code), er.StatusCode >= 500, er.StatusCode == http.StatusRequestTimeout, er.StatusCode == http.StatusTooManyRequests:
		return fmt.Errorf("%s %s: %w (%s)", op, key, err, er.Code)
	}
	// Other 4xx answers, and errors minio-go raises before sending anything
	// (status 0), will not change on a retry.
	return repo.Permanent(fmt.Errorf("%s %s: %w (%s)", op, key, err, er.Code))
}

func (b *Backend) object(key string) string { return b.prefix + key }

// Location implements repo.Backend.
func (b *Backend) Location() string { return b.cfg.String() }

// Close implements repo.Backend.
func (b *Backend) Close() error {
	b.transport.CloseIdleConnections()
	return nil
}

// Put implements repo.Backend. Objects up to the part size go in one PUT;
// larger ones, and those of unknown size, in a multipart upload that holds
// one part in memory at a time. Every request carries a Content-MD5, which
// every S3-compatible server checks, so data damaged on the way is refused.
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := repo.ValidKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	partSize := partSizeFor(size, b.partSize)
	src := &source{r: r, size: size}
	if size == 0 {
		// minio-go reads nothing for an empty object, so the check that
		// the reader is empty too has to happen here.
		if err := src.end(); err != io.EOF {
			return fmt.Errorf("put %s: %w", key, err)
		}
	}
	opts := minio.PutObjectOptions{
		PartSize:       partSize,
		SendContentMd5: true,
		ContentType:    "application/octet-stream",
	}
	if b.cfg.LockMode != "" && repo.RetentionWanted(ctx) {
		// Counted from now, not from the end of the upload: the lock
		// may end a little early, never late.
		opts.Mode, opts.RetainUntilDate = b.cfg.LockMode, time.Now().Add(b.cfg.LockRetention)
	}
	_, err := b.client.PutObject(ctx, b.cfg.Bucket, b.object(key), src, size, opts)
	if err != nil {
		if src.err != nil && ctx.Err() == nil {
			return fmt.Errorf("put %s: %w", key, src.err)
		}
		return b.fail(ctx, repo.OpPut, key, err)
	}
	return nil
}

// partSizeFor returns the part size for an object of size bytes: the
// configured one, or for a known size too large for it, the smallest whole
// MiB that fits the object into 10,000 parts, rather than failing.
func partSizeFor(size int64, configured uint64) uint64 {
	if size <= int64(configured)*maxParts {
		return configured
	}
	const mib = 1 << 20
	perPart := uint64((size + maxParts - 1) / maxParts)
	return (perPart + mib - 1) / mib * mib
}

// source hands the caller's reader to minio-go. It hides io.Seeker and
// io.ReaderAt, which would let minio-go read from offset 0 rather than
// from the reader's position. It makes sure the reader holds exactly size
// bytes, and turns every failure of the reader into an error that stays:
// minio-go takes io.ErrUnexpectedEOF, which a cut network stream returns,
// for the end of the data, and drops an error that comes with the last
// bytes of a part, either of which would store a truncated object.
type source struct {
	r    io.Reader
	size int64 // -1: unknown
	n    int64 // bytes delivered
	eof  bool
	err  error
}

func (s *source) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.eof {
		return 0, io.EOF
	}
	if s.size >= 0 && int64(len(p)) > s.size-s.n {
		p = p[:s.size-s.n]
	}
	if len(p) == 0 && s.size >= 0 {
		return 0, s.end()
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	switch {
	case err == io.EOF:
		if s.size >= 0 && s.n < s.size {
			s.err = repo.Permanent(fmt.Errorf("the reader ended after %d of the %d bytes announced", s.n, s.size))
			return 0, s.err
		}
		s.eof = true
		return n, io.EOF
	case err != nil:
		s.err = fmt.Errorf("read source: %w", err)
		return 0, s.err
	}
	if s.size >= 0 && s.n == s.size {
		// Look past the announced end before handing over the last bytes,
		// while failing can still stop the upload.
		if err := s.end(); err != io.EOF {
			return 0, err
		}
	}
	return n, nil
}

// end checks that the reader has nothing after the announced size.
func (s *source) end() error {
	var one [1]byte
	for range 100 {
		n, err := s.r.Read(one[:])
		switch {
		case n > 0:
			s.err = repo.Permanent(fmt.Errorf("the reader holds more than the %d bytes announced", s.size))
			return s.err
		case err == io.EOF:
			s.eof = true
			return io.EOF
		case err != nil:
			s.err = fmt.Errorf("read source: %w", err)
			return s.err
		}
	}
	s.err = errors.New("read source: the reader returns no data and no error")
	return s.err
}

// Get implements repo.Backend. The request is made before Get returns, so
// that a missing object is reported by Get itself.
func (b *Backend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := repo.ValidKey(key); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, repo.Permanent(fmt.Errorf("get %s: negative offset %d", key, offset))
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	if length == 0 {
		if _, err := b.Stat(ctx, key); err != nil {
			return nil, err
		}
		return http.NoBody, nil
	}
	var opts minio.GetObjectOptions
	var err error
	switch {
	case length > 0 && offset <= math.MaxInt64-length:
		err = opts.SetRange(offset, offset+length-1)
	case offset > 0:
		err = opts.SetRange(offset, 0)
	}
	if err != nil {
		return nil, repo.Permanent(fmt.Errorf("get %s: %w", key, err))
	}
	body, _, _, err := b.core.GetObject(ctx, b.cfg.Bucket, b.object(key), opts)
	if err != nil {
		// The object exists (else NoSuchKey) but the range starts at or
		// after its end, or it is empty: the contract wants no bytes.
		if minio.ToErrorResponse(err).Code == minio.InvalidRange {
			return http.NoBody, nil
		}
		return nil, b.fail(ctx, repo.OpGet, key, err)
	}
	return &objectReader{ctx: ctx, key: key, body: body}, nil
}

type objectReader struct {
	ctx  context.Context
	key  string
	body io.ReadCloser
}

func (r *objectReader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	if err != nil && err != io.EOF {
		if cerr := r.ctx.Err(); cerr != nil {
			return n, fmt.Errorf("get %s: %w", r.key, cerr)
		}
		return n, fmt.Errorf("get %s: %w", r.key, err)
	}
	return n, err
}

func (r *objectReader) Close() error { return r.body.Close() }

// Stat implements repo.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (repo.ObjectInfo, error) {
	if err := repo.ValidKey(key); err != nil {
		return repo.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return repo.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	info, err := b.client.StatObject(ctx, b.cfg.Bucket, b.object(key), minio.StatObjectOptions{})
	if err != nil {
		return repo.ObjectInfo{}, b.fail(ctx, repo.OpStat, key, err)
	}
	out := repo.ObjectInfo{Key: key, Size: info.Size, ModTime: info.LastModified}
	if until, err := time.Parse(time.RFC3339, info.Metadata.Get("X-Amz-Object-Lock-Retain-Until-Date")); err == nil {
		out.RetainUntil = until
	}
	return out, nil
}

// List implements repo.Backend. S3 lists keys in UTF-8 binary order, which
// for the ASCII keys of the contract is lexical order.
func (b *Backend) List(ctx context.Context, prefix string, fn func(repo.ObjectInfo) error) error {
	if err := repo.ValidPrefix(prefix); err != nil {
		return err
	}
	// Cancelling stops minio-go's listing goroutine when fn ends the
	// listing early.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	objects := b.client.ListObjects(lctx, b.cfg.Bucket, minio.ListObjectsOptions{
		Prefix:    b.prefix + prefix,
		Recursive: true,
	})
	for obj := range objects {
		if obj.Err != nil {
			return b.fail(ctx, repo.OpList, prefix, obj.Err)
		}
		key := strings.TrimPrefix(obj.Key, b.prefix)
		// Objects that no valid key names (folder markers made by consoles,
		// foreign files) are not part of the repository.
		if repo.ValidKey(key) != nil {
			continue
		}
		if err := fn(repo.ObjectInfo{Key: key, Size: obj.Size, ModTime: obj.LastModified}); err != nil {
			return err
		}
	}
	// minio-go ends the listing without an error when the context ends;
	// without this a cancelled listing would look complete.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	return nil
}

// Delete implements repo.Backend.
//
// With object-lock configured the bucket is versioned, and a plain DELETE
// only adds a delete marker: the object would look gone while its locked
// version stays. So Delete removes every version of the key one by one,
// which S3 refuses for a version under retention: that is reported as
// repo.ErrLocked, naming the end of the retention.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := repo.ValidKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if b.cfg.LockMode != "" {
		return b.deleteVersions(ctx, key)
	}
	err := b.client.RemoveObject(ctx, b.cfg.Bucket, b.object(key), minio.RemoveObjectOptions{})
	if err != nil && minio.ToErrorResponse(err).Code != minio.NoSuchKey {
		return b.fail(ctx, repo.OpDelete, key, err)
	}
	return nil
}

func (b *Backend) deleteVersions(ctx context.Context, key string) error {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	name := b.object(key)
	var versions []minio.ObjectInfo
	for obj := range b.client.ListObjects(lctx, b.cfg.Bucket, minio.ListObjectsOptions{Prefix: name, WithVersions: true}) {
		if obj.Err != nil {
			return b.fail(ctx, repo.OpDelete, key, obj.Err)
		}
		if obj.Key == name {
			versions = append(versions, obj)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	var first error
	for _, o := range versions {
		err := b.client.RemoveObject(ctx, b.cfg.Bucket, name, minio.RemoveObjectOptions{VersionID: o.VersionID})
		if err == nil || minio.ToErrorResponse(err).Code == minio.NoSuchKey || minio.ToErrorResponse(err).Code == "NoSuchVersion" {
			continue
		}
		if ctx.Err() != nil {
			return fmt.Errorf("delete %s: %w", key, ctx.Err())
		}
		if until, locked := b.retained(ctx, name, o.VersionID); locked {
			err = repo.Permanent(fmt.Errorf("delete %s: %w: S3 Object Lock retains it until %s (%s)", key, repo.ErrLocked, until.UTC().Format(time.RFC3339), minio.ToErrorResponse(err).Message))
		} else {
			err = b.fail(ctx, repo.OpDelete, key, err)
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// Retention implements repo.Retainer: how long new objects are locked.
func (b *Backend) Retention() time.Duration {
	if b.cfg.LockMode == "" {
		return 0
	}
	return b.cfg.LockRetention
}

var _ repo.Retainer = (*Backend)(nil)

// ExtendRetention implements repo.Retainer. S3 lets anyone who may put
// retention extend it (shortening a governance lock needs a bypass
// permission tenantvault never asks for; a compliance lock cannot be
// shortened at all).
func (b *Backend) ExtendRetention(ctx context.Context, key string, until time.Time) error {
	if b.cfg.LockMode == "" {
		return nil
	}
	info, err := b.Stat(ctx, key)
	if err != nil {
		return err
	}
	if !info.RetainUntil.Before(until) {
		return nil
	}
	mode := b.cfg.LockMode
	until = until.UTC().Truncate(time.Second).Add(time.Second)
	err = b.client.PutObjectRetention(ctx, b.cfg.Bucket, b.object(key), minio.PutObjectRetentionOptions{Mode: &mode, RetainUntilDate: &until})
	if err != nil {
		return b.fail(ctx, repo.OpPut, key, err)
	}
	return nil
}

// retained reports whether a version of an object is under retention or
// legal hold now, and until when.
func (b *Backend) retained(ctx context.Context, name, version string) (time.Time, bool) {
	_, until, err := b.client.GetObjectRetention(ctx, b.cfg.Bucket, name, version)
	if err == nil && until != nil && until.After(time.Now()) {
		return *until, true
	}
	if hold, err := b.client.GetObjectLegalHold(ctx, b.cfg.Bucket, name, minio.GetObjectLegalHoldOptions{VersionID: version}); err == nil && hold != nil && *hold == minio.LegalHoldEnabled {
		return time.Time{}, true
	}
	return time.Time{}, false
}
