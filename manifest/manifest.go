// Package manifest defines the typed, versioned description of a snapshot set: its source, tables, tenants and the chunks that hold their rows.
package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault"
)

// Set formats (docs/FORMAT.md). Version is the newest this build reads;
// readers accept every version up to it, a newer one is refused, never
// guessed at.
const (
	// Version1 is one manifest holding every tenant.
	Version1 = 1
	// Version2 is a header (this manifest without tenants) plus a tenant
	// index read page by page.
	Version2 = 2
	// Version3 is Version2 with the tables a tenant owns (schema and
	// database models) in that tenant's index entry instead of the header,
	// and a tenant's schema SQL reachable from its entry: the header stays
	// small at any number of tenant schemas.
	Version3 = 3
	// Version4 is Version3 whose split schema SQL is sealed (encrypted
	// repositories only): older readers must refuse it rather than take
	// its sealed parts for damaged ones.
	Version4 = 4
	// Version5 is Version3 or Version4 whose schema-model schema is
	// several pg_dump archives (SchemaDump.Covers): older readers would
	// render the first one as the whole schema.
	Version5 = 5
	// Version6 is Version3, 4 or 5 whose chunks may be stored in the
	// columnar layout (codec 3): older readers would take those chunks
	// for damaged ones. A set of the row model, which Version2 would
	// hold, is written as Version3 with every table in the header.
	Version6 = 6
	Version  = Version6
)

// What a schema archive of a set of format 5 holds (SchemaDump.Covers).
const (
	CoversShared  = "shared"  // everything outside the tenant schemas; the first archive
	CoversTenants = "tenants" // a batch of tenant schemas
)

// Kinds of snapshot set.
const (
	KindManual     = "manual"      // taken by `tenantvault snapshot`
	KindScheduled  = "scheduled"   // taken by the agent
	KindPreRestore = "pre-restore" // taken by `restore --if-exists replace` before it deletes rows
)

// Schema archive modes of a set (Manifest.SchemaArchive).
const (
	SchemaArchivePgDump = "pg_dump" // pg_dump --schema-only; recorded as ""
	SchemaArchiveNone   = "none"
)

// HasSchemaArchive reports whether the set holds the schema archives that
// restore --create-schema needs.
func (m *Manifest) HasSchemaArchive() bool {
	return m.SchemaArchive != SchemaArchiveNone && len(m.Schemas) > 0
}

// Table kinds.
const (
	TableScoped = "scoped" // rows belong to tenants
	TableGlobal = "global" // reference data, captured once per set
)

