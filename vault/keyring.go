package vault

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
)

// setKey is the data key of a set being written, and its wrapped form.
type setKey struct {
	dk         []byte
	wrapped    []byte
	recipients []string
	// tenants are the tenants' own keys (set format 2), nil otherwise
	tenants *tenantKeys
}

// newSetKey makes the data key of a new set in an encrypted repository.
func (v *Vault) newSetKey(id string) (*setKey, error) {
	dk, wrapped, err := v.newWrappedKey("snapshots into it need", "their manifests")
	if err != nil {
		return nil, err
	}
	k := &setKey{dk: dk, wrapped: wrapped, recipients: v.keys.RecipientStrings()}
	if v.WritesIndexed() {
		// Set format 1 has no place for a tenant's key that older
		// readers would honour.
		k.tenants = v.newTenantKeys()
	}
	v.writing.Store(id, k)
	return k, nil
}

// newWrappedKey makes a fresh data key wrapped to this side's recipients,
// for writers (who: "snapshots into it need") that must also sign what
// they write (signs: "their manifests").
func (v *Vault) newWrappedKey(who, signs string) (dk, wrapped []byte, err error) {
	recipients := v.keys.writerRecipients()
	if len(recipients) == 0 {
		return nil, nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("repository %s is encrypted: %s the recipients to encrypt to", v.b.Location(), who),
			Hint: "give --recipient age1... (repeatable) or --recipients-file FILE, and --signing-key FILE (tenantvault keygen writes both)",
		}
	}
	if len(v.keys.Signing) == 0 {
		return nil, nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("repository %s is encrypted: %s a signing key to sign %s", v.b.Location(), who, signs),
			Hint: "give --signing-key FILE (written by tenantvault keygen)",
		}
	}
	dk = newDataKey()
	if wrapped, err = wrapKey(dk, recipients); err != nil {
		return nil, nil, err
	}
	return dk, wrapped, nil
}

// forgetSetKey drops (and overwrites) the data key of a set once written or
// aborted.
func (v *Vault) forgetSetKey(id string) {
	if k, ok := v.writing.LoadAndDelete(id); ok {
		if tk := k.(*setKey).tenants; tk != nil {
			tk.stop()
		}
		clear(k.(*setKey).dk)
	}
}

// keyring unwraps, once each, the data keys a decrypted set reads with: its
// own and those of the earlier sets whose packs it points into.
type keyring struct {
	v   *Vault
	x   *SetIndex
	mu  sync.Mutex
	dks map[string][]byte
}

func (v *Vault) keyring(x *SetIndex) *keyring {
	kr, _ := v.keyrings.LoadOrStore(x.ID, &keyring{v: v, x: x, dks: map[string][]byte{}})
	return kr.(*keyring)
}

// key returns the data key of the packs written by set owner.
func (kr *keyring) key(owner string) ([]byte, error) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if dk, ok := kr.dks[owner]; ok {
		return dk, nil
	}
	wrapped := kr.x.wrapped(owner)
	if wrapped == nil {
		return nil, tenantvault.Integrityf("set %s has no data key for the packs of set %s", kr.x.ID, owner)
	}
	dk, err := unwrapKey(wrapped, kr.v.keys.Identities)
	if errors.Is(err, ErrNoIdentity) {
		who := "its recipients"
		if len(kr.x.Recipients) > 0 {
			who = strings.Join(kr.x.Recipients, ", ")
		}
		return nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("no identity in the identity file can decrypt set %s (the data of set %s, encrypted to %s)", kr.x.ID, owner, who),
			Hint: "after a key rotation, sets written before it need the old identity: keep the old keys in the identity file, one per line",
			Err:  ErrNoIdentity,
		}
	}
	if err != nil {
		return nil, err
	}
	kr.dks[owner] = dk
	return dk, nil
}

// objectKey returns the data key an object of set m was sealed with: for a
// pack, the key of the set that wrote it (packs/<set>/...), else m's own.
func (v *Vault) objectKey(ctx context.Context, setID, objectKey string) ([]byte, error) {
	owner := setID
	if o, ok := packOwner(objectKey); ok {
		owner = o
	}
	if k, ok := v.writing.Load(owner); ok {
		return k.(*setKey).dk, nil
	}
	if kr, ok := v.keyrings.Load(setID); ok {
		return kr.(*keyring).key(owner)
	}
	if len(v.keys.Identities) == 0 {
		return nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("snapshot set %s is encrypted: reading its data needs the identity file (--identity FILE or TENANTVAULT_IDENTITY)", setID),
			Hint: "verify without --identity checks that every stored object is intact, without decrypting",
			Err:  ErrNoIdentity,
		}
	}
	x, err := v.ReadIndex(ctx, setID)
	if err != nil {
		return nil, err
	}
	return v.keyring(x).key(owner)
}

// wrappedFor finds the wrapped data key of set owner, for a new manifest
// that points into owner's packs: in the indexes read so far (the earlier
// set the snapshot reused chunks from carries the keys of all its packs),
// else in owner's own manifest.
func (v *Vault) wrappedFor(ctx context.Context, owner string) ([]byte, error) {
	var found []byte
	v.icache.Range(func(_, x any) bool {
		found = x.(*SetIndex).wrapped(owner)
		return found == nil
	})
	if found != nil {
		return found, nil
	}
	x, err := v.ReadIndex(ctx, owner)
	if err != nil {
		return nil, fmt.Errorf("data key of set %s, whose packs the new set reuses: %w", owner, err)
	}
	if !x.Authenticated() {
		return nil, tenantvault.Integrityf("set %s, whose packs the new set reuses, is not signed by this side", owner)
	}
	return x.wrapped(owner), nil
}

// sealManifest builds the signed header and the sealed body of the
// manifest of an encrypted set (encoded is manifest.Encode's output). For a
// set in set format 2 (m is its header) sx is its tenant index, whose
// locator holds the chunks' places and tags: the signed header (version 2)
// carries sx instead of them.
func (v *Vault) sealManifest(ctx context.Context, m *manifest.Manifest, encoded []byte, sx *SealedIndex) (*SetIndex, []byte, error) {
	k, ok := v.writing.Load(m.ID)
	if !ok {
		return nil, nil, fmt.Errorf("set %s was not written by this vault (no data key)", m.ID)
	}
	sk := k.(*setKey)
	if len(v.keys.Signing) == 0 {
		return nil, nil, errors.New("no signing key")
	}
	signer := v.keys.Signing[0]
	tagKey := signer.tagKey()
	x := &SetIndex{
		Version: 1, ID: m.ID, Kind: m.Kind, SourceName: m.Source.Name, Partial: m.Partial,
		StartedAt: m.StartedAt, ConsistentAt: m.ConsistentAt, FinishedAt: m.FinishedAt,
		Group: groupHash(m), Recipients: sk.recipients, Packs: m.Packs,
		Keys: []WrappedKey{{Set: m.ID, Age: sk.wrapped}},
	}
	x.Schemas = schemaRefs(m)
	if (sx != nil) != (m.Index != nil) {
		return nil, nil, errors.New("a set format 2 header needs its tenant index")
	}
	if sx != nil {
		x.Version, x.Index = 2, sx
		x.Stats = IndexStats{Chunks: sx.chunks, Stored: m.Stats.Stored, Written: m.Stats.Written}
	} else {
		eachChunk(m, func(tenant string, global bool, c manifest.Chunk) {
			x.Chunks = append(x.Chunks, IndexChunk{
				Pack: c.Pack, Offset: c.Offset, Length: c.Length, SHA256: c.SHA256,
				Tag: reuseTag(tagKey, tenant, global, m.Tables[c.Table].Signature, c.Digest, c.Size, ""),
			})
		})
		x.Stats = IndexStats{Chunks: len(x.Chunks), Stored: m.Stats.Stored, Written: m.Stats.Written}
	}
	seen := map[string]bool{m.ID: true}
	for _, p := range m.Packs {
		owner, ok := packOwner(p)
		if !ok {
			return nil, nil, fmt.Errorf("pack key %q does not name its set", p)
		}
		if seen[owner] {
			continue
		}
		seen[owner] = true
		w, err := v.wrappedFor(ctx, owner)
		if err != nil {
			return nil, nil, err
		}
		x.Keys = append(x.Keys, WrappedKey{Set: owner, Age: w})
	}
	body, err := sealBytes(sk.dk, encoded)
	if err != nil {
		return nil, nil, err
	}
	data, err := encodeSealed(x, body, signer)
	if err != nil {
		return nil, nil, err
	}
	x.Signer, x.sealed = signer.Signer(), true
	return x, data, nil
}
