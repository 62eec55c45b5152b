package vault

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault/manifest"
)

// Codec IDs start every stored chunk. IDs are never reused once retired, so
// old repositories stay readable.
const (
	CodecZstd byte = 1
	// CodecColumnar is CodecZstd over the columnar layout of the content
	// (columnar.go): set format 6 and later.
	CodecColumnar byte = 3
)

// WriterOptions tune how a set's chunks are packed.
type WriterOptions struct {
	// TempDir holds packs while they fill; "" means os.TempDir().
	TempDir string
	// PackSize is the size at which a pack is closed and uploaded.
	PackSize int64
	// Level is the zstd level (1 fastest .. 4 best, klauspost's scale).
	Level int
	// Uploads is how many packs upload at once.
	Uploads int
}

// DefaultPackSize keeps packs large enough for cheap storage requests and
// small enough to retry an upload from its temp file.
const DefaultPackSize = 64 << 20

// deferLimit is how much of a chunk is held uncompressed before compression
// starts: an unchanged chunk below it costs no compression at all.
const deferLimit = 1 << 20

// SetWriter packs the chunks of one snapshot set into pack objects under
// packs/<set>/ and uploads them in the background.
type SetWriter struct {
	v     *Vault
	setID string
	opts  WriterOptions
	level zstd.EncoderLevel
	seq   atomic.Int64

	ctx    context.Context
	cancel context.CancelFunc
	queue  chan sealedPack
	wg     sync.WaitGroup

	mu       sync.Mutex
	err      error
	uploaded []string
	temps    map[string]bool
	written  atomic.Int64

	// key seals every chunk and schema archive of an encrypted set; nil
	// in a plaintext repository.
	key *setKey
}

type sealedPack struct {
	key  string
	path string
	size int64
}

// NewSetWriter starts a writer for set setID.
func (v *Vault) NewSetWriter(ctx context.Context, setID string, opts WriterOptions) (*SetWriter, error) {
	if opts.PackSize <= 0 {
		opts.PackSize = DefaultPackSize
	}
	if opts.Level == 0 {
		opts.Level = 1
	}
	if opts.Level < 1 || opts.Level > 4 {
		return nil, fmt.Errorf("compression level %d out of range 1..4", opts.Level)
	}
	if opts.Uploads <= 0 {
		opts.Uploads = 2
	}
	if opts.TempDir == "" {
		opts.TempDir = os.TempDir()
	}
	var key *setKey
	if v.cfg.Encrypted() {
		var err error
		if key, err = v.newSetKey(setID); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &SetWriter{
		v: v, setID: setID, opts: opts, level: zstd.EncoderLevel(opts.Level),
		ctx: ctx, cancel: cancel,
		queue: make(chan sealedPack, opts.Uploads),
		temps: map[string]bool{},
		key:   key,
	}
	for range opts.Uploads {
		s.wg.Add(1)
		go s.uploader()
	}
	return s, nil
}

func (s *SetWriter) uploader() {
	defer s.wg.Done()
	for p := range s.queue {
		if err := s.upload(p); err != nil {
			s.fail(err)
		}
		os.Remove(p.path)
		s.mu.Lock()
		delete(s.temps, p.path)
		s.mu.Unlock()
	}
}

func (s *SetWriter) upload(p sealedPack) error {
	if s.failed() != nil {
		return nil
	}
	f, err := os.Open(p.path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := s.v.b.Put(s.ctx, p.key, f, p.size); err != nil {
		return fmt.Errorf("upload pack %s: %w", p.key, err)
	}
	s.mu.Lock()
	s.uploaded = append(s.uploaded, p.key)
	s.mu.Unlock()
	s.written.Add(p.size)
	return nil
}

func (s *SetWriter) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
		s.cancel()
	}
	s.mu.Unlock()
}

func (s *SetWriter) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Written is the number of pack bytes uploaded so far.
func (s *SetWriter) Written() int64 { return s.written.Load() }

// Close waits for every sealed pack to upload and returns the first error.
// Packers must have been closed before.
func (s *SetWriter) Close() error {
	close(s.queue)
	s.wg.Wait()
	s.cancel()
	return s.failed()
}

// Abort stops uploading, removes temp files and deletes the packs already
// uploaded (best effort: prune collects anything left), unless the set's
// manifest upload was attempted: it may exist, and then it needs them.
func (s *SetWriter) Abort() {
	s.fail(errors.New("aborted"))
	func() {
		defer func() { recover() }() // queue may already be closed
		close(s.queue)
	}()
	s.wg.Wait()
	s.mu.Lock()
	temps, uploaded := s.temps, s.uploaded
	s.mu.Unlock()
	for p := range temps {
		os.Remove(p)
	}
	s.v.forgetSetKey(s.setID)
	if s.v.ManifestAttempted(s.setID) {
		s.v.log.Warn("keeping the packs of a set whose manifest upload failed: it may exist; prune collects them if not", "set", s.setID, "packs", len(uploaded))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30e9)
	defer cancel()
	for _, k := range uploaded {
		_ = s.v.b.Delete(ctx, k)
	}
}

