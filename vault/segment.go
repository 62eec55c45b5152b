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
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/repo"
)

// ChangesPrefix holds the change log: changes/<stream>/<start>-<end>.seg
// (per-tenant frames of change records) and .idx (the segment's index,
// written last: a segment exists once its index does).
const ChangesPrefix = "changes/"

// SegmentVersion is the newest change segment format this build reads.
// It writes version 1, and version 2 for a segment of an encrypted
// repository whose tenant streams are sealed with the tenants' own keys
// (SegmentStream.Key), which older builds must refuse rather than fail to
// decrypt.
const (
	SegmentVersion      = 2
	segmentVersionPlain = 1
)

// Change operations.
const (
	OpInsert   byte = 'I'
	OpUpdate   byte = 'U'
	OpDelete   byte = 'D'
	OpTruncate byte = 'T'
	// OpMoved marks, in the stream of each tenant involved, a row that
	// changed tenant while rows of other tables are scoped through it:
	// those rows moved with it and no record of theirs says so, so replay
	// cannot go past it (readers that predate it refuse the segment).
	OpMoved byte = 'M'
)

// Value kinds of a tuple column.
const (
	ValueNull      byte = 'n' // SQL NULL
	ValueUnchanged byte = 'u' // an unchanged TOAST value the server did not send
	ValueText      byte = 't' // text-format value
	ValueAbsent    byte = 'a' // not part of the tuple (a key tuple's other columns)
)

// Value is one column of a logged tuple.
type Value struct {
	Kind byte
	Data []byte
}

// Change is one committed row change, as logical decoding reported it.
type Change struct {
	LSN  uint64    // commit LSN of the transaction
	Seq  uint32    // position within the transaction
	Time time.Time // commit time
	Rel  uint32    // relation OID (see SegmentIndex.Relations)
	Op   byte
	New  []Value // INSERT, UPDATE
	Old  []Value // UPDATE, DELETE: the replica identity (key or full old row); nil when not sent
	// Rels lists the relations of a TRUNCATE.
	Rels []uint32
}

// FillUnchanged returns the new tuple with its unchanged (unsent TOAST)
// columns taken from the old tuple where it has them; newT itself when
// there are none to fill, so the common update costs no copy.
func FillUnchanged(newT, oldT []Value) []Value {
	var full []Value
	for i, v := range newT {
		if v.Kind == ValueUnchanged && i < len(oldT) && (oldT[i].Kind == ValueText || oldT[i].Kind == ValueNull) {
			if full == nil {
				full = append([]Value(nil), newT...)
			}
			full[i] = oldT[i]
		}
	}
	if full == nil {
		return newT
	}
	return full
}

// Relation describes a table as the change log saw it.
type Relation struct {
	OID     uint32   `json:"oid"`
	Schema  string   `json:"schema"`
	Name    string   `json:"name"`
	Columns []string `json:"columns"`
	Types   []string `json:"types"` // format_type text, to detect schema changes
}

// SegmentStream locates one tenant's records (or the shared records, which
// every tenant's replay reads) in a segment.
type SegmentStream struct {
	Tenant  string `json:"tenant"`
	Shared  bool   `json:"shared,omitempty"`
	Offset  int64  `json:"offset"`
	Length  int64  `json:"length"`
	Records int    `json:"records"`
	SHA256  string `json:"sha256"`
	// Moved is the first move record (OpMoved) of the tenant's stream:
	// restore plans see it without reading the records.
	Moved *Move `json:"moved,omitempty"`
	// Key is the tenant key object the stream is sealed with (encrypted
	// repositories, segment version 2); "" means the segment's data key.
	Key string `json:"key,omitempty"`
}

// Move locates a move record: its commit LSN and time, and the relation
// of the row that moved.
type Move struct {
	LSN  uint64    `json:"lsn"`
	Time time.Time `json:"time"`
	Rel  uint32    `json:"rel"`
}

