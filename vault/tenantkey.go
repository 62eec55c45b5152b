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
// is derived, not stored, on that side: TK = HMAC-SHA-256(HKDF(signing
// seed, "tenantvault tenant key v1"), nonce), and the object's name carries
// the nonce and a MAC under another key derived from the signing seed:
//
//	keys/tenants/<n>-<r>-<m>.key
//	n = first 16 bytes of HMAC(name key, "tenant\0" || tenant ID), hex
//	r = the nonce, 16 random bytes, hex
//	m = first 16 bytes of HMAC(name key, "object\0" || n || "-" || r), hex
//
// One LIST of the prefix per snapshot tells the writer every tenant's key
// (no GET): n finds the tenant, m proves that the name was made by this
// signing key (a name anyone else made is ignored), r gives the key. The
// object itself holds the key wrapped with age to the recipients, signed:
// readers GET it once per tenant, check the signature and unwrap.

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
// nonce.
func (kn *tenantKeyNamer) mine(key string) (n string, nonce []byte, ok bool) {
	n, r, m, ok := parseTenantKeyName(key)
	if !ok || !hmac.Equal([]byte(m), []byte(mac16(kn.nameKey, "object\x00", n, "-", r))) {
		return "", nil, false
	}
	nonce, _ = hex.DecodeString(r)
	return n, nonce, true
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
// set: listed once, created (and uploaded in the background) for tenants
// that have none yet. Memory: the listing, about 130 bytes per tenant.
type tenantKeys struct {
	v          *Vault
	kn         *tenantKeyNamer
	signer     *SigningKey
	recipients []age.Recipient

	listOnce sync.Once
	listErr  error
	listed   map[string][]string // n -> names this signing key made, sorted

	mu      sync.Mutex
	tenants map[string]*tenantKeySlot

	uploads errgroup.Group
	created int
	reused  int
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
		tk.listed = map[string][]string{}
		tk.listErr = tk.v.b.List(ctx, TenantKeysPrefix, func(o repo.ObjectInfo) error {
			if n, _, ok := tk.kn.mine(o.Key); ok {
				tk.listed[n] = append(tk.listed[n], o.Key)
			}
			return nil
		})
		if tk.listErr != nil {
			tk.listErr = fmt.Errorf("list tenant keys: %w", tk.listErr)
		}
		for _, names := range tk.listed {
			sort.Strings(names)
		}
	})
	return tk.listErr
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
		_, nonce, _ := tk.kn.mine(names[0])
		tk.mu.Lock()
		tk.reused++
		tk.mu.Unlock()
		return &tenantKey{name: names[0], dk: tk.kn.key(nonce)}, nil
	}
	nonce := make([]byte, tenantNonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	k := &tenantKey{name: tk.kn.objectKey(n, hex.EncodeToString(nonce)), dk: tk.kn.key(nonce)}
	wrapped, err := wrapKey(k.dk, tk.recipients)
	if err != nil {
		return nil, err
	}
	data := signFrames(tenantKeyMagic, tenantKeySignature, tk.signer, []byte(k.name), wrapped)
	tk.mu.Lock()
	tk.created++
	tk.mu.Unlock()
	// Chunks may be sealed with the key at once; the object must exist
	// before the manifest that names it (wait).
	tk.uploads.Go(func() error {
		err := tk.v.b.Put(repo.WithoutRetention(ctx), k.name, bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return fmt.Errorf("write tenant key %s: %w", k.name, err)
		}
		return nil
	})
	return k, nil
}

// wait returns once every new key object is stored.
func (tk *tenantKeys) wait() error { return tk.uploads.Wait() }

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
	pub, hdr, body, err := openFrames(data, tenantKeyMagic, tenantKeySignature)
	if err != nil {
		return nil, tenantvault.Integrityf("tenant key %s: %v", name, err)
	}
	if !v.keys.trusted(pub) {
		return nil, tenantvault.Integrityf("tenant key %s is signed by %s, which the identity file does not trust: refusing a key that may be forged", name, SignerString(pub))
	}
	if string(hdr) != name {
		return nil, tenantvault.Integrityf("tenant key %s claims to be %q", name, hdr)
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
			if _, _, ok := kn.mine(o.Key); ok {
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
		_, entries, err := v.TenantHistory(ctx, ids, tenant)
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
