package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// VerifyReplayOptions configure a check of the change log.
type VerifyReplayOptions struct {
	Vault *vault.Vault
	// Scratch is a database URL on a server where a temporary database
	// may be created and dropped.
	Scratch string
	// Tenants limits the check; empty means up to MaxTenants of each pair.
	Tenants    []string
	MaxTenants int
	// Latest, when set, checks only the interval that ends at this set
	// (the agent proves each new interval as its set is written).
	Latest    string
	PgRestore string
	Logger    *slog.Logger
}

// ReplayCheck is the outcome for one pair of consecutive sets.
type ReplayCheck struct {
	From, To string
	Tenants  int
	Changes  int
	Skipped  string // why the pair was not checked (no continuous log)
	// FromLSN and ToLSN bound the interval: the two sets' LSNs.
	FromLSN, ToLSN string
	// Unprovable lists tenants left out because their rows moved between
	// tenants in the interval (MovedError): the log alone cannot replay them.
	Unprovable []string
	// Divergences are the tenants (and tables) whose replay did not end
	// at the newer set's content; Problems says the same in words.
	Divergences []Divergence
	Problems    []string
}

// Divergence is one tenant's replay that did not reach the newer set:
// a table whose digest differs, or (Table empty) a replay that failed.
type Divergence struct {
	Tenant string `json:"tenant"`
	Table  string `json:"table,omitempty"`
	Detail string `json:"detail"`
}

func (c *ReplayCheck) diverged(d Divergence) {
	c.Divergences = append(c.Divergences, d)
	where := fmt.Sprintf("tenant %q", d.Tenant)
	if d.Table != "" {
		where += " table " + d.Table
	}
	if d.Tenant == "" {
		where = "replay"
	}
	c.Problems = append(c.Problems, where+": "+d.Detail)
}