// Manifest describes one snapshot set. It is written last: a set exists only
// once its manifest does.
type Manifest struct {
	Version int    `json:"version"`
	ID      string `json:"id"`
	Kind    string `json:"kind"`
	// Note is free text, e.g. why a pre-restore set was taken.
	Note string `json:"note,omitempty"`

	Source  Source  `json:"source"`
	Tenancy Tenancy `json:"tenancy"`

	StartedAt time.Time `json:"started_at"`
	// ConsistentAt is the instant every tenant was captured at: the
	// statement time of the query that took the exported snapshot.
	ConsistentAt time.Time `json:"consistent_at"`
	FinishedAt   time.Time `json:"finished_at"`
	// LSN is the source's WAL position at the consistent instant.
	LSN string `json:"lsn,omitempty"`
	// LSNExact means the set's instant is exactly LSN: every transaction
	// that committed before it is in the set, none after (the snapshot
	// came from a replication slot), so the change log can continue it.
	LSNExact bool `json:"lsn_exact,omitempty"`

	// Partial is true when only some tenants were captured (snapshot
	// --tenant, and pre-restore sets).
	Partial bool `json:"partial,omitempty"`
	// ExactTenants marks a partial set whose entries are exactly the
	// tenants it captured. Partial sets of the schema model written
	// without it also hold an entry without chunks for every other tenant
	// schema, which is not that tenant's state (HoldsTenant).
	ExactTenants bool `json:"exact_tenants,omitempty"`

	// Schemas are pg_dump --schema-only archives (custom format); one for
	// the column and schema models, one per tenant database otherwise.
	Schemas []SchemaDump `json:"schemas"`
	// SchemaArchive is SchemaArchiveNone when the set was taken without
	// schema archives (its schema lives elsewhere, e.g. in migrations);
	// empty, as in every older manifest, means Schemas holds them.
	SchemaArchive string `json:"schema_archive,omitempty"`
	// Fingerprint is a SHA-256 over every table definition (Table.Signature).
	Fingerprint string `json:"fingerprint"`
	// Tables are every table of the set, indexed by Chunk.Table. In set
	// format 3 the header stores only the tables no tenant owns, at
	// TablePositions of TableCount; a reader holds TableCount slots and
	// fills a tenant's as it reads the tenant's entry (Tenant.Tables).
	// Until then such a slot is a zero Table (Kind "").
	Tables []Table `json:"tables"`
	// TableCount and TablePositions: set format 3 only (see Tables).
	TableCount     int   `json:"table_count,omitempty"`
	TablePositions []int `json:"table_positions,omitempty"`
	// Packs lists every pack object a chunk of this set points into,
	// including packs written by earlier sets and reused here.
	Packs []string `json:"packs"`
	// Global holds the chunks of global tables and the rows of scoped
	// tables that belong to no tenant.
	Global []Chunk `json:"global"`
	// Tenants holds every tenant in a set format 1 manifest; a set format 2
	// header has none (its tenants are in the index), unless a reader
	// assembled the whole set in memory.
	Tenants []Tenant `json:"tenants,omitempty"`
	// Index locates the tenant index of a set format 2 header.
	Index *Index `json:"index,omitempty"`
	Stats Stats  `json:"stats"`
	// Generation counts the times forget rewrote the set (0: never). A
	// rewrite keeps the set's ID and replaces its manifest; the rewritten
	// tenant index and packs carry the generation in their keys.
	Generation int `json:"generation,omitempty"`
	// Erased counts the tenants forget removed from the set; they are not
	// named (docs/FORMAT.md, "Erased tenants").
	Erased int `json:"erased,omitempty"`
	// ErasedPresent counts tenants of the set that had been erased before
	// it was taken: the source still held their rows (restores refuse
	// them; forget erases them again).
	ErasedPresent int `json:"erased_present,omitempty"`
}

// HoldsTenant reports whether an entry of this set with that many chunks
// is a tenant the set captured: false for the entries without chunks that
// partial sets of the schema model held for every tenant schema they did
// not capture, before ExactTenants.
func (m *Manifest) HoldsTenant(chunks int) bool {
	return !m.Partial || m.ExactTenants || m.Tenancy.Model != "schema" || chunks > 0
}

// Index locates a set's tenant index (set format 2).
type Index struct {
	Key       string `json:"key"`
	Size      int64  `json:"size"`
	Pages     int    `json:"pages"`
	Tenants   int    `json:"tenants"`
	Directory Range  `json:"directory"`
	// Locator holds the chunks' places for readers without keys
	// (encrypted sets only).
	Locator *Range `json:"locator,omitempty"`
}

// Range is a checksummed byte range of an object.
type Range struct {
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	SHA256 string `json:"sha256"`
}

// Source identifies the database a set was taken from.
type Source struct {
	Name          string `json:"name,omitempty"` // agent source name
	Host          string `json:"host,omitempty"` // host:port, never credentials
	Database      string `json:"database"`
	SystemID      string `json:"system_id,omitempty"`
	ServerVersion string `json:"server_version"`
	ServerNum     int    `json:"server_version_num"`
}

// Tenancy records how rows were assigned to tenants.
type Tenancy struct {
	Model           string `json:"model"` // column, schema or database
	TenantColumn    string `json:"tenant_column,omitempty"`
	TenantTable     string `json:"tenant_table,omitempty"`
	SchemaPattern   string `json:"schema_pattern,omitempty"`
	DatabasePattern string `json:"database_pattern,omitempty"`
}

// SchemaDump references a schema-only archive.
type SchemaDump struct {
	Database string `json:"database"`
	Key      string `json:"key"`
	Size     int64  `json:"size"`
	// Split is the same schema as SQL in parts (schema model, plaintext
	// repositories): restoring one tenant schema reads the prelude and
	// that tenant's part, not the archive.
	Split *SchemaSplit `json:"split,omitempty"`
	// TenantSchemasOnly marks an archive of the captured tenant schemas
	// alone (pg_dump --schema; restore's pre-restore sets of the schema
	// model): what lives outside them is missing, so it restores only into
	// a database that has it, the one it was taken from.
	TenantSchemasOnly bool `json:"tenant_schemas_only,omitempty"`
	// Covers is set when the database's schema was dumped by several
	// pg_dump runs under the one snapshot (set format 5): CoversShared for
	// the first archive, CoversTenants for each batch of tenant schemas
	// after it. The first archive holds the split of them all.
	Covers string `json:"covers,omitempty"`
	SHA256 string `json:"sha256"`
}