// SegmentIndex describes one segment of a change stream.
type SegmentIndex struct {
	Version int    `json:"version"`
	Stream  string `json:"stream"`
	// Epoch names the replication slot incarnation that produced the
	// segment; a new epoch after a gap cannot continue older sets.
	Epoch string `json:"epoch"`
	// Start and End bound the commit LSNs of the segment's records:
	// Start <= lsn < End. A stream's segments are contiguous: each Start
	// is the previous End.
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
	// Until is the source's clock when End was reached: every transaction
	// committed before it is in this segment or an earlier one.
	Until   time.Time `json:"until"`
	First   time.Time `json:"first,omitempty"`
	Last    time.Time `json:"last,omitempty"`
	Records int       `json:"records"`
	// Size is the length of the data object (0: none was written).
	Size      int64           `json:"size,omitempty"`
	Relations []Relation      `json:"relations"`
	Streams   []SegmentStream `json:"streams"`
	// Data names the data object (within the stream's prefix) when forget
	// rewrote the segment: <start>-<end>.g<N>.seg. Empty means the
	// original <start>-<end>.seg.
	Data string `json:"data,omitempty"`

	// In an encrypted repository: the segment's data key, once unwrapped;
	// without it only the signed header was read (no relations, no
	// streams).
	dataKey []byte
	sealed  bool
}

// Opened reports whether the segment's records can be read: it is
// plaintext, or it is sealed and its data key was unwrapped.
func (s *SegmentIndex) Opened() bool { return !s.sealed || s.dataKey != nil }

// Key returns the key of the segment's data object.
func (s *SegmentIndex) Key() string {
	if s.Data != "" {
		return ChangesPrefix + s.Stream + "/" + s.Data
	}
	return segmentKey(s.Stream, s.Start, s.End, ".seg")
}

// validData checks a rewritten segment's data name: its own range and a
// generation, never a path elsewhere.
func (s *SegmentIndex) validData() bool {
	if s.Data == "" {
		return true
	}
	rest, ok := strings.CutPrefix(s.Data, fmt.Sprintf("%016x-%016x.g", s.Start, s.End))
	if !ok {
		return false
	}
	n, ok := strings.CutSuffix(rest, ".seg")
	g, err := strconv.Atoi(n)
	return ok && err == nil && g > 0 && strconv.Itoa(g) == n
}

func segmentKey(stream string, start, end uint64, ext string) string {
	return fmt.Sprintf("%s%s/%016x-%016x%s", ChangesPrefix, stream, start, end, ext)
}

// LSNString renders an LSN the way PostgreSQL does.
func LSNString(lsn uint64) string { return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn)) }

// ParseLSN reads PostgreSQL's X/X form.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("bad LSN %q", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad LSN %q", s)
	}
	return h<<32 | l, nil
}

// StreamName is the change stream of a source database: its system
// identifier and database name, made safe for a key.
func StreamName(systemID, database string) string {
	return repo.EncodeKeyPart(systemID + "_" + database)
}

// EncodeChange appends the binary form of c to dst: LSN, sequence, time
// (unix microseconds), relation, operation, then the new and old tuples.
func EncodeChange(dst []byte, c *Change) []byte {
	dst = binary.AppendUvarint(dst, c.LSN)
	dst = binary.AppendUvarint(dst, uint64(c.Seq))
	dst = binary.AppendVarint(dst, c.Time.UnixMicro())
	dst = binary.AppendUvarint(dst, uint64(c.Rel))
	dst = append(dst, c.Op)
	if c.Op == OpTruncate {
		dst = binary.AppendUvarint(dst, uint64(len(c.Rels)))
		for _, r := range c.Rels {
			dst = binary.AppendUvarint(dst, uint64(r))
		}
		return dst
	}
	dst = appendTuple(dst, c.New)
	return appendTuple(dst, c.Old)
}

// appendTuple writes 0 for no tuple, else 1+columns and each column.
func appendTuple(dst []byte, t []Value) []byte {
	if t == nil {
		return binary.AppendUvarint(dst, 0)
	}
	dst = binary.AppendUvarint(dst, uint64(len(t))+1)
	for _, v := range t {
		dst = append(dst, v.Kind)
		if v.Kind == ValueText {
			dst = binary.AppendUvarint(dst, uint64(len(v.Data)))
			dst = append(dst, v.Data...)
		}
	}
	return dst
}

// maxColumns and maxValue bound what a damaged record can make the
// decoder allocate.
const (
	maxColumns = 1664 // PostgreSQL's limit
	maxValue   = 1 << 30
)

// ChangeReader decodes change records from a stream.
type ChangeReader struct {
	r *bufio.Reader
}

// NewChangeReader reads records from r.
func NewChangeReader(r io.Reader) *ChangeReader {
	return &ChangeReader{r: bufio.NewReaderSize(r, 64<<10)}
}

