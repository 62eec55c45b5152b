package vault

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
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
	// StoredOnly is set when the sets are encrypted and no identity was
	// given: every stored byte was checked against its checksum, but
	// nothing was decrypted, so content digests were not recomputed.
	StoredOnly bool `json:"stored_only,omitempty"`
	// Unpinned lists encrypted sets whose signature verified, but by a
	// signer this side does not trust (no identity or signing key file
	// names it): they are intact, and who wrote them is not proven.
	Unpinned []string `json:"unpinned_signer,omitempty"`
	// Shredded counts chunks whose tenant's data key is destroyed
	// (crypto-shredded by forget, or deleted): their stored bytes were
	// checked against their checksums, their content cannot be decrypted
	// by anyone, so no content digest was recomputed. ShreddedTenants is
	// how many (set, tenant) entries they belong to.
	Shredded        int64 `json:"shredded_chunks,omitempty"`
	ShreddedTenants int   `json:"shredded_tenants,omitempty"`
}

// Verify checks sets (all when ids is empty): each manifest decodes, its
// signature verifies (encrypted sets) and it is consistent, every schema
// archive and pack it references exists and is large enough, and with
// readData every chunk and schema archive reads back to its checksum and,
// when the vault can decrypt, every chunk to its content digest. Problems
// are collected, not returned as errors; an error means the check itself
// could not run.
func (v *Vault) Verify(ctx context.Context, ids []string, readData bool, progress func(done, total int64)) (*VerifyResult, error) {
	if len(ids) == 0 {
		var err error
		if ids, err = v.ListSets(ctx); err != nil {
			return nil, err
		}
	}
	res := &VerifyResult{StoredOnly: !v.CanDecrypt()}
	var mu sync.Mutex
	add := func(p Problem) {
		mu.Lock()
		res.Problems = append(res.Problems, p)
		mu.Unlock()
	}
	unreadable := func(id string, err error) bool {
		if errors.Is(err, tenantvault.ErrIntegrity) || errors.As(err, new(*tenantvault.InputError)) {
			add(Problem{Set: id, Problem: err.Error()})
			return true
		}
		return false
	}
	packSizes := map[string]int64{} // -1: missing
	// Sets are held by their headers only: the chunks of a set in set
	// format 2 are streamed from its tenant index page by page, so memory
	// does not grow with the tenant count.
	type set struct {
		x *SetIndex
		s *Set // nil when the set cannot be decrypted here
	}
	var sets []set
	var total int64
	for _, id := range ids {
		x, err := v.ReadIndex(ctx, id)
		if err != nil {
			if unreadable(id, err) {
				continue
			}
			return nil, err
		}
		var s *Set
		if v.CanDecrypt() {
			if s, err = v.OpenSet(ctx, id); err != nil {
				if unreadable(id, err) {
					continue
				}
				return nil, err
			}
		} else if x.Encrypted() && !x.Authenticated() {
			res.Unpinned = append(res.Unpinned, id)
		}
		sets = append(sets, set{x, s})
		total += int64(x.Stats.Chunks)
		for _, d := range x.Schemas {
			if problem, err := v.verifyObject(ctx, d, readData); err != nil {
				return nil, err
			} else if problem != "" {
				add(Problem{Set: id, Problem: problem})
			} else if readData {
				mu.Lock()
				res.BytesRead += d.Size
				mu.Unlock()
			}
		}
		for _, p := range x.Packs {
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
		x      *SetIndex
		m      *manifest.Manifest
		tenant string
		table  string
		ic     IndexChunk
		c      manifest.Chunk
	}
	shredded := map[string]bool{} // set and tenant; only those shredded
	var done, chunks atomic.Int64
	work := make(chan job)
	var wg sync.WaitGroup
	var fatal error
	var fatalOnce sync.Once
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				key := j.x.Packs[j.ic.Pack]
				problem := func(text string) {
					add(Problem{Set: j.x.ID, Tenant: j.tenant, Table: j.table, Problem: text})
				}
				switch size := packSizes[key]; {
				case size < 0:
					problem("pack " + key + " is missing")
				case size < j.ic.Offset+j.ic.Length:
					problem(fmt.Sprintf("pack %s is %d bytes, too short for the chunk at %d+%d", key, size, j.ic.Offset, j.ic.Length))
				case readData:
					var err error
					if j.m != nil {
						err = v.VerifyChunk(ctx, j.m, j.c, true)
						if errors.Is(err, ErrTenantKeyDestroyed) {
							// Nothing can decrypt it any more: prove
							// what can be proven, and say so.
							if err = v.VerifyStored(ctx, j.x, j.ic); err == nil {
								mu.Lock()
								res.Shredded++
								shredded[j.x.ID+"\x00"+j.tenant] = true
								res.ShreddedTenants = len(shredded)
								mu.Unlock()
							}
						}
					} else {
						err = v.VerifyStored(ctx, j.x, j.ic)
					}
					if err != nil && errors.Is(err, tenantvault.ErrIntegrity) {
						problem(err.Error())
					} else if err != nil && errors.As(err, new(*tenantvault.InputError)) {
						// A chunk of an earlier set encrypted to keys
						// this identity file lacks.
						problem(err.Error())
					} else if err != nil {
						fatalOnce.Do(func() { fatal = err })
					} else {
						mu.Lock()
						res.BytesRead += j.ic.Length
						mu.Unlock()
					}
				}
				if progress != nil {
					progress(done.Add(1), max(total, chunks.Load()))
				}
			}
		}()
	}
	send := func(j job) error {
		select {
		case work <- j:
			chunks.Add(1)
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, st := range sets {
		if ix := st.x.Index; ix != nil {
			// The tenant index of an encrypted set: its size, and with
			// readData every byte against the signed header's checksum.
			if problem, err := v.verifyObject(ctx, ObjectRef{Key: ix.Key, Size: ix.Size, SHA256: ix.SHA256}, readData); err != nil {
				return nil, err
			} else if problem != "" {
				add(Problem{Set: st.x.ID, Problem: strings.Replace(problem, "schema archive", "tenant index", 1)})
				continue
			} else if readData {
				mu.Lock()
				res.BytesRead += ix.Size
				mu.Unlock()
			}
		}
		if st.s == nil {
			err := v.EachIndexChunk(ctx, st.x, func(ic IndexChunk) error { return send(job{x: st.x, ic: ic}) })
			if err != nil && !unreadable(st.x.ID, err) && ctx.Err() == nil {
				fatalOnce.Do(func() { fatal = err })
				break
			}
			continue
		}
		m := st.s.Header()
		i := 0
		// An encrypted set's chunks are checked against what a reader
		// without keys checks too: the header's list (set format 1,
		// compared with the body when it was read) or the locator (set
		// format 2, compared here, chunk by chunk, with the pages).
		loc, err := v.openLocator(ctx, st.x)
		if err != nil {
			if !unreadable(st.x.ID, err) && ctx.Err() == nil {
				fatalOnce.Do(func() { fatal = err })
				break
			}
			continue
		}
		emit := func(tenant string, c manifest.Chunk) error {
			ic := IndexChunk{Pack: c.Pack, Offset: c.Offset, Length: c.Length, SHA256: c.SHA256}
			if st.x.Encrypted() {
				h, ok, err := loc.Next()
				if err != nil {
					return err
				}
				if !ok || h.Pack != ic.Pack || h.Offset != ic.Offset || h.Length != ic.Length || h.SHA256 != ic.SHA256 {
					return tenantvault.Integrityf("chunk %d of the tenant index does not match what the header (or the locator) lists", i)
				}
				ic = h
			}
			i++
			return send(job{x: st.x, m: m, tenant: tenant, table: m.Tables[c.Table].QualifiedName(), ic: ic, c: c})
		}
		for _, c := range m.Global {
			if err = emit("", c); err != nil {
				break
			}
		}
		if err == nil {
			err = st.s.Tenants(ctx, func(t *manifest.Tenant) error {
				for _, c := range t.Chunks {
					if err := emit(t.ID, c); err != nil {
						return err
					}
				}
				return nil
			})
		}
		if err == nil && st.x.Encrypted() {
			// The end: nothing more listed, and the locator's checksum.
			if _, more, lerr := loc.Next(); lerr != nil {
				err = lerr
			} else if more {
				err = tenantvault.Integrityf("the header (or the locator) lists more chunks than the tenant index")
			}
		}
		loc.Close()
		st.s.release()
		if err != nil && !unreadable(st.x.ID, err) && ctx.Err() == nil {
			fatalOnce.Do(func() { fatal = err })
			break
		}
	}
	close(work)
	wg.Wait()
	res.Chunks = chunks.Load()
	if fatal != nil {
		return nil, fatal
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return res, nil
}

// verifyObject checks that a schema archive exists with its recorded size
// and, with readData, its recorded checksum. It returns the problem found.
func (v *Vault) verifyObject(ctx context.Context, d ObjectRef, readData bool) (string, error) {
	if !readData {
		info, err := v.b.Stat(ctx, d.Key)
		switch {
		case errors.Is(err, repo.ErrNotFound):
			return "schema archive " + d.Key + " is missing", nil
		case err != nil:
			return "", err
		case info.Size != d.Size:
			return fmt.Sprintf("schema archive %s is %d bytes, the manifest says %d", d.Key, info.Size, d.Size), nil
		}
		return "", nil
	}
	data, err := repo.ReadAll(ctx, v.b, d.Key)
	switch {
	case errors.Is(err, repo.ErrNotFound):
		return "schema archive " + d.Key + " is missing", nil
	case err != nil:
		return "", err
	}
	sum := sha256.Sum256(data)
	if int64(len(data)) != d.Size || hex.EncodeToString(sum[:]) != d.SHA256 {
		return "schema archive " + d.Key + " is damaged (checksum mismatch)", nil
	}
	return "", nil
}
