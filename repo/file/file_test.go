package file_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/repo/file"
	"github.com/tenantvault/tenantvault/repo/repotest"
)

func TestConformance(t *testing.T) {
	repotest.TestBackend(t, func(t *testing.T) repo.Backend {
		dir := t.TempDir()
		b, err := file.New(dir, repo.Options{})
		if err != nil {
			t.Fatal(err)
		}
		// Whatever failed, no temporary file may stay behind.
		t.Cleanup(func() {
			filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
				if err == nil && strings.HasPrefix(d.Name(), ".tmp") {
					t.Errorf("temporary file left behind: %s", path)
				}
				return nil
			})
		})
		return b
	})
}

func open(rawURL string, opts repo.Options) (repo.Backend, error) {
	return repo.Open(context.Background(), rawURL, opts)
}

func TestURLErrors(t *testing.T) {
	for _, c := range []struct{ url, msg string }{
		{"file://relative", `repository URL "file://relative": the path must be absolute: use file:///absolute/path (three slashes)`},
		{"file://relative/path", `repository URL "file://relative/path": the path must be absolute: use file:///absolute/path (three slashes)`},
		{"file:relative", `repository URL "file:relative": the path must be absolute: use file:///absolute/path (three slashes)`},
		{"file://", `repository URL "file:": the path must be absolute: use file:///absolute/path (three slashes)`},
		{"file:///tmp/x?create=1&b=2", `repository URL "file:///tmp/x?create=1&b=2": unknown query parameter(s) b, create: file URLs take none`},
		{"file:///tmp/x#frag", `repository URL "file:///tmp/x#frag": unexpected fragment #frag`},
	} {
		_, err := open(c.url, repo.Options{Create: true})
		var ue *repo.URLError
		if !errors.As(err, &ue) || err.Error() != c.msg {
			t.Errorf("open %s:\n got %v\nwant *repo.URLError %s", c.url, err, c.msg)
		}
	}
}

func TestOpenMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "backups", "repo")
	b, err := open("file://"+dir, repo.Options{})
	if b != nil {
		t.Errorf("open failed but returned a non-nil backend %#v", b)
	}
	want := "repository directory " + dir + " does not exist (create it, or pass --init to create it)"
	if err == nil || err.Error() != want || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("open of a missing directory:\n got %v\nwant %s", err, want)
	}

	b, err = open("file://"+dir, repo.Options{Create: true})
	if err != nil {
		t.Fatalf("open with Create: %v", err)
	}
	defer b.Close()
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		t.Fatalf("directory not created: %v", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		t.Errorf("repository directory has mode %v: others can read the backups", perm)
	}
	if got, want := b.Location(), "file://"+dir; got != want {
		t.Errorf("location %q, want %q", got, want)
	}
	// The writability probe leaves nothing behind.
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("new repository directory holds %d entries", len(entries))
	}
	// Opening again, with or without Create, works.
	for _, create := range []bool{false, true} {
		b, err := open("file://"+dir, repo.Options{Create: create})
		if err != nil {
			t.Errorf("reopen with Create %v: %v", create, err)
			continue
		}
		b.Close()
	}
}

func TestOpenFileNotDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "afile")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, create := range []bool{false, true} {
		_, err := open("file://"+path, repo.Options{Create: create})
		want := "repository path " + path + " is a file, not a directory"
		if err == nil || err.Error() != want {
			t.Errorf("open of a file (Create %v):\n got %v\nwant %s", create, err, want)
		}
		// Below a file nothing can be created either.
		_, err = open("file://"+path+"/sub", repo.Options{Create: create})
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "not a directory") {
			t.Errorf("open below a file (Create %v): %v, want one line saying not a directory", create, err)
		}
	}
}

func TestOpenNotWritable(t *testing.T) {
	t.Run("ReadOnlyLocation", func(t *testing.T) {
		// Nobody, root included, can create files in sysfs.
		if fi, err := os.Stat("/sys/kernel"); err != nil || !fi.IsDir() {
			t.Skip("no /sys/kernel on this system")
		}
		_, err := open("file:///sys/kernel", repo.Options{})
		want := "repository directory /sys/kernel is not writable: "
		if err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("open of /sys/kernel: %v, want one line starting %q", err, want)
		}
	})
	t.Run("Chmod", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("permission bits do not stop root")
		}
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o700) })
		_, err := open("file://"+dir, repo.Options{})
		want := "repository directory " + dir + " is not writable: permission denied"
		if err == nil || err.Error() != want || !errors.Is(err, fs.ErrPermission) {
			t.Errorf("open of a read-only directory:\n got %v\nwant %s", err, want)
		}
	})
}

func TestLayout(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := file.New(dir, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "a/b/c", strings.NewReader("abc"), 3); err != nil {
		t.Fatal(err)
	}
	// Objects are plain files under the root, readable by other tools.
	data, err := os.ReadFile(filepath.Join(dir, "a", "b", "c"))
	if err != nil || string(data) != "abc" {
		t.Fatalf("a/b/c on disk: %q, %v", data, err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "a", "b", "c")); fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("object has mode %v: others can read it", fi.Mode().Perm())
	}
	// A key below an object, or an object where keys continue, is refused
	// for good.
	for _, key := range []string{"a/b/c/d", "a/b"} {
		err := b.Put(ctx, key, strings.NewReader("x"), 1)
		if err == nil || !repo.IsPermanent(err) {
			t.Errorf("put %s: %v, want a permanent error", key, err)
		}
	}
	// Delete prunes the directories it empties, but never the root.
	if err := b.Delete(ctx, "a/b/c"); err != nil {
		t.Fatal(err)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("root after deleting the only object: %d entries, %v", len(entries), err)
	}
	// Stray files that no valid key names are not objects.
	os.WriteFile(filepath.Join(dir, "has space"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, ".tmp 123"), nil, 0o600)
	os.Mkdir(filepath.Join(dir, "dir with space"), 0o700)
	os.WriteFile(filepath.Join(dir, "dir with space", "x"), nil, 0o600)
	if err := b.List(ctx, "", func(info repo.ObjectInfo) error {
		t.Errorf("listed %q", info.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