// Table is one table's definition as captured.
type Table struct {
	Schema string `json:"schema"`
	Name   string `json:"name"`
	// Database is set in the database model: the tenant database it lives in.
	Database string `json:"database,omitempty"`
	Kind     string `json:"kind"`
	// Owner is set when the whole table belongs to one tenant (schema and
	// database models).
	Owner string `json:"owner,omitempty"`
	// Columns are all columns in order, generated ones included and marked.
	Columns []Column `json:"columns"`
	// Key orders the rows: the primary key, or empty when the table has
	// none (rows are then ordered by their text).
	Key []string `json:"key,omitempty"`
	// Scope tells how a scoped table's rows find their tenant in the
	// column model.
	Scope       *Scope `json:"scope,omitempty"`
	Partitioned bool   `json:"partitioned,omitempty"`
	// Signature is a SHA-256 over the columns, key and scope: equal
	// signatures mean the chunks of two sets are comparable.
	Signature string `json:"signature"`
}

// QualifiedName is schema.name, for people.
func (t *Table) QualifiedName() string {
	if t.Database != "" {
		return t.Database + ":" + t.Schema + "." + t.Name
	}
	return t.Schema + "." + t.Name
}

// Column is one column of a table.
type Column struct {
	Name      string `json:"name"`
	Type      string `json:"type"` // format_type() text
	NotNull   bool   `json:"not_null,omitempty"`
	Generated bool   `json:"generated,omitempty"` // stored generated: never exported
	Identity  string `json:"identity,omitempty"`  // "always", "by default" or empty
	Sequence  string `json:"sequence,omitempty"`  // owned sequence (serial or identity)
	// Collatable columns are compared byte-wise ("C") when rows are ordered.
	Collatable bool `json:"collatable,omitempty"`
	HasDefault bool `json:"has_default,omitempty"`
}

// Scope is a column-model scoped table's path to its tenant key: directly by
// Column, or through foreign keys (Hops) to a table that has it.
type Scope struct {
	// Column holds the tenant key in the last table of the path (or in
	// this table when Hops is empty).
	Column string `json:"column"`
	Hops   []Hop  `json:"hops,omitempty"`
}

// Hop follows one foreign key.
type Hop struct {
	Columns   []string `json:"columns"`
	RefSchema string   `json:"ref_schema"`
	RefTable  string   `json:"ref_table"`
	RefCols   []string `json:"ref_columns"`
}

// Chunk is one table's rows of one tenant (or the global rows of a table):
// COPY text rows in canonical order, compressed, stored at
// Packs[Pack][Offset:Offset+Length].
type Chunk struct {
	Table int   `json:"table"`
	Rows  int64 `json:"rows"`
	// Size is the length of the uncompressed COPY text.
	Size int64 `json:"size"`
	// Digest is the content digest: SHA-256 of the uncompressed COPY text.
	Digest string `json:"digest"`
	Pack   int    `json:"pack"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	// SHA256 is the checksum of the stored bytes.
	SHA256 string `json:"sha256"`
	// Reused is true when the chunk was not uploaded by this set.
	Reused bool `json:"reused,omitempty"`
	// Key is its tenant entry's Key, filled in by readers (never stored
	// per chunk): the tenant key the chunk is sealed with, "" for its
	// set's data key.
	Key string `json:"-"`
}

// Tenant is one tenant's snapshot in the set.
type Tenant struct {
	ID     string  `json:"id"`
	Rows   int64   `json:"rows"`
	Size   int64   `json:"size"`   // uncompressed bytes
	Stored int64   `json:"stored"` // compressed bytes of its chunks
	Chunks []Chunk `json:"chunks"`
	// Key names the data key that sealed this tenant's chunks: a tenant
	// key object (keys/tenants/..., encrypted repositories, set format 2
	// only; see docs/FORMAT.md "Tenant keys"), or empty for the set's own.
	Key string `json:"key,omitempty"`
	// Tables are the tables this tenant owns (set format 3): stored in
	// its entry, not in the set's header.
	Tables []OwnedTable `json:"tables,omitempty"`
	// SchemaSQL is where the tenant's part of the set's split schema SQL
	// lies (SchemaDump.Split), when the set has one.
	SchemaSQL *Range `json:"schema_sql,omitempty"`
}

// OwnedTable is a table of a tenant's entry and its position in the set's
// Tables.
type OwnedTable struct {
	Position int `json:"position"`
	Table
}

// SchemaSplit is the schema archive rendered as SQL and cut into parts
// (docs/FORMAT.md, "Split schema SQL"): the prelude (session settings),
// the part of everything outside tenant schemas, and one part per tenant
// schema, whose range is in the tenant's entry.
type SchemaSplit struct {
	Key     string `json:"key"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
	Prelude Range  `json:"prelude"`
	Shared  Range  `json:"shared"`
}

