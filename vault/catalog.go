package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
)

// The catalog (docs/FORMAT.md, "Catalog") summarises many sets in a few
// objects, as Iceberg's manifest lists do for manifests: `list` reads one
// catalog header instead of a header per set, and `list --tenant` one page
// of a catalog instead of a page per set. It is derived from the sets and
// never trusted over them: restore and verify read the sets themselves, a
// catalog's sets count only while their manifests exist, and a catalog
// that cannot be read is skipped with a warning, its sets read one by one.
const (
	CatalogPrefix  = "catalog/"
	catalogVersion = 1
	catalogExt     = ".json.zst"
	maxCatalogHdr  = 64 << 20
	// orphanAge is how old a catalog index without a header must be before
	// a writer deletes it (younger ones may be another writer's, mid-write).
	orphanAge = time.Hour
)

// CatalogFanout is how many sets a level-0 catalog covers, and how many
// catalogs of one level a catalog of the next level merges.
const CatalogFanout = 16

// catalogFanout is CatalogFanout, a variable for tests.
var catalogFanout = CatalogFanout

// catalogHeader is a catalog's header object.
type catalogHeader struct {
	Version int `json:"version"`
	Level   int `json:"level"`
	// Sets are the covered sets' headers without tables, schemas, packs,
	// global chunks and index: what list shows.
	Sets  []manifest.Manifest `json:"sets"`
	Index manifest.Index      `json:"index"`
}

// catalogEntry is one tenant's line in a catalog's index: the sets that
// hold it as runs of consecutive positions in the header's sets with the
// same numbers.
type catalogEntry struct {
	ID   string    `json:"id"`
	Runs []tenRuns `json:"runs"`
}

// tenRuns is [first position, count, rows, size, stored, tables].
type tenRuns [6]int64

// catalog is a catalog a reader uses.
type catalog struct {
	key  string // header key
	dk   []byte // data key of a sealed catalog
	hdr  catalogHeader
	pos  map[string]int
	ids  []string // covered set IDs, sorted
	mu   sync.Mutex
	dir  []pageRef
	read bool
}

func catalogName(level int, ids []string) string {
	sorted := slices.Clone(ids)
	sort.Strings(sorted)
	sum := sha256.Sum256([]byte(strings.Join(sorted, "\n")))
	return fmt.Sprintf("%s%d-%s-%s", CatalogPrefix, level, sorted[0], hex.EncodeToString(sum[:8]))
}

// summary is a set's header as a catalog keeps it.
func summary(m *manifest.Manifest) manifest.Manifest {
	s := *m
	s.Tables, s.Schemas, s.Packs, s.Global, s.Tenants, s.Index = nil, nil, nil, nil, nil, nil
	return s
}

