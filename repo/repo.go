// Package repo defines the storage contract that every repository backend honours, opens backends by URL, and wraps them with retries and fault injection.
package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
)

// Backend stores immutable objects under string keys. Every method takes a
// context first and returns promptly once it is cancelled, with an error that
// wraps ctx.Err().
//
// Contract, checked for every backend by the repotest conformance suite:
//   - Put stores the object atomically: a reader sees the whole content or
//     nothing, never a prefix, including after a crash or a cancelled context.
//     Put overwrites an existing object. size is the exact length of r, or -1
//     when unknown. Wrappers may retry a Put only when r is an io.Seeker
//     (rewindable); backends never assume they may re-read r.
//   - Get returns the bytes [offset, offset+length) of the object; length < 0
//     means to the end. A range past the end is cut at the end. A missing
//     object gives an error that errors.Is(err, ErrNotFound).
//   - Stat returns the object's size, or ErrNotFound.
//   - List calls fn for every object whose key starts with prefix, in
//     lexical key order; an error from fn stops the listing and is returned.
//   - Delete removes the object; deleting a missing object is not an error.
//     An object the storage keeps immutable (S3 Object Lock) is not
//     deleted and gives an error that errors.Is(err, ErrLocked).
//   - Errors that retrying cannot fix (not found, access denied, missing
//     bucket, invalid key, cancelled context) satisfy IsPermanent; all other
//     errors may be transient and are retried by the Retry wrapper.
//
// Keys are made of path segments separated by "/" (see ValidKey); a key is
// never also a directory-like prefix of another key, because several
// S3-compatible servers and every file system forbid it. Callers build keys
// so that this holds; backends report a violation as a permanent error.
type Backend interface {
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	Delete(ctx context.Context, key string) error
	// Location describes the backend for people and logs; it never holds
	// credentials.
	Location() string
	Close() error
}

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
	// RetainUntil is, when the storage keeps the object immutable (S3
	// Object Lock), the end of its retention period; zero otherwise. Only
	// Stat reports it (List leaves it zero).
	RetainUntil time.Time
}

// ErrNotFound is returned (wrapped) when an object does not exist.
var ErrNotFound = errors.New("object not found")

// ErrBucketNotFound is returned (wrapped) when an S3 bucket does not exist.
var ErrBucketNotFound = errors.New("bucket does not exist")

// ErrLocked is returned (wrapped) by Delete when the storage keeps the
// object immutable for a while yet (S3 Object Lock retention or legal
// hold). It is permanent: retrying before the retention ends cannot help.
var ErrLocked = errors.New("object is locked against deletion")

// Retainer is implemented by a Backend that keeps the objects it stores
// immutable for a while (S3 Object Lock). A set that reuses an older set's
// pack must keep that pack as long as itself: the vault extends its
// retention.
type Retainer interface {
	// Retention is how long a new object is kept; zero means none.
	Retention() time.Duration
	// ExtendRetention keeps key (its current version) at least until t.
	// It never shortens a retention.
	ExtendRetention(ctx context.Context, key string, until time.Time) error
}

// Unwrapper is implemented by wrappers (Retry, Faulty) to reach the
// Backend they wrap.
type Unwrapper interface {
	Unwrap() Backend
}

// AsRetainer finds a Retainer in b or the backends it wraps.
func AsRetainer(b Backend) (Retainer, bool) {
	for b != nil {
		if r, ok := b.(Retainer); ok && r.Retention() > 0 {
			return r, true
		}
		u, ok := b.(Unwrapper)
		if !ok {
			return nil, false
		}
		b = u.Unwrap()
	}
	return nil, false
}

type noRetentionKey struct{}

// WithoutRetention marks the Puts made with ctx as writing objects that
// must stay deletable (deletion markers, verification records), so a
// backend with object retention configured does not lock them. Everything
// else a backend locks.
func WithoutRetention(ctx context.Context) context.Context {
	return context.WithValue(ctx, noRetentionKey{}, true)
}

// RetentionWanted reports whether a Put made with ctx may be locked.
func RetentionWanted(ctx context.Context) bool {
	v, _ := ctx.Value(noRetentionKey{}).(bool)
	return !v
}

// PermanentError marks an error that retrying will not fix.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that IsPermanent reports true. It returns nil for nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	var p *PermanentError
	if errors.As(err, &p) {
		return err
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether retrying the operation that returned err is
// pointless: the object or bucket is missing, access is denied, the key is
// invalid, or the context is done.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	var p *PermanentError
	return errors.As(err, &p) ||
		errors.Is(err, ErrNotFound) ||
		errors.Is(err, ErrBucketNotFound) ||
		errors.Is(err, ErrLocked) ||
		errors.Is(err, context.Canceled) ||
		errors.Is(err, context.DeadlineExceeded)
}

