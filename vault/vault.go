// Package vault lays snapshot sets out in a repository (format config, manifests, packs of compressed chunks, schema dumps) and reads them back with every checksum checked.
package vault

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
)

// Repository format versions (docs/FORMAT.md). A plaintext repository is
// still written as version 1, so older builds keep reading it; an encrypted
// one is version 2, which older builds refuse instead of misreading.
const (
	FormatPlain     = 1
	FormatEncrypted = 2
	// FormatVersion is the newest layout this build reads and writes.
	FormatVersion = FormatEncrypted
)

// Object keys. Every key ends in a name with an extension, so no key is ever
// a directory-like prefix of another.
const (
	ConfigKey     = "tenantvault.json"
	SetsPrefix    = "sets/"
	PacksPrefix   = "packs/"
	SchemasPrefix = "schemas/"
	manifestExt   = ".json.zst"
)

// Config is the repository's identity and format, stored at ConfigKey.
type Config struct {
	Format  string    `json:"format"` // always "tenantvault"
	Version int       `json:"version"`
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// Encryption is set in an encrypted (version 2) repository.
	Encryption *EncryptionConfig `json:"encryption,omitempty"`
	// Check is the checksum of the config's bytes before it (see
	// EncodeConfig), so that a damaged config is refused rather than read
	// as another repository's. Configs written before it existed have none.
	Check string `json:"check,omitempty"`
}

// EncryptionConfig records that a repository is encrypted. Its keys are
// public and informational: writers encrypt to the recipients they were
// given, never to those a config (which anyone with write access to the
// bucket could replace) names, and readers trust the signers of their own
// key files.
type EncryptionConfig struct {
	Scheme     string   `json:"scheme"` // EncryptionScheme
	Recipients []string `json:"recipients"`
	Signers    []string `json:"signers"`
}

// EncryptionScheme names the encryption of format version 2.
const EncryptionScheme = "age-x25519+aes-256-gcm-stream+ed25519"

// Encrypted reports whether the repository is encrypted.
func (c Config) Encrypted() bool { return c.Encryption != nil }

// checkKey ends the config: it is its last member, and the checksum covers
// every byte before it. Defined on bytes rather than on fields, the rule
// holds for configs of any version, so a reader checks a config before it
// believes anything in it (such as a version number).
const checkKey = `"check"`

func configCheck(prefix []byte) string {
	sum := sha256.Sum256(append([]byte("tenantvault config v1\x00"), prefix...))
	return hex.EncodeToString(sum[:16])
}

// EncodeConfig renders a config as stored: indented JSON whose last member,
// "check", is a checksum of the bytes before it.
func EncodeConfig(c Config) []byte {
	c.Check = ""
	data, _ := json.MarshalIndent(c, "", "  ")
	data = bytes.TrimSuffix(data, []byte("\n}"))
	data = append(data, ",\n  "...)
	check := configCheck(data)
	return append(data, fmt.Sprintf("%s: %q\n}\n", checkKey, check)...)
}

// DecodeConfig parses and checks a repository config. Damage is an error
// wrapping tenantvault.ErrIntegrity; a newer format an *InputError.
func DecodeConfig(data []byte, location string) (Config, error) {
	var c Config
	damaged := func(why string) error {
		return tenantvault.Integrityf("repository %s: %s is damaged (%s)", location, ConfigKey, why)
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, damaged("not JSON")
	}
	if c.Format != "tenantvault" {
		return c, damaged("not a tenantvault config")
	}
	if c.Check != "" {
		i := bytes.LastIndex(data, []byte(checkKey))
		if i < 0 || c.Check != configCheck(data[:i]) {
			return c, damaged("checksum mismatch")
		}
	}
	if c.Version > FormatVersion {
		return c, &tenantvault.InputError{
			Msg:  fmt.Sprintf("repository %s uses format version %d, %s (this one supports up to %d)", location, c.Version, manifest.ErrNewerVersion, FormatVersion),
			Hint: "upgrade tenantvault to use this repository",
			Err:  manifest.ErrNewerVersion,
		}
	}
	switch {
	case c.Version < FormatPlain:
		return c, damaged(fmt.Sprintf("version %d", c.Version))
	case c.Version == FormatPlain && c.Encryption != nil:
		return c, damaged("version 1 cannot be encrypted")
	case c.Version == FormatEncrypted && (c.Encryption == nil || c.Encryption.Scheme != EncryptionScheme):
		return c, damaged("unknown encryption scheme")
	case c.Version == FormatEncrypted && c.Check == "":
		return c, damaged("no checksum")
	}
	return c, nil
}

