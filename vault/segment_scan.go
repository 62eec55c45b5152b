package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/repo"
)

// ScanSegment decodes the streams of a segment that want accepts (every
// stream when want is nil) and hands each to fn, in index order. It reads
// the segment with one GET when most streams are wanted and with one
// ranged GET per stream otherwise, so triage over every tenant does not
// cost a request per tenant. Every stream's checksum is checked before fn
// sees its records; memory is one stream's records at a time, plus the
// segment object when it is read whole (bounded by the capture's flush
// size).
func (v *Vault) ScanSegment(ctx context.Context, idx *SegmentIndex, want func(SegmentStream) bool, fn func(SegmentStream, *ChangeReader) error) error {
	if !idx.Opened() {
		return errSegmentNeedsIdentity(idx.Key())
	}
	var picked []SegmentStream
	for _, s := range idx.Streams {
		if want == nil || want(s) {
			picked = append(picked, s)
		}
	}
	if len(picked) == 0 {
		return nil
	}
	if len(picked)*2 < len(idx.Streams) {
		for _, s := range picked {
			cr, _, err := v.OpenSegmentStream(ctx, idx, s)
			if errors.Is(err, ErrTenantKeyDestroyed) {
				continue // an erased tenant: its records are beyond use
			}
			if err != nil {
				return err
			}
			if err := fn(s, cr); err != nil {
				return err
			}
		}
		return nil
	}
	rc, err := v.b.Get(ctx, idx.Key(), 0, idx.Size)
	if errors.Is(err, repo.ErrNotFound) {
		return tenantvault.Integrityf("change segment %s is missing", idx.Key())
	}
	if err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(rc, idx.Size+1))
	rc.Close()
	if err != nil {
		return fmt.Errorf("read change segment %s: %w", idx.Key(), err)
	}
	if int64(len(data)) != idx.Size {
		return tenantvault.Integrityf("change segment %s is %d bytes, its index says %d", idx.Key(), len(data), idx.Size)
	}
	for _, s := range picked {
		if s.Offset < 0 || s.Length < 0 || s.Offset+s.Length > int64(len(data)) {
			return tenantvault.Integrityf("change segment %s: the records of %q lie outside the object", idx.Key(), s.Tenant)
		}
		raw, err := v.decodeStream(ctx, idx, s, data[s.Offset:s.Offset+s.Length])
		if errors.Is(err, ErrTenantKeyDestroyed) {
			continue // an erased tenant: its records are beyond use
		}
		if err != nil {
			return err
		}
		if err := fn(s, NewChangeReader(bytes.NewReader(raw))); err != nil {
			return err
		}
	}
	return nil
}

// decodeStream checks, opens and inflates one stream's stored bytes.
func (v *Vault) decodeStream(ctx context.Context, idx *SegmentIndex, s SegmentStream, data []byte) ([]byte, error) {
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != s.SHA256 {
		return nil, tenantvault.Integrityf("change segment %s is damaged (checksum mismatch in the records of %q)", idx.Key(), s.Tenant)
	}
	var err error
	if idx.sealed {
		dk, err := v.streamKey(ctx, idx, s)
		if err != nil {
			return nil, err
		}
		if data, err = openBytes(dk, data, maxSegmentStream); err != nil {
			return nil, tenantvault.Integrityf("change segment %s: records of %q: %v", idx.Key(), s.Tenant, err)
		}
	}
	if len(data) == 0 || data[0] != CodecZstd {
		return nil, tenantvault.Integrityf("change segment %s: unknown codec", idx.Key())
	}
	dec := decoders.Get().(*zstd.Decoder)
	raw, err := dec.DecodeAll(data[1:], nil)
	decoders.Put(dec)
	if err != nil {
		return nil, tenantvault.Integrityf("change segment %s is damaged: %v", idx.Key(), err)
	}
	return raw, nil
}

// ListStreams returns the names of the change streams in the repository
// (one per source database that was captured), sorted.
func (v *Vault) ListStreams(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	err := v.b.List(ctx, ChangesPrefix, func(o repo.ObjectInfo) error {
		rest := o.Key[len(ChangesPrefix):]
		for i := 0; i < len(rest); i++ {
			if rest[i] == '/' {
				if name := rest[:i]; !seen[name] {
					seen[name] = true
					out = append(out, name)
				}
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list change streams in %s: %w", v.b.Location(), err)
	}
	sort.Strings(out)
	return out, nil
}
