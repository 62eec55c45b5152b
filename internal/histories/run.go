package histories

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file" // file:// repositories
	_ "github.com/tenantvault/tenantvault/repo/s3"   // s3:// repositories
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// Options configure one history.
type Options struct {
	Seed     uint64
	Features Features
	// Rounds is the number of rounds of transactions (default 12).
	Rounds int
}

// Divergence is a restore that did not give the recorded state, failed,
// or refused without a reason.
type Divergence struct {
	Class   string // wrong data, restore failed, refused without a move, replay proof
	Instant int
	At      time.Time
	Tenant  string
	Detail  string
}

func (d Divergence) String() string {
	if d.Class == ClassProof || d.Class == ClassCapture {
		return fmt.Sprintf("%s: %s", d.Class, d.Detail)
	}
	return fmt.Sprintf("%s: tenant %q at instant %d (%s): %s", d.Class, d.Tenant, d.Instant, d.At.Format(time.RFC3339Nano), d.Detail)
}

// Classes of divergence.
const (
	ClassWrong   = "wrong data"
	ClassFailed  = "restore failed"
	ClassRefused = "refused without a move"
	ClassProof   = "replay proof"
	ClassCapture = "capture stopped"
)

// Result is what one history did and found.
type Result struct {
	Seed        uint64
	Features    Features
	Schema      string
	Instants    int // (instant, tenant) restores compared or refused
	Refused     int // refusals after a move of a referenced row
	Divergences []Divergence
	Commits     int
	Rollbacks   int
	FailedOps   int // operations undone by their savepoint
	Moves       int
	Sets        int
	Records     int64 // change records archived
	Shared      int64 // of which archived as shared
	Log         []string
	Proofs      int // pairs of sets proved by verify --replay
	Unprovable  int // tenants verify --replay left out after a move
	Restores    int
	RestoreTime time.Duration
	Workload    time.Duration
	Checking    time.Duration
}

// instant is a moment between transactions and what the checked tenants
// held then.
type instant struct {
	at     time.Time
	states map[string]State
	moved  map[string][]string // tenant -> moves committed before at
}