// URLError reports a repository URL that cannot be used; it is the caller's
// input that is wrong, not the storage.
type URLError struct {
	URL    string // the URL as given, with any credentials removed
	Reason string
}

func (e *URLError) Error() string {
	return fmt.Sprintf("repository URL %q: %s", e.URL, e.Reason)
}

// OpenFunc opens a backend for a parsed repository URL.
type OpenFunc func(ctx context.Context, u *url.URL, opts Options) (Backend, error)

// Options are the settings shared by every backend when it is opened.
type Options struct {
	// Create makes what the backend needs (a directory, a bucket) when it is
	// missing, instead of failing with a hint.
	Create bool
	// Getenv reads credentials; nil means os.Getenv. Credentials never come
	// from the URL or from flags.
	Getenv func(string) string
}

var (
	registryMu sync.Mutex
	registry   = map[string]OpenFunc{}
)

// Register makes a backend available for URLs with the given scheme. It is
// called from the backend package's init function.
func Register(scheme string, open OpenFunc) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[scheme]; dup {
		panic("repo: backend registered twice for scheme " + scheme)
	}
	registry[scheme] = open
}

// Schemes lists the registered URL schemes in order.
func Schemes() []string {
	registryMu.Lock()
	defer registryMu.Unlock()
	s := make([]string, 0, len(registry))
	for k := range registry {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open parses a repository URL and opens the backend registered for its
// scheme. A bad URL or an unknown scheme gives a *URLError.
func Open(ctx context.Context, rawURL string, opts Options) (Backend, error) {
	if strings.TrimSpace(rawURL) == "" {
		return nil, &URLError{URL: rawURL, Reason: "empty; use file:///path or s3://bucket/prefix"}
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, &URLError{URL: Redact(rawURL), Reason: "cannot be parsed"}
	}
	if u.Scheme == "" {
		return nil, &URLError{URL: Redact(rawURL), Reason: "has no scheme; use file:///path or s3://bucket/prefix"}
	}
	if u.User != nil {
		return nil, &URLError{URL: Redact(rawURL), Reason: "must not contain credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"}
	}
	registryMu.Lock()
	open := registry[u.Scheme]
	registryMu.Unlock()
	if open == nil {
		return nil, &URLError{URL: Redact(rawURL), Reason: fmt.Sprintf("unknown scheme %q (supported: %s)", u.Scheme, strings.Join(Schemes(), ", "))}
	}
	return open(ctx, u, opts)
}

// Redact returns rawURL with any user information removed, for messages.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		if err != nil {
			// Best effort: cut anything between "://" and "@".
			if i := strings.Index(rawURL, "://"); i >= 0 {
				if j := strings.LastIndex(rawURL, "@"); j > i {
					return rawURL[:i+3] + "REDACTED@" + rawURL[j+1:]
				}
			}
		}
		return rawURL
	}
	u.User = url.User("REDACTED")
	return u.String()
}

// ValidKey reports whether key is a well-formed object key: non-empty
// "/"-separated segments of printable ASCII without "." or ".." segments,
// backslashes or a leading or trailing slash. Tenant IDs and other free text
// must go through EncodeKeyPart first.
func ValidKey(key string) error {
	if key == "" {
		return Permanent(fmt.Errorf("invalid key: empty"))
	}
	if len(key) > 900 {
		return Permanent(fmt.Errorf("invalid key %q: longer than 900 bytes", key[:40]+"..."))
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return Permanent(fmt.Errorf("invalid key %q: empty, . or .. segment", key))
		}
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c < 0x21 || c > 0x7e || c == '\\' {
			return Permanent(fmt.Errorf("invalid key %q: byte 0x%02x not allowed", key, c))
		}
	}
	return nil
}

// ValidPrefix reports whether prefix may select keys in List: it is empty or
// the start of a valid key. The last segment may be partial ("sets/2026"
// selects "sets/20261128T..."), but the segments before it must be valid key
// segments, so that no prefix reaches outside the repository.
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if len(prefix) > 900 {
		return Permanent(fmt.Errorf("invalid prefix %q: longer than 900 bytes", prefix[:40]+"..."))
	}
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		if err := ValidKey(prefix[:i]); err != nil {
			return Permanent(fmt.Errorf("invalid prefix %q: empty, . or .. segment", prefix))
		}
	}
	for i := 0; i < len(prefix); i++ {
		c := prefix[i]
		if c < 0x21 || c > 0x7e || c == '\\' {
			return Permanent(fmt.Errorf("invalid prefix %q: byte 0x%02x not allowed", prefix, c))
		}
	}
	return nil
}

// ReadAll reads a whole object.
func ReadAll(ctx context.Context, b Backend, key string) ([]byte, error) {
	rc, err := b.Get(ctx, key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return data, nil
}