// Stats summarises a set.
type Stats struct {
	Tenants      int     `json:"tenants"`
	Tables       int     `json:"tables"`
	Rows         int64   `json:"rows"`
	Size         int64   `json:"size"`          // uncompressed bytes
	Stored       int64   `json:"stored"`        // bytes of all chunks, reused included
	Written      int64   `json:"written"`       // bytes this set uploaded
	Reused       int64   `json:"reused"`        // bytes referenced from earlier sets
	ReusedChunks int     `json:"reused_chunks"` // chunks referenced from earlier sets
	Chunks       int     `json:"chunks"`
	Unscoped     int64   `json:"unscoped_rows,omitempty"` // rows of scoped tables that belong to no tenant
	Seconds      float64 `json:"seconds"`
}

// Tenant returns the tenant with the given ID, or nil.
func (m *Manifest) Tenant(id string) *Tenant {
	i := sort.Search(len(m.Tenants), func(i int) bool { return m.Tenants[i].ID >= id })
	if i < len(m.Tenants) && m.Tenants[i].ID == id {
		return &m.Tenants[i]
	}
	return nil
}

// SortTenants orders tenants by ID so Tenant can binary-search.
func (m *Manifest) SortTenants() {
	sort.Slice(m.Tenants, func(i, j int) bool { return m.Tenants[i].ID < m.Tenants[j].ID })
}

// Validate checks the references inside a decoded manifest, so that a
// damaged or hand-edited manifest is refused before anything uses it.
func (m *Manifest) Validate() error {
	if m.Version < 1 || m.Version > Version {
		return fmt.Errorf("manifest %s: unsupported version %d", m.ID, m.Version)
	}
	if m.ID == "" {
		return fmt.Errorf("manifest: empty id")
	}
	switch {
	case m.Version == Version1 && m.Index != nil:
		return fmt.Errorf("manifest %s: set format 1 with a tenant index", m.ID)
	case m.Version >= Version2 && m.Index == nil:
		return fmt.Errorf("manifest %s: set format %d without a tenant index", m.ID, m.Version)
	case m.Version < Version3 && (m.TablePositions != nil || m.TableCount != 0):
		return fmt.Errorf("manifest %s: set format %d with table positions", m.ID, m.Version)
	case m.Index != nil && (m.Index.Pages < 0 || m.Index.Tenants < 0 || m.Index.Size < 0 || m.Index.Directory.Offset < 0 || m.Index.Directory.Length <= 0 ||
		m.Index.Directory.Offset+m.Index.Directory.Length > m.Index.Size || len(m.Index.Directory.SHA256) != 64):
		return fmt.Errorf("manifest %s: bad tenant index reference", m.ID)
	case m.Index != nil && m.Index.Tenants != m.Stats.Tenants:
		return fmt.Errorf("manifest %s: the tenant index holds %d tenants, the stats say %d", m.ID, m.Index.Tenants, m.Stats.Tenants)
	}
	if err := m.validateCovers(); err != nil {
		return err
	}
	return m.ValidateTenants(m.Tenants)
}

