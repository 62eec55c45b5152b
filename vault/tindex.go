package vault

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
)

// Tenant index of set format 2 (docs/FORMAT.md, "Tenant index"): tenant
// entries sorted by ID in pages, a directory of the pages after them.
const (
	indexMagic = "tenantvault tenant index 1\n"
	indexExt   = ".tidx"
	// PageTarget is the content size at which a writer closes a page.
	PageTarget = 64 << 10
	// maxPage bounds what a reader inflates for one page or directory.
	maxPage = 256 << 20
	// maxEntry bounds one tenant entry's line.
	maxEntry = 64 << 20
)

// IndexKey is where the tenant index of set id lives.
func IndexKey(id string) string { return SetsPrefix + id + indexExt }

// indexKeyGen is where generation gen (> 0) of the tenant index of set id
// lives: forget writes a new index beside the old one, and the manifest,
// replaced last, switches to it.
func indexKeyGen(id string, gen int) string {
	if gen <= 0 {
		return IndexKey(id)
	}
	return fmt.Sprintf("%s%s.g%d%s", SetsPrefix, id, gen, indexExt)
}

// ownIndexKey reports whether key is a tenant index key of set id (any
// generation).
func ownIndexKey(id, key string) bool {
	rest, ok := strings.CutPrefix(key, SetsPrefix+id)
	if !ok {
		return false
	}
	if rest == indexExt {
		return true
	}
	n, ok := strings.CutPrefix(rest, ".g")
	if !ok {
		return false
	}
	n, ok = strings.CutSuffix(n, indexExt)
	g, err := strconv.Atoi(n)
	return ok && err == nil && g > 0 && strconv.Itoa(g) == n
}

// indexSetID returns the set a tenant index key (of any generation)
// belongs to.
func indexSetID(key string) (string, bool) {
	name, ok := strings.CutSuffix(strings.TrimPrefix(key, SetsPrefix), indexExt)
	if !ok {
		return "", false
	}
	if i := strings.Index(name, ".g"); i >= 0 {
		name = name[:i]
	}
	if !ValidSetID(name) || !ownIndexKey(name, key) {
		return "", false
	}
	return name, true
}

// pageRef is one directory entry.
type pageRef struct {
	first   string
	tenants int
	offset  int64
	length  int64
	sha     [32]byte
}

var (
	pageEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	pageDecoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxPage))
)

// storePage renders page content as stored: codec byte and zstd frame.
func storePage(content []byte) []byte {
	return pageEncoder.EncodeAll(content, []byte{CodecZstd})
}

// open inflates a stored page of this set: sealed (codec 0x02, with the
// set's data key) in an encrypted repository, plain otherwise.
func (s *Set) open(ctx context.Context, stored []byte) ([]byte, error) {
	if !s.v.cfg.Encrypted() {
		return loadPage(stored)
	}
	if len(stored) == 0 || stored[0] != CodecSealed {
		return nil, errors.New("a plaintext page in an encrypted repository")
	}
	dk, err := s.v.objectKey(ctx, s.m.ID, s.m.Index.Key)
	if err != nil {
		return nil, err
	}
	plain, err := openBytes(dk, stored, maxPage)
	if err != nil {
		return nil, err
	}
	return loadPage(plain)
}

// loadPage inflates a stored page.
func loadPage(stored []byte) ([]byte, error) {
	if len(stored) == 0 || stored[0] != CodecZstd {
		return nil, errors.New("unknown page codec")
	}
	return pageDecoder.DecodeAll(stored[1:], nil)
}

// IndexWriter streams tenant entries, in ID order, into the pages of a set's
// tenant index, spooled to a temporary file: its memory is one page and the
// directory (about 50 bytes per page), whatever the tenant count. In an
// encrypted repository it seals the pages and the directory with the set's
// data key and spools every tenant chunk's locator line (see finish) to a
// second temporary file.
type IndexWriter struct {
	v       *Vault
	key     string
	f       *os.File
	off     int64
	page    bytes.Buffer
	first   string
	n       int
	last    string
	started bool
	dir     []pageRef
	tenants int
	// owned: positions of the tables each tenant owns (SetTables), moved
	// into the tenant's entry; moved counts what was.
	tables []manifest.Table
	owned  map[string][]int
	moved  []bool
	// unlocked: uploaded without Object Lock retention (catalogs).
	unlocked bool
	// encrypted repositories
	setID string
	dk    []byte
	loc   *os.File
	lw    *bufio.Writer
	locN  int
	// cat collects the set's own catalog (encrypted repositories, whose
	// writers cannot read a set back to fold it later).
	cat *catalogWriter
}

