package vault

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
	"sync"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/repo"
)

// Tombstones and audit records of erased tenants (docs/FORMAT.md,
// "Erased tenants"). A tombstone names its tenant only by a keyed hash, so
// the repository keeps no tenant ID of a tenant it was asked to forget.
const (
	ErasedPrefix = "erased/"
	AuditPrefix  = "audit/"
	// journalPrefix holds the plan of a forget in progress, so that an
	// interrupted forget resumes where it stopped.
	journalPrefix = "forget/"
)

// Tombstone states.
const (
	// TombstoneErasing: forget has started; restores already refuse the
	// tenant, and rerunning forget completes the erasure.
	TombstoneErasing = "erasing"
	// TombstoneErased: no set and no change-log segment holds the tenant.
	TombstoneErased = "erased"
)

// Tombstone records that a tenant was erased. It holds no personal data:
// the tenant appears only as TenantHash, and Reason is what the operator
// typed (the CLI tells them not to put personal data in it).
type Tombstone struct {
	Version    int    `json:"version"`
	TenantHash string `json:"tenant_hash"`
	State      string `json:"state"`
	// Requested is when forget started, Completed when it finished.
	Requested time.Time `json:"requested_at"`
	Completed time.Time `json:"completed_at,omitzero"`
	Reason    string    `json:"reason,omitempty"`
	// By is who ran forget: user and host.
	By string `json:"by"`
	// Method is "rewrite" (plaintext repositories) or "crypto-shred"
	// (encrypted ones: the tenant's keys destroyed).
	Method string      `json:"method"`
	Done   *ForgetDone `json:"done,omitempty"`
}

// ForgetDone summarises what an erasure changed.
type ForgetDone struct {
	Sets         int   `json:"sets_rewritten"`
	SetsHeld     int   `json:"sets_that_held_the_tenant"`
	Segments     int   `json:"segments_rewritten"`
	Packs        int   `json:"packs_rewritten"`
	PacksDropped int   `json:"packs_deleted_without_replacement"`
	BytesCopied  int64 `json:"bytes_copied"`
	BytesDeleted int64 `json:"bytes_deleted"`
	TenantBytes  int64 `json:"tenant_bytes_removed"`
	// SharedRecords are shared change-log records forget could not
	// attribute and kept: they may hold rows of the tenant (not erased).
	SharedRecords int `json:"shared_change_records_kept"`
	// SharedDropped are shared records attributed to the tenant and
	// removed; Truncates are TRUNCATE records kept (they hold no rows).
	SharedDropped int `json:"shared_change_records_dropped"`
	// SharedBlanked are shared records of rows that moved between the
	// tenant and another, kept for the other with the tenant's side
	// blanked.
	SharedBlanked int `json:"shared_change_records_blanked,omitempty"`
	// MovesBlanked are other tenants' move records of rows that moved
	// between them and the tenant, blanked but for the row's key.
	MovesBlanked int `json:"move_records_blanked,omitempty"`
	Truncates    int `json:"truncate_records_kept"`
}

// tombstoneVersion is the tombstone format this build writes.
const tombstoneVersion = 1

// TenantHash is the keyed hash that names tenant in tombstones, audit
// records and journals: HMAC-SHA-256 keyed with the repository's ID. The
// ID is in the repository's config, so the hash keeps tenant IDs out of
// object keys and listings and makes hashes of two repositories unlinkable;
// it does not stop anyone who can read the repository from testing a
// guessed ID (docs/SECURITY.md).
func (v *Vault) TenantHash(tenant string) string {
	return tenantHash(v.tombstoneMAC(), tenant)
}

func (v *Vault) tombstoneMAC() hash.Hash {
	return hmac.New(sha256.New, []byte("tenantvault tombstone v1\x00"+v.cfg.ID))
}

func tenantHash(mac hash.Hash, tenant string) string {
	mac.Reset()
	mac.Write([]byte(tenant))
	var sum [sha256.Size]byte
	return hex.EncodeToString(mac.Sum(sum[:0]))
}

// TombstoneKey is where the tombstone of the tenant with this hash lives.
func TombstoneKey(hash string) string { return ErasedPrefix + hash + recordExt }

func journalKey(hash string) string { return journalPrefix + hash + recordExt }

// Erased returns the tombstone of tenant, or nil when it was never erased.
func (v *Vault) Erased(ctx context.Context, tenant string) (*Tombstone, error) {
	return v.tombstone(ctx, v.TenantHash(tenant))
}

func (v *Vault) tombstone(ctx context.Context, hash string) (*Tombstone, error) {
	var t Tombstone
	err := v.getJSON(ctx, TombstoneKey(hash), &t)
	if errors.Is(err, repo.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read tombstone: %w", err)
	}
	if t.TenantHash != hash {
		return nil, tenantvault.Integrityf("tombstone %s names another tenant hash", TombstoneKey(hash))
	}
	return &t, nil
}

// ErasedIndex is the set of erased tenants' hashes, from one listing of
// erased/: checking any number of tenants against it costs no further
// request until one is found.
type ErasedIndex struct {
	v      *Vault
	hashes map[string]bool
	mu     sync.Mutex
	mac    hash.Hash // keyed once: Reset keeps the key
}

// ErasedTenants lists the tombstones (one listing, whatever the count).
func (v *Vault) ErasedTenants(ctx context.Context) (*ErasedIndex, error) {
	ix := &ErasedIndex{v: v, hashes: map[string]bool{}, mac: v.tombstoneMAC()}
	err := v.b.List(ctx, ErasedPrefix, func(o repo.ObjectInfo) error {
		h, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, ErasedPrefix), recordExt)
		if ok && len(h) == 64 {
			ix.hashes[h] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list erased tenants in %s: %w", v.b.Location(), err)
	}
	return ix, nil
}