// PutSchema stores a schema archive of this set. In a plaintext repository
// it is named by its SHA-256 and shared by every set with that schema (see
// Vault.PutSchema). In an encrypted one it is sealed with the set's data
// key and named by the SHA-256 of the sealed bytes, so it is the set's own:
// sharing it would need a key every sharing set's readers hold.
func (s *SetWriter) PutSchema(ctx context.Context, database string, data []byte) (manifest.SchemaDump, error) {
	if s.key == nil {
		return s.v.PutSchema(ctx, database, data)
	}
	sealed, err := sealBytes(s.key.dk, data)
	if err != nil {
		return manifest.SchemaDump{}, err
	}
	d := s.v.schemaDump(database, sealed)
	if err := s.v.b.Put(ctx, d.Key, bytes.NewReader(sealed), d.Size); err != nil {
		return d, fmt.Errorf("store schema: %w", err)
	}
	s.v.schemas.Store(d.Key, s.setID)
	return d, nil
}

// PutSchemaSplit stores the split schema SQL of this set (see
// Vault.PutSchemaSplit). In an encrypted set each stored part is sealed: a
// tenant's with the tenant's own key, which its entry names (TenantKey),
// so that destroying the key (forget) destroys the part too; the prelude
// and the shared part with the set's data key. The object is then the
// set's own, named by the SHA-256 of its sealed bytes.
func (s *SetWriter) PutSchemaSplit(ctx context.Context, dir string, prelude, shared []byte, tenants []string, part func(i int) ([]byte, error)) (*manifest.SchemaSplit, map[string]manifest.Range, error) {
	if s.key == nil {
		return s.v.PutSchemaSplit(ctx, dir, prelude, shared, tenants, part)
	}
	if s.key.tenants == nil {
		return nil, nil, errors.New("store split schema: set format 1 has no tenant keys")
	}
	sp, ranges, err := s.v.putSchemaSplit(ctx, dir, prelude, shared, tenants, part, func(i int, stored []byte) ([]byte, error) {
		dk := s.key.dk
		if i >= 0 {
			k, err := s.key.tenants.get(ctx, tenants[i])
			if err != nil {
				return nil, err
			}
			dk = k.dk
		}
		return sealBytes(dk, stored)
	})
	if err == nil {
		s.v.schemas.Store(sp.Key, s.setID)
	}
	return sp, ranges, err
}

// TenantKey names the key object that seals tenant's data in this set
// ("" in a plaintext set or one without tenant keys).
func (s *SetWriter) TenantKey(ctx context.Context, tenant string) (string, error) {
	if s.key == nil || s.key.tenants == nil {
		return "", nil
	}
	k, err := s.key.tenants.get(ctx, tenant)
	if err != nil {
		return "", err
	}
	return k.name, nil
}