var errBadRecord = errors.New("damaged change record")

// Next decodes the next record; it returns io.EOF after the last one.
func (cr *ChangeReader) Next() (*Change, error) {
	lsn, err := binary.ReadUvarint(cr.r)
	if err == io.EOF {
		return nil, io.EOF
	}
	c := &Change{LSN: lsn}
	var seq, rel uint64
	var usec int64
	if err == nil {
		seq, err = binary.ReadUvarint(cr.r)
	}
	if err == nil {
		usec, err = binary.ReadVarint(cr.r)
	}
	if err == nil {
		rel, err = binary.ReadUvarint(cr.r)
	}
	if err == nil {
		c.Op, err = cr.r.ReadByte()
	}
	if err != nil {
		return nil, recordErr(err)
	}
	if seq > 1<<32-1 || rel > 1<<32-1 {
		return nil, errBadRecord
	}
	c.Seq, c.Rel, c.Time = uint32(seq), uint32(rel), time.UnixMicro(usec).UTC()
	switch c.Op {
	case OpTruncate:
		n, err := binary.ReadUvarint(cr.r)
		if err != nil || n > 1<<16 {
			return nil, recordErr(err)
		}
		for range n {
			r, err := binary.ReadUvarint(cr.r)
			if err != nil || r > 1<<32-1 {
				return nil, recordErr(err)
			}
			c.Rels = append(c.Rels, uint32(r))
		}
		return c, nil
	case OpInsert, OpUpdate, OpDelete, OpMoved:
	default:
		return nil, errBadRecord
	}
	if c.New, err = cr.tuple(); err != nil {
		return nil, err
	}
	if c.Old, err = cr.tuple(); err != nil {
		return nil, err
	}
	return c, nil
}

func recordErr(err error) error {
	if err == nil || err == io.EOF || err == io.ErrUnexpectedEOF {
		return errBadRecord
	}
	return err
}

func (cr *ChangeReader) tuple() ([]Value, error) {
	n, err := binary.ReadUvarint(cr.r)
	if err != nil {
		return nil, recordErr(err)
	}
	if n == 0 {
		return nil, nil
	}
	if n-1 > maxColumns {
		return nil, errBadRecord
	}
	t := make([]Value, n-1)
	for i := range t {
		k, err := cr.r.ReadByte()
		if err != nil {
			return nil, recordErr(err)
		}
		t[i].Kind = k
		switch k {
		case ValueNull, ValueUnchanged, ValueAbsent:
		case ValueText:
			l, err := binary.ReadUvarint(cr.r)
			if err != nil || l > maxValue {
				return nil, recordErr(err)
			}
			t[i].Data = make([]byte, l)
			if _, err := io.ReadFull(cr.r, t[i].Data); err != nil {
				return nil, recordErr(err)
			}
		default:
			return nil, errBadRecord
		}
	}
	return t, nil
}

// SegmentBuilder collects one segment's records per tenant in memory; the
// capture process bounds its size by flushing.
type SegmentBuilder struct {
	Index   SegmentIndex
	frames  map[string]*bytes.Buffer // by tenant; "\x00shared" for shared records
	counts  map[string]int
	relSeen map[uint32]bool
	moved   map[string]*Move
	size    int
}

const sharedKey = "\x00shared"

// NewSegmentBuilder starts a segment of stream at LSN start.
func NewSegmentBuilder(stream, epoch string, start uint64) *SegmentBuilder {
	return &SegmentBuilder{
		Index:  SegmentIndex{Version: segmentVersionPlain, Stream: stream, Epoch: epoch, Start: start, End: start},
		frames: map[string]*bytes.Buffer{}, counts: map[string]int{}, relSeen: map[uint32]bool{}, moved: map[string]*Move{},
	}
}

// AddRelation records a relation's shape (the latest one seen wins).
func (b *SegmentBuilder) AddRelation(r Relation) {
	for i := range b.Index.Relations {
		if b.Index.Relations[i].OID == r.OID {
			b.Index.Relations[i] = r
			return
		}
	}
	b.Index.Relations = append(b.Index.Relations, r)
}

