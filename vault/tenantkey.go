package vault

// Per-tenant data keys (crypto-shredding; docs/FORMAT.md "Tenant keys",
// docs/SECURITY.md "Erasing a tenant").
//
// In an encrypted repository every tenant's chunks in set format 2 are
// sealed with a key of that tenant's own, the same in every set (so that
// reuse keeps working), kept in one small object per tenant under
// keys/tenants/: destroying a tenant's key objects makes every chunk of it
// in every set unreadable to anyone, the identity holder included, while
// nothing else is rewritten.
//
// The snapshotting side holds only recipients and a signing key, and must
// find and use a tenant's key without being able to unwrap it. So the key
// is derived on that side: TK = HMAC-SHA-256(HKDF(signing seed, "tenantvault
// tenant key v1"), nonce), where the nonce is random and stored only inside
// the key object, next to TK wrapped with age to the recipients, all signed:
//
//	keys/tenants/<n>-<r>-<m>.key
//	n = first 16 bytes of HMAC(name key, "tenant\0" || tenant ID), hex
//	r = 16 random bytes, hex (two writers never pick one name)
//	m = first 16 bytes of HMAC(name key, "object\0" || n || "-" || r), hex
//
// One LIST of the prefix per set tells the writer every tenant's key
// object: n finds the tenant, m tells names this signing key made from
// anyone else's (ignored). The writer then GETs the objects it needs (all
// listed ones, 16 at a time, from the moment of the LIST) for their nonces;
// readers GET the one an index entry names and unwrap TK.
//
// Why the nonce is not in the name, which would spare the writer its GETs:
// the name outlives the object (index entries, readable with the identity,
// name it; so may access logs), and the identity file holds the signing
// key too. Whoever holds the signing key and a nonce can derive TK: only
// the destroyed object may hold the nonce.

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"golang.org/x/sync/errgroup"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
)

// TenantKeysPrefix holds the tenants' key objects. Nothing under it is
// ever put under object retention: forget must be able to destroy them.
const TenantKeysPrefix = "keys/tenants/"

const (
	tenantKeyExt       = ".key"
	tenantKeyMagic     = "tenantvault tenant key 1\n"
	tenantKeySignature = "tenantvault tenant key signature v1\x00"
	tenantNonceSize    = 16
	// maxTenantKey bounds a key object a reader accepts.
	maxTenantKey = 64 << 10
)

// ErrTenantKeyDestroyed is wrapped when a tenant's data cannot be read
// because its key object no longer exists: the tenant was erased (forget
// destroys it), or someone deleted it.
var ErrTenantKeyDestroyed = errors.New("the tenant's data key is destroyed")

func (k *SigningKey) derive(info string) []byte {
	t, err := hkdf.Key(sha256.New, k.priv.Seed(), nil, info, 32)
	if err != nil {
		panic(err)
	}
	return t
}

