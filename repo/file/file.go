// Package file stores a repository in a local directory, one file per object, each written atomically.
package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/tenantvault/tenantvault/repo"
)

func init() {
	repo.Register("file", openURL)
}

const (
	// Backups hold customers' data: only the owner may read them.
	dirMode = 0o700

	// tempPrefix starts the names of files being written. It holds a space,
	// a byte that ValidKey never allows, so a temporary file can never be
	// taken for an object, whatever keys the callers use.
	tempPrefix = ".tmp "

	// chunk is how much Put copies between two looks at the context.
	chunk = 1 << 20
)

// Backend is a repository in a local directory. Object "a/b/c" is the file
// a/b/c below the root. Put writes a temporary file next to the object, syncs
// it and renames it into place, so readers and crashes see either the old
// content or the new one, never a mix.
type Backend struct {
	root string
}

var _ repo.Backend = (*Backend)(nil)

// openURL opens file:///absolute/path (or file://localhost/absolute/path).
func openURL(_ context.Context, u *url.URL, opts repo.Options) (repo.Backend, error) {
	dir, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	b, err := New(dir, opts)
	if err != nil {
		return nil, err // not a nil *Backend in a non-nil interface
	}
	return b, nil
}

func parseURL(u *url.URL) (string, error) {
	bad := func(reason string) error {
		return &repo.URLError{URL: repo.Redact(u.String()), Reason: reason}
	}
	if u.Opaque != "" || (u.Host != "" && u.Host != "localhost") || !strings.HasPrefix(u.Path, "/") {
		return "", bad("the path must be absolute: use file:///absolute/path (three slashes)")
	}
	if u.RawQuery != "" || u.ForceQuery {
		names := slices.Sorted(func(yield func(string) bool) {
			for k := range u.Query() {
				if !yield(k) {
					return
				}
			}
		})
		return "", bad(fmt.Sprintf("unknown query parameter(s) %s: file URLs take none", strings.Join(names, ", ")))
	}
	if u.Fragment != "" {
		return "", bad("unexpected fragment #" + u.Fragment)
	}
	return filepath.Clean(filepath.FromSlash(u.Path)), nil
}

// New opens the repository in directory dir, an absolute path. A missing
// directory is created when opts.Create is set, and is an error otherwise.
// New checks that the directory is writable, so that a backup fails at once
// rather than after it has read the database.
func New(dir string, opts repo.Options) (*Backend, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("repository directory %s: the path must be absolute", dir)
	}
	dir = filepath.Clean(dir)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist) && opts.Create:
		if err := os.MkdirAll(dir, dirMode); err != nil {
			return nil, &openError{fmt.Sprintf("cannot create repository directory %s: %s", dir, reason(err)), err}
		}
		// Without this the new directory could vanish in a crash, and the
		// objects in it with it.
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return nil, &openError{fmt.Sprintf("cannot create repository directory %s: sync parent: %s", dir, reason(err)), err}
		}
	case errors.Is(err, fs.ErrNotExist):
		return nil, &openError{fmt.Sprintf("repository directory %s does not exist (create it, or pass --init to create it)", dir), err}
	case err != nil:
		return nil, &openError{fmt.Sprintf("repository directory %s cannot be used: %s", dir, reason(err)), err}
	case !fi.IsDir():
		return nil, &openError{fmt.Sprintf("repository path %s is a file, not a directory", dir), syscall.ENOTDIR}
	}
	probe, err := os.CreateTemp(dir, tempPrefix+"probe-*")
	if err != nil {
		return nil, &openError{fmt.Sprintf("repository directory %s is not writable: %s", dir, reason(err)), err}
	}
	probe.Close()
	if err := os.Remove(probe.Name()); err != nil {
		return nil, &openError{fmt.Sprintf("repository directory %s: cannot remove a probe file: %s", dir, reason(err)), err}
	}
	return &Backend{root: dir}, nil
}

// openError is a one-line message for people that still lets callers test
// the cause with errors.Is.
type openError struct {
	msg string
	err error
}

func (e *openError) Error() string { return e.msg }
func (e *openError) Unwrap() error { return e.err }

// reason returns the system's word for what went wrong ("permission
// denied"), without the path that the caller's message already names.
func reason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err.Error()
	}
	return err.Error()
}

// Root returns the repository directory.
func (b *Backend) Root() string { return b.root }

// Location implements repo.Backend.
func (b *Backend) Location() string { return "file://" + filepath.ToSlash(b.root) }

// Close implements repo.Backend.
func (b *Backend) Close() error { return nil }