// Add appends a change for tenant (shared: every tenant's replay reads it).
func (b *SegmentBuilder) Add(tenant string, shared bool, c *Change) {
	key := tenant
	if shared {
		key = sharedKey
	}
	buf := b.frames[key]
	if buf == nil {
		buf = &bytes.Buffer{}
		b.frames[key] = buf
	}
	before := buf.Len()
	buf.Write(EncodeChange(nil, c))
	b.size += buf.Len() - before
	b.counts[key]++
	if c.Op == OpMoved && b.moved[key] == nil {
		b.moved[key] = &Move{LSN: c.LSN, Time: c.Time, Rel: c.Rel}
	}
	b.Index.Records++
	if b.Index.First.IsZero() || c.Time.Before(b.Index.First) {
		b.Index.First = c.Time
	}
	if c.Time.After(b.Index.Last) {
		b.Index.Last = c.Time
	}
}

// Size is the bytes of records buffered.
func (b *SegmentBuilder) Size() int { return b.size }

// Records is the number of records buffered.
func (b *SegmentBuilder) Records() int { return b.Index.Records }

// WriteSegment compresses and stores the segment's frames, then its index:
// the index is written last, so a segment without one does not exist.
func (v *Vault) WriteSegment(ctx context.Context, b *SegmentBuilder, end uint64, until time.Time) (*SegmentIndex, error) {
	idx := b.Index
	idx.End, idx.Until = end, until.UTC()
	if idx.End < idx.Start {
		return nil, fmt.Errorf("segment ends (%s) before it starts (%s)", LSNString(idx.End), LSNString(idx.Start))
	}
	keys := make([]string, 0, len(b.frames))
	for k := range b.frames {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sk *segmentSeal
	if v.cfg.Encrypted() {
		var err error
		if sk, err = v.newSegmentSeal(); err != nil {
			return nil, err
		}
		defer clear(sk.dk)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	var data, frame []byte
	var tks *tenantKeys
	if sk != nil && !v.segmentsV1 {
		if tks, err = v.segmentTenantKeys(); err != nil {
			return nil, err
		}
	}
	for _, k := range keys {
		start := len(data)
		frame = enc.EncodeAll(b.frames[k].Bytes(), append(frame[:0], CodecZstd))
		keyName := ""
		if sk != nil {
			dk := sk.dk
			if k != sharedKey && tks != nil {
				// A tenant's records are sealed with its own key, so
				// that erasing it reaches the change log too.
				tk, err := tks.get(ctx, k)
				if err != nil {
					return nil, err
				}
				dk, keyName = tk.dk, tk.name
				idx.Version = SegmentVersion
			}
			if frame, err = sealBytes(dk, frame); err != nil {
				return nil, err
			}
		}
		data = append(data, frame...)
		sum := sha256.Sum256(data[start:])
		s := SegmentStream{Tenant: k, Offset: int64(start), Length: int64(len(data) - start), Records: b.counts[k], SHA256: hex.EncodeToString(sum[:]), Moved: b.moved[k], Key: keyName}
		if k == sharedKey {
			s.Tenant, s.Shared = "", true
		}
		idx.Streams = append(idx.Streams, s)
	}
	idx.Size = int64(len(data))
	if tks != nil {
		// The key objects the index names exist before the segment does.
		if err := tks.uploads.Wait(); err != nil {
			v.dropSegmentTenantKeys(tks) // list and try again next time
			return nil, err
		}
	}
	if len(data) > 0 {
		if err := v.b.Put(ctx, idx.Key(), bytes.NewReader(data), int64(len(data))); err != nil {
			return nil, fmt.Errorf("write change segment: %w", err)
		}
	}
	raw, err := json.Marshal(&idx)
	if err != nil {
		return nil, err
	}
	packed := enc.EncodeAll(raw, nil)
	if sk != nil {
		if packed, err = sk.sealIndex(&idx, packed); err != nil {
			return nil, err
		}
	}
	if err := v.b.Put(ctx, segmentKey(idx.Stream, idx.Start, idx.End, ".idx"), bytes.NewReader(packed), int64(len(packed))); err != nil {
		return nil, fmt.Errorf("write change segment index: %w", err)
	}
	return &idx, nil
}

// SegmentRef names a segment by its range.
type SegmentRef struct {
	Stream     string
	Start, End uint64
}

// ListSegments returns the complete segments of a stream (those with an
// index), ordered by start LSN.
func (v *Vault) ListSegments(ctx context.Context, stream string) ([]SegmentRef, error) {
	prefix := ChangesPrefix + stream + "/"
	var out []SegmentRef
	err := v.b.List(ctx, prefix, func(o repo.ObjectInfo) error {
		name, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, prefix), ".idx")
		if !ok {
			return nil
		}
		a, z, ok := strings.Cut(name, "-")
		if !ok {
			return nil
		}
		start, err1 := strconv.ParseUint(a, 16, 64)
		end, err2 := strconv.ParseUint(z, 16, 64)
		if err1 != nil || err2 != nil || len(a) != 16 || len(z) != 16 {
			return nil
		}
		out = append(out, SegmentRef{Stream: stream, Start: start, End: end})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list change segments of %s: %w", stream, err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Start != out[j].Start {
			return out[i].Start < out[j].Start
		}
		return out[i].End < out[j].End
	})
	return out, nil
}

