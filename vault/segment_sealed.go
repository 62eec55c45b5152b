package vault

import (
	"bytes"
	"fmt"

	"github.com/tenantvault/tenantvault"
)

// Sealed segment index framing (encrypted repositories), as a sealed
// manifest's with its own magic and signature context:
//
//	magic line | signer public key (32) | uvarint n | header (n, zstd JSON
//	sealedSegmentHeader) | uvarint m | body (m, sealed zstd JSON
//	SegmentIndex) | Ed25519 signature (64)
//
// The header holds what the capturing side itself must read back to
// continue its log (it has no identity) and what tells nothing about
// tenants; the tenants, relations and record offsets are in the body.
const (
	segmentMagic            = "tenantvault sealed segment index 1\n"
	segmentSignatureContext = "tenantvault segment signature v1\x00"
	// maxSegmentStream bounds one decrypted stream of records: a capture
	// flushes segments long before this.
	maxSegmentStream = 1 << 30
)

type sealedSegmentHeader struct {
	SegmentIndex        // without relations and streams
	Key          []byte `json:"key"` // the segment's data key, wrapped with age
}

// segmentSeal is the data key of a segment being written and what signs it.
type segmentSeal struct {
	dk, wrapped []byte
	signer      *SigningKey
}

// newSegmentSeal makes a fresh data key for one segment: like a set's, it
// is wrapped to the recipients, so the capturing side cannot read back
// what it archived.
func (v *Vault) newSegmentSeal() (*segmentSeal, error) {
	dk, wrapped, err := v.newWrappedKey("change capture into it needs", "its change log")
	if err != nil {
		return nil, err
	}
	return &segmentSeal{dk: dk, wrapped: wrapped, signer: v.keys.Signing[0]}, nil
}

// sealIndex seals packed (the zstd JSON of idx) and signs it with the
// header.
func (s *segmentSeal) sealIndex(idx *SegmentIndex, packed []byte) ([]byte, error) {
	body, err := sealBytes(s.dk, packed)
	if err != nil {
		return nil, err
	}
	h := sealedSegmentHeader{SegmentIndex: *idx, Key: s.wrapped}
	h.Relations, h.Streams = nil, nil
	hdr, err := compressJSON(&h)
	if err != nil {
		return nil, err
	}
	return signFrames(segmentMagic, segmentSignatureContext, s.signer, hdr, body), nil
}

func isSealedSegmentIndex(data []byte) bool { return bytes.HasPrefix(data, []byte(segmentMagic)) }

func errSegmentNeedsIdentity(key string) error {
	return &tenantvault.InputError{
		Msg:  fmt.Sprintf("change segment %s is encrypted: reading it needs the identity file (--identity FILE or TENANTVAULT_IDENTITY)", key),
		Hint: "restore --at and verify --replay read the change log with the identity written by `tenantvault keygen`",
		Err:  ErrNoIdentity,
	}
}

// openSegmentIndex checks a sealed segment index's signature and reads its
// header; with an identity it also decrypts the body, which it accepts
// only from a signer this side trusts (as manifests).
func (v *Vault) openSegmentIndex(key string, data []byte) (*SegmentIndex, error) {
	bad := func(format string, args ...any) error {
		return tenantvault.Integrityf("change segment index %s: "+format, append([]any{key}, args...)...)
	}
	pub, hdrBytes, body, err := openFrames(data, segmentMagic, segmentSignatureContext)
	if err != nil {
		return nil, bad("%v", err)
	}
	var h sealedSegmentHeader
	if err := decompressJSON(hdrBytes, maxHeader, &h); err != nil {
		return nil, bad("header: %v", err)
	}
	if h.Version > SegmentVersion {
		return nil, tenantvault.Inputf("change segment %s uses format %d, written by a newer tenantvault (this one reads up to %d)", key, h.Version, SegmentVersion)
	}
	if len(v.keys.Identities) == 0 {
		idx := h.SegmentIndex
		idx.Relations, idx.Streams, idx.sealed = nil, nil, true
		return &idx, nil
	}
	if !v.keys.trusted(pub) {
		if !v.keys.hasTrust() {
			return nil, &tenantvault.InputError{
				Msg:  fmt.Sprintf("change segment %s is signed by %s, and the identity file names no trusted signer", key, SignerString(pub)),
				Hint: "add the capturing side's signer line (tvsign1..., printed by keygen) or its signing key to the identity file",
			}
		}
		return nil, bad("signed by %s, which the identity file does not trust: refusing a change log that may be forged", SignerString(pub))
	}
	dk, err := unwrapKey(h.Key, v.keys.Identities)
	if err != nil {
		if err == ErrNoIdentity {
			return nil, &tenantvault.InputError{
				Msg: fmt.Sprintf("change segment %s is encrypted to other recipients than the identity file's", key),
				Err: ErrNoIdentity,
			}
		}
		return nil, err
	}
	plain, err := openBytes(dk, body, maxHeader)
	if err != nil {
		return nil, bad("body: %v", err)
	}
	idx := &SegmentIndex{}
	if err := decodeSegmentIndex(key, plain, idx); err != nil {
		return nil, err
	}
	if idx.Stream != h.Stream || idx.Epoch != h.Epoch || idx.Start != h.Start || idx.End != h.End ||
		!idx.Until.Equal(h.Until) || idx.Records != h.Records || idx.Size != h.Size {
		return nil, bad("header and body disagree")
	}
	idx.dataKey, idx.sealed = dk, true
	return idx, nil
}