func (b *Backend) path(key string) string {
	return filepath.Join(b.root, filepath.FromSlash(key))
}

// fail wraps an error of operation op on key. Missing files, and paths that
// run into a file where a directory would have to be, are missing objects;
// denied access is permanent.
func fail(op repo.Op, key string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%s %s: %w", op, key, repo.ErrNotFound)
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		return repo.Permanent(fmt.Errorf("%s %s: %w", op, key, err))
	}
	return fmt.Errorf("%s %s: %w", op, key, err)
}

// Put implements repo.Backend.
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, size int64) (err error) {
	if err := repo.ValidKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	dst := b.path(key)
	f, err := b.createTemp(key, filepath.Dir(dst))
	if err != nil {
		return err
	}
	tmp, closed := f.Name(), false
	defer func() {
		if err != nil {
			if !closed {
				f.Close()
			}
			os.Remove(tmp)
		}
	}()
	if err := copyChunks(ctx, f, r, size); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("put %s: sync: %w", key, err)
	}
	closed = true
	if err := f.Close(); err != nil {
		return fmt.Errorf("put %s: close: %w", key, err)
	}
	// The last moment at which a cancelled Put can still leave nothing.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		if fi, serr := os.Lstat(dst); serr == nil && fi.IsDir() {
			return repo.Permanent(fmt.Errorf("put %s: other keys start with %s/, so it cannot be an object", key, key))
		}
		return fail(repo.OpPut, key, err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return fmt.Errorf("put %s: sync directory: %w", key, err)
	}
	return nil
}

// createTemp creates the temporary file for key in dir, making dir first.
func (b *Backend) createTemp(key, dir string) (*os.File, error) {
	for attempt := 1; ; attempt++ {
		if err := b.mkdirs(key, dir); err != nil {
			return nil, err
		}
		f, err := os.CreateTemp(dir, tempPrefix+"*")
		// A concurrent Delete may have pruned dir, now empty, between the
		// two calls; once our file is in it, it stays.
		if errors.Is(err, fs.ErrNotExist) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, fail(repo.OpPut, key, err)
		}
		return f, nil
	}
}

// mkdirs creates dir and the directories above it up to the root, and syncs
// the parents of those it created so that they survive a crash.
func (b *Backend) mkdirs(key, dir string) error {
	if dir == b.root {
		return nil
	}
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		if errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EEXIST) {
			return repo.Permanent(fmt.Errorf("put %s: key %s is an object, so no key can start with %s/", key, b.objectAbove(dir), b.objectAbove(dir)))
		}
		return fail(repo.OpPut, key, err)
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		// A directory pruned meanwhile by a concurrent Delete is made again
		// by createTemp's next attempt.
		if err := syncDir(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("put %s: sync directory: %w", key, err)
		}
		if d == b.root || len(d) <= len(b.root) {
			return nil
		}
	}
}

// objectAbove returns the key of the file that sits where dir or one of its
// parents would need a directory, for the message of a key conflict.
func (b *Backend) objectAbove(dir string) string {
	for d := dir; len(d) > len(b.root); d = filepath.Dir(d) {
		if fi, err := os.Lstat(d); err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(b.root, d)
			return filepath.ToSlash(rel)
		}
	}
	rel, _ := filepath.Rel(b.root, dir)
	return filepath.ToSlash(rel)
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, chunk); return &b }}

// copyChunks copies r to w in pieces of one chunk, checking ctx between
// them, and checks that r holds exactly size bytes when size >= 0.
func copyChunks(ctx context.Context, w io.Writer, r io.Reader, size int64) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		want := len(buf)
		if size >= 0 && size-n+1 < int64(want) {
			// One byte more than announced, to notice a longer source.
			want = int(size - n + 1)
		}
		m, rerr := fill(r, buf[:want])
		n += int64(m)
		if size >= 0 && n > size {
			return repo.Permanent(fmt.Errorf("the reader holds more than the %d bytes announced", size))
		}
		if _, err := w.Write(buf[:m]); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		switch {
		case rerr == io.EOF:
			if size >= 0 && n < size {
				return repo.Permanent(fmt.Errorf("the reader ended after %d of the %d bytes announced", n, size))
			}
			return nil
		case rerr != nil:
			return fmt.Errorf("read source: %w", rerr)
		}
	}
}

// fill reads until buf is full or r fails. Unlike io.ReadFull it passes
// every error on unchanged: io.ErrUnexpectedEOF from a source (a cut
// network stream) is a failure, not the end of the object.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// syncDir makes the entries of dir (a created or renamed file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	// Some file systems cannot sync directories, and need not.
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return err
	}
	return nil
}