// ReadSegmentIndex loads and checks a segment's index.
func (v *Vault) ReadSegmentIndex(ctx context.Context, ref SegmentRef) (*SegmentIndex, error) {
	key := segmentKey(ref.Stream, ref.Start, ref.End, ".idx")
	data, err := repo.ReadAll(ctx, v.b, key)
	if errors.Is(err, repo.ErrNotFound) {
		return nil, tenantvault.Integrityf("change segment index %s is missing", key)
	}
	if err != nil {
		return nil, err
	}
	idx := &SegmentIndex{}
	switch {
	case v.cfg.Encrypted():
		idx, err = v.openSegmentIndex(key, data)
	case isSealedSegmentIndex(data):
		err = tenantvault.Integrityf("change segment index %s is encrypted, but the repository is not", key)
	default:
		err = decodeSegmentIndex(key, data, idx)
	}
	if err != nil {
		return nil, err
	}
	if idx.Stream != ref.Stream || idx.Start != ref.Start || idx.End != ref.End {
		return nil, tenantvault.Integrityf("change segment index %s describes another segment", key)
	}
	if !idx.validData() {
		return nil, tenantvault.Integrityf("change segment index %s names data object %q, not one of its own", key, idx.Data)
	}
	return idx, nil
}

// decodeSegmentIndex inflates and checks a segment index's zstd JSON.
func decodeSegmentIndex(key string, data []byte, idx *SegmentIndex) error {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(256<<20))
	if err != nil {
		return err
	}
	defer dec.Close()
	raw, err := dec.DecodeAll(data, nil)
	if err != nil {
		return tenantvault.Integrityf("change segment index %s is damaged: %v", key, err)
	}
	if err := json.Unmarshal(raw, idx); err != nil {
		return tenantvault.Integrityf("change segment index %s is damaged: %v", key, err)
	}
	if idx.Version > SegmentVersion {
		return tenantvault.Inputf("change segment %s uses format %d, %s (this one reads up to %d)", key, idx.Version, "written by a newer tenantvault", SegmentVersion)
	}
	return nil
}

// OpenSegmentStream reads one stream of a segment, checking its checksum
// before the last record is returned (a damaged stream surfaces as an
// error wrapping tenantvault.ErrIntegrity).
func (v *Vault) OpenSegmentStream(ctx context.Context, idx *SegmentIndex, s SegmentStream) (*ChangeReader, io.Closer, error) {
	if !idx.Opened() {
		return nil, nil, errSegmentNeedsIdentity(idx.Key())
	}
	rc, err := v.b.Get(ctx, idx.Key(), s.Offset, s.Length)
	if errors.Is(err, repo.ErrNotFound) {
		return nil, nil, tenantvault.Integrityf("change segment %s is missing", idx.Key())
	}
	if err != nil {
		return nil, nil, err
	}
	defer rc.Close()
	// Streams are small (bounded by the capture's flush size): read,
	// check, then decode from memory.
	data, err := io.ReadAll(io.LimitReader(rc, s.Length+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read change segment %s: %w", idx.Key(), err)
	}
	sum := sha256.Sum256(data)
	if int64(len(data)) != s.Length || hex.EncodeToString(sum[:]) != s.SHA256 {
		return nil, nil, tenantvault.Integrityf("change segment %s is damaged (checksum mismatch in the records of %q)", idx.Key(), s.Tenant)
	}
	if idx.sealed {
		dk, err := v.streamKey(ctx, idx, s)
		if err != nil {
			return nil, nil, err
		}
		if data, err = openBytes(dk, data, maxSegmentStream); err != nil {
			return nil, nil, tenantvault.Integrityf("change segment %s: records of %q: %v", idx.Key(), s.Tenant, err)
		}
	}
	if len(data) == 0 || data[0] != CodecZstd {
		return nil, nil, tenantvault.Integrityf("change segment %s: unknown codec", idx.Key())
	}
	dec := decoders.Get().(*zstd.Decoder)
	raw, err := dec.DecodeAll(data[1:], nil)
	decoders.Put(dec)
	if err != nil {
		return nil, nil, tenantvault.Integrityf("change segment %s is damaged: %v", idx.Key(), err)
	}
	return NewChangeReader(bytes.NewReader(raw)), io.NopCloser(nil), nil
}

// ReadChanges returns the records of a segment for tenant (and the shared
// records), in commit order, with shared ones marked.
func (v *Vault) ReadChanges(ctx context.Context, idx *SegmentIndex, tenant string) ([]TenantChange, error) {
	if !idx.Opened() {
		return nil, errSegmentNeedsIdentity(idx.Key())
	}
	var out []TenantChange
	for _, s := range idx.Streams {
		if !s.Shared && s.Tenant != tenant {
			continue
		}
		cr, _, err := v.OpenSegmentStream(ctx, idx, s)
		if err != nil {
			return nil, err
		}
		for {
			c, err := cr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, tenantvault.Integrityf("change segment %s: %v", idx.Key(), err)
			}
			out = append(out, TenantChange{Change: c, Shared: s.Shared})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].LSN != out[j].LSN {
			return out[i].LSN < out[j].LSN
		}
		return out[i].Seq < out[j].Seq
	})
	return out, nil
}