// Run runs one history: a generated schema and workload on a fresh source
// database with the capture running, then a restore of each checked
// tenant to each recorded instant into a scratch database made from the
// same DDL, compared row for row with what plain SQL read at that instant.
func Run(t testing.TB, ctx context.Context, o Options) *Result {
	t.Helper()
	if o.Rounds <= 0 {
		o.Rounds = 12
	}
	res := &Result{Seed: o.Seed, Features: o.Features}
	rng := newRand(o.Seed)
	s := generateSchema(rng, o.Features)
	res.Schema = s.Describe()
	g := &gen{s: s, f: o.Features, rng: rng}
	rounds := g.rounds(o.Rounds)
	checked := append([]string(nil), s.Tenants[:2]...)
	cfg := tenancy.Config{TenantTable: s.TenantTable.Name}
	if !s.ViaTenantTable {
		cfg.TenantColumn = s.TenantCol
	}
	logf := func(format string, args ...any) { res.Log = append(res.Log, fmt.Sprintf(format, args...)) }
	logf("schema: %s", res.Schema)
	logf("checked tenants: %q", checked)

	src := testenv.NewDatabase(t)
	ddl := s.DDL()
	testenv.Exec(t, src, ddl)
	testenv.Exec(t, src, s.populate())
	url := "file://" + t.TempDir()
	if o.Seed%4 == 0 {
		url = testenv.NewS3Repo(t)
	}
	b, err := repo.Open(ctx, url, repo.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v, err := vault.Open(ctx, b, vault.Options{Init: true})
	if err != nil {
		t.Fatal(err)
	}

	stats := &capture.Stats{}
	stop, ended := startCapture(t, ctx, src, v, cfg, stats)
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	takeSet := func() {
		if _, err := snapshot.Run(ctx, snapshot.Options{Source: src, Vault: v, Tenancy: cfg, ExactLSN: true}); err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		res.Sets++
		logf("snapshot set %d", res.Sets)
	}
	takeSet()

	obs := testenv.Connect(t, src)
	conns := make([]*pgx.Conn, 3)
	for i := range conns {
		conns[i] = testenv.Connect(t, src)
		// A lock wait ends the operation, not the history: concurrent
		// transactions that lock in opposite orders fail fast instead of
		// waiting for the deadlock detector.
		if _, err := conns[i].Exec(ctx, "SET lock_timeout = '150ms'"); err != nil {
			t.Fatal(err)
		}
	}
	var instants []instant
	var moves []move
	record := func(pause time.Duration) {
		time.Sleep(pause)
		in := instant{states: map[string]State{}, moved: map[string][]string{}}
		for _, id := range checked {
			st, err := s.Read(ctx, obs, id)
			if err != nil {
				t.Fatal(err)
			}
			in.states[id] = st
		}
		if err := obs.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&in.at); err != nil {
			t.Fatal(err)
		}
		for _, m := range moves {
			for _, id := range []string{m.from, m.to} {
				if id != "" {
					in.moved[id] = append(in.moved[id], m.what)
				}
			}
		}
		instants = append(instants, in)
		logf("instant %d at %s", len(instants)-1, in.at.Format(time.RFC3339Nano))
		time.Sleep(pause)
	}
	start := time.Now()
	record(5 * time.Millisecond)
	for ri, r := range rounds {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for ti, tp := range r.txns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out := runTxn(ctx, conns[ti], tp)
				mu.Lock()
				defer mu.Unlock()
				for _, l := range out.log {
					logf("round %d txn %d: %s", ri, ti, l)
				}
				switch {
				case out.err != nil:
					logf("round %d txn %d: failed: %v", ri, ti, out.err)
					res.Rollbacks++
				case tp.rollback:
					res.Rollbacks++
				default:
					res.Commits++
					moves = append(moves, out.moves...)
					res.Moves += len(out.moves)
				}
				res.FailedOps += out.failed
			}()
		}
		wg.Wait()
		if ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
		if r.mark {
			pause := 5 * time.Millisecond
			if r.fast {
				pause = 0
			}
			record(pause)
		}
		if r.set {
			takeSet()
		}
	}
	// Some histories end with a set of their own, and the log between
	// each two sets is proved by verify --replay, for every tenant.
	proof := o.Seed%3 == 0
	if proof {
		takeSet()
	}
	res.Workload = time.Since(start)
	err = waitArchived(t, ctx, v, src, ended)
	res.Records, res.Shared = stats.Records.Load(), stats.Shared.Load()
	if err != nil {
		// Nothing after the capture stopped can be restored; that it
		// stopped in the middle of a history is the finding.
		res.Divergences = append(res.Divergences, Divergence{Class: ClassCapture, Detail: err.Error()})
		return res
	}
	stop()
	stopped = true
	res.Records, res.Shared = stats.Records.Load(), stats.Shared.Load()

	// The restores.
	start = time.Now()
	scratch := testenv.NewDatabase(t)
	testenv.Exec(t, scratch, ddl)
	sc := testenv.Connect(t, scratch)
	var all []string
	for _, tb := range s.Tables {
		all = append(all, tb.q())
	}
	truncate := "TRUNCATE " + strings.Join(all, ", ")
	restoreInto := func(at time.Time, ids []string) error {
		if _, err := sc.Exec(ctx, truncate); err != nil {
			t.Fatal(err)
		}
		rs := time.Now()
		_, err := restore.Run(ctx, restore.Options{Vault: v, Target: scratch, Tenants: ids, Select: restore.Selector{At: at}})
		res.Restores++
		res.RestoreTime += time.Since(rs)
		return err
	}
	for i, in := range instants {
		// Every checked tenant in one restore; only when it fails, one by
		// one, to tell which failed and why.
		together := restoreInto(in.at, checked) == nil
		for _, id := range checked {
			res.Instants++
			div := Divergence{Instant: i, At: in.at, Tenant: id}
			if !together {
				if err := restoreInto(in.at, []string{id}); err != nil {
					var ie *tenantvault.InputError
					var me *restore.MovedError
					switch {
					case errors.As(err, &me) && errors.As(err, &ie) && len(in.moved[id]) > 0:
						res.Refused++
						logf("instant %d, tenant %q: refused after %s: %v", i, id, strings.Join(in.moved[id], ", "), err)
					case errors.As(err, &ie):
						div.Class, div.Detail = ClassRefused, err.Error()
						res.Divergences = append(res.Divergences, div)
					default:
						div.Class, div.Detail = ClassFailed, err.Error()
						res.Divergences = append(res.Divergences, div)
					}
					continue
				}
			}
			got, err := s.Read(ctx, sc, id)
			if err != nil {
				t.Fatal(err)
			}
			if d := Diff(in.states[id], got); d != "" {
				div.Class, div.Detail = ClassWrong, d
				if m := in.moved[id]; len(m) > 0 {
					div.Detail += "\n  (moves before this instant: " + strings.Join(m, ", ") + ")"
				}
				res.Divergences = append(res.Divergences, div)
			}
		}
	}
	if proof {
		checks, err := restore.VerifyReplay(ctx, restore.VerifyReplayOptions{Vault: v, Scratch: testenv.PostgresURL(t)})
		if err != nil {
			t.Fatalf("verify replay: %v", err)
		}
		var moved []string
		for _, m := range moves {
			moved = append(moved, m.what)
		}
		movedTenants := map[string]bool{}
		for _, m := range moves {
			movedTenants[m.from], movedTenants[m.to] = true, true
		}
		for _, c := range checks {
			res.Proofs++
			for _, u := range c.Unprovable {
				// Each entry is the quoted tenant ID and why.
				id := u
				if q, err := strconv.QuotedPrefix(u); err == nil {
					id, _ = strconv.Unquote(q)
				}
				if !movedTenants[id] {
					res.Divergences = append(res.Divergences, Divergence{Class: ClassProof, Detail: fmt.Sprintf("sets %s to %s: tenant %q called unprovable (moved rows), but no row of it moved", c.From, c.To, id)})
				}
			}
			res.Unprovable += len(c.Unprovable)
			for _, p := range c.Problems {
				d := Divergence{Class: ClassProof, Detail: fmt.Sprintf("sets %s to %s: %s", c.From, c.To, p)}
				if len(moved) > 0 {
					d.Detail += " (moves in the history: " + strings.Join(moved, ", ") + ")"
				}
				res.Divergences = append(res.Divergences, d)
			}
			if c.Skipped != "" {
				logf("verify replay %s to %s skipped: %s", c.From, c.To, c.Skipped)
			}
		}
	}
	res.Checking = time.Since(start)
	return res
}