// Vault is a repository opened for reading and writing snapshot sets.
type Vault struct {
	b      repo.Backend
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	keys   *Keys
	mcache sync.Map // set ID -> *manifest.Manifest (immutable once written), complete
	sets   sync.Map // set ID -> *Set
	// setFormat is the set format WriteManifest writes into a plaintext
	// repository.
	setFormat int
	icache    sync.Map // set ID -> *SetIndex
	bodies    sync.Map // set ID -> []byte: the sealed body of an encrypted set, read with its index

	keyrings sync.Map // set ID -> *keyring: data keys of the sets a decrypted manifest reads from
	schemas  sync.Map // schema archive key -> set ID whose data key sealed it
	writing  sync.Map // set ID -> *setKey: the data key of a set this vault is writing
	// tenantDKs: tenant key object -> the key it holds, once read
	tenantDKs sync.Map
	// segKeys: the capture's tenant keys (see segmentTenantKeys)
	segKeysMu sync.Mutex
	segKeys   *tenantKeys
	segKeysAt time.Time
	// segmentsV1 makes WriteSegment seal every stream with the segment's
	// key, as builds before per-tenant keys did (tests only).
	segmentsV1 bool
	// attempted holds the sets whose manifest upload failed: see
	// ManifestAttempted.
	attempted sync.Map
}

// Options tune Open.
type Options struct {
	// Init writes a new repository config when the repository is empty.
	// Without it, an empty repository is an error.
	Init   bool
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Keys are this side's keys (nil: none). Given any, the repository
	// must be encrypted; with recipients (and a signing key), Init makes
	// an encrypted repository.
	Keys *Keys
	// SetFormat is the set format new sets are written in: 0 (the
	// default) means manifest.Version2; 1 writes what older builds read.
	SetFormat int
}

// Open reads the repository config and checks its format version. An empty
// repository is initialised when opts.Init is set; a non-empty location that
// is not a tenantvault repository is refused either way.
//
// Keys and repository must agree: keys given for a plaintext repository
// are refused (a reader that expects encryption must not silently accept a
// repository someone replaced with a plaintext one, and a writer that was
// told to encrypt must not write plaintext).
func Open(ctx context.Context, b repo.Backend, opts Options) (*Vault, error) {
	v := &Vault{b: b, log: opts.Logger, now: opts.Now, keys: opts.Keys, setFormat: opts.SetFormat}
	if v.setFormat == 0 {
		v.setFormat = manifest.Version2
	}
	if v.setFormat != manifest.Version1 && v.setFormat != manifest.Version2 {
		return nil, tenantvault.Inputf("set format %d is not one this build writes (1 or 2)", opts.SetFormat)
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.keys == nil {
		v.keys = &Keys{}
	}
	data, err := repo.ReadAll(ctx, b, ConfigKey)
	switch {
	case err == nil:
		if v.cfg, err = DecodeConfig(data, b.Location()); err != nil {
			return nil, err
		}
		if !v.cfg.Encrypted() && !v.keys.IsZero() {
			return nil, &tenantvault.InputError{
				Msg:  fmt.Sprintf("repository %s is not encrypted, but keys were given (--identity, --recipient or --signing-key)", b.Location()),
				Hint: "a repository is encrypted from its creation on: write encrypted sets to a new repository, or leave the keys out for this one",
			}
		}
		return v, nil
	case !errors.Is(err, repo.ErrNotFound):
		return nil, fmt.Errorf("open repository %s: %w", b.Location(), err)
	}
	empty := true
	errStop := errors.New("stop")
	if err := b.List(ctx, "", func(repo.ObjectInfo) error { empty = false; return errStop }); err != nil && !errors.Is(err, errStop) {
		return nil, fmt.Errorf("open repository %s: %w", b.Location(), err)
	}
	if !empty {
		return nil, tenantvault.Inputf("%s is not empty and is not a tenantvault repository (no %s)", b.Location(), ConfigKey)
	}
	if !opts.Init {
		return nil, tenantvault.Inputf("repository %s holds no snapshots yet", b.Location())
	}
	v.cfg = Config{Format: "tenantvault", Version: FormatPlain, ID: randomHex(8), Created: v.now().UTC()}
	if recipients := v.keys.RecipientStrings(); len(recipients) > 0 {
		if len(v.keys.Signing) == 0 {
			return nil, &tenantvault.InputError{
				Msg:  "an encrypted repository needs a signing key to sign its manifests",
				Hint: "give --signing-key FILE (written by tenantvault keygen)",
			}
		}
		enc := &EncryptionConfig{Scheme: EncryptionScheme, Recipients: recipients}
		for _, s := range v.keys.Signing {
			enc.Signers = append(enc.Signers, s.Signer())
		}
		v.cfg.Version, v.cfg.Encryption = FormatEncrypted, enc
	} else if !v.keys.IsZero() {
		return nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("repository %s does not exist yet and no recipient was given to encrypt it to", b.Location()),
			Hint: "give --recipient age1... (or --recipients-file) to create an encrypted repository, or no keys for a plaintext one",
		}
	}
	data = EncodeConfig(v.cfg)
	if v.cfg, err = DecodeConfig(data, b.Location()); err != nil {
		return nil, err // a bug: never write what cannot be read back
	}
	if err := b.Put(ctx, ConfigKey, bytes.NewReader(data), int64(len(data))); err != nil {
		return nil, fmt.Errorf("initialise repository %s: %w", b.Location(), err)
	}
	v.log.Info("initialised repository", "repo", b.Location(), "format", v.cfg.Version, "encrypted", v.cfg.Encrypted())
	return v, nil
}