func mac16(key []byte, parts ...string) string {
	h := hmac.New(sha256.New, key)
	for _, p := range parts {
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// tenantKeyNamer computes and checks key object names, and derives the
// keys, for one signing key.
type tenantKeyNamer struct {
	nameKey, baseKey []byte
}

func newTenantKeyNamer(sk *SigningKey) *tenantKeyNamer {
	return &tenantKeyNamer{nameKey: sk.derive("tenantvault tenant key name v1"), baseKey: sk.derive("tenantvault tenant key v1")}
}

// tenantName is n: what every key object of tenant starts with.
func (kn *tenantKeyNamer) tenantName(tenant string) string {
	return mac16(kn.nameKey, "tenant\x00", tenant)
}

func (kn *tenantKeyNamer) objectKey(n, r string) string {
	return TenantKeysPrefix + n + "-" + r + "-" + mac16(kn.nameKey, "object\x00", n, "-", r) + tenantKeyExt
}

// parseTenantKeyName splits keys/tenants/<n>-<r>-<m>.key.
func parseTenantKeyName(key string) (n, r, m string, ok bool) {
	rest, ok1 := strings.CutPrefix(key, TenantKeysPrefix)
	rest, ok2 := strings.CutSuffix(rest, tenantKeyExt)
	parts := strings.Split(rest, "-")
	if !ok1 || !ok2 || len(parts) != 3 {
		return "", "", "", false
	}
	for _, p := range parts {
		if len(p) != 32 || strings.ToLower(p) != p {
			return "", "", "", false
		}
		if _, err := hex.DecodeString(p); err != nil {
			return "", "", "", false
		}
	}
	return parts[0], parts[1], parts[2], true
}

// ValidTenantKeyName reports whether key has the form of a tenant key
// object's key (whoever made it).
func ValidTenantKeyName(key string) bool {
	_, _, _, ok := parseTenantKeyName(key)
	return ok
}

// mine reports whether key was named by this signing key, and returns its
// tenant part.
func (kn *tenantKeyNamer) mine(key string) (n string, ok bool) {
	n, r, m, ok := parseTenantKeyName(key)
	if !ok || !hmac.Equal([]byte(m), []byte(mac16(kn.nameKey, "object\x00", n, "-", r))) {
		return "", false
	}
	return n, true
}

func (kn *tenantKeyNamer) key(nonce []byte) []byte {
	h := hmac.New(sha256.New, kn.baseKey)
	h.Write(nonce)
	return h.Sum(nil)
}

// tenantKey is the key one tenant's chunks are sealed with in a set.
type tenantKey struct {
	name string // the key object
	dk   []byte
}

// tenantKeys is the snapshotting side's view of the tenants' keys for one
// set: listed once, read (in the background, from the LIST on), created
// (and uploaded in the background) for tenants that have none yet.
// Memory: about 250 bytes per tenant.
type tenantKeys struct {
	v          *Vault
	kn         *tenantKeyNamer
	signer     *SigningKey
	recipients []age.Recipient

	listOnce sync.Once
	listErr  error
	listed   map[string][]string // n -> names this signing key made, sorted
	objects  map[string]*tenantKeySlot

	mu      sync.Mutex
	tenants map[string]*tenantKeySlot

	uploads  errgroup.Group
	prefetch context.CancelFunc
	created  int
	reused   int
}

type tenantKeySlot struct {
	once sync.Once
	k    *tenantKey
	err  error
}

func (v *Vault) newTenantKeys() *tenantKeys {
	tk := &tenantKeys{v: v, kn: newTenantKeyNamer(v.keys.Signing[0]), signer: v.keys.Signing[0],
		recipients: v.keys.writerRecipients(), tenants: map[string]*tenantKeySlot{}}
	tk.uploads.SetLimit(16)
	return tk
}

func (tk *tenantKeys) list(ctx context.Context) error {
	tk.listOnce.Do(func() {
		tk.listed, tk.objects = map[string][]string{}, map[string]*tenantKeySlot{}
		tk.listErr = tk.v.b.List(ctx, TenantKeysPrefix, func(o repo.ObjectInfo) error {
			if n, ok := tk.kn.mine(o.Key); ok {
				tk.listed[n] = append(tk.listed[n], o.Key)
			}
			return nil
		})
		if tk.listErr != nil {
			tk.listErr = fmt.Errorf("list tenant keys: %w", tk.listErr)
			return
		}
		var first []string
		for _, names := range tk.listed {
			sort.Strings(names)
			tk.objects[names[0]] = &tenantKeySlot{}
			first = append(first, names[0])
		}
		// Read every tenant's key object now, a few at a time, rather
		// than one at a time when a table worker first meets the tenant.
		pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		tk.prefetch = cancel
		go func() {
			var g errgroup.Group
			g.SetLimit(16)
			for _, name := range first {
				if pctx.Err() != nil {
					break
				}
				g.Go(func() error { tk.object(pctx, name); return nil })
			}
			g.Wait()
		}()
	})
	return tk.listErr
}

// object reads key object name (once) for its nonce, and derives its key.
func (tk *tenantKeys) object(ctx context.Context, name string) (*tenantKey, error) {
	slot := tk.objects[name]
	slot.once.Do(func() {
		data, err := repo.ReadAll(ctx, tk.v.b, name)
		if err != nil {
			slot.err = fmt.Errorf("read tenant key %s: %w", name, err)
			return
		}
		pub, nonce, _, err := openTenantKey(data, name)
		if err != nil {
			slot.err = err
			return
		}
		if !tk.v.keys.trusted(pub) {
			slot.err = tenantvault.Integrityf("tenant key %s is signed by %s, not by this side: refusing a key that may be forged", name, SignerString(pub))
			return
		}
		slot.k = &tenantKey{name: name, dk: tk.kn.key(nonce)}
	})
	return slot.k, slot.err
}

// openTenantKey checks a key object's framing, signature and name, and
// returns its signer, nonce and wrapped key.
func openTenantKey(data []byte, name string) (pub []byte, nonce, wrapped []byte, err error) {
	pub, hdr, body, err := openFrames(data, tenantKeyMagic, tenantKeySignature)
	if err != nil {
		return nil, nil, nil, tenantvault.Integrityf("tenant key %s: %v", name, err)
	}
	if len(hdr) != tenantNonceSize+len(name) || string(hdr[tenantNonceSize:]) != name {
		return nil, nil, nil, tenantvault.Integrityf("tenant key %s does not name itself", name)
	}
	return pub, hdr[:tenantNonceSize], body, nil
}

// get returns tenant's key: the first (by name) of its key objects this
// signing key made, or a new one. Two writers that find none at once (a
// snapshot and a capture) make two; later sets use the first, and reuse
// tags include the key's name, so a chunk is reused only under its own key.
func (tk *tenantKeys) get(ctx context.Context, tenant string) (*tenantKey, error) {
	if err := tk.list(ctx); err != nil {
		return nil, err
	}
	tk.mu.Lock()
	slot, ok := tk.tenants[tenant]
	if !ok {
		slot = &tenantKeySlot{}
		tk.tenants[tenant] = slot
	}
	tk.mu.Unlock()
	slot.once.Do(func() { slot.k, slot.err = tk.find(ctx, tenant) })
	return slot.k, slot.err
}

func (tk *tenantKeys) find(ctx context.Context, tenant string) (*tenantKey, error) {
	n := tk.kn.tenantName(tenant)
	if names := tk.listed[n]; len(names) > 0 {
		k, err := tk.object(ctx, names[0])
		if err != nil {
			return nil, err
		}
		tk.mu.Lock()
		tk.reused++
		tk.mu.Unlock()
		return k, nil
	}
	nonce := make([]byte, tenantNonceSize)
	r := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	if _, err := rand.Read(r); err != nil {
		return nil, err
	}
	k := &tenantKey{name: tk.kn.objectKey(n, hex.EncodeToString(r)), dk: tk.kn.key(nonce)}
	wrapped, err := wrapKey(k.dk, tk.recipients)
	if err != nil {
		return nil, err
	}
	data := signFrames(tenantKeyMagic, tenantKeySignature, tk.signer, append(nonce, k.name...), wrapped)
	tk.mu.Lock()
	tk.created++
	tk.mu.Unlock()
	// Chunks may be sealed with the key at once; the object must exist
	// before the manifest that names it (wait). The upload outlives the
	// caller's context (a table worker's, cancelled when its group ends):
	// wait is what ends it.
	uctx := repo.WithoutRetention(context.WithoutCancel(ctx))
	tk.uploads.Go(func() error {
		err := tk.v.b.Put(uctx, k.name, bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return fmt.Errorf("write tenant key %s: %w", k.name, err)
		}
		return nil
	})
	return k, nil
}

// wait returns once every new key object is stored.
func (tk *tenantKeys) wait() error {
	err := tk.uploads.Wait()
	tk.stop()
	return err
}

// stop ends the background reads.
func (tk *tenantKeys) stop() {
	if tk.prefetch != nil {
		tk.prefetch()
	}
}

// TenantKeyStats says how many tenant key objects set id's writer found
// and created (zero for a set without per-tenant keys).
func (v *Vault) TenantKeyStats(id string) (found, created int) {
	k, ok := v.writing.Load(id)
	if !ok || k.(*setKey).tenants == nil {
		return 0, 0
	}
	tk := k.(*setKey).tenants
	tk.mu.Lock()
	defer tk.mu.Unlock()
	return tk.reused, tk.created
}

// tenantDataKey returns the key that key object name holds, for readers:
// read once, its signature checked against the signers this side trusts,
// and unwrapped with the identities. what names the data for messages.
func (v *Vault) tenantDataKey(ctx context.Context, what, name string) ([]byte, error) {
	if dk, ok := v.tenantDKs.Load(name); ok {
		return dk.([]byte), nil
	}
	if !ValidTenantKeyName(name) {
		return nil, tenantvault.Integrityf("%s: %q is not a tenant key object", what, name)
	}
	if len(v.keys.Identities) == 0 {
		return nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("%s is encrypted: reading it needs the identity file (--identity FILE or TENANTVAULT_IDENTITY)", what),
			Hint: "verify without --identity checks that every stored object is intact, without decrypting",
			Err:  ErrNoIdentity,
		}
	}
	data, err := repo.ReadAll(ctx, v.b, name)
	if err == nil && len(data) > maxTenantKey {
		err = tenantvault.Integrityf("tenant key %s is %d bytes", name, len(data))
	}
	if errors.Is(err, repo.ErrNotFound) {
		return nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("%s cannot be decrypted: the tenant's data key %s is destroyed (the tenant was erased with forget, or the key object was deleted), so no one can read this tenant's data in any set", what, name),
			Hint: "restore other tenants as usual; an erased tenant's backups are beyond use by design",
			Err:  ErrTenantKeyDestroyed,
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read tenant key %s: %w", name, err)
	}
	pub, _, body, err := openTenantKey(data, name)
	if err != nil {
		return nil, err
	}
	if !v.keys.trusted(pub) {
		return nil, tenantvault.Integrityf("tenant key %s is signed by %s, which the identity file does not trust: refusing a key that may be forged", name, SignerString(pub))
	}
	dk, err := unwrapKey(body, v.keys.Identities)
	if errors.Is(err, ErrNoIdentity) {
		return nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("%s: no identity in the identity file can decrypt the tenant's data key %s", what, name),
			Hint: "after a key rotation, keys made before it need the old identity: keep the old keys in the identity file, one per line",
			Err:  ErrNoIdentity,
		}
	}
	if err != nil {
		return nil, fmt.Errorf("tenant key %s: %w", name, err)
	}
	v.tenantDKs.Store(name, dk)
	return dk, nil
}