// PutSchemaFile stores the schema archive in f (read from its start) as
// PutSchema does, streamed, so the snapshot never holds it (46 MiB at
// 10,000 tenant schemas): a plaintext archive from the file, an encrypted
// one sealed into a temporary file first.
func (s *SetWriter) PutSchemaFile(ctx context.Context, database string, f *os.File) (manifest.SchemaDump, error) {
	if s.key == nil {
		return s.v.storeSchemaFile(ctx, database, f)
	}
	tmp, err := os.CreateTemp(s.opts.TempDir, "tenantvault-sealed-schema-*")
	if err != nil {
		return manifest.SchemaDump{}, fmt.Errorf("store schema: %w", err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	w, err := newSealWriter(bw, s.key.dk, nil)
	if err == nil {
		_, err = io.Copy(w, io.NewSectionReader(f, 0, 1<<62))
	}
	if err == nil {
		err = w.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return manifest.SchemaDump{}, fmt.Errorf("store schema: %w", err)
	}
	d, err := s.v.storeSchemaFile(ctx, database, tmp)
	if err == nil {
		s.v.schemas.Store(d.Key, s.setID)
	}
	return d, err
}

// Packer appends chunks to packs. Each worker goroutine uses its own.
type Packer struct {
	s       *SetWriter
	f       *os.File
	bw      *bufio.Writer
	key     string
	size    int64
	stream  *zstd.Encoder
	oneshot *zstd.Encoder
	content hash.Hash
	stored  hash.Hash
	pending []byte
	scratch []byte
	sealer  *sealWriter // of the current chunk, in an encrypted set

	// columnar lays chunks out by column (CodecColumnar): in sets of set
	// format 6, which every indexed set of this build is.
	columnar bool
	layout   columnarEncoder
	blocks   []byte
}

// NewPacker returns a packer for one worker.
func (s *SetWriter) NewPacker() (*Packer, error) {
	stream, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(s.level), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, err
	}
	oneshot, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(s.level), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	return &Packer{s: s, stream: stream, oneshot: oneshot, content: sha256.New(), stored: sha256.New(), columnar: s.v.WritesIndexed()}, nil
}

// ChunkRef locates a stored chunk and proves its content.
type ChunkRef struct {
	Pack   string // pack object key
	Offset int64
	Length int64
	SHA256 string // of the stored bytes
	Size   int64  // uncompressed
	Digest string // SHA-256 of the uncompressed content
	Reused bool
	// Key is the tenant key object the chunk is sealed with ("" for the
	// set's data key): what the tenant's index entry names.
	Key string

	// find, in a reference that ReuseIndex.Lookup returns for an
	// encrypted set, looks for an earlier chunk by its content: such sets
	// do not reveal digests, only tags the writer can compute.
	find func(digest string, size int64, keyName string) (ChunkRef, bool)
}

// reusable returns the earlier chunk that holds exactly the content with
// this digest and size, sealed with the same key, if r is one.
func (r *ChunkRef) reusable(digest string, size int64, keyName string) (ChunkRef, bool) {
	if r.find != nil {
		return r.find(digest, size, keyName)
	}
	return *r, r.Digest == digest && r.Size == size && r.Key == keyName
}

// ChunkWriter receives one chunk's uncompressed content.
type ChunkWriter struct {
	p       *Packer
	start   int64 // offset in the pack where this chunk began
	size    int64
	started bool // compression into the pack has begun
	w       io.Writer
	err     error
	dk      []byte // seals the chunk in an encrypted set
	keyName string // the tenant key object dk comes from; "" for the set's key
}

// StartChunk begins a chunk of global rows (or of rows that belong to no
// tenant). Only one chunk per packer is open at a time.
func (p *Packer) StartChunk() *ChunkWriter {
	p.content.Reset()
	p.pending = p.pending[:0]
	c := &ChunkWriter{p: p}
	if p.s.key != nil {
		c.dk = p.s.key.dk
	}
	return c
}

// StartTenantChunk begins a chunk of tenant's rows: in an encrypted set of
// set format 2 sealed with the tenant's own key (see tenantkey.go), which
// it finds or makes first.
func (p *Packer) StartTenantChunk(ctx context.Context, tenant string) (*ChunkWriter, error) {
	c := p.StartChunk()
	if p.s.key != nil && p.s.key.tenants != nil {
		k, err := p.s.key.tenants.get(ctx, tenant)
		if err != nil {
			return nil, err
		}
		c.dk, c.keyName = k.dk, k.name
	}
	return c, nil
}

func (p *Packer) open() error {
	if p.f != nil {
		return nil
	}
	if err := p.s.failed(); err != nil {
		return err
	}
	n := p.s.seq.Add(1)
	f, err := os.CreateTemp(p.s.opts.TempDir, "tenantvault-pack-*")
	if err != nil {
		return fmt.Errorf("create pack temp file: %w", err)
	}
	p.s.mu.Lock()
	p.s.temps[f.Name()] = true
	p.s.mu.Unlock()
	p.f, p.key, p.size = f, fmt.Sprintf("%s%s/%06d.pack", PacksPrefix, p.s.setID, n), 0
	if p.bw == nil {
		p.bw = bufio.NewWriterSize(f, 1<<20)
	} else {
		p.bw.Reset(f)
	}
	return nil
}

// packOut counts and hashes what goes into the pack.
type packOut struct{ p *Packer }

func (o packOut) Write(b []byte) (int, error) {
	o.p.stored.Write(b)
	n, err := o.p.bw.Write(b)
	o.p.size += int64(n)
	return n, err
}

// Write adds uncompressed content.
func (c *ChunkWriter) Write(b []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	p := c.p
	p.content.Write(b)
	c.size += int64(len(b))
	if p.columnar {
		p.pending = append(p.pending, b...)
		if len(p.pending) <= deferLimit {
			return len(b), nil
		}
		if !c.started {
			if c.err = c.begin(); c.err != nil {
				return 0, c.err
			}
		}
		// Whole blocks go to the compressor; the rest waits for rows.
		off := 0
		for len(p.pending)-off > maxBlock {
			n := blockEnd(p.pending[off:])
			p.blocks = p.layout.encode(p.blocks[:0], p.pending[off:off+n])
			if _, c.err = p.stream.Write(p.blocks); c.err != nil {
				return 0, c.err
			}
			off += n
		}
		p.pending = p.pending[:copy(p.pending, p.pending[off:])]
		return len(b), nil
	}
	if !c.started {
		if len(p.pending)+len(b) <= deferLimit {
			p.pending = append(p.pending, b...)
			return len(b), nil
		}
		if c.err = c.begin(); c.err != nil {
			return 0, c.err
		}
		if _, c.err = p.stream.Write(p.pending); c.err != nil {
			return 0, c.err
		}
		p.pending = p.pending[:0]
	}
	if _, c.err = p.stream.Write(b); c.err != nil {
		return 0, c.err
	}
	return len(b), nil
}

func (c *ChunkWriter) begin() error {
	p := c.p
	if err := p.open(); err != nil {
		return err
	}
	c.start = p.size
	c.started = true
	p.stored.Reset()
	var out io.Writer = packOut{p}
	if p.s.key != nil {
		seal, err := newSealWriter(out, c.dk, p.sealer)
		if err != nil {
			return err
		}
		p.sealer, out = seal, seal
	}
	codec := CodecZstd
	if p.columnar {
		codec = CodecColumnar
	}
	if _, err := out.Write([]byte{codec}); err != nil {
		return err
	}
	p.stream.Reset(out)
	return nil
}

// chunkOut is where a started chunk's compressed bytes go.
func (p *Packer) chunkOut() io.Writer {
	if p.s.key != nil {
		return p.sealer
	}
	return packOut{p}
}

// Finish ends the chunk. When prev is non-nil and holds the same content
// (equal digest and size), nothing is stored and prev is returned marked
// Reused; otherwise the chunk is compressed into the current pack.
func (c *ChunkWriter) Finish(prev *ChunkRef) (ChunkRef, error) {
	if c.err != nil {
		return ChunkRef{}, c.err
	}
	p := c.p
	digest := hex.EncodeToString(p.content.Sum(nil))
	var r ChunkRef
	reuse := false
	if prev != nil {
		r, reuse = prev.reusable(digest, c.size, c.keyName)
	}
	if reuse {
		if c.started {
			// Drop what was already compressed into the pack.
			if err := p.stream.Close(); err != nil {
				return ChunkRef{}, err
			}
			if err := p.bw.Flush(); err != nil {
				return ChunkRef{}, err
			}
			if err := p.f.Truncate(c.start); err != nil {
				return ChunkRef{}, err
			}
			if _, err := p.f.Seek(c.start, io.SeekStart); err != nil {
				return ChunkRef{}, err
			}
			p.size = c.start
		}
		r.Reused, r.find = true, nil
		r.Digest, r.Size, r.Key = digest, c.size, c.keyName
		return r, nil
	}
	// What is still pending: the whole chunk, or (columnar) the rows
	// after its last whole block.
	rest := p.pending
	if p.columnar {
		p.blocks = p.layout.encodeAll(p.blocks[:0], p.pending)
		rest = p.blocks
	}
	if !c.started {
		if err := c.begin(); err != nil {
			return ChunkRef{}, err
		}
		p.scratch = p.oneshot.EncodeAll(rest, p.scratch[:0])
		if _, err := p.chunkOut().Write(p.scratch); err != nil {
			return ChunkRef{}, err
		}
	} else {
		if _, err := p.stream.Write(rest); err != nil {
			return ChunkRef{}, err
		}
		if err := p.stream.Close(); err != nil {
			return ChunkRef{}, err
		}
	}
	if p.s.key != nil {
		if err := p.sealer.Close(); err != nil {
			return ChunkRef{}, err
		}
	}
	ref := ChunkRef{
		Pack: p.key, Offset: c.start, Length: p.size - c.start,
		SHA256: hex.EncodeToString(p.stored.Sum(nil)),
		Size:   c.size, Digest: digest, Key: c.keyName,
	}
	if p.size >= p.s.opts.PackSize {
		if err := p.seal(); err != nil {
			return ChunkRef{}, err
		}
	}
	return ref, nil
}

func (p *Packer) seal() error {
	if p.f == nil {
		return nil
	}
	f := p.f
	p.f = nil
	if err := p.bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write pack: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write pack: %w", err)
	}
	if p.size == 0 {
		os.Remove(f.Name())
		return nil
	}
	select {
	case p.s.queue <- sealedPack{key: p.key, path: f.Name(), size: p.size}:
		return nil
	case <-p.s.ctx.Done():
		if err := p.s.failed(); err != nil {
			return err
		}
		return p.s.ctx.Err()
	}
}

// Close seals the last pack. The packer must not be used afterwards.
func (p *Packer) Close() error {
	err := p.seal()
	p.stream.Close()
	p.oneshot.Close()
	return err
}

// EmptyDigest is the content digest of a chunk with no rows.
var EmptyDigest = hex.EncodeToString(sha256.New().Sum(nil))
