package vault

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
)

// Problem is one thing verify found wrong.
type Problem struct {
	Set     string `json:"set"`
	Tenant  string `json:"tenant,omitempty"`
	Table   string `json:"table,omitempty"`
	Problem string `json:"problem"`
}

func (p Problem) String() string {
	s := "set " + p.Set
	if p.Tenant != "" {
		s += fmt.Sprintf(" tenant %q", p.Tenant)
	}
	if p.Table != "" {
		s += " table " + p.Table
	}
	return s + ": " + p.Problem
}

// VerifyResult is what Verify checked and found.
type VerifyResult struct {
	Sets      int       `json:"sets"`
	Chunks    int64     `json:"chunks"`
	Packs     int       `json:"packs"`
	BytesRead int64     `json:"bytes_read"`
	Problems  []Problem `json:"problems"`
}

// Verify checks sets (all when ids is empty): each manifest decodes and is
// consistent, every schema archive and pack it references exists and is
// large enough, and with readData every chunk reads back to its checksum and
// content digest. Problems are collected, not returned as errors; an error
// means the check itself could not run.
func (v *Vault) Verify(ctx context.Context, ids []string, readData bool, progress func(done, total int64)) (*VerifyResult, error) {
	if len(ids) == 0 {
		var err error
		if ids, err = v.ListSets(ctx); err != nil {
			return nil, err
		}
	}
	res := &VerifyResult{}
	var mu sync.Mutex
	add := func(p Problem) {
		mu.Lock()
		res.Problems = append(res.Problems, p)
		mu.Unlock()
	}
	packSizes := map[string]int64{} // -1: missing
	var sets []*manifest.Manifest
	for _, id := range ids {
		m, err := v.ReadManifest(ctx, id)
		if err != nil {
			if errors.Is(err, tenantvault.ErrIntegrity) || errors.As(err, new(*tenantvault.InputError)) {
				add(Problem{Set: id, Problem: err.Error()})
				continue
			}
			return nil, err
		}
		sets = append(sets, m)
		for _, d := range m.Schemas {
			info, err := v.b.Stat(ctx, d.Key)
			switch {
			case errors.Is(err, repo.ErrNotFound):
				add(Problem{Set: id, Problem: "schema archive " + d.Key + " is missing"})
			case err != nil:
				return nil, err
			case info.Size != d.Size:
				add(Problem{Set: id, Problem: fmt.Sprintf("schema archive %s is %d bytes, the manifest says %d", d.Key, info.Size, d.Size)})
			}
		}
		for _, p := range m.Packs {
			if _, seen := packSizes[p]; seen {
				continue
			}
			info, err := v.b.Stat(ctx, p)
			switch {
			case errors.Is(err, repo.ErrNotFound):
				packSizes[p] = -1
			case err != nil:
				return nil, err
			default:
				packSizes[p] = info.Size
			}
		}
	}
	res.Sets = len(ids)
	res.Packs = len(packSizes)

	type job struct {
		m      *manifest.Manifest
		tenant string
		c      manifest.Chunk
	}
	var jobs []job
	for _, m := range sets {
		for _, c := range m.Global {
			jobs = append(jobs, job{m, "", c})
		}
		for _, t := range m.Tenants {
			for _, c := range t.Chunks {
				jobs = append(jobs, job{m, t.ID, c})
			}
		}
	}
	res.Chunks = int64(len(jobs))
	var done atomic.Int64
	work := make(chan job)
	var wg sync.WaitGroup
	var fatal error
	var fatalOnce sync.Once
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				table := j.m.Tables[j.c.Table].QualifiedName()
				key := j.m.Packs[j.c.Pack]
				switch size := packSizes[key]; {
				case size < 0:
					add(Problem{Set: j.m.ID, Tenant: j.tenant, Table: table, Problem: "pack " + key + " is missing"})
				case size < j.c.Offset+j.c.Length:
					add(Problem{Set: j.m.ID, Tenant: j.tenant, Table: table, Problem: fmt.Sprintf("pack %s is %d bytes, too short for the chunk at %d+%d", key, size, j.c.Offset, j.c.Length)})
				case readData:
					err := v.VerifyChunk(ctx, j.m, j.c, true)
					if err != nil && errors.Is(err, tenantvault.ErrIntegrity) {
						add(Problem{Set: j.m.ID, Tenant: j.tenant, Table: table, Problem: err.Error()})
					} else if err != nil {
						fatalOnce.Do(func() { fatal = err })
					} else {
						mu.Lock()
						res.BytesRead += j.c.Length
						mu.Unlock()
					}
				}
				if progress != nil {
					progress(done.Add(1), int64(len(jobs)))
				}
			}
		}()
	}
	for _, j := range jobs {
		if ctx.Err() != nil {
			break
		}
		work <- j
	}
	close(work)
	wg.Wait()
	if fatal != nil {
		return nil, fatal
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return res, nil
}
