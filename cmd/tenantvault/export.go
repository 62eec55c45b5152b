package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/export"
	"github.com/tenantvault/tenantvault/restore"
)

type exportOptions struct {
	repo      repoFlags
	tenants   []string
	snapshot  string
	at        string
	output    string
	zstd      bool
	force     bool
	scratch   string
	pgRestore string
	template  string
	tempDir   string
	dryRun    bool
}

func (a *app) exportCmd() *cobra.Command {
	var o exportOptions
	cmd := &cobra.Command{
		Use:   "export --repo URL --tenant ID [--snapshot ID | --at TIME] --output FILE",
		Short: "Write one tenant's data as CSV files and SQL that psql alone can load",
		Long: `Write one tenant's data, from the newest snapshot set (or --snapshot, or as
of --at), into one tar archive: README.txt (how to load it), schema.sql (the
tenant's tables, generated from the set's table definitions), load.sql
(schema.sql and one \copy per table, in one transaction), one CSV file per
table with a header line, manifest.json (row counts, sizes and SHA-256 of
every file, each table's content digest, the set it came from) and
SHA256SUMS. Nothing but psql is needed to load it:

  tar -xf FILE && cd DIR && psql -d EMPTY_DB -v ON_ERROR_STOP=1 -f load.sql

Every chunk's stored checksum and content digest are checked while it is
read; damaged data stops the export (exit 3) and nothing is left behind.
The archive is written to a temporary file beside FILE and renamed into
place when complete; an existing FILE is never replaced unless --force.
--output - writes the archive to stdout (on failure the stream ends
without its manifest.json, and the exit code is not 0). FILE ending in
.zst (or --zstd) compresses the archive with zstd.

--at TIME after the chosen set replays the change log on top, as restore
--at does: the tenant is restored into a new database on the --scratch
server (schema and global tables from the set, every content digest
checked, then the changes), read back from there and the database dropped.
A set taken with --schema-archive=none needs --template DB (as drill
does), a database on the scratch server with the schema and no rows.
Unlike restore --at, export refuses a time that no change log reaches from
the set (exit 2): the archive's as_of is never older than asked for.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runExport(cmd.Context(), &o) },
	}
	fs := cmd.Flags()
	o.repo.add(fs, false)
	o.repo.keys.addReader(fs)
	fs.StringArrayVar(&o.tenants, "tenant", nil, "the tenant to export (one; any characters)")
	fs.StringVar(&o.snapshot, "snapshot", "", "export from this snapshot set ID")
	fs.StringVar(&o.at, "at", "", "export the tenant as of this RFC 3339 time (the newest set at or before it, and the change log replayed in --scratch)")
	fs.StringVar(&o.output, "output", "", "archive to write: FILE (.tar, or .tar.zst for zstd), or - for stdout")
	fs.BoolVar(&o.zstd, "zstd", false, "compress the archive with zstd (implied by a FILE ending in .zst)")
	fs.BoolVar(&o.force, "force", false, "replace FILE if it exists")
	fs.StringVar(&o.scratch, "scratch", "", "database URL on a scratch server (never the live one), for --at with a change log: export creates and drops its own database there")
	fs.StringVar(&o.pgRestore, "pg-restore", "pg_restore", "pg_restore binary, for the scratch database of --at")
	fs.StringVar(&o.template, "template", "", "for --at: create the scratch database as a copy of this database on the scratch server, which holds the schema and no rows; needed for sets taken with --schema-archive=none")
	fs.BoolVar(&o.dryRun, "dry-run", false, "print which set, time and tables would be exported, and write nothing")
	fs.StringVar(&o.tempDir, "temp-dir", "", "directory for the temporary CSV file of one table at a time")
	return cmd
}

// archiveDir names the directory inside the archive after the file: the
// file name without .tar, .zst, .tzst, when that is a plain name.
func archiveDir(output string) string {
	base := filepath.Base(output)
	for _, ext := range []string{".zst", ".tzst", ".tar", ".tgz"} {
		base = strings.TrimSuffix(base, ext)
	}
	if base == "" || base == "." || base == ".." || output == "-" {
		return "tenantvault-export"
	}
	for _, c := range base {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "tenantvault-export"
		}
	}
	return base
}

// archiveName is the file name README.txt tells to unpack, when it is a
// plain one.
func archiveName(output string) string {
	base := filepath.Base(output)
	if output == "-" || archiveDir(output) == "tenantvault-export" && !strings.HasPrefix(base, "tenantvault-export") {
		return ""
	}
	return base
}

func (a *app) runExport(ctx context.Context, o *exportOptions) error {
	switch len(o.tenants) {
	case 0:
		return &usageError{"no tenant given: use --tenant ID"}
	case 1:
	default:
		return &usageError{fmt.Sprintf("export writes one tenant, and %d were given (--tenant): run one export per tenant", len(o.tenants))}
	}
	if o.output == "" && !o.dryRun {
		return &usageError{"--output is required: a FILE (.tar or .tar.zst), or - for stdout"}
	}
	var sel restore.Selector
	if o.at != "" && o.snapshot != "" {
		return &usageError{"--at and --snapshot exclude each other"}
	}
	if o.at != "" {
		at, err := parseAt(o.at)
		if err != nil {
			return err
		}
		sel.At = at
	}
	sel.SetID = o.snapshot
	for _, ext := range []string{".gz", ".tgz", ".bz2", ".xz", ".zip", ".lz4"} {
		if strings.HasSuffix(strings.ToLower(o.output), ext) {
			return &usageError{fmt.Sprintf("--output %s: export writes a tar (.tar) or a zstd-compressed tar (.tar.zst), not %s", o.output, ext)}
		}
	}
	zst := o.zstd || strings.HasSuffix(o.output, ".zst") || strings.HasSuffix(o.output, ".tzst")
	var out io.Writer
	var file *exportFile
	switch {
	case o.dryRun:
		if o.output != "" && o.output != "-" {
			if _, err := os.Stat(o.output); err == nil && !o.force {
				return &tenantvault.InputError{Msg: fmt.Sprintf("--output %s already exists", o.output), Hint: "choose another file, or pass --force to replace it"}
			}
		}
		out = io.Discard
	case o.output == "-":
		if a.jsonOut {
			return &usageError{"--json and --output - exclude each other: stdout carries the archive"}
		}
		if terminal(a.stdout) {
			return &usageError{"--output - would write a binary archive to a terminal: redirect stdout to a file or a pipe"}
		}
		bw := bufio.NewWriterSize(a.stdout, 256<<10)
		defer bw.Flush()
		out = bw
	default:
		var err error
		if file, err = createExportFile(o.output, o.force); err != nil {
			return err
		}
		defer file.abort()
		out = file
	}
	if o.tempDir != "" {
		if st, err := os.Stat(o.tempDir); err != nil || !st.IsDir() {
			return tenantvault.Inputf("--temp-dir %s is not a directory", o.tempDir)
		}
	}
	v, closeRepo, err := a.openVault(ctx, &o.repo, false)
	if err != nil {
		return err
	}
	defer closeRepo()
	rep, err := export.Run(ctx, out, export.Options{
		Vault: v, Tenant: o.tenants[0], Select: sel, Scratch: o.scratch, PgRestore: o.pgRestore, Template: o.template,
		Dir: archiveDir(o.output), ArchiveName: archiveName(o.output), Zstd: zst, DryRun: o.dryRun, TempDir: o.tempDir, Generator: "tenantvault " + version, Logger: a.log,
	})
	if err != nil {
		return err
	}
	if o.dryRun {
		return a.printExportPlan(rep)
	}
	if file != nil {
		if err := file.commit(); err != nil {
			return err
		}
	}
	if a.jsonOut {
		j := map[string]any{"tenant": rep.Tenant, "set": rep.Set, "as_of": rep.AsOf.UTC().Format(time.RFC3339Nano),
			"tables": rep.Tables, "rows": rep.Rows, "csv_bytes": rep.Bytes, "output": o.output, "zstd": zst}
		if r := rep.Replayed; r != nil {
			j["replayed_changes"] = r.Changes
		}
		return a.printJSON(j)
	}
	w := a.stdout
	if o.output == "-" {
		w = a.stderr
	}
	fmt.Fprintf(w, "exported tenant %q from set %s as of %s: %d table(s), %d row(s), %s of CSV", rep.Tenant, rep.Set, rep.AsOf.UTC().Format(time.RFC3339Nano), rep.Tables, rep.Rows, humanBytes(rep.Bytes))
	if r := rep.Replayed; r != nil {
		fmt.Fprintf(w, "; %d change(s) replayed on the set", r.Changes)
	}
	if o.output != "-" {
		fmt.Fprintf(w, " -> %s", o.output)
	}
	fmt.Fprintln(w)
	return nil
}

// exportFile is the archive being written: a temporary file beside the
// target, renamed into place only when complete.
type exportFile struct {
	path  string
	force bool
	f     *os.File
	w     *bufio.Writer
	done  bool
}

func createExportFile(path string, force bool) (*exportFile, error) {
	if st, err := os.Stat(path); err == nil {
		if st.IsDir() {
			return nil, tenantvault.Inputf("--output %s is a directory", path)
		}
		if !force {
			return nil, &tenantvault.InputError{Msg: fmt.Sprintf("--output %s already exists", path), Hint: "nothing was written; choose another file, or pass --force to replace it"}
		}
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	// 0600: the archive holds a customer's data.
	f, err := os.CreateTemp(dir, "."+base+".*.tmp")
	if err != nil {
		return nil, tenantvault.Inputf("--output %s: %v", path, err)
	}
	return &exportFile{path: path, force: force, f: f, w: bufio.NewWriterSize(f, 256<<10)}, nil
}

func (e *exportFile) Write(p []byte) (int, error) { return e.w.Write(p) }

// commit syncs the file and gives it its name; without --force a file
// that appeared meanwhile is not replaced (a hard link fails where a
// rename would overwrite).
func (e *exportFile) commit() error {
	err := e.w.Flush()
	if err == nil {
		err = e.f.Sync()
	}
	if cerr := e.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", e.path, err)
	}
	tmp := e.f.Name()
	if e.force {
		err = os.Rename(tmp, e.path)
	} else if err = os.Link(tmp, e.path); err == nil {
		os.Remove(tmp)
	} else if errors.Is(err, os.ErrExist) {
		return &tenantvault.InputError{Msg: fmt.Sprintf("--output %s appeared while the export ran", e.path), Hint: "nothing was written; choose another file, or pass --force to replace it"}
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", e.path, err)
	}
	e.done = true
	if d, err := os.Open(filepath.Dir(e.path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// abort removes the temporary file unless it was committed.
func (e *exportFile) abort() {
	if e.done {
		return
	}
	e.f.Close()
	os.Remove(e.f.Name())
}

func (a *app) printExportPlan(rep *export.Report) error {
	if a.jsonOut {
		tables := make([]map[string]any, len(rep.Plan))
		for i, p := range rep.Plan {
			tables[i] = map[string]any{"table": p.Table, "file": p.File, "rows": p.Rows, "bytes": p.Size}
		}
		return a.printJSON(map[string]any{"tenant": rep.Tenant, "set": rep.Set, "as_of": rep.AsOf.UTC().Format(time.RFC3339Nano),
			"replay": rep.WillReplay, "tables": tables, "dry_run": true})
	}
	w := a.stdout
	fmt.Fprintf(w, "plan: export tenant %q from set %s as of %s", rep.Tenant, rep.Set, rep.AsOf.UTC().Format(time.RFC3339Nano))
	if rep.WillReplay {
		fmt.Fprint(w, ", replaying the change log on the set in a scratch database (rows below are the set's)")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TABLE\tROWS\tDATA\tFILE")
	for _, p := range rep.Plan {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", p.Table, p.Rows, humanBytes(p.Size), p.File)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d table(s), %d row(s), %s; nothing written (--dry-run)\n", rep.Tables, rep.Rows, humanBytes(rep.Bytes))
	return nil
}