type txnOutcome struct {
	log    []string
	moves  []move
	failed int
	err    error
}

// runTxn runs a transaction, each operation in a savepoint.
func runTxn(ctx context.Context, conn *pgx.Conn, tp txnPlan) (out txnOutcome) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		out.err = err
		return out
	}
	defer tx.Rollback(context.Background())
	for _, o := range tp.ops {
		if _, err := tx.Exec(ctx, "SAVEPOINT op"); err != nil {
			out.err = err
			return out
		}
		m, err := o.run(ctx, tx)
		if err != nil {
			out.failed++
			out.log = append(out.log, o.desc+": undone: "+firstLine(err.Error()))
			if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT op"); err != nil {
				out.err = err
				return out
			}
			continue
		}
		out.log = append(out.log, o.desc)
		if m != nil {
			out.moves = append(out.moves, *m)
		}
	}
	if tp.rollback {
		out.log = append(out.log, "rolled back")
		out.moves = nil
		return out
	}
	if err := tx.Commit(ctx); err != nil {
		out.err = err
		out.moves = nil
	}
	return out
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// Read returns a tenant's rows by plain SQL.
func (s *Schema) Read(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, tenant string) (State, error) {
	st := State{}
	for _, t := range s.Tables {
		rows, err := q.Query(ctx, s.ReadSQL(t), tenant)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", t.q(), err)
		}
		vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", t.q(), err)
		}
		if len(vals) > 0 {
			st[t.Name] = vals
		}
	}
	return st, nil
}