// locLine is what the writer keeps of a tenant chunk until the locator is
// written: enough to compute its reuse tag. It stays in a local temporary
// file, as the chunks spooled by a snapshot do.
type locLine struct {
	Tenant string `json:"n"`
	Key    string `json:"k,omitempty"`
	Table  int    `json:"t"`
	Digest string `json:"d"`
	Size   int64  `json:"s"`
	IndexChunk
}

// NewIndexWriter starts the tenant index of set setID; tempDir "" means
// the system's. In an encrypted repository the set's chunks must be
// written first (NewSetWriter makes its data key).
func (v *Vault) NewIndexWriter(setID, tempDir string) (*IndexWriter, error) {
	w, err := v.newPagedWriter(IndexKey(setID), tempDir)
	if err != nil {
		return nil, err
	}
	w.setID = setID
	if v.cfg.Encrypted() {
		k, ok := v.writing.Load(setID)
		if !ok {
			w.Close()
			return nil, fmt.Errorf("tenant index: set %s was not written by this vault (no data key)", setID)
		}
		w.dk = k.(*setKey).dk
		loc, err := os.CreateTemp(tempDir, "tenantvault-locator-*")
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("tenant index: %w", err)
		}
		os.Remove(loc.Name())
		w.loc, w.lw = loc, bufio.NewWriterSize(loc, 256<<10)
		if w.cat, err = v.newCatalogWriter(0, []string{setID}, tempDir); err != nil {
			w.Close()
			return nil, err
		}
	}
	return w, nil
}

// newPagedWriter starts an object in the tenant index's layout at key
// (plaintext pages).
func (v *Vault) newPagedWriter(key, tempDir string) (*IndexWriter, error) {
	w := &IndexWriter{v: v, key: key, off: int64(len(indexMagic))}
	f, err := os.CreateTemp(tempDir, "tenantvault-index-*")
	if err != nil {
		return nil, fmt.Errorf("tenant index: %w", err)
	}
	os.Remove(f.Name()) // gone with the last reference, whatever happens
	w.f = f
	if _, err := f.WriteString(indexMagic); err != nil {
		w.Close()
		return nil, fmt.Errorf("tenant index: %w", err)
	}
	return w, nil
}

// store renders page content as stored: plain (codec byte and zstd
// frame), or that sealed with the set's data key.
func (w *IndexWriter) store(content []byte) ([]byte, error) {
	stored := storePage(content)
	if w.dk == nil {
		return stored, nil
	}
	return sealBytes(w.dk, stored)
}

// SetTables gives the writer the set's tables (indexed as the chunks
// refer to them), before the first Add: the tables a tenant owns (schema
// and database models) then go into that tenant's entry, and the header
// CommitSet writes holds only the others (set format 3), so that it stays
// small at any number of tenant schemas.
func (w *IndexWriter) SetTables(tables []manifest.Table) {
	w.tables, w.owned = tables, map[string][]int{}
	for i := range tables {
		if o := tables[i].Owner; o != "" {
			w.owned[o] = append(w.owned[o], i)
		}
	}
	if len(w.owned) == 0 {
		w.tables, w.owned = nil, nil
		return
	}
	w.moved = make([]bool, len(tables))
}

// Add appends one tenant's entry; IDs must come in strictly increasing
// byte order.
func (w *IndexWriter) Add(t *manifest.Tenant) error {
	if ps := w.owned[t.ID]; len(ps) > 0 && t.Tables == nil {
		tt := *t
		tt.Tables = make([]manifest.OwnedTable, len(ps))
		for i, p := range ps {
			tt.Tables[i] = manifest.OwnedTable{Position: p, Table: w.tables[p]}
			w.moved[p] = true
		}
		t = &tt
	}
	// The locator lines first: add may flush the page.
	if w.lw != nil {
		for _, c := range t.Chunks {
			l := locLine{Tenant: t.ID, Key: t.Key, Table: c.Table, Digest: c.Digest, Size: c.Size,
				IndexChunk: IndexChunk{Pack: c.Pack, Offset: c.Offset, Length: c.Length, SHA256: c.SHA256}}
			b, err := json.Marshal(&l)
			if err != nil {
				return fmt.Errorf("tenant index: %w", err)
			}
			w.lw.Write(b)
			if err := w.lw.WriteByte('\n'); err != nil {
				return fmt.Errorf("tenant index: %w", err)
			}
		}
	}
	if w.cat != nil {
		e := catalogEntry{ID: t.ID, Runs: []tenRuns{{0, 1, t.Rows, t.Size, t.Stored, int64(len(t.Chunks))}}}
		if err := w.cat.add(t.ID, &e); err != nil {
			return err
		}
	}
	return w.add(t.ID, t)
}

