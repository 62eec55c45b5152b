package vault

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
)

var decoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
	if err != nil {
		panic(err)
	}
	return d
}}

// OpenChunk streams the uncompressed content of chunk c of set m. It checks
// the stored bytes' checksum, the content digest and the size as it goes; a
// mismatch, a missing pack or a short object surfaces as an error wrapping
// tenantvault.ErrIntegrity from Read, before Read ever returns io.EOF, so a
// consumer such as COPY FROM never commits damaged data.
func (v *Vault) OpenChunk(ctx context.Context, m *manifest.Manifest, c manifest.Chunk) (io.ReadCloser, error) {
	key := m.Packs[c.Pack]
	what := chunkName(m, c)
	rc, err := v.b.Get(ctx, key, c.Offset, c.Length)
	if errors.Is(err, repo.ErrNotFound) {
		return nil, tenantvault.Integrityf("%s: pack %s is missing", what, key)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: read pack %s: %w", what, key, err)
	}
	r := &chunkReader{what: what, c: c, body: rc, stored: sha256.New(), content: sha256.New()}
	r.limited = io.TeeReader(&countReader{r: rc, n: &r.storedN, err: &r.readErr}, r.stored)
	var codec [1]byte
	if _, err := io.ReadFull(r.limited, codec[:]); err != nil {
		rc.Close()
		return nil, r.integrity("cannot read codec byte: %v", err)
	}
	if codec[0] != CodecZstd {
		rc.Close()
		return nil, r.integrity("unknown codec %d", codec[0])
	}
	dec := decoders.Get().(*zstd.Decoder)
	if err := dec.Reset(r.limited); err != nil {
		decoders.Put(dec)
		rc.Close()
		return nil, r.integrity("%v", err)
	}
	r.dec = dec
	return r, nil
}

func chunkName(m *manifest.Manifest, c manifest.Chunk) string {
	return fmt.Sprintf("set %s table %s", m.ID, m.Tables[c.Table].QualifiedName())
}

// countReader counts and remembers the storage's read error.
type countReader struct {
	r   io.Reader
	n   *int64
	err *error
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	if err != nil {
		*c.err = err
	}
	return n, err
}

type chunkReader struct {
	what     string
	c        manifest.Chunk
	body     io.ReadCloser
	limited  io.Reader
	dec      *zstd.Decoder
	stored   hash.Hash
	content  hash.Hash
	storedN  int64
	contentN int64
	readErr  error
	done     error
}

func (r *chunkReader) integrity(format string, args ...any) error {
	return tenantvault.Integrityf("%s: chunk at %d+%d: %s", r.what, r.c.Offset, r.c.Length, fmt.Sprintf(format, args...))
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if r.done != nil {
		return 0, r.done
	}
	n, err := r.dec.Read(p)
	if n > 0 {
		r.content.Write(p[:n])
		r.contentN += int64(n)
		if r.contentN > r.c.Size {
			r.done = r.integrity("more content than the %d bytes recorded", r.c.Size)
			return 0, r.done
		}
	}
	switch {
	case err == io.EOF:
		r.done = r.finish()
		return n, r.done
	case err != nil:
		// The decoder passes on the storage's read errors; only an error
		// the stored bytes themselves caused means damaged data.
		if r.readErr != nil && r.readErr != io.EOF {
			r.done = fmt.Errorf("%s: read pack: %w", r.what, r.readErr)
		} else if r.readErr == io.EOF && r.storedN < r.c.Length {
			r.done = r.integrity("object ended %d bytes short of the chunk", r.c.Length-r.storedN)
		} else {
			r.done = r.integrity("%v", err)
		}
		return n, r.done
	}
	return n, nil
}

// finish runs at the end of the content and decides between io.EOF and an
// integrity error.
func (r *chunkReader) finish() error {
	// Drain anything after the zstd frame so the stored checksum covers
	// every byte of the chunk.
	if _, err := io.Copy(io.Discard, r.limited); err != nil {
		return fmt.Errorf("%s: read pack: %w", r.what, err)
	}
	if r.storedN != r.c.Length {
		return r.integrity("object ended %d bytes short of the chunk", r.c.Length-r.storedN)
	}
	if got := hex.EncodeToString(r.stored.Sum(nil)); got != r.c.SHA256 {
		return r.integrity("stored bytes checksum %s, manifest says %s", short(got), short(r.c.SHA256))
	}
	if r.contentN != r.c.Size {
		return r.integrity("content is %d bytes, manifest says %d", r.contentN, r.c.Size)
	}
	if got := hex.EncodeToString(r.content.Sum(nil)); got != r.c.Digest {
		return r.integrity("content digest %s, manifest says %s", short(got), short(r.c.Digest))
	}
	return io.EOF
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func (r *chunkReader) Close() error {
	if r.dec != nil {
		r.dec.Reset(nil)
		decoders.Put(r.dec)
		r.dec = nil
	}
	return r.body.Close()
}

// VerifyChunk checks one chunk: that its pack holds the recorded bytes and,
// with readData, that they decompress to the recorded content.
func (v *Vault) VerifyChunk(ctx context.Context, m *manifest.Manifest, c manifest.Chunk, readData bool) error {
	if !readData {
		return nil
	}
	rc, err := v.OpenChunk(ctx, m, c)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc)
	return err
}