// startCapture runs the capture on db until the returned stop is called,
// and returns once its slot exists, so a set taken next is continued by
// the log. ended reports the error of a capture that stopped by itself.
func startCapture(t testing.TB, ctx context.Context, db string, v *vault.Vault, cfg tenancy.Config, stats *capture.Stats) (stop func(), ended func() error) {
	t.Helper()
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var runErr error
	go func() {
		defer close(done)
		runErr = capture.Run(cctx, capture.Options{Source: db, Vault: v, Tenancy: cfg, SetReplicaIdentity: true,
			FlushInterval: 200 * time.Millisecond, Heartbeat: 200 * time.Millisecond, Stats: stats})
	}()
	ended = func() error {
		select {
		case <-done:
			if runErr == nil && cctx.Err() == nil {
				return errors.New("capture returned without being stopped")
			}
			return runErr
		default:
			return nil
		}
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			wasRunning := ended() == nil
			cancel()
			<-done
			switch err := runErr; {
			case !wasRunning:
				// Reported by the history already.
			case errors.Is(err, context.Canceled):
				// Stopped in the middle of a query: what it archived before
				// is complete (waitArchived saw it), so the check goes on.
				t.Logf("capture stopped with an error (its contract says nil): %v", err)
			case err != nil:
				t.Errorf("capture: %v", err)
			}
		})
	}
	// The slot goes before the database (cleanups run last first).
	t.Cleanup(func() {
		stop()
		capture.DropSlot(context.Background(), db, "")
	})
	conn := testenv.Connect(t, db)
	for {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'tenantvault_%' AND database = current_database() AND confirmed_flush_lsn IS NOT NULL").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return stop, ended
		}
		if err := ended(); err != nil {
			t.Fatalf("capture stopped: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitArchived waits until the change log reaches the source's clock at
// call time, or returns the error of a capture that stopped.
func waitArchived(t testing.TB, ctx context.Context, v *vault.Vault, db string, ended func() error) error {
	t.Helper()
	conn := testenv.Connect(t, db)
	var target time.Time
	var sys string
	if err := conn.QueryRow(ctx, "SELECT clock_timestamp(), system_identifier::text FROM pg_control_system()").Scan(&target, &sys); err != nil {
		t.Fatal(err)
	}
	cfg, err := tenancy.ParseURL(db)
	if err != nil {
		t.Fatal(err)
	}
	stream := vault.StreamName(sys, cfg.Database)
	for ctx.Err() == nil {
		_, until, err := v.ArchivedUntil(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		if !until.Before(target) {
			return nil
		}
		if err := ended(); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("the change log never caught up")
	return nil
}

var (
	quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	digits = regexp.MustCompile(`[0-9]+(?:[./:-][0-9A-F]+)*`)
)

// Signature is a divergence without its numbers and names in quotes, so
// that the same bug in different histories looks the same.
func (d Divergence) Signature() string {
	detail := firstLine(d.Detail)
	if d.Class == ClassWrong {
		// The first table that differs and how.
		detail = strings.TrimSpace(detail)
		if table, rest, ok := strings.Cut(detail, ": "); ok {
			var got, want int
			fmt.Sscanf(rest, "%d rows, want %d", &got, &want)
			how := "rows differ"
			switch {
			case got > want:
				how = "extra rows"
			case got < want:
				how = "missing rows"
			}
			detail = table + ": " + how
		}
		if strings.Contains(d.Detail, "(moves before this instant") {
			detail += " (after a move)"
		}
	}
	if _, rest, ok := strings.Cut(detail, "each rolled back: "); ok {
		detail = rest
	}
	detail = quoted.ReplaceAllString(detail, "…")
	detail = digits.ReplaceAllString(detail, "N")
	return d.Class + ": " + detail
}

// Signatures lists the distinct signatures of a history's divergences.
func (r *Result) Signatures() []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range r.Divergences {
		if s := d.Signature(); !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// Summary renders a history's divergences by class.
func (r *Result) Summary() string {
	classes := map[string]int{}
	for _, d := range r.Divergences {
		classes[d.Class]++
	}
	var parts []string
	for c, n := range classes {
		parts = append(parts, fmt.Sprintf("%d %s", n, c))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