// add appends the entry of tenant id: v marshalled to JSON, which must
// begin with "id" (entryID reads it back without decoding the rest).
func (w *IndexWriter) add(id string, v any) error {
	if w.started && id <= w.last {
		return fmt.Errorf("tenant index: %q after %q: tenants out of order", id, w.last)
	}
	line, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("tenant index: %w", err)
	}
	if w.n == 0 {
		w.first = id
	}
	w.page.Write(line)
	w.page.WriteByte('\n')
	w.n++
	w.tenants++
	w.last, w.started = id, true
	if w.page.Len() >= PageTarget {
		return w.flush()
	}
	return nil
}

// Tenants is how many entries were added.
func (w *IndexWriter) Tenants() int { return w.tenants }

func (w *IndexWriter) flush() error {
	if w.n == 0 {
		return nil
	}
	stored, err := w.store(w.page.Bytes())
	if err != nil {
		return fmt.Errorf("tenant index: %w", err)
	}
	if _, err := w.f.Write(stored); err != nil {
		return fmt.Errorf("tenant index: %w", err)
	}
	w.dir = append(w.dir, pageRef{first: w.first, tenants: w.n, offset: w.off, length: int64(len(stored)), sha: sha256.Sum256(stored)})
	w.off += int64(len(stored))
	w.page.Reset()
	w.n = 0
	return nil
}

// encodeDirectory renders the directory's content.
func encodeDirectory(dir []pageRef) []byte {
	b := binary.AppendUvarint(nil, uint64(len(dir)))
	for _, p := range dir {
		b = binary.AppendUvarint(b, uint64(len(p.first)))
		b = append(b, p.first...)
		b = binary.AppendUvarint(b, uint64(p.tenants))
		b = binary.AppendUvarint(b, uint64(p.offset))
		b = binary.AppendUvarint(b, uint64(p.length))
		b = append(b, p.sha[:]...)
	}
	return b
}

// decodeDirectory parses and checks a directory's content against its
// header.
func decodeDirectory(b []byte, ix *manifest.Index) ([]pageRef, error) {
	bad := errors.New("malformed directory")
	n, k := binary.Uvarint(b)
	if k <= 0 || n != uint64(ix.Pages) {
		return nil, errors.New("directory does not list the header's page count")
	}
	b = b[k:]
	dir := make([]pageRef, 0, n)
	next := int64(len(indexMagic))
	total := 0
	uv := func() (uint64, bool) {
		x, k := binary.Uvarint(b)
		if k <= 0 {
			return 0, false
		}
		b = b[k:]
		return x, true
	}
	for range n {
		var p pageRef
		l, ok := uv()
		if !ok || l > uint64(len(b)) {
			return nil, bad
		}
		p.first = string(b[:l])
		b = b[l:]
		t, ok1 := uv()
		o, ok2 := uv()
		ln, ok3 := uv()
		if !ok1 || !ok2 || !ok3 || len(b) < 32 || t == 0 || t > 1<<40 || ln == 0 || ln > 1<<40 {
			return nil, bad
		}
		p.tenants, p.offset, p.length = int(t), int64(o), int64(ln)
		copy(p.sha[:], b[:32])
		b = b[32:]
		if p.offset != next || (len(dir) > 0 && p.first <= dir[len(dir)-1].first) {
			return nil, errors.New("directory pages out of order")
		}
		next += p.length
		total += p.tenants
		dir = append(dir, p)
	}
	if len(b) != 0 {
		return nil, bad
	}
	if next != ix.Directory.Offset || total != ix.Tenants {
		return nil, errors.New("directory does not match the header")
	}
	return dir, nil
}

// finish writes the last page and the directory, and in an encrypted
// repository the locator (the global chunks of hdr, then every tenant's,
// with their reuse tags), uploads the index and returns its reference for
// the header (and, encrypted, for the signed header).
func (w *IndexWriter) finish(ctx context.Context, hdr *manifest.Manifest) (*manifest.Index, *SealedIndex, error) {
	if err := w.flush(); err != nil {
		return nil, nil, err
	}
	stored, err := w.store(encodeDirectory(w.dir))
	if err != nil {
		return nil, nil, fmt.Errorf("tenant index: %w", err)
	}
	if _, err := w.f.Write(stored); err != nil {
		return nil, nil, fmt.Errorf("tenant index: %w", err)
	}
	sum := sha256.Sum256(stored)
	ix := &manifest.Index{
		Key: w.key, Size: w.off + int64(len(stored)), Pages: len(w.dir), Tenants: w.tenants,
		Directory: manifest.Range{Offset: w.off, Length: int64(len(stored)), SHA256: hex.EncodeToString(sum[:])},
	}
	var sx *SealedIndex
	if w.loc != nil {
		loc, err := w.writeLocator(hdr)
		if err != nil {
			return nil, nil, fmt.Errorf("tenant index: %w", err)
		}
		loc.Offset = ix.Size
		ix.Size += loc.Length
		sx = &SealedIndex{Key: ix.Key, Size: ix.Size, Pages: ix.Pages, Directory: ix.Directory, Locator: loc, chunks: w.locN}
	}
	if err := w.f.Sync(); err != nil {
		return nil, nil, fmt.Errorf("tenant index: %w", err)
	}
	if sx != nil {
		if _, err := w.f.Seek(0, io.SeekStart); err != nil {
			return nil, nil, fmt.Errorf("tenant index: %w", err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, w.f); err != nil {
			return nil, nil, fmt.Errorf("tenant index: %w", err)
		}
		sx.SHA256 = hex.EncodeToString(h.Sum(nil))
	}
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		return nil, nil, fmt.Errorf("tenant index: %w", err)
	}
	if err := w.v.b.Put(w.putCtx(ctx), ix.Key, w.f, ix.Size); err != nil {
		return nil, nil, fmt.Errorf("write tenant index %s: %w", ix.Key, err)
	}
	return ix, sx, nil
}