// Len is how many tenants were erased.
func (ix *ErasedIndex) Len() int {
	if ix == nil {
		return 0
	}
	return len(ix.hashes)
}

// Has reports whether tenant has a tombstone.
func (ix *ErasedIndex) Has(tenant string) bool {
	if ix == nil || len(ix.hashes) == 0 {
		return false
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return ix.hashes[tenantHash(ix.mac, tenant)]
}

// Tombstone reads tenant's tombstone (one GET); nil when it has none.
func (ix *ErasedIndex) Tombstone(ctx context.Context, tenant string) (*Tombstone, error) {
	if !ix.Has(tenant) {
		return nil, nil
	}
	return ix.v.Erased(ctx, tenant)
}

// When is the date a person reads: when the erasure was requested.
func (t *Tombstone) When() string { return t.Requested.UTC().Format(time.RFC3339) }

// ErasedError refuses tenants that were erased; it is bad input (exit 2).
func ErasedError(ids []string, tombs []*Tombstone) error {
	parts := make([]string, len(ids))
	for i, id := range ids {
		state := ""
		if tombs[i].State == TombstoneErasing {
			state = ", erasure not yet complete"
		}
		parts[i] = fmt.Sprintf("%q (erased on %s%s)", id, tombs[i].When(), state)
	}
	msg := fmt.Sprintf("tenant %s was erased from this repository by tenantvault forget and is never restored", parts[0])
	if len(ids) > 1 {
		msg = fmt.Sprintf("%d tenants were erased from this repository by tenantvault forget and are never restored: %s", len(ids), strings.Join(parts, ", "))
	}
	return &tenantvault.InputError{Msg: msg, Err: ErrErased}
}

// ErrErased is wrapped by ErasedError.
var ErrErased = errors.New("tenant erased")

// RefuseErased returns ErasedError for those of tenants that have a
// tombstone (one listing, then one GET per erased tenant found).
func (v *Vault) RefuseErased(ctx context.Context, tenants []string) error {
	ix, err := v.ErasedTenants(ctx)
	if err != nil {
		return err
	}
	var ids []string
	var tombs []*Tombstone
	for _, id := range tenants {
		t, err := ix.Tombstone(ctx, id)
		if err != nil {
			return err
		}
		if t != nil {
			ids, tombs = append(ids, id), append(tombs, t)
		}
	}
	if len(ids) > 0 {
		return ErasedError(ids, tombs)
	}
	return nil
}

// AuditRecord is what forget writes under audit/ for every tenant it
// erases (and every attempt it refuses after planning): a log an auditor
// reads without the tenant's ID.
type AuditRecord struct {
	Version    int         `json:"version"`
	At         time.Time   `json:"at"`
	Action     string      `json:"action"` // "forget"
	TenantHash string      `json:"tenant_hash"`
	Reason     string      `json:"reason,omitempty"`
	By         string      `json:"by"`
	Outcome    string      `json:"outcome"` // "erased", "failed: ..."
	Plan       PlanSummary `json:"plan"`
	Done       *ForgetDone `json:"done,omitempty"`
}

// AuditKey is where an audit record written at t lives.
func AuditKey(t time.Time) string {
	return AuditPrefix + t.UTC().Format(setIDLayout) + "-" + randomHex(4) + recordExt
}

// WriteAudit stores rec under audit/ (never under object retention).
func (v *Vault) WriteAudit(ctx context.Context, rec *AuditRecord) error {
	rec.Version = tombstoneVersion
	if err := v.putJSON(ctx, AuditKey(rec.At), rec); err != nil {
		return fmt.Errorf("write audit record: %w", err)
	}
	return nil
}

// AuditRecords lists the audit records, oldest first.
func (v *Vault) AuditRecords(ctx context.Context) ([]AuditRecord, error) {
	var keys []string
	if err := v.b.List(ctx, AuditPrefix, func(o repo.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		return nil, err
	}
	out := make([]AuditRecord, 0, len(keys))
	for _, k := range keys {
		var r AuditRecord
		if err := v.getJSON(ctx, k, &r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// RecordErased writes the tombstone (state erased) and the audit record of
// an erasure done by other means than Forget's rewrite, e.g. destroying
// the tenant's keys in an encrypted repository (method "crypto-shred").
func (v *Vault) RecordErased(ctx context.Context, tenant, reason, by, method string, done *ForgetDone) (*Tombstone, error) {
	hash := v.TenantHash(tenant)
	now := v.now().UTC()
	tomb := &Tombstone{Version: tombstoneVersion, TenantHash: hash, State: TombstoneErased, Requested: now, Completed: now, Reason: reason, By: by, Method: method, Done: done}
	if old, err := v.tombstone(ctx, hash); err != nil {
		return nil, err
	} else if old != nil {
		tomb.Requested = old.Requested
	}
	if err := v.putJSON(ctx, TombstoneKey(hash), tomb); err != nil {
		return nil, fmt.Errorf("write tombstone: %w", err)
	}
	if err := v.WriteAudit(ctx, &AuditRecord{At: now, Action: "forget", TenantHash: hash, Reason: reason, By: by, Outcome: TombstoneErased, Done: done}); err != nil {
		return nil, err
	}
	return tomb, nil
}
