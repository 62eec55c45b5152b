// Package vault lays snapshot sets out in a repository (format config, manifests, packs of compressed chunks, schema dumps) and reads them back with every checksum checked.
package vault

import (
	"bytes"
	"context"
	"crypto/rand"
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

// FormatVersion is the repository layout this build writes (docs/FORMAT.md).
const FormatVersion = 1

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
}

// Vault is a repository opened for reading and writing snapshot sets.
type Vault struct {
	b      repo.Backend
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	mcache sync.Map // set ID -> *manifest.Manifest (immutable once written)
}

// Options tune Open.
type Options struct {
	// Init writes a new repository config when the repository is empty.
	// Without it, an empty repository is an error.
	Init   bool
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Open reads the repository config and checks its format version. An empty
// repository is initialised when opts.Init is set; a non-empty location that
// is not a tenantvault repository is refused either way.
func Open(ctx context.Context, b repo.Backend, opts Options) (*Vault, error) {
	v := &Vault{b: b, log: opts.Logger, now: opts.Now}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.now == nil {
		v.now = time.Now
	}
	data, err := repo.ReadAll(ctx, b, ConfigKey)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &v.cfg); err != nil || v.cfg.Format != "tenantvault" {
			return nil, tenantvault.Integrityf("repository %s: %s is damaged", b.Location(), ConfigKey)
		}
		if v.cfg.Version > FormatVersion {
			return nil, &tenantvault.InputError{
				Msg:  fmt.Sprintf("repository %s uses format version %d, %s (this one supports up to %d)", b.Location(), v.cfg.Version, manifest.ErrNewerVersion, FormatVersion),
				Hint: "upgrade tenantvault to use this repository",
				Err:  manifest.ErrNewerVersion,
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
	v.cfg = Config{Format: "tenantvault", Version: FormatVersion, ID: randomHex(8), Created: v.now().UTC()}
	data, _ = json.MarshalIndent(v.cfg, "", "  ")
	if err := b.Put(ctx, ConfigKey, bytes.NewReader(data), int64(len(data))); err != nil {
		return nil, fmt.Errorf("initialise repository %s: %w", b.Location(), err)
	}
	v.log.Info("initialised repository", "repo", b.Location(), "format", FormatVersion)
	return v, nil
}

// Backend returns the storage under the vault.
func (v *Vault) Backend() repo.Backend { return v.b }

// Location describes the repository for people.
func (v *Vault) Location() string { return v.b.Location() }

// Config returns the repository config.
func (v *Vault) Config() Config { return v.cfg }

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
// *InputError.
func (v *Vault) ReadManifest(ctx context.Context, id string) (*manifest.Manifest, error) {
	if m, ok := v.mcache.Load(id); ok {
		return m.(*manifest.Manifest), nil
	}
	if !ValidSetID(id) {
		return nil, tenantvault.Inputf("%q is not a snapshot set ID (they look like 20261128T110145.123Z-1a2b3c4d)", id)
	}
	data, err := repo.ReadAll(ctx, v.b, ManifestKey(id))
	if errors.Is(err, repo.ErrNotFound) {
		return nil, tenantvault.Inputf("no snapshot set %s in %s", id, v.b.Location())
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", id, err)
	}
	m, err := manifest.Decode(data)
	if err != nil {
		return nil, err
	}
	if m.ID != id {
		return nil, tenantvault.Integrityf("manifest %s claims to be set %s", ManifestKey(id), m.ID)
	}
	v.mcache.Store(id, m)
	return m, nil
}

// ReadManifests loads the manifests of ids in order, a few at a time.
func (v *Vault) ReadManifests(ctx context.Context, ids []string) ([]*manifest.Manifest, error) {
	out := make([]*manifest.Manifest, len(ids))
	errs := make([]error, len(ids))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = v.ReadManifest(ctx, id)
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
	data, err := manifest.Encode(m)
	if err != nil {
		return err
	}
	if err := v.b.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("write manifest %s: %w", key, err)
	}
	v.mcache.Store(m.ID, m)
	return nil
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
	return nil
}