// TenantChange is a change read for one tenant's replay; Shared changes
// were not attributed to a tenant when captured and must be checked
// against the tenant's rows.
type TenantChange struct {
	*Change
	Shared bool
}

// Head records how far a stream's log is complete while the source is
// idle: every transaction that committed before Until is in the segments
// up to End. It is the one object of a stream that is rewritten; readers
// trust it only when End is where the last segment ends.
type Head struct {
	Stream string    `json:"stream"`
	Epoch  string    `json:"epoch"`
	End    uint64    `json:"end"`
	Until  time.Time `json:"until"`
}

func headKey(stream string) string { return ChangesPrefix + stream + "/head.json" }

// WriteHead stores a stream's head.
func (v *Vault) WriteHead(ctx context.Context, h Head) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if err := v.b.Put(ctx, headKey(h.Stream), bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("write change log head: %w", err)
	}
	return nil
}

// ReadHead loads a stream's head, or nil when there is none (or it is
// unreadable: it only ever lets restore reach further).
func (v *Vault) ReadHead(ctx context.Context, stream string) (*Head, error) {
	data, err := repo.ReadAll(ctx, v.b, headKey(stream))
	if errors.Is(err, repo.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var h Head
	if json.Unmarshal(data, &h) != nil || h.Stream != stream {
		v.log.Warn("ignoring unreadable change log head", "stream", stream)
		return nil, nil
	}
	return &h, nil
}

// ArchivedUntil reports how far in time a stream's log is complete (the
// last segment's Until, or the head's when it continues that segment),
// and where the log begins; zero times mean there is no log.
func (v *Vault) ArchivedUntil(ctx context.Context, stream string) (first, until time.Time, err error) {
	refs, err := v.ListSegments(ctx, stream)
	if err != nil || len(refs) == 0 {
		return time.Time{}, time.Time{}, err
	}
	head, err := v.ReadSegmentIndex(ctx, refs[0])
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	last, err := v.ReadSegmentIndex(ctx, refs[len(refs)-1])
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	until = last.Until
	if h, err := v.ReadHead(ctx, stream); err != nil {
		return time.Time{}, time.Time{}, err
	} else if h != nil && h.Epoch == last.Epoch && h.End == last.End && h.Until.After(until) {
		until = h.Until
	}
	return head.Until, until, nil
}

// RowKey names the values vals of columns cols of table schema.name
// unambiguously (lengths before values), for the maps in which capture,
// replay and forget look up a row by a key it references.
func RowKey(schema, name string, cols []string, vals [][]byte) string {
	var k strings.Builder
	k.WriteString(schema + "\x00" + name + "\x00" + strings.Join(cols, "\x00") + "\x00")
	for _, v := range vals {
		fmt.Fprintf(&k, "%d:%s", len(v), v)
	}
	return k.String()
}