func (w *IndexWriter) putCtx(ctx context.Context) context.Context {
	if w.unlocked {
		return repo.WithoutRetention(ctx)
	}
	return ctx
}

// writeLocator appends the locator to the index file: codec byte and one
// zstd frame of IndexChunk lines, global chunks first, then the tenants'
// in index order, each with its reuse tag.
func (w *IndexWriter) writeLocator(hdr *manifest.Manifest) (manifest.Range, error) {
	var r manifest.Range
	if len(w.v.keys.Signing) == 0 {
		return r, errors.New("no signing key")
	}
	tagKey := w.v.keys.Signing[0].tagKey()
	if err := w.lw.Flush(); err != nil {
		return r, err
	}
	if _, err := w.loc.Seek(0, io.SeekStart); err != nil {
		return r, err
	}
	h := sha256.New()
	out := io.MultiWriter(w.f, h)
	if _, err := out.Write([]byte{CodecZstd}); err != nil {
		return r, err
	}
	cw := &countWriter{w: out}
	enc, err := zstd.NewWriter(cw, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return r, err
	}
	bw := bufio.NewWriterSize(enc, 64<<10)
	w.locN = 0
	put := func(c IndexChunk) error {
		w.locN++
		b, err := json.Marshal(&c)
		if err != nil {
			return err
		}
		bw.Write(b)
		return bw.WriteByte('\n')
	}
	for _, c := range hdr.Global {
		if c.Table < 0 || c.Table >= len(hdr.Tables) {
			return r, fmt.Errorf("global chunk of table %d out of range", c.Table)
		}
		if err := put(IndexChunk{Pack: c.Pack, Offset: c.Offset, Length: c.Length, SHA256: c.SHA256,
			Tag: reuseTag(tagKey, "", true, hdr.Tables[c.Table].Signature, c.Digest, c.Size, "")}); err != nil {
			return r, err
		}
	}
	sc := bufio.NewScanner(w.loc)
	sc.Buffer(make([]byte, 0, 64<<10), maxEntry)
	for sc.Scan() {
		var l locLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return r, err
		}
		if l.Table < 0 || l.Table >= len(hdr.Tables) {
			return r, fmt.Errorf("chunk of table %d out of range", l.Table)
		}
		c := l.IndexChunk
		c.Tag = reuseTag(tagKey, l.Tenant, false, hdr.Tables[l.Table].Signature, l.Digest, l.Size, l.Key)
		if err := put(c); err != nil {
			return r, err
		}
	}
	if err := sc.Err(); err != nil {
		return r, err
	}
	if err := bw.Flush(); err != nil {
		return r, err
	}
	if err := enc.Close(); err != nil {
		return r, err
	}
	r.Length = 1 + cw.n
	r.SHA256 = hex.EncodeToString(h.Sum(nil))
	return r, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Close releases the spool files.
func (w *IndexWriter) Close() error {
	var err error
	if w.f != nil {
		err = w.f.Close()
	}
	if w.loc != nil {
		w.loc.Close()
	}
	if w.cat != nil {
		w.cat.Close()
	}
	return err
}

// Set is one snapshot set opened for reading: its header, and its tenants
// read on demand. For a set in format 1 the header is the whole manifest;
// for format 2 a tenant costs the directory (read once) and one page.
// A Set is safe for concurrent use.
type Set struct {
	v *Vault
	m *manifest.Manifest

	// fill serialises filling the header's table slots from entries (set
	// format 3; see manifest.Manifest.AttachTables).
	fill      sync.Mutex
	mu        sync.Mutex
	dir       []pageRef
	dirLoaded bool
	lastPage  int
	lastItems []manifest.Tenant
	pageHits  map[int]int
}