// readCatalogs reads the header of every catalog. A catalog that cannot be
// read or is of a newer version is left out with a warning: the sets it
// covers are read directly.
func (v *Vault) readCatalogs(ctx context.Context) ([]*catalog, error) {
	if v.cfg.Encrypted() && len(v.keys.Identities) == 0 && len(v.keys.Signing) == 0 {
		return nil, nil // nothing here opens a sealed catalog
	}
	var keys []string
	err := v.b.List(ctx, CatalogPrefix, func(o repo.ObjectInfo) error {
		if strings.HasSuffix(o.Key, catalogExt) {
			keys = append(keys, o.Key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list catalogs in %s: %w", v.b.Location(), err)
	}
	cats, err := parallelReadN(ctx, keys, 16, func(ctx context.Context, key string) (*catalog, error) {
		c, err := v.readCatalog(ctx, key)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, errCatalogKey) {
				// Made under a signing key this writer no longer holds.
				v.log.Debug("skipping a sealed catalog no key here opens", "catalog", key)
				return nil, nil
			}
			v.log.Warn("skipping a catalog that cannot be read; its sets are read one by one", "catalog", key, "err", err)
			return nil, nil
		}
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(cats, func(c *catalog) bool { return c == nil }), nil
}

func (v *Vault) readCatalog(ctx context.Context, key string) (*catalog, error) {
	data, err := repo.ReadAll(ctx, v.b, key)
	if err != nil {
		return nil, err
	}
	if len(data) > maxCatalogHdr {
		return nil, fmt.Errorf("header of %d bytes", len(data))
	}
	c := &catalog{key: key, pos: map[string]int{}}
	var sealed *sealedCatalog
	if v.cfg.Encrypted() {
		if sealed, c.dk, data, err = v.openCatalog(data); err != nil {
			return nil, err
		}
	}
	content, err := loadPage(data)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(content, &c.hdr); err != nil {
		return nil, err
	}
	h := &c.hdr
	base := strings.TrimSuffix(key, catalogExt)
	switch {
	case h.Version != catalogVersion:
		return nil, fmt.Errorf("catalog version %d (this build reads %d)", h.Version, catalogVersion)
	case len(h.Sets) == 0:
		return nil, errors.New("covers no set")
	case h.Index.Key != base+indexExt:
		return nil, fmt.Errorf("names index %q, not its own", h.Index.Key)
	case h.Index.Pages < 0 || h.Index.Tenants < 0 || h.Index.Directory.Length <= 0:
		return nil, errors.New("bad index reference")
	}
	for i := range h.Sets {
		id := h.Sets[i].ID
		if !ValidSetID(id) {
			return nil, fmt.Errorf("lists %q, not a set ID", id)
		}
		if _, dup := c.pos[id]; dup {
			return nil, fmt.Errorf("lists set %s twice", id)
		}
		c.pos[id] = i
		c.ids = append(c.ids, id)
	}
	sort.Strings(c.ids)
	if catalogName(h.Level, c.ids) != base {
		return nil, errors.New("its name does not match the sets it lists")
	}
	if sealed != nil && (sealed.Level != h.Level || !slices.Equal(sealed.Sets, c.ids)) {
		return nil, errors.New("its signed part and its sealed header disagree")
	}
	return c, nil
}

// catalogSets reads which sets a catalog covers, needing no key: a sealed
// catalog's signed part names them (GC runs without an identity). The
// catalog's name must match them, as readers require.
func (v *Vault) catalogSets(ctx context.Context, key string) ([]string, error) {
	if !v.cfg.Encrypted() {
		c, err := v.readCatalog(ctx, key)
		if err != nil {
			return nil, err
		}
		return c.ids, nil
	}
	data, err := repo.ReadAll(ctx, v.b, key)
	if err != nil {
		return nil, err
	}
	if len(data) > maxCatalogHdr {
		return nil, fmt.Errorf("header of %d bytes", len(data))
	}
	_, hdr, _, err := openFrames(data, sealedCatalogMagic, catalogSigContext)
	if err != nil {
		return nil, err
	}
	var p sealedCatalog
	if err := decompressJSON(hdr, maxCatalogHdr, &p); err != nil {
		return nil, fmt.Errorf("signed part: %v", err)
	}
	if p.Version != catalogVersion || len(p.Sets) == 0 || catalogName(p.Level, p.Sets) != strings.TrimSuffix(key, catalogExt) {
		return nil, errors.New("its signed part does not match its name")
	}
	return p.Sets, nil
}

// Sealed catalogs (encrypted repositories; docs/FORMAT.md "Catalog"). A
// catalog names tenants, so its header and index pages are sealed with a
// data key of its own. The key is kept twice in the signed part: wrapped
// with age to the recipients, for readers (who hold the identity), and
// sealed with a key derived from the signing key, for writers (who fold
// catalogs into the next level and hold no identity; they can derive
// tenant keys already, so this tells them nothing more).
const (
	sealedCatalogMagic = "tenantvault sealed catalog 1\n"
	catalogSigContext  = "tenantvault catalog signature v1\x00"
	catalogKeyInfo     = "tenantvault catalog key v1"
)

// errCatalogKey: no identity and no signing key of this side opens a
// sealed catalog.
var errCatalogKey = errors.New("no identity and no signing key here opens this sealed catalog")

// sealedCatalog is the signed, readable part of a sealed catalog.
type sealedCatalog struct {
	Version int      `json:"version"`
	Level   int      `json:"level"`
	Sets    []string `json:"sets"` // sorted
	Age     []byte   `json:"age"`
	Writer  []byte   `json:"writer"`
}

// sealCatalog wraps a catalog header page (as stored in plaintext) in the
// signed and sealed form.
func (v *Vault) sealCatalog(level int, ids []string, dk, wrapped, page []byte) ([]byte, error) {
	if len(v.keys.Signing) == 0 {
		return nil, errors.New("no signing key")
	}
	signer := v.keys.Signing[0]
	writer, err := sealBytes(signer.derive(catalogKeyInfo), dk)
	if err != nil {
		return nil, err
	}
	sorted := slices.Clone(ids)
	sort.Strings(sorted)
	hdr, err := compressJSON(&sealedCatalog{Version: catalogVersion, Level: level, Sets: sorted, Age: wrapped, Writer: writer})
	if err != nil {
		return nil, err
	}
	body, err := sealBytes(dk, page)
	if err != nil {
		return nil, err
	}
	return signFrames(sealedCatalogMagic, catalogSigContext, signer, hdr, body), nil
}

// openCatalog checks a sealed catalog's signature (by a signer this side
// trusts), finds its data key and returns the header page inside.
func (v *Vault) openCatalog(data []byte) (*sealedCatalog, []byte, []byte, error) {
	pub, hdr, body, err := openFrames(data, sealedCatalogMagic, catalogSigContext)
	if err != nil {
		return nil, nil, nil, err
	}
	if !v.keys.trusted(pub) {
		return nil, nil, nil, fmt.Errorf("signed by %s, which this side does not trust", SignerString(pub))
	}
	var p sealedCatalog
	if err := decompressJSON(hdr, maxCatalogHdr, &p); err != nil {
		return nil, nil, nil, fmt.Errorf("signed part: %v", err)
	}
	if p.Version != catalogVersion {
		return nil, nil, nil, fmt.Errorf("catalog version %d (this build reads %d)", p.Version, catalogVersion)
	}
	var dk []byte
	if len(v.keys.Identities) > 0 {
		dk, _ = unwrapKey(p.Age, v.keys.Identities)
	}
	for _, sk := range v.keys.Signing {
		if dk == nil && sk.pub().Equal(pub) {
			dk, _ = openBytes(sk.derive(catalogKeyInfo), p.Writer, 64)
		}
	}
	if len(dk) != len(newDataKey()) {
		return nil, nil, nil, errCatalogKey
	}
	page, err := openBytes(dk, body, maxCatalogHdr)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("header: %v", err)
	}
	return &p, dk, page, nil
}

// open inflates a stored page of the catalog's index.
func (c *catalog) open(stored []byte) ([]byte, error) {
	if c.dk != nil {
		plain, err := openBytes(c.dk, stored, maxPage)
		if err != nil {
			return nil, err
		}
		stored = plain
	}
	return loadPage(stored)
}

// coverCatalogs picks catalogs that do not overlap, the higher levels
// first: each covered set is read from exactly one catalog.
func coverCatalogs(cats []*catalog) (chosen []*catalog, rest []*catalog, by map[string]*catalog) {
	sorted := slices.Clone(cats)
	sort.Slice(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		if a.hdr.Level != b.hdr.Level {
			return a.hdr.Level > b.hdr.Level
		}
		if a.ids[0] != b.ids[0] {
			return a.ids[0] < b.ids[0]
		}
		return a.key < b.key
	})
	by = map[string]*catalog{}
	for _, c := range sorted {
		if slices.ContainsFunc(c.ids, func(id string) bool { return by[id] != nil }) {
			rest = append(rest, c)
			continue
		}
		for _, id := range c.ids {
			by[id] = c
		}
		chosen = append(chosen, c)
	}
	return chosen, rest, by
}

func (c *catalog) readRange(ctx context.Context, v *Vault, offset, length int64) ([]byte, error) {
	if length > maxPage {
		return nil, fmt.Errorf("a page of %d bytes", length)
	}
	rc, err := v.b.Get(ctx, c.hdr.Index.Key, offset, length)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data := make([]byte, length)
	if _, err := io.ReadFull(rc, data); err != nil {
		return nil, fmt.Errorf("truncated at %d: %w", offset, err)
	}
	return data, nil
}

func (c *catalog) directory(ctx context.Context, v *Vault) ([]pageRef, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.read {
		return c.dir, nil
	}
	ix := &c.hdr.Index
	stored, err := c.readRange(ctx, v, ix.Directory.Offset, ix.Directory.Length)
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(stored); hex.EncodeToString(sum[:]) != ix.Directory.SHA256 {
		return nil, errors.New("directory checksum mismatch")
	}
	content, err := c.open(stored)
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	if c.dir, err = decodeDirectory(content, ix); err != nil {
		return nil, err
	}
	c.read = true
	return c.dir, nil
}

// page reads and checks page i, calling fn with each entry (want nil for
// all, else only that tenant's).
func (c *catalog) page(ctx context.Context, v *Vault, dir []pageRef, i int, want *string, fn func(*catalogEntry) error) error {
	stored, err := c.readRange(ctx, v, dir[i].offset, dir[i].length)
	if err != nil {
		return err
	}
	if sha256.Sum256(stored) != dir[i].sha {
		return fmt.Errorf("page %d checksum mismatch", i)
	}
	content, err := c.open(stored)
	if err != nil {
		return fmt.Errorf("page %d: %w", i, err)
	}
	return checkPageLines(content, dir, i, func(id string, line []byte) error {
		if want != nil && id != *want {
			return nil
		}
		var e catalogEntry
		if err := json.Unmarshal(line, &e); err != nil || e.ID != id {
			return fmt.Errorf("page %d: entry %q is damaged", i, id)
		}
		if err := c.checkRuns(e.Runs); err != nil {
			return fmt.Errorf("page %d: entry %q: %w", i, id, err)
		}
		return fn(&e)
	})
}

// checkRuns refuses runs outside the header's sets or overlapping.
func (c *catalog) checkRuns(runs []tenRuns) error {
	next := int64(0)
	for _, r := range runs {
		if r[0] < next || r[1] < 1 || r[0]+r[1] > int64(len(c.hdr.Sets)) || r[2] < 0 || r[3] < 0 || r[4] < 0 || r[5] < 0 {
			return errors.New("runs out of range")
		}
		next = r[0] + r[1]
	}
	return nil
}

// lookup finds tenant's entry; nil when the catalog's sets do not hold it.
func (c *catalog) lookup(ctx context.Context, v *Vault, tenant string) (*catalogEntry, error) {
	dir, err := c.directory(ctx, v)
	if err != nil {
		return nil, err
	}
	i := sort.Search(len(dir), func(i int) bool { return dir[i].first > tenant }) - 1
	if i < 0 {
		return nil, nil
	}
	var found *catalogEntry
	err = c.page(ctx, v, dir, i, &tenant, func(e *catalogEntry) error {
		found = e
		return nil
	})
	return found, err
}

// TenantInSet is a tenant's entry in one set, as list shows it.
type TenantInSet struct {
	// Set is the set's header; read from a catalog, its summary only
	// (no tables, schemas, packs or chunks).
	Set                *manifest.Manifest
	Rows, Size, Stored int64
	Tables             int
	// Key is the entry's own data key object (encrypted repositories;
	// empty otherwise, and when read from a catalog).
	Key string
}

// TenantHistory finds tenant in every set of ids (as ListSets returns
// them), oldest first. Sets a catalog covers cost, per catalog, its
// directory and one page; the others their header, directory and one
// page, several sets at a time.
func (v *Vault) TenantHistory(ctx context.Context, ids []string, tenant string) ([]TenantInSet, error) {
	return v.tenantHistory(ctx, ids, tenant, true)
}

// TenantHistoryFromSets is TenantHistory read from the sets alone, never
// a catalog: for an erased tenant, whose catalog entries forget removed.
// It also finds the entries a set does not hold (Set.Entry).
func (v *Vault) TenantHistoryFromSets(ctx context.Context, ids []string, tenant string) ([]TenantInSet, error) {
	return v.tenantHistory(ctx, ids, tenant, false)
}

// tenantHistory is TenantHistory, through the catalogs or (for what must
// not trust them: forget finding a tenant's keys) from the sets alone.
func (v *Vault) tenantHistory(ctx context.Context, ids []string, tenant string, catalogs bool) ([]TenantInSet, error) {
	var cats []*catalog
	if catalogs {
		var err error
		if cats, err = v.readCatalogs(ctx); err != nil {
			return nil, err
		}
	}
	chosen, _, by := coverCatalogs(cats)
	live := make(map[string]bool, len(ids))
	var direct []string
	for _, id := range ids {
		live[id] = true
		if by[id] == nil {
			direct = append(direct, id)
		}
	}
	found := map[string]TenantInSet{}
	var mu sync.Mutex
	_, err := parallelReadN(ctx, chosen, 16, func(ctx context.Context, c *catalog) (struct{}, error) {
		e, err := c.lookup(ctx, v, tenant)
		if err != nil {
			if ctx.Err() != nil {
				return struct{}{}, ctx.Err()
			}
			// Its sets are read one by one instead.
			v.log.Warn("skipping a catalog that cannot be read; its sets are read one by one", "catalog", c.key, "err", err)
			mu.Lock()
			for _, id := range c.ids {
				if live[id] {
					direct = append(direct, id)
				}
			}
			mu.Unlock()
			return struct{}{}, nil
		}
		if e == nil {
			return struct{}{}, nil
		}
		mu.Lock()
		defer mu.Unlock()
		for _, r := range e.Runs {
			for p := r[0]; p < r[0]+r[1]; p++ {
				m := &c.hdr.Sets[p]
				if live[m.ID] {
					found[m.ID] = TenantInSet{Set: m, Rows: r[2], Size: r[3], Stored: r[4], Tables: int(r[5])}
				}
			}
		}
		return struct{}{}, nil
	})
	if err != nil {
		return nil, err
	}
	hits, err := parallelReadN(ctx, direct, 16, func(ctx context.Context, id string) (*TenantInSet, error) {
		s, err := v.OpenSet(ctx, id)
		if err != nil {
			return nil, err
		}
		defer s.release()
		lookup := s.Tenant
		if !catalogs {
			lookup = s.Entry // forget: every entry the tenant has
		}
		t, err := lookup(ctx, tenant)
		if err != nil || t == nil {
			return nil, err
		}
		return &TenantInSet{Set: s.Header(), Rows: t.Rows, Size: t.Size, Stored: t.Stored, Tables: len(t.Chunks), Key: t.Key}, nil
	})
	if err != nil {
		return nil, err
	}
	for i, h := range hits {
		if h != nil {
			found[direct[i]] = *h
		}
	}
	var out []TenantInSet
	for _, id := range ids {
		if h, ok := found[id]; ok {
			out = append(out, h)
		}
	}
	return out, nil
}

// SetHeaders returns the header of every set of ids, in order: from a
// catalog's summary where one covers the set (no tables, schemas, packs
// or chunks), else the set's own.
func (v *Vault) SetHeaders(ctx context.Context, ids []string) ([]*manifest.Manifest, error) {
	cats, err := v.readCatalogs(ctx)
	if err != nil {
		return nil, err
	}
	_, _, by := coverCatalogs(cats)
	return parallelReadN(ctx, ids, 16, func(ctx context.Context, id string) (*manifest.Manifest, error) {
		if c := by[id]; c != nil {
			return &c.hdr.Sets[c.pos[id]], nil
		}
		s, err := v.OpenSet(ctx, id)
		if err != nil {
			return nil, err
		}
		return s.Header(), nil
	})
}

// UpdateCatalog folds sets no catalog covers into level-0 catalogs,
// catalogFanout sets each, and catalogFanout catalogs of a level into one
// of the next, then deletes what the new catalogs supersede. Any writer may
// run it at any time; two at once at worst write the same catalog twice.
// In an encrypted repository a set's level-0 catalog covers that set alone
// and is written with it (CommitSet): only the levels above are folded here.
func (v *Vault) UpdateCatalog(ctx context.Context, tempDir string) error {
	ids, err := v.ListSets(ctx)
	if err != nil {
		return err
	}
	cats, err := v.readCatalogs(ctx)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, id := range ids {
		live[id] = true
	}
	chosen, rest, by := coverCatalogs(cats)
	var uncovered []string
	for _, id := range ids {
		if by[id] == nil {
			uncovered = append(uncovered, id)
		}
	}
	for len(uncovered) >= catalogFanout && !v.cfg.Encrypted() {
		c, err := v.buildLevel0(ctx, uncovered[:catalogFanout], tempDir)
		if err != nil {
			return err
		}
		chosen = append(chosen, c)
		uncovered = uncovered[catalogFanout:]
	}
	for level := 0; ; level++ {
		var at []*catalog
		for _, c := range chosen {
			if c.hdr.Level == level {
				at = append(at, c)
			}
		}
		if len(at) == 0 && !slices.ContainsFunc(chosen, func(c *catalog) bool { return c.hdr.Level > level }) {
			break
		}
		sort.Slice(at, func(i, j int) bool { return at[i].ids[0] < at[j].ids[0] })
		for len(at) >= catalogFanout {
			c, err := v.mergeCatalogs(ctx, level+1, at[:catalogFanout], tempDir)
			if err != nil {
				return err
			}
			rest = append(rest, at[:catalogFanout]...)
			chosen = slices.DeleteFunc(chosen, func(x *catalog) bool { return slices.Contains(at[:catalogFanout], x) })
			chosen = append(chosen, c)
			at = at[catalogFanout:]
		}
	}
	// What a chosen catalog wholly covers, or what covers no set that
	// still exists, goes.
	_, _, by = coverCatalogs(chosen)
	for _, c := range rest {
		if !slices.ContainsFunc(c.ids, func(id string) bool { return live[id] && by[id] == nil }) {
			if err := v.deleteCatalog(ctx, c); err != nil {
				return err
			}
		}
	}
	for _, c := range chosen {
		if !slices.ContainsFunc(c.ids, func(id string) bool { return live[id] }) {
			if err := v.deleteCatalog(ctx, c); err != nil {
				return err
			}
		}
	}
	return v.deleteOrphanCatalogIndexes(ctx)
}

func (v *Vault) deleteCatalog(ctx context.Context, c *catalog) error {
	// The header first: without it the index is an orphan, never read.
	if err := v.b.Delete(ctx, c.key); err != nil && !errors.Is(err, repo.ErrNotFound) {
		return fmt.Errorf("delete catalog %s: %w", c.key, err)
	}
	if err := v.b.Delete(ctx, c.hdr.Index.Key); err != nil && !errors.Is(err, repo.ErrNotFound) {
		return fmt.Errorf("delete catalog %s: %w", c.hdr.Index.Key, err)
	}
	return nil
}

// deleteOrphanCatalogIndexes deletes catalog indexes whose header does not
// exist and that are old enough not to be a writer's work in progress.
func (v *Vault) deleteOrphanCatalogIndexes(ctx context.Context) error {
	headers := map[string]bool{}
	var indexes []repo.ObjectInfo
	err := v.b.List(ctx, CatalogPrefix, func(o repo.ObjectInfo) error {
		if base, ok := strings.CutSuffix(o.Key, catalogExt); ok {
			headers[base] = true
		} else if strings.HasSuffix(o.Key, indexExt) {
			indexes = append(indexes, o)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list catalogs in %s: %w", v.b.Location(), err)
	}
	for _, o := range indexes {
		if !headers[strings.TrimSuffix(o.Key, indexExt)] && !o.ModTime.IsZero() && time.Since(o.ModTime) > orphanAge {
			if err := v.b.Delete(ctx, o.Key); err != nil && !errors.Is(err, repo.ErrNotFound) {
				return fmt.Errorf("delete catalog %s: %w", o.Key, err)
			}
		}
	}
	return nil
}

// entrySource yields catalog entries in tenant order.
type entrySource interface {
	// next returns the next entry, or nil at the end.
	next(ctx context.Context) (*catalogEntry, error)
}

// setSource walks one set's tenants as single-position entries.
type setSource struct {
	s     *Set
	pos   int64
	dir   []pageRef
	page  int
	items []catalogEntry
	i     int
}

func (x *setSource) entry(id string, rows, size, stored int64, tables int) catalogEntry {
	return catalogEntry{ID: id, Runs: []tenRuns{{x.pos, 1, rows, size, stored, int64(tables)}}}
}

func (x *setSource) next(ctx context.Context) (*catalogEntry, error) {
	if x.s.m.Index == nil && x.items == nil {
		for _, t := range x.s.m.Tenants {
			if x.s.m.HoldsTenant(len(t.Chunks)) {
				x.items = append(x.items, x.entry(t.ID, t.Rows, t.Size, t.Stored, len(t.Chunks)))
			}
		}
	}
	for x.i >= len(x.items) {
		if x.s.m.Index == nil || x.page >= len(x.dir) {
			return nil, nil
		}
		x.items, x.i = x.items[:0], 0
		err := x.s.pageLines(ctx, x.dir, x.page, func(id string, line []byte) error {
			var t struct {
				ID     string     `json:"id"`
				Rows   int64      `json:"rows"`
				Size   int64      `json:"size"`
				Stored int64      `json:"stored"`
				Chunks []struct{} `json:"chunks"`
			}
			if err := json.Unmarshal(line, &t); err != nil || t.ID != id {
				return fmt.Errorf("page %d: entry %q is damaged", x.page, id)
			}
			if !x.s.m.HoldsTenant(len(t.Chunks)) {
				return nil
			}
			x.items = append(x.items, x.entry(id, t.Rows, t.Size, t.Stored, len(t.Chunks)))
			return nil
		})
		if err != nil {
			return nil, err
		}
		x.page++
	}
	e := &x.items[x.i]
	x.i++
	return e, nil
}

// catalogSource walks a catalog's entries, positions shifted by base.
type catalogSource struct {
	v     *Vault
	c     *catalog
	base  int64
	dir   []pageRef
	page  int
	items []catalogEntry
	i     int
}

func (x *catalogSource) next(ctx context.Context) (*catalogEntry, error) {
	for x.i >= len(x.items) {
		if x.page >= len(x.dir) {
			return nil, nil
		}
		x.items, x.i = x.items[:0], 0
		err := x.c.page(ctx, x.v, x.dir, x.page, nil, func(e *catalogEntry) error {
			x.items = append(x.items, *e)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("catalog %s: %w", x.c.key, err)
		}
		x.page++
	}
	e := x.items[x.i]
	x.i++
	runs := make([]tenRuns, len(e.Runs))
	for k, r := range e.Runs {
		r[0] += x.base
		runs[k] = r
	}
	e.Runs = runs
	return &e, nil
}

func (v *Vault) buildLevel0(ctx context.Context, ids []string, tempDir string) (*catalog, error) {
	sets, err := v.OpenSets(ctx, ids)
	if err != nil {
		return nil, err
	}
	var sums []manifest.Manifest
	var srcs []entrySource
	for i, s := range sets {
		sums = append(sums, summary(s.Header()))
		x := &setSource{s: s, pos: int64(i)}
		if s.m.Index != nil {
			s.mu.Lock()
			x.dir, err = s.directory(ctx)
			s.mu.Unlock()
			if err != nil {
				return nil, err
			}
		}
		srcs = append(srcs, x)
	}
	defer func() {
		for _, s := range sets {
			s.release()
		}
	}()
	return v.writeCatalog(ctx, 0, sums, srcs, tempDir)
}

func (v *Vault) mergeCatalogs(ctx context.Context, level int, cats []*catalog, tempDir string) (*catalog, error) {
	var sums []manifest.Manifest
	var srcs []entrySource
	for _, c := range cats {
		dir, err := c.directory(ctx, v)
		if err != nil {
			return nil, fmt.Errorf("catalog %s: %w", c.key, err)
		}
		srcs = append(srcs, &catalogSource{v: v, c: c, base: int64(len(sums)), dir: dir})
		sums = append(sums, c.hdr.Sets...)
	}
	return v.writeCatalog(ctx, level, sums, srcs, tempDir)
}

// catalogWriter writes one catalog: its index, then its header.
type catalogWriter struct {
	*IndexWriter
	level       int
	dk, wrapped []byte // sealed catalogs
}

// newCatalogWriter starts the catalog of level over the sets ids.
func (v *Vault) newCatalogWriter(level int, ids []string, tempDir string) (*catalogWriter, error) {
	w, err := v.newPagedWriter(catalogName(level, ids)+indexExt, tempDir)
	if err != nil {
		return nil, err
	}
	w.unlocked = true
	cw := &catalogWriter{IndexWriter: w, level: level}
	if v.cfg.Encrypted() {
		if cw.dk, cw.wrapped, err = v.newWrappedKey("catalogs need", "them"); err != nil {
			w.Close()
			return nil, err
		}
		w.dk = cw.dk
	}
	return cw, nil
}

// commit writes the index, then the header over sums (in the order the
// entries' positions refer to): after it the catalog exists.
func (cw *catalogWriter) commit(ctx context.Context, sums []manifest.Manifest) (*catalog, error) {
	v := cw.v
	ids := make([]string, len(sums))
	for i := range sums {
		ids[i] = sums[i].ID
	}
	ix, _, err := cw.finish(ctx, nil)
	if err != nil {
		return nil, err
	}
	hdr := catalogHeader{Version: catalogVersion, Level: cw.level, Sets: sums, Index: *ix}
	content, err := json.Marshal(&hdr)
	if err != nil {
		return nil, err
	}
	data := storePage(content)
	if cw.dk != nil {
		if data, err = v.sealCatalog(cw.level, ids, cw.dk, cw.wrapped, data); err != nil {
			return nil, err
		}
	}
	key := strings.TrimSuffix(ix.Key, indexExt) + catalogExt
	if err := v.b.Put(repo.WithoutRetention(ctx), key, bytes.NewReader(data), int64(len(data))); err != nil {
		return nil, fmt.Errorf("write catalog %s: %w", key, err)
	}
	c := &catalog{key: key, dk: cw.dk, hdr: hdr, pos: map[string]int{}}
	for i, id := range ids {
		c.pos[id] = i
	}
	c.ids = slices.Clone(ids)
	sort.Strings(c.ids)
	return c, nil
}

// writeCatalog merges the sources (each in tenant order, positions
// disjoint) into a catalog over sums: its index, then its header.
func (v *Vault) writeCatalog(ctx context.Context, level int, sums []manifest.Manifest, srcs []entrySource, tempDir string) (*catalog, error) {
	ids := make([]string, len(sums))
	for i := range sums {
		ids[i] = sums[i].ID
	}
	w, err := v.newCatalogWriter(level, ids, tempDir)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	heads := make([]*catalogEntry, len(srcs))
	for i, s := range srcs {
		if heads[i], err = s.next(ctx); err != nil {
			return nil, err
		}
	}
	for {
		var min *string
		for _, h := range heads {
			if h != nil && (min == nil || h.ID < *min) {
				min = &h.ID
			}
		}
		if min == nil {
			break
		}
		id := *min
		e := catalogEntry{ID: id}
		for i, h := range heads {
			if h == nil || h.ID != id {
				continue
			}
			e.Runs = append(e.Runs, h.Runs...)
			if heads[i], err = srcs[i].next(ctx); err != nil {
				return nil, err
			}
		}
		sort.Slice(e.Runs, func(a, b int) bool { return e.Runs[a][0] < e.Runs[b][0] })
		e.Runs = joinRuns(e.Runs)
		if err := w.add(e.ID, &e); err != nil {
			return nil, err
		}
	}
	return w.commit(ctx, sums)
}

// writeSetCatalog writes the level-0 catalog of set hdr, just committed, in
// an encrypted repository: its entries were collected as its tenant index
// was written (IndexWriter.Add), since this side cannot read the set back.
func (v *Vault) writeSetCatalog(ctx context.Context, hdr *manifest.Manifest, cw *catalogWriter) error {
	_, err := cw.commit(ctx, []manifest.Manifest{summary(hdr)})
	return err
}

// joinRuns merges adjacent runs with the same numbers.
func joinRuns(runs []tenRuns) []tenRuns {
	out := runs[:0]
	for _, r := range runs {
		if n := len(out); n > 0 {
			p := &out[n-1]
			if p[0]+p[1] == r[0] && p[2] == r[2] && p[3] == r[3] && p[4] == r[4] && p[5] == r[5] {
				p[1] += r[1]
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

// EraseFromCatalogs removes tenant from every catalog that lists it, so
// that no catalog keeps its ID or sizes after forget: each such catalog is
// deleted, then written again without the tenant where this side can seal
// and sign one (else its sets are read one by one until pruned). A catalog
// this side cannot read is deleted: it may list the tenant.
func (v *Vault) EraseFromCatalogs(ctx context.Context, tenant, tempDir string) error {
	cats, err := v.readCatalogs(ctx)
	if err != nil {
		return err
	}
	readable := map[string]bool{}
	for _, c := range cats {
		readable[c.key], readable[c.hdr.Index.Key] = true, true
		e, err := c.lookup(ctx, v, tenant)
		if err == nil && e == nil {
			continue
		}
		// The copy is written to a new temporary catalog writer before the
		// old one goes, read from the old one's pages.
		var copied *catalogWriter
		if err == nil {
			copied, err = v.copyCatalogWithout(ctx, c, tenant, tempDir)
			if err != nil {
				v.log.Warn("could not rewrite a catalog without the erased tenant; deleting it (its sets are read one by one)", "catalog", c.key, "err", err)
			}
		}
		if err := v.deleteCatalog(ctx, c); err != nil {
			if copied != nil {
				copied.Close()
			}
			return err
		}
		if copied != nil {
			_, err := copied.commit(ctx, c.hdr.Sets)
			copied.Close()
			if err != nil {
				return err // gone meanwhile: its sets are read one by one
			}
		}
	}
	return v.deleteCatalogObjectsBut(ctx, readable)
}

// copyCatalogWithout spools c's entries but tenant's into a new writer
// of the same catalog (same level and sets, so the same name), not yet
// committed.
func (v *Vault) copyCatalogWithout(ctx context.Context, c *catalog, tenant, tempDir string) (*catalogWriter, error) {
	dir, err := c.directory(ctx, v)
	if err != nil {
		return nil, err
	}
	w, err := v.newCatalogWriter(c.hdr.Level, c.ids, tempDir)
	if err != nil {
		return nil, err
	}
	src := &catalogSource{v: v, c: c, dir: dir}
	for {
		e, err := src.next(ctx)
		if err != nil {
			w.Close()
			return nil, err
		}
		if e == nil {
			return w, nil
		}
		if e.ID == tenant {
			continue
		}
		if err := w.add(e.ID, e); err != nil {
			w.Close()
			return nil, err
		}
	}
}

// DropCatalogs deletes every catalog that covers one of sets, and every
// catalog object it cannot read (which may): what rewrites those sets
// (forget) calls it before and after, so that no catalog keeps what the
// sets no longer hold. Later snapshots fold the sets in again.
func (v *Vault) DropCatalogs(ctx context.Context, sets []string) error {
	cats, err := v.readCatalogs(ctx)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, c := range cats {
		if slices.ContainsFunc(sets, func(id string) bool { _, ok := c.pos[id]; return ok }) {
			if err := v.deleteCatalog(ctx, c); err != nil {
				return err
			}
			continue
		}
		keep[c.key], keep[c.hdr.Index.Key] = true, true
	}
	return v.deleteCatalogObjectsBut(ctx, keep)
}

// deleteCatalogObjectsBut deletes every object under catalog/ not in keep.
func (v *Vault) deleteCatalogObjectsBut(ctx context.Context, keep map[string]bool) error {
	var rest []string
	if err := v.b.List(ctx, CatalogPrefix, func(o repo.ObjectInfo) error {
		if !keep[o.Key] {
			rest = append(rest, o.Key)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list catalogs in %s: %w", v.b.Location(), err)
	}
	for _, k := range rest {
		if err := v.b.Delete(ctx, k); err != nil && !errors.Is(err, repo.ErrNotFound) {
			return fmt.Errorf("delete catalog %s: %w", k, err)
		}
	}
	return nil
}