// Get implements repo.Backend.
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
	f, err := os.Open(b.path(key))
	if err != nil {
		return nil, fail(repo.OpGet, key, err)
	}
	// Objects are replaced by rename, so the open file keeps the content it
	// had, whatever Put happens meanwhile.
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fail(repo.OpGet, key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("get %s: %w", key, repo.ErrNotFound)
	}
	size := fi.Size()
	offset = min(offset, size)
	n := size - offset
	if length >= 0 && length < n {
		n = length
	}
	return &reader{ctx: ctx, key: key, f: f, r: io.NewSectionReader(f, offset, n)}, nil
}

type reader struct {
	ctx context.Context
	key string
	f   *os.File
	r   *io.SectionReader
}

func (r *reader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, fmt.Errorf("get %s: %w", r.key, err)
	}
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("get %s: %w", r.key, err)
	}
	return n, err
}

func (r *reader) Close() error { return r.f.Close() }

// Stat implements repo.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (repo.ObjectInfo, error) {
	if err := repo.ValidKey(key); err != nil {
		return repo.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return repo.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	fi, err := os.Stat(b.path(key))
	if err != nil {
		return repo.ObjectInfo{}, fail(repo.OpStat, key, err)
	}
	if !fi.Mode().IsRegular() {
		return repo.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, repo.ErrNotFound)
	}
	return repo.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List implements repo.Backend.
func (b *Backend) List(ctx context.Context, prefix string, fn func(repo.ObjectInfo) error) error {
	if err := repo.ValidPrefix(prefix); err != nil {
		return err
	}
	// Only the last segment of the prefix may be partial: the segments
	// before it name the directory to start from.
	i := strings.LastIndexByte(prefix, '/') + 1
	dirKey, partial := prefix[:i], prefix[i:]
	return b.walk(ctx, filepath.Join(b.root, filepath.FromSlash(dirKey)), dirKey, partial, fn)
}

// walk lists the objects below dir, whose key starts with keyPrefix, in
// lexical key order, keeping only the entries of dir that start with partial.
func (b *Backend) walk(ctx context.Context, dir, keyPrefix, partial string, fn func(repo.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", keyPrefix+partial, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		// A prefix that names no directory (or an object) selects nothing,
		// and a directory pruned by a concurrent Delete held nothing.
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil
		}
		return fmt.Errorf("list %s: %w", keyPrefix+partial, err)
	}
	// Keys, not names, must come out sorted: directory "a" holds keys
	// "a/...", which sort after key "a-b" because '-' < '/'. So a directory
	// sorts as its name followed by "/".
	type entry struct {
		sortKey string
		e       fs.DirEntry
	}
	list := make([]entry, 0, len(entries))
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, partial) || strings.HasPrefix(name, tempPrefix) {
			continue
		}
		switch {
		case e.IsDir():
			list = append(list, entry{name + "/", e})
		case e.Type().IsRegular():
			list = append(list, entry{name, e})
		}
	}
	slices.SortFunc(list, func(a, b entry) int { return strings.Compare(a.sortKey, b.sortKey) })
	for _, ent := range list {
		key := keyPrefix + ent.e.Name()
		// Files that no valid key names (left by people or other tools)
		// are not objects.
		if repo.ValidKey(key) != nil {
			continue
		}
		if ent.e.IsDir() {
			if err := b.walk(ctx, filepath.Join(dir, ent.e.Name()), key+"/", "", fn); err != nil {
				return err
			}
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %s: %w", keyPrefix+partial, err)
		}
		fi, err := ent.e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since ReadDir
		}
		if err != nil {
			return fmt.Errorf("list %s: %w", key, err)
		}
		if err := fn(repo.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements repo.Backend. It also removes the directories that the
// object leaves empty, up to the root, so that deleted data leaves no trace
// and listings stay fast.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := repo.ValidKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	p := b.path(key)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || (err == nil && fi.IsDir()) {
		return nil // no such object; a directory is only a prefix of keys
	}
	if err != nil {
		return fail(repo.OpDelete, key, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(repo.OpDelete, key, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: sync directory: %w", key, err)
	}
	// Best effort: rmdir fails on a directory that is not empty, which is
	// where pruning stops; a concurrent Put copes with a pruned directory.
	for d := filepath.Dir(p); d != b.root && len(d) > len(b.root); d = filepath.Dir(d) {
		if os.Remove(d) != nil {
			break
		}
	}
	return nil
}