// OpenSet reads the header of set id (see ReadManifest for the errors).
func (v *Vault) OpenSet(ctx context.Context, id string) (*Set, error) {
	if s, ok := v.sets.Load(id); ok {
		return s.(*Set), nil
	}
	if m, ok := v.mcache.Load(id); ok {
		s, _ := v.sets.LoadOrStore(id, &Set{v: v, m: m.(*manifest.Manifest), lastPage: -1})
		return s.(*Set), nil
	}
	if !ValidSetID(id) {
		return nil, tenantvault.Inputf("%q is not a snapshot set ID (they look like 20261128T110145.123Z-1a2b3c4d)", id)
	}
	if v.cfg.Encrypted() {
		m, err := v.readSealedManifest(ctx, id)
		if err != nil {
			return nil, err
		}
		if m.Index == nil {
			v.mcache.Store(id, m)
		}
		s, _ := v.sets.LoadOrStore(id, &Set{v: v, m: m, lastPage: -1})
		return s.(*Set), nil
	}
	data, err := v.readManifestObject(ctx, id)
	if err != nil {
		return nil, err
	}
	if IsSealedManifest(data) {
		return nil, tenantvault.Integrityf("manifest %s is encrypted, but the repository is not", ManifestKey(id))
	}
	m, err := manifest.Decode(data)
	if err != nil {
		return nil, err
	}
	if m.ID != id {
		return nil, tenantvault.Integrityf("manifest %s claims to be set %s", ManifestKey(id), m.ID)
	}
	if m.Index != nil && !ownIndexKey(id, m.Index.Key) {
		return nil, tenantvault.Integrityf("manifest %s names tenant index %q, not its own", ManifestKey(id), m.Index.Key)
	}
	if m.Index == nil {
		v.mcache.Store(id, m)
	}
	s, _ := v.sets.LoadOrStore(id, &Set{v: v, m: m, lastPage: -1})
	return s.(*Set), nil
}

// OpenSets opens several sets, a few at a time.
func (v *Vault) OpenSets(ctx context.Context, ids []string) ([]*Set, error) {
	return parallelRead(ctx, ids, v.OpenSet)
}

// Header is the set's manifest; in set format 2 without tenants. It is
// shared: callers must not modify it.
func (s *Set) Header() *manifest.Manifest { return s.m }

// ID is the set's ID.
func (s *Set) ID() string { return s.m.ID }

// TenantCount is how many tenants the set holds.
func (s *Set) TenantCount() int {
	if s.m.Index != nil {
		return s.m.Index.Tenants
	}
	return len(s.m.Tenants)
}

// Indexed reports whether the set is in set format 2.
func (s *Set) Indexed() bool { return s.m.Index != nil }

func (s *Set) integrity(format string, args ...any) error {
	return tenantvault.Integrityf("tenant index %s: "+format, append([]any{s.m.Index.Key}, args...)...)
}

func (s *Set) read(ctx context.Context, offset, length int64) ([]byte, error) {
	rc, err := s.v.b.Get(ctx, s.m.Index.Key, offset, length)
	if errors.Is(err, repo.ErrNotFound) {
		return nil, s.integrity("missing (set %s cannot be read)", s.m.ID)
	}
	if err != nil {
		return nil, fmt.Errorf("read tenant index %s: %w", s.m.Index.Key, err)
	}
	defer rc.Close()
	if length > maxPage {
		return nil, s.integrity("a page of %d bytes", length)
	}
	data := make([]byte, length)
	if n, err := io.ReadFull(rc, data); errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return nil, s.integrity("truncated: %d bytes at %d, want %d", n, offset, length)
	} else if err != nil {
		return nil, fmt.Errorf("read tenant index %s: %w", s.m.Index.Key, err)
	}
	return data, nil
}

// directory loads the page directory once; s.mu is held.
func (s *Set) directory(ctx context.Context) ([]pageRef, error) {
	if s.dirLoaded {
		return s.dir, nil
	}
	ix := s.m.Index
	stored, err := s.read(ctx, ix.Directory.Offset, ix.Directory.Length)
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(stored); hex.EncodeToString(sum[:]) != ix.Directory.SHA256 {
		return nil, s.integrity("directory checksum mismatch")
	}
	content, err := s.open(ctx, stored)
	if isKeyError(err) {
		return nil, err
	}
	if err != nil {
		return nil, s.integrity("directory: %v", err)
	}
	dir, err := decodeDirectory(content, ix)
	if err != nil {
		return nil, s.integrity("%v", err)
	}
	s.dir, s.dirLoaded, s.pageHits = dir, true, map[int]int{}
	return dir, nil
}

