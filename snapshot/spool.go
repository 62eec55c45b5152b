package snapshot

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/tenantvault/tenantvault/vault"
)

// spillAt is how many tenant chunks of one table stay in memory; beyond
// it they go to a temporary file, so that a snapshot of many tenants holds
// a few of them per table rather than every chunk reference of the set.
// Tables of one tenant each (schema and database models) never spill, so
// thousands of them do not mean thousands of open files.
var spillAt = 4096

// add records one chunk of the table.
func (res *tableResult) add(tc tenantChunk, tempDir string) error {
	if tc.global {
		res.chunks = append(res.chunks, tc)
		return nil
	}
	if res.spool == nil && res.scoped < spillAt {
		res.chunks = append(res.chunks, tc)
		res.scoped++
		return nil
	}
	if res.spool == nil {
		sp, err := newChunkSpool(tempDir)
		if err != nil {
			return err
		}
		kept := res.chunks[:0]
		for _, c := range res.chunks {
			if c.global {
				kept = append(kept, c)
			} else if err := sp.add(c); err != nil {
				sp.close()
				return err
			}
		}
		res.chunks, res.spool = kept, sp
	}
	return res.spool.add(tc)
}

// chunkSpool is a table's tenant chunks in a temporary file, in the order
// the export produced them (the database's collation order of the tenant
// key, which byte order may differ from: sorted tells).
type chunkSpool struct {
	f      *os.File
	w      *bufio.Writer
	r      *bufio.Reader
	n      int
	sorted bool
	last   string
	buf    []byte
}

func newChunkSpool(dir string) (*chunkSpool, error) {
	f, err := os.CreateTemp(dir, "tenantvault-chunks-*")
	if err != nil {
		return nil, fmt.Errorf("spool chunk references: %w", err)
	}
	os.Remove(f.Name()) // gone with the last reference, whatever happens
	return &chunkSpool{f: f, w: bufio.NewWriterSize(f, 64<<10), sorted: true}, nil
}

func (s *chunkSpool) add(tc tenantChunk) error {
	if s.n > 0 && tc.tenant < s.last {
		s.sorted = false
	}
	s.last = tc.tenant
	s.n++
	b := s.buf[:0]
	str := func(v string) {
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	str(tc.tenant)
	b = binary.AppendVarint(b, tc.rows)
	str(tc.ref.Pack)
	b = binary.AppendVarint(b, tc.ref.Offset)
	b = binary.AppendVarint(b, tc.ref.Length)
	b = binary.AppendVarint(b, tc.ref.Size)
	str(tc.ref.SHA256)
	str(tc.ref.Digest)
	str(tc.ref.Key)
	if tc.ref.Reused {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	s.buf = b
	if _, err := s.w.Write(b); err != nil {
		return fmt.Errorf("spool chunk references: %w", err)
	}
	return nil
}

// rewind starts reading from the beginning.
func (s *chunkSpool) rewind() error {
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("spool chunk references: %w", err)
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("spool chunk references: %w", err)
	}
	s.r = bufio.NewReaderSize(s.f, 64<<10)
	return nil
}

// next reads the next chunk; io.EOF after the last.
func (s *chunkSpool) next() (tenantChunk, error) {
	var tc tenantChunk
	var err error
	str := func() string {
		if err != nil {
			return ""
		}
		var n uint64
		if n, err = binary.ReadUvarint(s.r); err != nil {
			return ""
		}
		b := make([]byte, n)
		_, err = io.ReadFull(s.r, b)
		return string(b)
	}
	num := func() int64 {
		if err != nil {
			return 0
		}
		var v int64
		v, err = binary.ReadVarint(s.r)
		return v
	}
	tc.tenant = str()
	if errors.Is(err, io.EOF) {
		return tc, io.EOF
	}
	tc.rows = num()
	ref := vault.ChunkRef{Pack: str(), Offset: num(), Length: num(), Size: num(), SHA256: str(), Digest: str(), Key: str()}
	if err == nil {
		var b byte
		b, err = s.r.ReadByte()
		ref.Reused = b == 1
	}
	if err != nil {
		return tc, fmt.Errorf("spool chunk references: %w", errors.Join(err, io.ErrUnexpectedEOF))
	}
	tc.ref = ref
	return tc, nil
}

// inOrder returns the spool's chunks in tenant ID order: itself, or a
// sorted copy (which holds this one table's references in memory while it
// sorts them).
func (s *chunkSpool) inOrder(tempDir string) (*chunkSpool, error) {
	if err := s.rewind(); err != nil {
		return nil, err
	}
	if s.sorted {
		return s, nil
	}
	all := make([]tenantChunk, 0, s.n)
	for {
		tc, err := s.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		all = append(all, tc)
	}
	s.close()
	sort.SliceStable(all, func(a, b int) bool { return all[a].tenant < all[b].tenant })
	out, err := newChunkSpool(tempDir)
	if err != nil {
		return nil, err
	}
	for _, tc := range all {
		if err := out.add(tc); err != nil {
			out.close()
			return nil, err
		}
	}
	if err := out.rewind(); err != nil {
		out.close()
		return nil, err
	}
	return out, nil
}

func (s *chunkSpool) close() {
	if s != nil && s.f != nil {
		s.f.Close()
		s.f = nil
	}
}