// Backend returns the storage under the vault.
func (v *Vault) Backend() repo.Backend { return v.b }

// Location describes the repository for people.
func (v *Vault) Location() string { return v.b.Location() }

// Config returns the repository config.
func (v *Vault) Config() Config { return v.cfg }

// Encrypted reports whether the repository is encrypted.
func (v *Vault) Encrypted() bool { return v.cfg.Encrypted() }

// CanDecrypt reports whether this vault can read what encrypted sets hold:
// the repository is plaintext, or identities were given.
func (v *Vault) CanDecrypt() bool { return !v.cfg.Encrypted() || len(v.keys.Identities) > 0 }

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return hex.EncodeToString(b)
}

// setIDLayout sorts lexically in time order and is safe in any file name.
const setIDLayout = "20060102T150405.000Z"

// NewSetID returns a fresh set ID for a set started at t: the UTC time to the
// millisecond and 8 random hex digits, e.g. 20261128T110145.123Z-1a2b3c4d.
func NewSetID(t time.Time) string {
	return t.UTC().Format(setIDLayout) + "-" + randomHex(4)
}

// StartedAfter reports whether set id was started after t, from its ID
// alone: a set's instant is later than its start, so a reader looking for
// sets at or before t skips such sets unread.
func StartedAfter(id string, t time.Time) bool {
	if len(id) < len(setIDLayout) {
		return false
	}
	started, err := time.Parse(setIDLayout, id[:len(setIDLayout)])
	return err == nil && started.After(t)
}

// ValidSetID reports whether id has the form NewSetID produces.
func ValidSetID(id string) bool {
	if len(id) != len(setIDLayout)+9 || id[len(setIDLayout)] != '-' {
		return false
	}
	if _, err := time.Parse(setIDLayout, id[:len(setIDLayout)]); err != nil {
		return false
	}
	_, err := hex.DecodeString(id[len(setIDLayout)+1:])
	return err == nil
}

// ManifestKey is where the manifest of set id lives.
func ManifestKey(id string) string { return SetsPrefix + id + manifestExt }