// page reads and checks page i of dir and decodes its entries: all of
// them when want is "", else only the one of tenant want (or none), which
// spares decoding the chunks of every other tenant on the page. Every
// entry's ID is checked either way.
func (s *Set) page(ctx context.Context, dir []pageRef, i int, want ...string) ([]manifest.Tenant, error) {
	var items []manifest.Tenant
	err := s.pageLines(ctx, dir, i, func(id string, line []byte) error {
		if len(want) > 0 && id != want[0] {
			return nil
		}
		var t manifest.Tenant
		if err := json.Unmarshal(line, &t); err != nil || t.ID != id {
			return fmt.Errorf("page %d: entry %q is damaged", i, id)
		}
		for k := range t.Chunks {
			t.Chunks[k].Key = t.Key
		}
		items = append(items, t)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if s.m.Version >= manifest.Version3 {
		s.fill.Lock()
		for k := range items {
			if err = s.m.AttachTables(&items[k]); err != nil {
				break
			}
		}
		s.fill.Unlock()
		if err != nil {
			return nil, s.integrity("page %d: %v", i, err)
		}
	}
	if err := s.m.ValidateTenants(items); err != nil {
		return nil, s.integrity("page %d: %v", i, err)
	}
	return items, nil
}

// pageLines reads and checks page i of dir and calls fn with each entry
// line and its ID (see checkPageLines); any fault is an integrity failure.
func (s *Set) pageLines(ctx context.Context, dir []pageRef, i int, fn func(id string, line []byte) error) error {
	p := dir[i]
	stored, err := s.read(ctx, p.offset, p.length)
	if err != nil {
		return err
	}
	if sha256.Sum256(stored) != p.sha {
		return s.integrity("page %d checksum mismatch", i)
	}
	content, err := s.open(ctx, stored)
	if isKeyError(err) {
		return err
	}
	if err != nil {
		return s.integrity("page %d: %v", i, err)
	}
	if err := checkPageLines(content, dir, i, fn); err != nil {
		return s.integrity("%v", err)
	}
	return nil
}

// checkPageLines calls fn with every entry of page i of dir (its content)
// and its ID, checking that the IDs are sorted without duplicates and agree
// with the directory: the count, the first ID, and below the next page's.
func checkPageLines(content []byte, dir []pageRef, i int, fn func(id string, line []byte) error) error {
	p := dir[i]
	var first, last string
	n := 0
	for len(content) > 0 {
		line, rest, ok := bytes.Cut(content, []byte{'\n'})
		if !ok {
			return fmt.Errorf("page %d: unterminated entry", i)
		}
		content = rest
		id, err := entryID(line)
		if err != nil {
			return fmt.Errorf("page %d: %v", i, err)
		}
		if n > 0 && id <= last {
			return fmt.Errorf("page %d: tenants not sorted or duplicated at %q", i, id)
		}
		if n == 0 {
			first = id
		}
		last = id
		n++
		if err := fn(id, line); err != nil {
			return err
		}
	}
	switch {
	case n != p.tenants:
		return fmt.Errorf("page %d holds %d tenants, its directory entry says %d", i, n, p.tenants)
	case first != p.first:
		return fmt.Errorf("page %d starts at %q, its directory entry says %q", i, first, p.first)
	case i+1 < len(dir) && last >= dir[i+1].first:
		return fmt.Errorf("page %d overlaps the next", i)
	}
	return nil
}

// isKeyError tells a missing or unusable key (reported as it is) from
// damaged bytes.
func isKeyError(err error) bool {
	return err != nil && (errors.Is(err, ErrNoIdentity) || errors.Is(err, tenantvault.ErrIntegrity) || errors.As(err, new(*tenantvault.InputError)))
}

// entryID reads the ID of an entry line without decoding the rest: the
// writer (encoding/json, manifest.Tenant) puts "id" first.
func entryID(line []byte) (string, error) {
	rest, ok := bytes.CutPrefix(line, []byte(`{"id":"`))
	if !ok {
		return "", errors.New("entry does not start with its ID")
	}
	for j := 0; j < len(rest); j++ {
		switch rest[j] {
		case '\\':
			j++
		case '"':
			var id string
			if err := json.Unmarshal(line[len(`{"id":`):len(`{"id":"`)+j+1], &id); err != nil {
				return "", fmt.Errorf("entry ID: %v", err)
			}
			return id, nil
		}
	}
	return "", errors.New("entry ID is not terminated")
}

// usable refuses an entry this build cannot read: one whose key is not a
// tenant key object of an encrypted repository.
func (s *Set) usable(t *manifest.Tenant) error {
	if t.Key != "" && (!s.v.cfg.Encrypted() || !ValidTenantKeyName(t.Key)) {
		return &tenantvault.InputError{
			Msg:  fmt.Sprintf("tenant %q is sealed with its own data key %q, which this build cannot read", t.ID, t.Key),
			Hint: "upgrade tenantvault to read this repository",
			Err:  manifest.ErrNewerVersion,
		}
	}
	return nil
}

// Tenant returns the entry of tenant id, or nil when the set does not hold
// it (manifest.HoldsTenant). In set format 2 it reads the directory (once
// per Set) and one page.
func (s *Set) Tenant(ctx context.Context, id string) (*manifest.Tenant, error) {
	t, err := s.Entry(ctx, id)
	if t == nil || err != nil || !s.m.HoldsTenant(len(t.Chunks)) {
		return nil, err
	}
	return t, nil
}

// Entry is Tenant, also for an entry the set does not hold: what forget
// must erase all the same.
func (s *Set) Entry(ctx context.Context, id string) (*manifest.Tenant, error) {
	if s.m.Index == nil {
		return s.m.Tenant(id), nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	dir, err := s.directory(ctx)
	if err != nil {
		return nil, err
	}
	i := sort.Search(len(dir), func(i int) bool { return dir[i].first > id }) - 1
	if i < 0 {
		return nil, nil
	}
	items := s.lastItems
	if s.lastPage != i {
		// A lookup of one tenant decodes only its entry; several lookups
		// in one page (a restore of many tenants) decode it once, whole.
		if s.pageHits[i]++; s.pageHits[i] < 2 {
			if items, err = s.page(ctx, dir, i, id); err != nil {
				return nil, err
			}
		} else {
			if items, err = s.page(ctx, dir, i); err != nil {
				return nil, err
			}
			s.lastPage, s.lastItems = i, items
		}
	}
	j := sort.Search(len(items), func(j int) bool { return items[j].ID >= id })
	if j < len(items) && items[j].ID == id {
		t := items[j]
		if err := s.usable(&t); err != nil {
			return nil, err
		}
		return &t, nil
	}
	return nil, nil
}

// HeldTenants is Tenants for the entries the set holds
// (manifest.HoldsTenant), as Tenant finds them: what restores, drills and
// triage walk. Tenants walks every stored entry, for verify and forget.
func (s *Set) HeldTenants(ctx context.Context, fn func(*manifest.Tenant) error) error {
	return s.Tenants(ctx, func(t *manifest.Tenant) error {
		if !s.m.HoldsTenant(len(t.Chunks)) {
			return nil
		}
		return fn(t)
	})
}

// Tenants calls fn for every tenant in ID order, reading one page at a
// time; an error from fn stops it and is returned.
func (s *Set) Tenants(ctx context.Context, fn func(*manifest.Tenant) error) error {
	if s.m.Index == nil {
		for i := range s.m.Tenants {
			if err := fn(&s.m.Tenants[i]); err != nil {
				return err
			}
		}
		return nil
	}
	s.mu.Lock()
	dir, err := s.directory(ctx)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	for i := range dir {
		items, err := s.page(ctx, dir, i)
		if err != nil {
			return err
		}
		for k := range items {
			if err := s.usable(&items[k]); err != nil {
				return err
			}
			if err := fn(&items[k]); err != nil {
				return err
			}
		}
	}
	return nil
}

// release drops what Tenant keeps for the next call (the directory and the
// last page read), so that a caller looking through many sets holds one
// set's worth at a time.
func (s *Set) release() {
	s.mu.Lock()
	s.dir, s.dirLoaded, s.lastPage, s.lastItems, s.pageHits = nil, false, -1, nil, nil
	s.mu.Unlock()
}

// pageCache keeps the last pages read from one set for lookups from
// several goroutines at once (the snapshot's table workers, each walking
// the tenants in order): a bounded number of pages, never the whole index.
type pageCache struct {
	s     *Set
	max   int
	mu    sync.Mutex
	pages map[int][]manifest.Tenant
	order []int
}

func newPageCache(s *Set, max int) *pageCache {
	return &pageCache{s: s, max: max, pages: map[int][]manifest.Tenant{}}
}

// tenant finds tenant id through the cache.
func (c *pageCache) tenant(ctx context.Context, id string) (*manifest.Tenant, error) {
	s := c.s
	if s.m.Index == nil {
		return s.m.Tenant(id), nil
	}
	s.mu.Lock()
	dir, err := s.directory(ctx)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	i := sort.Search(len(dir), func(i int) bool { return dir[i].first > id }) - 1
	if i < 0 {
		return nil, nil
	}
	c.mu.Lock()
	items, ok := c.pages[i]
	c.mu.Unlock()
	if !ok {
		if items, err = s.page(ctx, dir, i); err != nil {
			return nil, err
		}
		c.mu.Lock()
		if _, ok := c.pages[i]; !ok {
			c.pages[i] = items
			c.order = append(c.order, i)
			if len(c.order) > c.max {
				delete(c.pages, c.order[0])
				c.order = c.order[1:]
			}
		}
		c.mu.Unlock()
	}
	j := sort.Search(len(items), func(j int) bool { return items[j].ID >= id })
	if j < len(items) && items[j].ID == id {
		return &items[j], nil
	}
	return nil, nil
}

// locatorReader streams the locator of an encrypted set in set format 2:
// the chunks' places, checksums and tags, in manifest order, checked
// against the signed header's checksum when the end is reached.
type locatorReader struct {
	x    *SetIndex
	body io.ReadCloser
	h    hash.Hash
	dec  *zstd.Decoder
	sc   *bufio.Scanner
	n    int
	rerr error // the storage's read error, if any
	read int64
	tee  io.Reader
}

// openLocator starts reading the chunks of x: from the locator in header
// version 2; Next then serves x.Chunks in version 1.
func (v *Vault) openLocator(ctx context.Context, x *SetIndex) (*locatorReader, error) {
	r := &locatorReader{x: x}
	if x.Index == nil {
		return r, nil
	}
	loc := x.Index.Locator
	rc, err := v.b.Get(ctx, x.Index.Key, loc.Offset, loc.Length)
	if errors.Is(err, repo.ErrNotFound) {
		return nil, tenantvault.Integrityf("tenant index %s: missing (set %s cannot be read)", x.Index.Key, x.ID)
	}
	if err != nil {
		return nil, fmt.Errorf("read tenant index %s: %w", x.Index.Key, err)
	}
	r.body, r.h = rc, sha256.New()
	tee := io.TeeReader(&countReader{r: io.LimitReader(rc, loc.Length), n: &r.read, err: &r.rerr}, r.h)
	r.tee = tee
	var codec [1]byte
	if _, err := io.ReadFull(tee, codec[:]); err != nil || codec[0] != CodecZstd {
		rc.Close()
		return nil, tenantvault.Integrityf("tenant index %s: locator: unknown codec or truncated", x.Index.Key)
	}
	dec, err := zstd.NewReader(tee, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxPage))
	if err != nil {
		rc.Close()
		return nil, err
	}
	r.dec = dec
	r.sc = bufio.NewScanner(dec)
	r.sc.Buffer(make([]byte, 0, 4096), 64<<10)
	return r, nil
}

// Next returns the next chunk; ok is false at the end, once the locator's
// checksum and chunk count were checked. Damage is an integrity error.
func (r *locatorReader) Next() (c IndexChunk, ok bool, err error) {
	if r.sc == nil {
		if r.n < len(r.x.Chunks) {
			r.n++
			return r.x.Chunks[r.n-1], true, nil
		}
		return c, false, nil
	}
	bad := func(format string, args ...any) error {
		return tenantvault.Integrityf("tenant index %s: locator: "+format, append([]any{r.x.Index.Key}, args...)...)
	}
	if r.sc.Scan() {
		if err := json.Unmarshal(r.sc.Bytes(), &c); err != nil {
			return c, false, bad("damaged line %d", r.n+1)
		}
		if c.Pack < 0 || c.Pack >= len(r.x.Packs) || c.Offset < 0 || c.Length <= 0 || len(c.SHA256) != 64 {
			return c, false, bad("bad chunk reference at line %d", r.n+1)
		}
		r.n++
		return c, true, nil
	}
	if err := r.sc.Err(); err != nil {
		if r.rerr != nil && r.rerr != io.EOF {
			return c, false, fmt.Errorf("read tenant index %s: %w", r.x.Index.Key, r.rerr)
		}
		return c, false, bad("%v", err)
	}
	// Drain what follows the frame, so the checksum covers every byte.
	io.Copy(io.Discard, r.tee)
	if r.rerr != nil && r.rerr != io.EOF {
		return c, false, fmt.Errorf("read tenant index %s: %w", r.x.Index.Key, r.rerr)
	}
	if r.read != r.x.Index.Locator.Length || hex.EncodeToString(r.h.Sum(nil)) != r.x.Index.Locator.SHA256 {
		return c, false, bad("checksum mismatch")
	}
	if r.n != r.x.Stats.Chunks {
		return c, false, bad("lists %d chunks, the header says %d", r.n, r.x.Stats.Chunks)
	}
	return c, false, nil
}

// Close releases the locator's reader.
func (r *locatorReader) Close() {
	if r.dec != nil {
		r.dec.Close()
	}
	if r.body != nil {
		r.body.Close()
	}
}

// EachIndexChunk calls fn for every chunk of set x in manifest order (the
// global chunks, then every tenant's), as a reader without keys sees them:
// from the header (version 1) or from the tenant index's locator (version
// 2), streamed. An error from fn stops it and is returned.
func (v *Vault) EachIndexChunk(ctx context.Context, x *SetIndex, fn func(IndexChunk) error) error {
	r, err := v.openLocator(ctx, x)
	if err != nil {
		return err
	}
	defer r.Close()
	for {
		c, ok, err := r.Next()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		if err := fn(c); err != nil {
			return err
		}
	}
}