// validateCovers checks the archives of a schema dumped in batches: not in
// set formats 2 to 4, the shared one first with the split, then one or more
// of tenant schemas, all of one database.
func (m *Manifest) validateCovers() error {
	batched := false
	for _, d := range m.Schemas {
		batched = batched || d.Covers != ""
	}
	if !batched {
		return nil
	}
	if m.Version >= Version2 && m.Version < Version5 { // 1: a header validated before its format is set
		return fmt.Errorf("manifest %s: set format %d with schema archives in batches", m.ID, m.Version)
	}
	if len(m.Schemas) < 2 || m.Schemas[0].Covers != CoversShared || m.Schemas[0].Split == nil {
		return fmt.Errorf("manifest %s: schema archives in batches without the shared archive and its split first", m.ID)
	}
	for _, d := range m.Schemas[1:] {
		if d.Covers != CoversTenants || d.Database != m.Schemas[0].Database || d.Split != nil {
			return fmt.Errorf("manifest %s: bad schema archive batch %s", m.ID, d.Key)
		}
	}
	return nil
}

// ValidateTenants checks entries against the manifest's tables and packs:
// sorted, unique, every chunk reference in range.
func (m *Manifest) ValidateTenants(tenants []Tenant) error {
	check := func(who string, c Chunk) error {
		if c.Table < 0 || c.Table >= len(m.Tables) {
			return fmt.Errorf("manifest %s: %s: table index %d out of range", m.ID, who, c.Table)
		}
		if c.Pack < 0 || c.Pack >= len(m.Packs) {
			return fmt.Errorf("manifest %s: %s: pack index %d out of range", m.ID, who, c.Pack)
		}
		if c.Offset < 0 || c.Length <= 0 || c.Rows < 0 || c.Size < 0 {
			return fmt.Errorf("manifest %s: %s: bad chunk bounds", m.ID, who)
		}
		if len(c.Digest) != 64 || len(c.SHA256) != 64 {
			return fmt.Errorf("manifest %s: %s: bad digest", m.ID, who)
		}
		return nil
	}
	for _, c := range m.Global {
		if err := check("global chunk", c); err != nil {
			return err
		}
	}
	for i := range tenants {
		if i > 0 && tenants[i-1].ID >= tenants[i].ID {
			return fmt.Errorf("manifest %s: tenants not sorted or duplicated at %q", m.ID, tenants[i].ID)
		}
		for _, c := range tenants[i].Chunks {
			if err := check(fmt.Sprintf("tenant %q", tenants[i].ID), c); err != nil {
				return err
			}
		}
	}
	return nil
}

// AttachTables puts the tables of tenant t's entry (set format 3) into
// their slots of m.Tables and checks that t's chunks refer only to tables
// the header holds or t owns. The caller serialises calls on one m; a
// slot is written only while empty, so readers of filled slots never race.
func (m *Manifest) AttachTables(t *Tenant) error {
	if m.Version < Version3 {
		if len(t.Tables) > 0 {
			return fmt.Errorf("manifest %s: tenant %q: tables in an entry of set format %d", m.ID, t.ID, m.Version)
		}
		return nil
	}
	for i := range t.Tables {
		ot := &t.Tables[i]
		switch {
		case ot.Position < 0 || ot.Position >= len(m.Tables):
			return fmt.Errorf("manifest %s: tenant %q: table position %d out of range", m.ID, t.ID, ot.Position)
		case ot.Owner != t.ID:
			return fmt.Errorf("manifest %s: tenant %q: its entry holds table %s of %q", m.ID, t.ID, ot.QualifiedName(), ot.Owner)
		case ot.Name == "":
			return fmt.Errorf("manifest %s: tenant %q: a table without a name", m.ID, t.ID)
		}
		slot := &m.Tables[ot.Position]
		if slot.Name == "" {
			*slot = ot.Table
		} else if slot.Signature != ot.Signature || slot.Owner != ot.Owner {
			return fmt.Errorf("manifest %s: tenant %q: table position %d is taken by %s", m.ID, t.ID, ot.Position, slot.QualifiedName())
		}
	}
	for _, c := range t.Chunks {
		if c.Table < 0 || c.Table >= len(m.Tables) {
			continue // ValidateTenants reports it
		}
		if tb := &m.Tables[c.Table]; tb.Name == "" || tb.Owner != "" && tb.Owner != t.ID {
			return fmt.Errorf("manifest %s: tenant %q: a chunk of table %d, which neither the header nor the tenant holds", m.ID, t.ID, c.Table)
		}
	}
	return nil
}