// ListSets returns the IDs of all complete sets (those with a manifest),
// oldest first.
func (v *Vault) ListSets(ctx context.Context) ([]string, error) {
	var ids []string
	err := v.b.List(ctx, SetsPrefix, func(o repo.ObjectInfo) error {
		name := strings.TrimPrefix(o.Key, SetsPrefix)
		if id, ok := strings.CutSuffix(name, manifestExt); ok && ValidSetID(id) {
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list snapshot sets in %s: %w", v.b.Location(), err)
	}
	sort.Strings(ids)
	return ids, nil
}

// ReadManifest loads and checks the manifest of set id. An unknown id is an
// *InputError. In an encrypted repository it needs an identity that the
// set's data key is wrapped for (else an *InputError wrapping
// ErrNoIdentity) and a signature by a trusted signer (else an integrity
// error: the manifest may be forged).
func (v *Vault) ReadManifest(ctx context.Context, id string) (*manifest.Manifest, error) {
	if m, ok := v.mcache.Load(id); ok {
		return m.(*manifest.Manifest), nil
	}
	if !ValidSetID(id) {
		return nil, tenantvault.Inputf("%q is not a snapshot set ID (they look like 20261128T110145.123Z-1a2b3c4d)", id)
	}
	s, err := v.OpenSet(ctx, id)
	if err != nil {
		return nil, err
	}
	m := s.Header()
	if m.Index != nil {
		// The whole set in memory, for callers that need every tenant at
		// once: its cost grows with the tenant count (OpenSet does not).
		full := *m
		full.Tenants = make([]manifest.Tenant, 0, m.Index.Tenants)
		if err := s.Tenants(ctx, func(t *manifest.Tenant) error {
			full.Tenants = append(full.Tenants, *t)
			return nil
		}); err != nil {
			return nil, err
		}
		m = &full
	}
	v.mcache.Store(id, m)
	return m, nil
}

func (v *Vault) readManifestObject(ctx context.Context, id string) ([]byte, error) {
	data, err := repo.ReadAll(ctx, v.b, ManifestKey(id))
	if errors.Is(err, repo.ErrNotFound) {
		return nil, tenantvault.Inputf("no snapshot set %s in %s", id, v.b.Location())
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", id, err)
	}
	return data, nil
}

// ReadIndex loads what anyone may know about set id (see SetIndex): from
// the manifest of a plaintext set, from the signed header of an encrypted
// one, whose signature is checked either way (Authenticated tells whether
// against a signer this side trusts).
func (v *Vault) ReadIndex(ctx context.Context, id string) (*SetIndex, error) {
	if x, ok := v.icache.Load(id); ok {
		return x.(*SetIndex), nil
	}
	if !v.cfg.Encrypted() {
		// From the header: in set format 2 its Chunks are the global
		// chunks only (the tenants' are in the index).
		s, err := v.OpenSet(ctx, id)
		if err != nil {
			return nil, err
		}
		x, _ := v.icache.LoadOrStore(id, indexFromManifest(s.Header()))
		return x.(*SetIndex), nil
	}
	if !ValidSetID(id) {
		return nil, tenantvault.Inputf("%q is not a snapshot set ID (they look like 20261128T110145.123Z-1a2b3c4d)", id)
	}
	data, err := v.readManifestObject(ctx, id)
	if err != nil {
		return nil, err
	}
	x, body, err := decodeSealed(data, v.verdict)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", ManifestKey(id), err)
	}
	if x.ID != id {
		return nil, tenantvault.Integrityf("manifest %s claims to be set %s", ManifestKey(id), x.ID)
	}
	if x.wrapped(id) == nil {
		return nil, tenantvault.Integrityf("manifest %s holds no data key of its own", ManifestKey(id))
	}
	v.bodies.Store(id, body)
	v.icache.Store(id, x)
	return x, nil
}

// ReadIndexes loads the indexes of ids in order, a few at a time.
func (v *Vault) ReadIndexes(ctx context.Context, ids []string) ([]*SetIndex, error) {
	return parallelRead(ctx, ids, v.ReadIndex)
}

// verdict tells how far a manifest's signer is trusted. Any signature is
// checked; one by a signer outside this side's keys proves only that the
// manifest is intact, not who wrote it.
func (v *Vault) verdict(pub ed25519.PublicKey) signerVerdict {
	if v.keys.trusted(pub) {
		return signerPinned
	}
	return signerConfig
}

// readSealedManifest decrypts the manifest of an encrypted set: the whole
// set in set format 1, its header in set format 2.
func (v *Vault) readSealedManifest(ctx context.Context, id string) (*manifest.Manifest, error) {
	x, err := v.ReadIndex(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(v.keys.Identities) == 0 {
		return nil, &tenantvault.InputError{
			Msg:  fmt.Sprintf("snapshot set %s is encrypted: reading it needs the identity file (--identity FILE or TENANTVAULT_IDENTITY)", id),
			Hint: "restore, verify --read-data, drill and list need the identity written by `tenantvault keygen`; verify without --identity checks that every stored object is intact",
			Err:  ErrNoIdentity,
		}
	}
	if !x.Authenticated() {
		if !v.keys.hasTrust() {
			return nil, &tenantvault.InputError{
				Msg:  fmt.Sprintf("snapshot set %s is signed by %s, and the identity file names no trusted signer", id, x.Signer),
				Hint: "add the snapshotting side's signer line (tvsign1..., printed by keygen) or its signing key to the identity file",
			}
		}
		return nil, tenantvault.Integrityf("snapshot set %s is signed by %s, which the identity file does not trust: refusing a manifest that may be forged (after a signing key rotation, add the new signer's tvsign1... line to the identity file)", id, x.Signer)
	}
	kr := v.keyring(x)
	dk, err := kr.key(id)
	if err != nil {
		return nil, err
	}
	body, _ := v.bodies.Load(id)
	if body == nil {
		v.icache.Delete(id)
		return v.readSealedManifest(ctx, id)
	}
	plain, err := openBytes(dk, body.([]byte), maxManifestSize)
	if err != nil {
		return nil, tenantvault.Integrityf("manifest %s: body: %v", ManifestKey(id), err)
	}
	m, err := manifest.Decode(plain)
	if err != nil {
		return nil, err
	}
	if err := x.sameAs(m); err != nil {
		return nil, tenantvault.Integrityf("manifest %s: %v", ManifestKey(id), err)
	}
	for _, s := range m.Schemas {
		v.schemas.Store(s.Key, id)
		if s.Split != nil {
			v.schemas.Store(s.Split.Key, id)
		}
	}
	v.bodies.Delete(id)
	return m, nil
}

// maxManifestSize bounds a decrypted manifest body (as manifest.Decode
// bounds what it inflates).
const maxManifestSize = 4 << 30

// ReadManifests loads the manifests of ids in order, a few at a time.
func (v *Vault) ReadManifests(ctx context.Context, ids []string) ([]*manifest.Manifest, error) {
	return parallelRead(ctx, ids, v.ReadManifest)
}

func parallelRead[T any](ctx context.Context, ids []string, read func(context.Context, string) (T, error)) ([]T, error) {
	return parallelReadN(ctx, ids, 8, read)
}

func parallelReadN[I, T any](ctx context.Context, ids []I, n int, read func(context.Context, I) (T, error)) ([]T, error) {
	out := make([]T, len(ids))
	errs := make([]error, len(ids))
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = read(ctx, id)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// WriteManifest stores m; it is the last write of a set, after which the set
// exists. It refuses to overwrite an existing manifest.
func (v *Vault) WriteManifest(ctx context.Context, m *manifest.Manifest) error {
	if m.Index != nil {
		return fmt.Errorf("refusing to write manifest %s: it is a set format 2 header, not a whole set", m.ID)
	}
	if m.Version >= manifest.Version2 {
		m.Version = manifest.Version1 // validated as the whole set it is
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("refusing to write an invalid manifest: %w", err)
	}
	key := ManifestKey(m.ID)
	if _, err := v.b.Stat(ctx, key); err == nil {
		return fmt.Errorf("manifest %s already exists", key)
	} else if !errors.Is(err, repo.ErrNotFound) {
		return fmt.Errorf("write manifest %s: %w", key, err)
	}
	if err := v.checkShared(ctx, m); err != nil {
		return err
	}
	if v.WritesIndexed() {
		w, err := v.NewIndexWriter(m.ID, "")
		if err != nil {
			return err
		}
		defer w.Close()
		for i := range m.Tenants {
			if err := w.Add(&m.Tenants[i]); err != nil {
				return err
			}
		}
		hdr := *m
		hdr.Tenants = nil
		if err := v.CommitSet(ctx, &hdr, w); err != nil {
			return err
		}
		v.mcache.Store(m.ID, m)
		return nil
	}
	data, err := manifest.Encode(m)
	if err != nil {
		return err
	}
	x := indexFromManifest(m)
	if v.cfg.Encrypted() {
		if x, data, err = v.sealManifest(ctx, m, data, nil); err != nil {
			return fmt.Errorf("write manifest %s: %w", key, err)
		}
	}
	if err := v.b.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		// An upload whose answer was lost (a connection reset after the
		// last byte, a timeout) may have been stored all the same: then
		// the set exists, and deleting its packs now would leave a listed
		// set with nothing behind it.
		if !v.landed(ctx, key, data) {
			v.attempted.Store(m.ID, true)
			return fmt.Errorf("write manifest %s: %w", key, err)
		}
		v.log.Warn("the manifest upload reported an error, but the manifest is stored, complete: the set exists", "set", m.ID, "err", err)
	}
	if v.cfg.Encrypted() {
		// The writer forgets the data key: what it wrote, it cannot
		// decrypt again (the manifest is cached in memory for this run).
		v.forgetSetKey(m.ID)
		x.authBy = signerPinned
	}
	v.mcache.Store(m.ID, m)
	v.icache.Store(m.ID, x)
	return nil
}

// WritesIndexed reports whether new sets are written in set format 2
// (CommitSet) rather than as one manifest (WriteManifest).
func (v *Vault) WritesIndexed() bool {
	return v.setFormat == manifest.Version2
}

// CommitSet writes a set in set format 2: the tenant index w holds, then
// hdr (a manifest without tenants) as the set's header, the last write,
// after which the set exists. It refuses to overwrite an existing set.
func (v *Vault) CommitSet(ctx context.Context, hdr *manifest.Manifest, w *IndexWriter) error {
	if !v.WritesIndexed() {
		return fmt.Errorf("write set %s: this repository takes set format 1", hdr.ID)
	}
	if len(hdr.Tenants) > 0 {
		return fmt.Errorf("write set %s: a header holds no tenants", hdr.ID)
	}
	key := ManifestKey(hdr.ID)
	if _, err := v.b.Stat(ctx, key); err == nil {
		return fmt.Errorf("manifest %s already exists", key)
	} else if !errors.Is(err, repo.ErrNotFound) {
		return fmt.Errorf("write manifest %s: %w", key, err)
	}
	hdr.Version, hdr.Index = manifest.Version1, nil
	if err := hdr.Validate(); err != nil {
		return fmt.Errorf("refusing to write an invalid manifest: %w", err)
	}
	if err := v.checkShared(ctx, hdr); err != nil {
		return err
	}
	if k, ok := v.writing.Load(hdr.ID); ok && k.(*setKey).tenants != nil {
		// The key objects the entries name exist before the set does.
		if err := k.(*setKey).tenants.wait(); err != nil {
			return err
		}
		found, created := v.TenantKeyStats(hdr.ID)
		v.log.Debug("tenant keys", "set", hdr.ID, "found", found, "created", created)
	}
	ix, sx, err := w.finish(ctx, hdr)
	if err != nil {
		return err
	}
	hdr.Version, hdr.Index, hdr.Stats.Tenants, hdr.Stats.Tables = manifest.Version2, ix, ix.Tenants, len(hdr.Tables)
	if w.moved != nil {
		// Set format 3: the header keeps the tables not moved to entries.
		hdr.Version, hdr.TablePositions = manifest.Version3, []int{}
		for p, moved := range w.moved {
			if !moved {
				hdr.TablePositions = append(hdr.TablePositions, p)
			}
		}
		hdr.TableCount = len(hdr.Tables)
	}
	if v.cfg.Encrypted() && hasSplit(hdr) {
		// Set format 4: older readers would take the sealed parts for
		// damaged ones; they refuse the set instead.
		if hdr.Version != manifest.Version3 {
			return fmt.Errorf("write set %s: a sealed split schema needs set format 3 (owned tables)", hdr.ID)
		}
		hdr.Version = manifest.Version4
	}
	if len(hdr.Schemas) > 1 && hdr.Schemas[0].Covers != "" {
		// Set format 5: older readers would take the first of the
		// archives for the whole schema; they refuse the set instead.
		if hdr.Version < manifest.Version3 {
			return fmt.Errorf("write set %s: a schema in batches needs set format 3 (owned tables)", hdr.ID)
		}
		hdr.Version = manifest.Version5
	}
	if hdr.Version == manifest.Version2 {
		hdr.Version, hdr.TablePositions, hdr.TableCount = manifest.Version3, make([]int, len(hdr.Tables)), len(hdr.Tables)
		for p := range hdr.TablePositions {
			hdr.TablePositions[p] = p
		}
	}
	// Set format 6: this build's packers store chunks in the columnar
	// layout (codec 3), which older readers refuse the set for instead
	// of taking the chunks for damaged ones.
	hdr.Version = manifest.Version6
	if err := hdr.Validate(); err != nil {
		return fmt.Errorf("refusing to write an invalid manifest: %w", err)
	}
	data, err := manifest.Encode(hdr)
	if err != nil {
		return err
	}
	x := indexFromManifest(hdr)
	if v.cfg.Encrypted() {
		if x, data, err = v.sealManifest(ctx, hdr, data, sx); err != nil {
			return fmt.Errorf("write manifest %s: %w", key, err)
		}
	}
	if err := v.b.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		if !v.landed(ctx, key, data) {
			v.attempted.Store(hdr.ID, true)
			return fmt.Errorf("write manifest %s: %w", key, err)
		}
		v.log.Warn("the manifest upload reported an error, but the manifest is stored, complete: the set exists", "set", hdr.ID, "err", err)
	}
	if v.cfg.Encrypted() {
		// As in set format 1, the writer forgets the data key: it
		// cannot read back the sealed pages it wrote.
		v.forgetSetKey(hdr.ID)
		x.authBy = signerPinned
		// The set exists; its catalog only speeds up list. A pre-restore
		// set has none: a restore must not wait for it.
		if w.cat != nil && hdr.Kind != manifest.KindPreRestore {
			if err := v.writeSetCatalog(ctx, hdr, w.cat); err != nil {
				v.log.Warn("could not write the set's catalog (list stays correct, only slower)", "set", hdr.ID, "err", err)
			}
		}
	}
	v.sets.Store(hdr.ID, &Set{v: v, m: hdr, lastPage: -1})
	v.icache.Store(hdr.ID, x)
	return nil
}

// landed reports whether an upload that failed stored data under key
// anyway, reading it back even when ctx has ended.
func (v *Vault) landed(ctx context.Context, key string, data []byte) bool {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	got, err := repo.ReadAll(cctx, v.b, key)
	return err == nil && bytes.Equal(got, data)
}

// ManifestAttempted reports whether writing the manifest of set id failed
// after its upload had started: it may exist yet (a slow or partitioned
// storage may still commit it), so the set's packs must not be deleted;
// GC collects them if it never appears.
func (v *Vault) ManifestAttempted(id string) bool {
	_, ok := v.attempted.Load(id)
	return ok
}

// checkShared makes sure the objects m shares with earlier sets (reused
// packs, schema archives) still exist: a purge and GC may have collected
// them while the snapshot ran, and a manifest must never point at nothing.
func (v *Vault) checkShared(ctx context.Context, m *manifest.Manifest) error {
	own := PacksPrefix + m.ID + "/"
	var keys []string
	for _, p := range m.Packs {
		if !strings.HasPrefix(p, own) {
			keys = append(keys, p)
		}
	}
	for _, s := range m.Schemas {
		keys = append(keys, s.Key)
		if s.Split != nil {
			keys = append(keys, s.Split.Key)
		}
	}
	for _, k := range keys {
		_, err := v.b.Stat(ctx, k)
		if errors.Is(err, repo.ErrNotFound) {
			return fmt.Errorf("set %s shares %s with an earlier set, and it was deleted while the snapshot ran (a purge?); not writing the manifest, the next snapshot stores the data again", m.ID, k)
		}
		if err != nil {
			return fmt.Errorf("write manifest %s: check %s: %w", ManifestKey(m.ID), k, err)
		}
	}
	// Under object retention, what the new set shares must stay locked as
	// long as the new set's own objects: otherwise, once the older set's
	// lock ends, deleting a shared pack would break the newer set that the
	// lock is meant to protect.
	if r, ok := repo.AsRetainer(v.b); ok {
		until := time.Now().Add(r.Retention()) // the storage's clock, as for new objects
		for _, k := range keys {
			if err := r.ExtendRetention(ctx, k, until); err != nil {
				return fmt.Errorf("write manifest %s: extend the retention of %s, which it shares: %w", ManifestKey(m.ID), k, err)
			}
		}
	}
	return nil
}

// hasSplit reports whether a schema archive of m has split schema SQL.
func hasSplit(m *manifest.Manifest) bool {
	for _, s := range m.Schemas {
		if s.Split != nil {
			return true
		}
	}
	return false
}
