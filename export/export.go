// Package export writes one tenant's data, as of a snapshot set or a point in time, as a self-describing tar archive of CSV files and SQL that psql alone can load.
package export

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// Options configure an export.
type Options struct {
	Vault  *vault.Vault
	Tenant string
	// Select chooses the set as restore does: SetID, or the newest set at
	// or before At (then the change log is replayed up to At), or the
	// newest set.
	Select restore.Selector
	// Scratch is a database URL on a scratch server, needed when the
	// change log must be replayed (Select.At after the set): the tenant is
	// restored into a new database there, exactly as restore --at does,
	// read back and the database dropped.
	Scratch   string
	PgRestore string
	// Template, when set, names a database on the scratch server holding
	// the set's schema and no rows: the scratch database is created as a
	// copy of it instead of from the set's schema archive (sets taken with
	// --schema-archive=none). Column tenancy model only.
	Template string
	// Dir names the directory inside the archive that holds every file;
	// ArchiveName is the archive's file name, for README.txt.
	Dir         string
	ArchiveName string
	// Zstd compresses the archive.
	Zstd bool
	// TempDir holds one table's CSV at a time while it is measured for
	// its tar header; "" means the system's.
	TempDir   string
	Generator string // "tenantvault <version>", recorded in the archive
	// DryRun resolves the tenant, the set and the replay, and reports the
	// plan without reading rows or writing anything.
	DryRun bool
	Logger *slog.Logger
	Now    func() time.Time
}

// Report says what an export wrote.
type Report struct {
	Tenant   string
	Set      string
	AsOf     time.Time
	Replayed *restore.ReplayProof
	Tables   int
	Rows     int64
	Bytes    int64 // of the CSV files
	// Scratch is the database the replay ran in (dropped again).
	Scratch string
	// Plan, for a dry run, lists the tables in load order with what the
	// set holds of them (before any replay); nothing was written.
	Plan []PlannedTable
	// WillReplay, for a dry run, says the change log would be replayed.
	WillReplay bool
}

// PlannedTable is one table of a dry run's plan.
type PlannedTable struct {
	Table string // schema.name
	File  string
	Rows  int64 // in the set
	Size  int64 // bytes of COPY text in the set
}

// archiveManifest is manifest.json.
type archiveManifest struct {
	Format     string    `json:"format"` // "tenantvault tenant export"
	Version    int       `json:"version"`
	Generator  string    `json:"generator"`
	ExportedAt time.Time `json:"exported_at"`
	Tenant     string    `json:"tenant"`
	Repository string    `json:"repository"`
	Set        setInfo   `json:"set"`
	// AsOf is the instant the data is the state of: the set's, or the
	// requested time when the change log was replayed.
	AsOf        time.Time        `json:"as_of"`
	RequestedAt *time.Time       `json:"requested_at,omitempty"`
	Replay      *replayInfo      `json:"replay,omitempty"`
	Source      manifest.Source  `json:"source"`
	Tenancy     manifest.Tenancy `json:"tenancy"`
	Verified    string           `json:"verified"`
	Tables      []tableInfo      `json:"tables"`
	Files       []fileInfo       `json:"files"`
}

type setInfo struct {
	ID           string    `json:"id"`
	Kind         string    `json:"kind"`
	ConsistentAt time.Time `json:"consistent_at"`
	LSN          string    `json:"lsn,omitempty"`
}

type replayInfo struct {
	At         time.Time  `json:"at"`
	Changes    int        `json:"changes"`
	LastCommit *time.Time `json:"last_commit,omitempty"`
	LastLSN    string     `json:"last_lsn,omitempty"`
	CheckedBy  string     `json:"checked_by"`
}

type tableInfo struct {
	Schema  string   `json:"schema"`
	Name    string   `json:"name"`
	File    string   `json:"file"`
	Columns []column `json:"columns"`
	Key     []string `json:"key,omitempty"`
	Rows    int64    `json:"rows"`
	// ContentDigest is the SHA-256 of the rows in COPY text format, as
	// docs/FORMAT.md defines it; SetDigest the set's, equal unless changes
	// were replayed.
	ContentDigest string `json:"content_digest"`
	SetDigest     string `json:"set_digest"`
}

