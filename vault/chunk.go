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
		if r.readErr != nil && r.readErr != io.EOF {
			return nil, fmt.Errorf("%s: read pack %s: %w", what, key, r.readErr)
		}
		return nil, r.integrity("cannot read codec byte: %v", err)
	}
	payload := r.limited
	columnar := false
	switch {
	case (codec[0] == CodecZstd || codec[0] == CodecColumnar) && !v.cfg.Encrypted():
		columnar = codec[0] == CodecColumnar
	case codec[0] == CodecSealed && v.cfg.Encrypted():
		// A plaintext chunk in an encrypted repository (or the reverse)
		// is refused above: the manifest's checksum would not match it
		// anyway, and no reader ever downgrades.
		var dk []byte
		var err error
		if c.Key != "" {
			dk, err = v.tenantDataKey(ctx, what, c.Key)
		} else {
			dk, err = v.objectKey(ctx, m.ID, key)
		}
		if err != nil {
			rc.Close()
			return nil, err
		}
		if r.opener, err = newOpenReader(r.limited, dk); err != nil {
			rc.Close()
			return nil, r.readFailure(err)
		}
		if _, err := io.ReadFull(r.opener, codec[:]); err != nil {
			r.opener.release()
			rc.Close()
			return nil, r.readFailure(err)
		}
		if codec[0] != CodecZstd && codec[0] != CodecColumnar {
			r.opener.release()
			rc.Close()
			return nil, r.integrity("unknown codec %d inside the sealed chunk", codec[0])
		}
		columnar = codec[0] == CodecColumnar
		payload = r.opener
	case codec[0] == CodecZstd || codec[0] == CodecSealed || codec[0] == CodecColumnar:
		rc.Close()
		return nil, r.integrity("codec %d does not belong in a repository that is %s", codec[0], map[bool]string{true: "encrypted", false: "not encrypted"}[v.cfg.Encrypted()])
	default:
		rc.Close()
		return nil, r.integrity("unknown codec %d", codec[0])
	}
	if columnar && m.Version < manifest.Version6 {
		// Only sets of format 6 may hold it: older readers refuse those
		// sets instead of reporting their chunks as damaged.
		if r.opener != nil {
			r.opener.release()
		}
		rc.Close()
		return nil, r.integrity("codec %d in a set of format %d", CodecColumnar, m.Version)
	}
	dec := decoders.Get().(*zstd.Decoder)
	if err := dec.Reset(payload); err != nil {
		decoders.Put(dec)
		if r.opener != nil {
			r.opener.release()
		}
		rc.Close()
		return nil, r.integrity("%v", err)
	}
	r.dec, r.src = dec, dec
	if columnar {
		r.layout = newColumnarReader(dec)
		r.src = r.layout
	}
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
	opener   *openReader // decrypts a sealed chunk; nil for a plaintext one
	dec      *zstd.Decoder
	layout   *columnarReader // of a columnar chunk
	src      io.Reader       // the content: dec, or layout over it
	stored   hash.Hash
	content  hash.Hash
	storedN  int64
	contentN int64
	readErr  error
	done     error
}

// readFailure classifies an error met while reading the stored bytes: the
// storage's own read error is operational, anything else (a short object,
// failed authentication) means damaged data.
func (r *chunkReader) readFailure(err error) error {
	if r.readErr != nil && r.readErr != io.EOF {
		return fmt.Errorf("%s: read pack: %w", r.what, r.readErr)
	}
	if r.readErr == io.EOF && r.storedN < r.c.Length {
		return r.integrity("object ended %d bytes short of the chunk", r.c.Length-r.storedN)
	}
	return r.integrity("%v", err)
}

func (r *chunkReader) integrity(format string, args ...any) error {
	return tenantvault.Integrityf("%s: chunk at %d+%d: %s", r.what, r.c.Offset, r.c.Length, fmt.Sprintf(format, args...))
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if r.done != nil {
		return 0, r.done
	}
	n, err := r.src.Read(p)
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
		r.done = r.readFailure(err)
		return n, r.done
	}
	return n, nil
}

// finish runs at the end of the content and decides between io.EOF and an
// integrity error.
func (r *chunkReader) finish() error {
	// Drain anything after the zstd frame so the stored checksum covers
	// every byte of the chunk (and, sealed, so the last segment is
	// authenticated as the last).
	if r.opener != nil {
		if _, err := io.Copy(io.Discard, r.opener); err != nil {
			return r.readFailure(err)
		}
	}
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
	if r.layout != nil {
		r.layout.release()
		r.layout = nil
	}
	if r.dec != nil {
		r.dec.Reset(nil)
		decoders.Put(r.dec)
		r.dec = nil
	}
	if r.opener != nil {
		r.opener.release()
	}
	return r.body.Close()
}

// VerifyStored reads the stored bytes of chunk c of set x and checks
// their checksum, without decrypting or decompressing them: what verify
// does without an identity. A mismatch or a short object is an integrity
// error.
func (v *Vault) VerifyStored(ctx context.Context, x *SetIndex, c IndexChunk) error {
	key := x.Packs[c.Pack]
	rc, err := v.b.Get(ctx, key, c.Offset, c.Length)
	if errors.Is(err, repo.ErrNotFound) {
		return tenantvault.Integrityf("set %s: pack %s is missing", x.ID, key)
	}
	if err != nil {
		return fmt.Errorf("set %s: read pack %s: %w", x.ID, key, err)
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(rc, c.Length+1))
	if err != nil {
		return fmt.Errorf("set %s: read pack %s: %w", x.ID, key, err)
	}
	if n != c.Length {
		return tenantvault.Integrityf("set %s: chunk at %s:%d+%d: object ended %d bytes short of the chunk", x.ID, key, c.Offset, c.Length, c.Length-n)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != c.SHA256 {
		return tenantvault.Integrityf("set %s: chunk at %s:%d+%d: stored bytes checksum %s, manifest says %s", x.ID, key, c.Offset, c.Length, short(got), short(c.SHA256))
	}
	return nil
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