// TenantKeys lists the key objects of tenant in the repository: those
// named with any signing key this vault holds (the identity file's, or the
// snapshotting side's), and, when the vault can decrypt, every key that an
// entry of the tenant in any set names (so keys made under a signing key
// since rotated away are found too). Plaintext repositories have none.
func (v *Vault) TenantKeys(ctx context.Context, tenant string) ([]string, error) {
	if !v.cfg.Encrypted() {
		return nil, nil
	}
	if len(v.keys.Signing) == 0 && len(v.keys.Identities) == 0 {
		return nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("repository %s is encrypted: finding a tenant's keys needs the identity file (--identity FILE)", v.b.Location()),
			Hint: "give the identity file written by tenantvault keygen",
		}
	}
	found := map[string]bool{}
	for _, sk := range v.keys.Signing {
		kn := newTenantKeyNamer(sk)
		err := v.b.List(ctx, TenantKeysPrefix+kn.tenantName(tenant)+"-", func(o repo.ObjectInfo) error {
			if _, ok := kn.mine(o.Key); ok {
				found[o.Key] = true
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list tenant keys: %w", err)
		}
	}
	if v.CanDecrypt() {
		ids, err := v.ListSets(ctx)
		if err != nil {
			return nil, err
		}
		entries, err := v.tenantHistory(ctx, ids, tenant, false)
		if err != nil {
			return nil, fmt.Errorf("find the keys the sets name for tenant %q: %w", tenant, err)
		}
		for _, e := range entries {
			if e.Key != "" {
				if _, err := v.b.Stat(ctx, e.Key); err == nil {
					found[e.Key] = true
				} else if !errors.Is(err, repo.ErrNotFound) {
					return nil, fmt.Errorf("tenant key %s: %w", e.Key, err)
				}
			}
		}
	}
	out := make([]string, 0, len(found))
	for k := range found {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

// DestroyTenantKeys deletes every key object of tenant (TenantKeys), every
// version of each: afterwards no one can decrypt the tenant's chunks in any
// set of set format 2, the identity holder included. It returns the keys
// destroyed; it is safe to run again (a key already gone is not listed).
// What it does not reach: sets in set format 1 and shared change-log
// records, sealed with set and segment keys (see docs/SECURITY.md).
func (v *Vault) DestroyTenantKeys(ctx context.Context, tenant string) ([]string, error) {
	keys, err := v.TenantKeys(ctx, tenant)
	if err != nil {
		return nil, err
	}
	var destroyed []string
	for _, k := range keys {
		if err := v.b.Delete(ctx, k); err != nil {
			return destroyed, fmt.Errorf("destroy tenant key %s: %w", k, err)
		}
		v.tenantDKs.Delete(k)
		destroyed = append(destroyed, k)
	}
	return destroyed, nil
}

// TenantReadable makes sure this side can decrypt tenant entry t's data
// before anything is written: its tenant key object exists, is signed by a
// trusted signer and unwraps with the identities (read once, then used for
// its chunks). An entry without a tenant key needs nothing. A destroyed
// key is an *InputError wrapping ErrTenantKeyDestroyed.
func (v *Vault) TenantReadable(ctx context.Context, t *manifest.Tenant) error {
	if t.Key == "" || len(t.Chunks) == 0 {
		return nil
	}
	_, err := v.tenantDataKey(ctx, fmt.Sprintf("tenant %q", t.ID), t.Key)
	return err
}

// TenantKeyDestroyed reports whether the tenant key object name is gone
// (forget destroyed it): an entry sealed with it is erased, whatever set
// still holds it. It needs no key.
func (v *Vault) TenantKeyDestroyed(ctx context.Context, name string) (bool, error) {
	if !ValidTenantKeyName(name) {
		return false, tenantvault.Integrityf("%q is not a tenant key object", name)
	}
	_, err := v.b.Stat(ctx, name)
	if errors.Is(err, repo.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat tenant key %s: %w", name, err)
	}
	return false, nil
}

// segmentTenantKeys is the capturing side's view of the tenants' keys: one
// listing (and its key objects) kept for segmentKeysFor, then listed again,
// so that a capture running for weeks sees keys made or destroyed since.
func (v *Vault) segmentTenantKeys() (*tenantKeys, error) {
	if len(v.keys.Signing) == 0 {
		return nil, errors.New("no signing key")
	}
	v.segKeysMu.Lock()
	defer v.segKeysMu.Unlock()
	if v.segKeys == nil || v.now().Sub(v.segKeysAt) > segmentKeysFor {
		if v.segKeys != nil {
			v.segKeys.stop()
		}
		v.segKeys, v.segKeysAt = v.newTenantKeys(), v.now()
	}
	return v.segKeys, nil
}

// segmentKeysFor is how long a capture uses one listing of tenant keys.
const segmentKeysFor = 10 * time.Minute

// streamKey is the key the records of stream s of a sealed, opened
// segment were sealed with: the tenant's own, or the segment's.
func (v *Vault) streamKey(ctx context.Context, idx *SegmentIndex, s SegmentStream) ([]byte, error) {
	if s.Key == "" {
		return idx.dataKey, nil
	}
	if s.Shared {
		return nil, tenantvault.Integrityf("change segment %s: shared records sealed with a tenant's key", idx.Key())
	}
	return v.tenantDataKey(ctx, fmt.Sprintf("the change records of tenant %q in %s", s.Tenant, idx.Key()), s.Key)
}

// dropSegmentTenantKeys forgets tk if it is still the capture's, after a
// failure (an upload error stays in it).
func (v *Vault) dropSegmentTenantKeys(tk *tenantKeys) {
	v.segKeysMu.Lock()
	defer v.segKeysMu.Unlock()
	if v.segKeys == tk {
		tk.stop()
		v.segKeys = nil
	}
}