type column struct {
	Name       string `json:"name"`
	Type       string `json:"type"`                  // in schema.sql
	SourceType string `json:"source_type,omitempty"` // when it differs
	NotNull    bool   `json:"not_null,omitempty"`
}

type fileInfo struct {
	Name   string `json:"name"`
	Table  string `json:"table,omitempty"`
	Rows   *int64 `json:"rows,omitempty"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// tableFile is one table of the export and its CSV file.
type tableFile struct {
	idx   int
	t     *manifest.Table
	cols  []manifest.Column
	name  string // path in the archive, below Dir
	chunk *manifest.Chunk
}

func (f *tableFile) colNames() []string {
	out := make([]string, len(f.cols))
	for i, c := range f.cols {
		out[i] = c.Name
	}
	return out
}

var emptyDigest = func() string { s := sha256.Sum256(nil); return hex.EncodeToString(s[:]) }()

// checkErased is the one place where an export refuses a tenant erased
// with forget (exit 2, with the date), before anything of the tenant is
// read or written. (A replaying export also goes through restore.Run,
// which refuses erased tenants too.)
func checkErased(ctx context.Context, v *vault.Vault, tenant string) error {
	return v.RefuseErased(ctx, []string{tenant})
}

// Run exports one tenant into w. On error, what was written to w is not a
// complete archive (it lacks its last members, manifest.json and
// SHA256SUMS); callers writing a file discard it.
func Run(ctx context.Context, w io.Writer, o Options) (*Report, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Tenant == "" {
		return nil, tenantvault.Inputf("no tenant given: use --tenant ID")
	}
	if strings.ContainsRune(o.Tenant, 0) {
		return nil, tenantvault.Inputf("tenant ID %q contains a NUL byte", o.Tenant)
	}
	if o.Dir == "" {
		o.Dir = "tenantvault-export"
	}
	if o.ArchiveName == "" {
		o.ArchiveName = "ARCHIVE.tar"
		if o.Zstd {
			o.ArchiveName += ".zst"
		}
	}
	v := o.Vault
	if !v.CanDecrypt() {
		return nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("repository %s is encrypted: exporting a tenant's rows needs the identity file (--identity FILE or TENANTVAULT_IDENTITY)", v.Location()),
			Hint: "the identity file is written by tenantvault keygen --output; nothing was written",
		}
	}
	if err := checkErased(ctx, v, o.Tenant); err != nil {
		return nil, err
	}
	items, err := restore.Resolve(ctx, v, []string{o.Tenant}, o.Select)
	if err != nil {
		return nil, err
	}
	it := items[0]
	set := it.Set
	if at := o.Select.At; !at.IsZero() && it.Replay == nil && set.ConsistentAt.Before(at) {
		// restore --at restores such a set as it is; an archive that says
		// "as of" must not hold older data than asked for.
		return nil, &tenantvault.InputError{
			Msg: fmt.Sprintf("no change log continues snapshot set %s (taken at %s) to %s, so the tenant's rows as of then are not known",
				set.ID, set.ConsistentAt.UTC().Format(time.RFC3339Nano), at.UTC().Format(time.RFC3339Nano)),
			Hint: "nothing was written; export the set as it is with --snapshot " + set.ID + " (sets of a source captured with tenantvault capture can be continued)",
		}
	}
	e := &exporter{o: o, set: set, item: &it}
	if it.Replay != nil {
		if err := e.checkReplay(); err != nil {
			return nil, err
		}
	}
	if o.DryRun {
		return e.dryRun(ctx)
	}
	if it.Replay != nil {
		// Restore the tenant as restore --at would, into a scratch
		// database, and read it back from there.
		sdb, tr, err := e.replay(ctx)
		if sdb != nil {
			defer sdb.drop(o.Logger)
		}
		if err != nil {
			return nil, err
		}
		e.scratch, e.replayed = sdb, tr
	}
	if err := e.plan(ctx); err != nil {
		return nil, err
	}
	return e.write(ctx, w)
}

type exporter struct {
	o     Options
	set   *manifest.Manifest
	item  *restore.Item
	files []*tableFile
	fks   []tenancy.ForeignKey
	rep   Report
	// scratch is the replayed tenant's database while the export reads
	// it, and replayed what its restore did.
	scratch  *scratchDB
	replayed *restore.TenantResult
}

// plan lists the tenant's tables in load order with their file names.
func (e *exporter) plan(ctx context.Context) error {
	set := e.set
	idx := tenancy.TablesOf(set.Tables, e.o.Tenant)
	chunks := map[int]*manifest.Chunk{}
	rows := map[int]int64{}
	for i := range e.item.T.Chunks {
		c := &e.item.T.Chunks[i]
		chunks[c.Table] = c
		rows[c.Table] = c.Rows
	}
	if e.scratch != nil {
		// The rows are the replayed ones: whether the tenants table still
		// holds the tenant's row decides a foreign key of schema.sql.
		for _, ti := range idx {
			var n int64
			if err := e.scratch.conn.QueryRow(ctx, tenancy.CountSQL(&set.Tables[ti]), e.o.Tenant).Scan(&n); err != nil {
				return fmt.Errorf("count replayed rows of %s: %w", set.Tables[ti].QualifiedName(), err)
			}
			rows[ti] = n
		}
	}
	order, fks := orderTables(set, idx, rows)
	e.fks = fks
	for _, ti := range idx {
		t := &set.Tables[ti]
		names := []string{t.Schema, t.Name}
		for _, c := range t.Columns {
			names = append(names, c.Name)
		}
		for _, n := range names {
			if strings.ContainsAny(n, "\r\n") {
				// psql's \copy takes the rest of its line, as it is.
				return &tenantvault.InputError{
					Msg:  fmt.Sprintf("table %s has a line break in a name (%q), which the \\copy lines of load.sql cannot carry", t.QualifiedName(), n),
					Hint: "nothing was written; rename it in the source, or restore the tenant into a scratch database and copy it from there",
				}
			}
		}
	}
	for n, ti := range order {
		t := &set.Tables[ti]
		e.files = append(e.files, &tableFile{
			idx: ti, t: t, cols: tenancy.Exported(t), chunk: chunks[ti],
			name: "data/" + fileName(n+1, t),
		})
	}
	return nil
}

// dryRun reports what an export would write.
func (e *exporter) dryRun(ctx context.Context) (*Report, error) {
	if err := e.plan(ctx); err != nil {
		return nil, err
	}
	r := &Report{Tenant: e.o.Tenant, Set: e.set.ID, AsOf: e.set.ConsistentAt.UTC(), WillReplay: e.item.Replay != nil}
	if r.WillReplay {
		r.AsOf = e.o.Select.At.UTC()
	}
	for _, f := range e.files {
		pt := PlannedTable{Table: f.t.QualifiedName(), File: f.name}
		if f.chunk != nil {
			pt.Rows, pt.Size = f.chunk.Rows, f.chunk.Size
		}
		r.Plan = append(r.Plan, pt)
		r.Tables++
		r.Rows += pt.Rows
		r.Bytes += pt.Size
	}
	return r, nil
}

// fileName names a table's CSV file: its position in the load order and
// its encoded schema and name, short enough for every file system (255
// bytes a name): a longer one is cut and ends in a hash of the full name.
func fileName(n int, t *manifest.Table) string {
	base := fmt.Sprintf("%02d-%s.%s", n, repo.EncodeKeyPart(t.Schema), repo.EncodeKeyPart(t.Name))
	if len(base) > 200 {
		cut := 160
		for i := cut - 2; i < cut; i++ {
			if base[i] == '%' {
				cut = i // never half an escape
				break
			}
		}
		sum := sha256.Sum256([]byte(t.Schema + "\x00" + t.Name))
		base = base[:cut] + "~" + hex.EncodeToString(sum[:8])
	}
	return base + ".csv"
}

// archive writes tar members, each with its size known first.
type archive struct {
	tw    *tar.Writer
	mtime time.Time
	files []fileInfo
	dir   string
}

func (a *archive) add(name string, data []byte) error {
	sum := sha256.Sum256(data)
	if err := a.tw.WriteHeader(a.header(name, int64(len(data)))); err != nil {
		return err
	}
	if _, err := a.tw.Write(data); err != nil {
		return err
	}
	a.files = append(a.files, fileInfo{Name: name, Bytes: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
	return nil
}

func (a *archive) header(name string, size int64) *tar.Header {
	return &tar.Header{Name: a.dir + "/" + name, Mode: 0o644, Size: size, ModTime: a.mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
}

func (e *exporter) write(ctx context.Context, w io.Writer) (rep *Report, err error) {
	o := e.o
	now := o.Now().UTC()
	m := &archiveManifest{
		Format: "tenantvault tenant export", Version: 1, Generator: o.Generator, ExportedAt: now,
		Tenant: o.Tenant, Repository: o.Vault.Location(),
		Set:  setInfo{ID: e.set.ID, Kind: e.set.Kind, ConsistentAt: e.set.ConsistentAt.UTC(), LSN: e.set.LSN},
		AsOf: e.set.ConsistentAt.UTC(), Source: e.set.Source, Tenancy: e.set.Tenancy,
		Verified: "every chunk's stored checksum and content digest were checked while it was read, and each CSV file converted from exactly those rows",
	}
	if at := o.Select.At; !at.IsZero() {
		at = at.UTC()
		m.RequestedAt = &at
	}
	if tr := e.replayed; tr != nil {
		p := tr.Replayed
		m.AsOf = p.At.UTC()
		ri := &replayInfo{At: p.At.UTC(), Changes: p.Changes, CheckedBy: "row counts and foreign keys"}
		if !p.LastCommit.IsZero() {
			lc := p.LastCommit.UTC()
			ri.LastCommit, ri.LastLSN = &lc, vault.LSNString(p.LastLSN)
		}
		m.Replay = ri
		m.Verified = fmt.Sprintf("the set's rows were restored into a scratch database and every table's content digest matched the set (%d digests); then %d change(s) were replayed on top, checked by row counts and foreign keys as restore --at does, and the CSV files converted from the result", tr.Digests, p.Changes)
		e.rep.Replayed, e.rep.Scratch = p, e.scratch.describe
	}
	e.rep.Tenant, e.rep.Set, e.rep.AsOf = o.Tenant, e.set.ID, m.AsOf

	var zw *zstd.Encoder
	out := w
	if o.Zstd {
		if zw, err = zstd.NewWriter(w, zstd.WithEncoderConcurrency(1)); err != nil {
			return nil, err
		}
		out = zw
	}
	a := &archive{tw: tar.NewWriter(out), mtime: now, dir: o.Dir}
	hdr := "-- " + comment(fmt.Sprintf("Tenant %q, snapshot set %s, as of %s.", o.Tenant, e.set.ID, m.AsOf.Format(time.RFC3339Nano))) + "\n"
	if err := a.add("README.txt", []byte(readme(m, o.Dir, o.ArchiveName, e.files, o.Zstd))); err != nil {
		return nil, err
	}
	if err := a.add("schema.sql", []byte(schemaSQL(e.set, e.files, e.fks, hdr))); err != nil {
		return nil, err
	}
	if err := a.add("load.sql", []byte(loadSQL(e.files, hdr))); err != nil {
		return nil, err
	}
	for _, f := range e.files {
		ti, err := e.table(ctx, a, f)
		if err != nil {
			return nil, fmt.Errorf("export %s: %w", f.t.QualifiedName(), err)
		}
		m.Tables = append(m.Tables, ti)
		e.rep.Tables++
		e.rep.Rows += ti.Rows
	}
	m.Files = a.files
	js, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := a.add("manifest.json", append(js, '\n')); err != nil {
		return nil, err
	}
	var sums strings.Builder
	for _, f := range a.files {
		fmt.Fprintf(&sums, "%s  %s\n", f.SHA256, f.Name)
	}
	if err := a.add("SHA256SUMS", []byte(sums.String())); err != nil {
		return nil, err
	}
	if err := a.tw.Close(); err != nil {
		return nil, err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return nil, err
		}
	}
	o.Logger.Info("tenant exported", "tenant", o.Tenant, "set", e.set.ID, "as_of", m.AsOf, "tables", e.rep.Tables, "rows", e.rep.Rows)
	r := e.rep
	return &r, nil
}

// table converts one table's rows to CSV in a spool file (the tar header
// needs the size first), checking the rows against the set, and appends
// the file to the archive.
func (e *exporter) table(ctx context.Context, a *archive, f *tableFile) (tableInfo, error) {
	ti := tableInfo{Schema: f.t.Schema, Name: f.t.Name, File: f.name, Key: f.t.Key, SetDigest: emptyDigest}
	for _, c := range f.cols {
		typ, replaced := sqlType(c.Type)
		col := column{Name: c.Name, Type: typ, NotNull: c.NotNull}
		if replaced {
			col.SourceType = c.Type
		}
		ti.Columns = append(ti.Columns, col)
	}
	var wantRows int64
	if f.chunk != nil {
		ti.SetDigest, wantRows = f.chunk.Digest, f.chunk.Rows
	}
	spool, err := os.CreateTemp(e.o.TempDir, "tenantvault-export-*.csv")
	if err != nil {
		return ti, fmt.Errorf("spool file: %w", err)
	}
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()
	fileSum := sha256.New()
	content := sha256.New()
	cw := &counter{}
	dst := io.MultiWriter(spool, fileSum, cw)
	var rows int64
	switch {
	case e.scratch != nil:
		rows, err = e.scratch.copyTable(ctx, f, dst, content)
	case f.chunk != nil:
		var rc io.ReadCloser
		if rc, err = e.o.Vault.OpenChunk(ctx, e.set, *f.chunk); err != nil {
			return ti, err
		}
		rows, err = copyToCSV(io.TeeReader(rc, content), dst, f.colNames())
		rc.Close()
	default:
		rows, err = copyToCSV(strings.NewReader(""), dst, f.colNames())
	}
	if err != nil {
		if errors.Is(err, errShape) {
			err = tenantvault.Integrityf("%v", err)
		}
		return ti, err
	}
	ti.Rows = rows
	ti.ContentDigest = hex.EncodeToString(content.Sum(nil))
	if e.scratch == nil && (ti.ContentDigest != ti.SetDigest || rows != wantRows) {
		// OpenChunk checked the digest already; this proves the
		// conversion read every byte of it.
		return ti, tenantvault.Integrityf("read %d rows with digest %s, the set records %d rows with digest %s", rows, ti.ContentDigest[:12], wantRows, ti.SetDigest[:12])
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return ti, err
	}
	if err := a.tw.WriteHeader(a.header(f.name, cw.n)); err != nil {
		return ti, err
	}
	if n, err := io.Copy(a.tw, spool); err != nil || n != cw.n {
		return ti, fmt.Errorf("copy spooled %s: %d of %d bytes: %w", f.name, n, cw.n, err)
	}
	rc := rows
	a.files = append(a.files, fileInfo{Name: f.name, Table: f.t.QualifiedName(), Rows: &rc, Bytes: cw.n, SHA256: hex.EncodeToString(fileSum.Sum(nil))})
	e.rep.Bytes += cw.n
	return ti, nil
}

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }
