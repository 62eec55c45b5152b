package vault

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/repo"
)

// SegmentCheck is what verifying the change log found.
type SegmentCheck struct {
	Streams  int       `json:"streams"`
	Segments int       `json:"segments"`
	Records  int64     `json:"records"`
	Gaps     []string  `json:"gaps,omitempty"` // where a new epoch began: not damage
	Problems []Problem `json:"problems,omitempty"`
}

// VerifySegments checks every change stream: each segment's index reads
// and describes its range, segments of an epoch are contiguous, each data
// object is as long as its index says, and with readData every tenant's
// records read back to their checksum and decode.
func (v *Vault) VerifySegments(ctx context.Context, readData bool) (*SegmentCheck, error) {
	res := &SegmentCheck{}
	streams := map[string]bool{}
	err := v.b.List(ctx, ChangesPrefix, func(o repo.ObjectInfo) error {
		rest := strings.TrimPrefix(o.Key, ChangesPrefix)
		if s, _, ok := strings.Cut(rest, "/"); ok {
			streams[s] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for stream := range streams {
		res.Streams++
		refs, err := v.ListSegments(ctx, stream)
		if err != nil {
			return nil, err
		}
		var prev *SegmentIndex
		for _, ref := range refs {
			res.Segments++
			where := fmt.Sprintf("changes/%s segment %016x-%016x", stream, ref.Start, ref.End)
			idx, err := v.ReadSegmentIndex(ctx, ref)
			if err != nil {
				if errors.Is(err, tenantvault.ErrIntegrity) {
					res.Problems = append(res.Problems, Problem{Set: where, Problem: err.Error()})
					continue
				}
				return nil, err
			}
			if prev != nil && idx.Start != prev.End {
				if idx.Epoch == prev.Epoch {
					res.Problems = append(res.Problems, Problem{Set: where, Problem: fmt.Sprintf("starts at %s but the previous segment of its epoch ends at %s: records are missing", LSNString(idx.Start), LSNString(prev.End))})
				} else {
					res.Gaps = append(res.Gaps, fmt.Sprintf("changes/%s: new epoch %s from %s (the previous ended at %s)", stream, idx.Epoch, LSNString(idx.Start), LSNString(prev.End)))
				}
			}
			prev = idx
			size := idx.Size // what an encrypted segment's header says
			for _, s := range idx.Streams {
				size = max(size, s.Offset+s.Length)
			}
			if size > 0 {
				info, err := v.b.Stat(ctx, idx.Key())
				switch {
				case errors.Is(err, repo.ErrNotFound):
					res.Problems = append(res.Problems, Problem{Set: where, Problem: "data object " + idx.Key() + " is missing"})
					continue
				case err != nil:
					return nil, err
				case info.Size < size:
					res.Problems = append(res.Problems, Problem{Set: where, Problem: fmt.Sprintf("data object is %d bytes, its index needs %d", info.Size, size)})
					continue
				}
			}
			if !readData || !idx.Opened() {
				continue
			}
			for _, s := range idx.Streams {
				cr, _, err := v.OpenSegmentStream(ctx, idx, s)
				if err == nil {
					for {
						if _, err = cr.Next(); err != nil {
							break
						}
						res.Records++
					}
					if err == io.EOF {
						err = nil
					} else if err != nil && !errors.Is(err, tenantvault.ErrIntegrity) {
						err = tenantvault.Integrityf("%v", err)
					}
				}
				if errors.Is(err, ErrTenantKeyDestroyed) {
					// Checked against its checksum before decrypting;
					// its records cannot be read by anyone (not counted).
					continue
				}
				if err != nil {
					if !errors.Is(err, tenantvault.ErrIntegrity) {
						return nil, err
					}
					res.Problems = append(res.Problems, Problem{Set: where, Tenant: s.Tenant, Problem: err.Error()})
				}
			}
		}
	}
	return res, nil
}