// VerifyReplay proves the change log: for each pair of consecutive sets
// taken at exact LSNs, it restores tenants from the older set into a
// scratch database, replays the log up to the newer set's LSN, and
// compares every table's content digest with the newer set's. Equal digests
// mean the log carried every change between the two, exactly.
func VerifyReplay(ctx context.Context, o VerifyReplayOptions) ([]ReplayCheck, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxTenants <= 0 {
		o.MaxTenants = 10
	}
	ids, err := o.Vault.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	sets, err := o.Vault.ReadManifests(ctx, ids)
	if err != nil {
		return nil, err
	}
	streams := map[string][]*manifest.Manifest{}
	for _, m := range sets {
		if m.LSNExact && m.Kind != manifest.KindPreRestore && !m.Partial {
			k := vault.StreamName(m.Source.SystemID, m.Source.Database)
			streams[k] = append(streams[k], m)
		}
	}
	var out []ReplayCheck
	for _, list := range streams {
		sort.Slice(list, func(i, j int) bool { return lsn(list[i]) < lsn(list[j]) })
		for i := 1; i < len(list); i++ {
			if o.Latest != "" && list[i].ID != o.Latest {
				continue
			}
			c, err := verifyPair(ctx, o, list[i-1], list[i])
			if err != nil {
				return out, err
			}
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, tenantvault.Inputf("no two snapshot sets taken at exact LSNs of the same source: nothing to replay between")
	}
	return out, nil
}

func lsn(m *manifest.Manifest) uint64 {
	l, _ := vault.ParseLSN(m.LSN)
	return l
}

func verifyPair(ctx context.Context, o VerifyReplayOptions, from, to *manifest.Manifest) (ReplayCheck, error) {
	c := ReplayCheck{From: from.ID, To: to.ID, FromLSN: from.LSN, ToLSN: to.LSN}
	rp, err := planReplayTo(ctx, o.Vault, from, to.ConsistentAt, lsn(to))
	if err != nil || rp == nil {
		// The log does not run continuously from one set to the next
		// (capture was off, or it has a gap): nothing to check here.
		c.Skipped = "no continuous change log between them"
		if err != nil {
			c.Skipped += ": " + err.Error()
		}
		return c, nil
	}
	var tenants []string
	if len(o.Tenants) > 0 {
		for _, id := range o.Tenants {
			if from.Tenant(id) != nil && to.Tenant(id) != nil {
				tenants = append(tenants, id)
			}
		}
	} else {
		for _, t := range from.Tenants {
			if to.Tenant(t.ID) != nil {
				tenants = append(tenants, t.ID)
			}
		}
		if len(tenants) > o.MaxTenants {
			// Evenly spread, so the check is repeatable.
			picked := make([]string, 0, o.MaxTenants)
			for i := range o.MaxTenants {
				picked = append(picked, tenants[i*len(tenants)/o.MaxTenants])
			}
			tenants = picked
		}
	}
	kept := tenants[:0]
	for _, id := range tenants {
		if err := checkMoves(rp, id); err != nil {
			c.Unprovable = append(c.Unprovable, fmt.Sprintf("%q: %v", id, err))
			continue
		}
		kept = append(kept, id)
	}
	tenants = kept
	if len(tenants) == 0 {
		c.Skipped = "no tenant in both sets that the change log can replay"
		return c, nil
	}
	c.Tenants = len(tenants)
	// All tenants share one scratch database, except that a row which
	// moved between two of them in the interval is in the older set of
	// one and in the replayed log of the other: whichever comes second
	// collides with it. A tenant that fails on a unique key is checked
	// again alone; a real divergence fails there too.
	alone, err := replayInto(ctx, o, &c, from, to, rp, tenants, len(tenants) > 1)
	if err != nil {
		return c, err
	}
	for _, id := range alone {
		if _, err := replayInto(ctx, o, &c, from, to, rp, []string{id}, false); err != nil {
			return c, err
		}
	}
	return c, nil
}

// replayInto restores tenants from set from into a new scratch database,
// replays the log to set to, and compares every table with it, noting
// divergences in c. With retryCollisions, tenants whose restore failed on
// a unique key are returned instead of noted.
func replayInto(ctx context.Context, o VerifyReplayOptions, c *ReplayCheck, from, to *manifest.Manifest, rp *Replay, tenants []string, retryCollisions bool) (retry []string, err error) {
	scratch, drop, err := scratchDatabase(ctx, o.Scratch, "tenantvault_replay_")
	if err != nil {
		return nil, err
	}
	defer drop()
	rep, err := Run(ctx, Options{Vault: o.Vault, Target: scratch, Tenants: tenants, Select: Selector{SetID: from.ID},
		CreateSchema: true, Replay: rp, PgRestore: o.PgRestore, Logger: o.Logger})
	failed := map[string]bool{}
	if rep != nil {
		for _, tr := range rep.Tenants {
			if tr.Err == nil {
				continue
			}
			failed[tr.Tenant] = true
			var me *MovedError
			if errors.As(tr.Err, &me) {
				// A move found only while replaying (a shared change that
				// takes a parent row to another tenant): not provable by
				// the log, as those the plan found.
				c.Unprovable = append(c.Unprovable, fmt.Sprintf("%q: %v", tr.Tenant, tr.Err))
				c.Tenants--
				continue
			}
			if retryCollisions && uniqueViolation(tr.Err) {
				retry = append(retry, tr.Tenant)
				continue
			}
			c.diverged(Divergence{Tenant: tr.Tenant, Detail: tr.Err.Error()})
		}
	}
	if err != nil && len(failed) == 0 {
		c.diverged(Divergence{Detail: err.Error()})
		return nil, nil
	}
	cfg, err := tenancy.ParseURL(scratch)
	if err != nil {
		return nil, err
	}
	conn, err := tenancy.Connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	for _, id := range tenants {
		if failed[id] {
			continue
		}
		tn := to.Tenant(id)
		chunks := map[int]manifest.Chunk{}
		for _, ch := range tn.Chunks {
			chunks[ch.Table] = ch
		}
		for _, ti := range tenancy.TablesOf(to.Tables, id) {
			t := &to.Tables[ti]
			want, ok := chunks[ti]
			if !ok {
				want = manifest.Chunk{Digest: emptyDigest}
			}
			h := sha256.New()
			tag, err := conn.PgConn().CopyTo(ctx, h, tenancy.TenantCopySQL(t, id))
			if err != nil {
				return nil, fmt.Errorf("read %s of %q in the scratch database: %w", t.QualifiedName(), id, err)
			}
			if got := hex.EncodeToString(h.Sum(nil)); got != want.Digest {
				c.diverged(Divergence{Tenant: id, Table: t.QualifiedName(), Detail: fmt.Sprintf("%d rows after replaying %s..%s, set %s has %d (digests differ)",
					tag.RowsAffected(), from.LSN, to.LSN, to.ID, want.Rows)})
			}
		}
	}
	return retry, nil
}

// uniqueViolation reports whether err is (or reports) a unique key
// violation.
func uniqueViolation(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	return strings.Contains(err.Error(), "(SQLSTATE 23505)")
}

// scratchDatabase creates an empty database on the server of dbURL and
// returns its URL and a func that drops it.
func scratchDatabase(ctx context.Context, dbURL, prefix string) (string, func(), error) {
	cfg, err := tenancy.ParseURL(dbURL)
	if err != nil {
		return "", nil, err
	}
	admin, err := tenancy.Connect(ctx, cfg)
	if err != nil {
		return "", nil, err
	}
	defer admin.Close(context.Background())
	name := prefix + time.Now().UTC().Format("20060102_150405") + "_" + vault.NewSetID(time.Now())[21:]
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+tenancy.Ident(name)+" TEMPLATE template0"); err != nil {
		return "", nil, fmt.Errorf("create scratch database: %w", err)
	}
	drop := func() {
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if c, err := tenancy.Connect(dctx, cfg); err == nil {
			c.Exec(dctx, "DROP DATABASE IF EXISTS "+tenancy.Ident(name)+" WITH (FORCE)")
			c.Close(dctx)
		}
	}
	u, err := tenancy.URLWithDatabase(dbURL, name)
	if err != nil {
		drop()
		return "", nil, err
	}
	return u, drop, nil
}
