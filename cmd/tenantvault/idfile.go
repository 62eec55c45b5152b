package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tenantvault/tenantvault"
)

// idFile writes tenant IDs one per line, for restore --tenants-file. It
// writes a temporary file beside the target and renames it into place only
// on commit, so a failed command leaves nothing, and a reader never sees
// half a list.
type idFile struct {
	path string
	f    *os.File
	w    *bufio.Writer
	n    int
}

// createIDFile opens the temporary file at once, so a bad path fails
// before any work is done.
func createIDFile(path string) (*idFile, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".*.tmp")
	if err != nil {
		return nil, tenantvault.Inputf("--output %s: %v", path, err)
	}
	return &idFile{path: path, f: f, w: bufio.NewWriter(f)}, nil
}

// add appends one ID; an ID that one line cannot carry is refused, since
// restore would read it back as another tenant.
func (o *idFile) add(id string) error {
	if strings.ContainsAny(id, "\n") || strings.HasSuffix(id, "\r") {
		return tenantvault.WithHint(fmt.Sprintf("tenant ID %q holds a line break, which a --tenants-file line cannot carry", id),
			"use --json for the full list, and restore that tenant with --tenant")
	}
	o.n++
	_, err := o.w.WriteString(id + "\n")
	return err
}

// commit makes the file visible under its name.
func (o *idFile) commit() error {
	err := o.w.Flush()
	if err == nil {
		err = o.f.Sync()
	}
	if cerr := o.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(o.f.Name(), o.path)
	}
	if err != nil {
		os.Remove(o.f.Name())
		return fmt.Errorf("write %s: %w", o.path, err)
	}
	return nil
}

// abort removes the temporary file; after commit it does nothing.
func (o *idFile) abort() {
	if o == nil {
		return
	}
	o.f.Close()
	os.Remove(o.f.Name())
}