// compact is what set format 3 stores of m: the header's tables only
// (those at TablePositions), and the slot count.
func compact(m *Manifest) (*Manifest, error) {
	if m.Version < Version3 {
		return m, nil
	}
	c := *m
	c.TableCount = len(m.Tables)
	c.Tables = make([]Table, 0, len(m.TablePositions))
	for i, p := range m.TablePositions {
		if p < 0 || p >= len(m.Tables) || i > 0 && p <= m.TablePositions[i-1] {
			return nil, fmt.Errorf("encode manifest %s: bad table position %d", m.ID, p)
		}
		c.Tables = append(c.Tables, m.Tables[p])
	}
	return &c, nil
}

// expand turns a decoded set format 3 header into the in-memory form:
// TableCount slots, the header's tables at their positions.
func (m *Manifest) expand() error {
	if m.Version < Version3 {
		return nil
	}
	if len(m.TablePositions) != len(m.Tables) || m.TableCount < len(m.Tables) || m.TableCount != m.Stats.Tables {
		return fmt.Errorf("manifest %s: %d tables at %d positions of %d (stats: %d)", m.ID, len(m.Tables), len(m.TablePositions), m.TableCount, m.Stats.Tables)
	}
	full := make([]Table, m.TableCount)
	for i, p := range m.TablePositions {
		if p < 0 || p >= m.TableCount || i > 0 && p <= m.TablePositions[i-1] {
			return fmt.Errorf("manifest %s: bad table position %d", m.ID, p)
		}
		if m.Tables[i].Name == "" {
			return fmt.Errorf("manifest %s: a table without a name", m.ID)
		}
		full[p] = m.Tables[i]
	}
	m.Tables = full
	return nil
}

// Encode renders the manifest as zstd-compressed JSON.
func Encode(m *Manifest) ([]byte, error) {
	m, err := compact(m)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	je := json.NewEncoder(enc)
	je.SetEscapeHTML(false)
	if err := je.Encode(m); err != nil {
		enc.Close()
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("compress manifest: %w", err)
	}
	return buf.Bytes(), nil
}

// maxManifest bounds what Decode inflates, so a corrupt or hostile object
// cannot exhaust memory.
const maxManifest = 4 << 30

// ErrNewerVersion is wrapped when a manifest or repository was written by a
// newer tenantvault.
var ErrNewerVersion = fmt.Errorf("written by a newer tenantvault")

// Decode parses what Encode produced. A damaged manifest gives an error
// wrapping tenantvault.ErrIntegrity; a newer format gives an *InputError.
func Decode(data []byte) (*Manifest, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxManifest))
	if err != nil {
		return nil, err // fixed options: cannot fail
	}
	defer dec.Close()
	raw, err := dec.DecodeAll(data, nil)
	if err != nil {
		return nil, tenantvault.Integrityf("manifest is damaged: %v", err)
	}
	// One pass over the JSON when it is what this build writes (a large
	// set's manifest is megabytes, read by every restore); the version is
	// probed only when that fails, so a newer format gets a clear error.
	// Unknown fields are ignored on purpose: a field that older readers may
	// skip does not bump Version; one they must understand does.
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil || m.Version > Version {
		var probe struct {
			Version int    `json:"version"`
			ID      string `json:"id"`
		}
		if perr := json.Unmarshal(raw, &probe); perr != nil {
			return nil, tenantvault.Integrityf("manifest is damaged: %v", perr)
		}
		if probe.Version > Version {
			return nil, &tenantvault.InputError{
				Msg:  fmt.Sprintf("snapshot set %s uses manifest format %d, %s (this one reads up to %d)", probe.ID, probe.Version, ErrNewerVersion, Version),
				Hint: "upgrade tenantvault to read this repository",
				Err:  ErrNewerVersion,
			}
		}
		return nil, tenantvault.Integrityf("manifest %s is damaged: %v", probe.ID, err)
	}
	if m.Version >= Version2 && m.Tenants != nil {
		return nil, tenantvault.Integrityf("manifest %s: a set format %d header holds tenants", m.ID, m.Version)
	}
	if err := m.expand(); err != nil {
		return nil, tenantvault.Integrityf("%v", err)
	}
	if err := m.Validate(); err != nil {
		return nil, tenantvault.Integrityf("%v", err)
	}
	return &m, nil
}
