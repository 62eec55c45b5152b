// Package bench runs tenantvault side by side with pg_dump/pg_restore and pgBackRest on one generated database and reports medians and ratios.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/bench/datagen"
)

// Parts of the benchmark that can be switched off (Config.Skip).
const (
	PartPgDump      = "pg_dump"     // pg_dump -Fd -j 2 and pg_restore -j 2
	PartPgBackRest  = "pgbackrest"  // full backup, whole-cluster restore path, diff backup
	PartRestore     = "restore"     // tenantvault restores into the live database
	PartIncremental = "incremental" // second snapshot after 1% of tenants changed
	PartLoad        = "load"        // load throughput vs plain COPY FROM
	PartLimits      = "limits"      // COPY, zstd, SHA-256 and disk throughput
	PartProfile     = "profile"     // CPU profiles and EXPLAIN ANALYZE
)

// AllParts lists the parts in the order they run.
var AllParts = []string{PartPgDump, PartPgBackRest, PartRestore, PartIncremental, PartLoad, PartLimits, PartProfile}

// Variant is an extra tenantvault snapshot configuration measured beside
// the default one, e.g. {"work-mem 512MB", ["--work-mem=512MB"]}.
type Variant struct {
	Name string
	Args []string
	// Flags are extra tenantvault flags of a restore variant (e.g.
	// --parallel 3; the last of a repeated flag wins).
	Flags []string
}

// Config says what to run.
type Config struct {
	Tenants int
	Size    int64 // target table bytes of the generated database
	// Shape is the generated schema: datagen.ShapeTracker ("" too) or
	// datagen.ShapeChain.
	Shape string
	Seed  int64
	// Reps is how many times each measured step runs (the median is
	// reported); LoadReps for the load-throughput pair, which is slow.
	Reps     int
	LoadReps int
	// Smoke marks a CI-sized run: no profiles, small physical-limit samples.
	Smoke bool
	Skip  map[string]bool
	// PGURL, when set, is a superuser URL of a server to use instead of
	// starting one; pgBackRest then cannot run (it needs the data
	// directory and archiving of a cluster we configure).
	PGURL    string
	PGBindir string
	// TenantVault is the tenantvault binary; PgBackRest the pgbackrest
	// binary ("" looks it up on PATH; missing means that part is skipped).
	TenantVault string
	// Baseline, when set, is another tenantvault binary (an earlier
	// build) whose snapshot, into a repository of its own, and restore of
	// the largest scenario from it are measured in the same repetitions,
	// for before/after ratios on a shared machine.
	Baseline   string
	PgBackRest string
	// PgBackRestCompress is compress-type:level for pgBackRest.
	PgBackRestCompress string
	Variants           []Variant
	// RestoreVariants are what-if restores measured beside the default
	// one: Args[0] is added to the query string of the target URL, e.g.
	// "options=-c enable_seqscan=off" to try server settings in
	// tenantvault's sessions without changing tenantvault, or Flags.
	RestoreVariants []Variant
	// WorkDir is where the temporary directory goes ("" = system temp);
	// OutDir receives results.json, report.md, logs and profiles.
	WorkDir string
	OutDir  string
	// Keep leaves the temporary directory in place (the clusters are
	// stopped all the same).
	Keep bool
	Log  io.Writer
}

// Scenario is one restore size.
type Scenario struct {
	Name    string   `json:"name"`
	Tenants []string `json:"tenants"`
	// Share is the scenario's fraction of all tenant bytes (pg_column_size).
	Share float64 `json:"data_share"`
	Rows  int64   `json:"rows"`
}

// Step is one measured thing and its samples.
type Step struct {
	Name    string   `json:"name"`
	What    string   `json:"what"`
	Samples []Sample `json:"samples"`
}

// Results is everything measured.
type Results struct {
	Started   time.Time          `json:"started"`
	Finished  time.Time          `json:"finished"`
	Machine   map[string]string  `json:"machine"`
	Config    map[string]string  `json:"config"`
	Data      datagen.Stats      `json:"data"`
	Scenarios []Scenario         `json:"scenarios"`
	Steps     []*Step            `json:"steps"`
	Values    map[string]float64 `json:"values"` // single numbers: sizes, throughputs
	Notes     []string           `json:"notes"`
	Skipped   []string           `json:"skipped"`
}

// Step returns the named step, or nil.
func (r *Results) Step(name string) *Step {
	for _, s := range r.Steps {
		if s.Name == name {
			return s
		}
	}
	return nil
}

type bench struct {
	cfg     Config
	log     *lockedLog
	res     *Results
	tmp     string
	logDir  string
	pgBin   string // bindir of pg_dump, pg_restore (client programs)
	own     *cluster
	side    *cluster // restored by pgBackRest
	extPM   int      // postmaster of the external server
	adminDB string   // URL of the maintenance database
	prefix  string   // database name prefix
	liveURL string
	live    string // live database name
	created []string
	pgbr    *pgbackrest
	dump    string // directory of the pg_dump kept for pg_restore
	repos   []string
	// baselineRepo is the --baseline build's repository (first repetition).
	baselineRepo string
	schema       string // pg_dump --schema-only custom-format file
	// floorFiles are the largest scenario's rows as COPY files, one per
	// table, extracted once for the bare-COPY floor.
	floorFiles []string
}

func (b *bench) postmasters() []int {
	var out []int
	if b.own != nil {
		out = append(out, b.own.postmaster())
	}
	if b.side != nil {
		out = append(out, b.side.postmaster())
	}
	if b.extPM > 0 {
		out = append(out, b.extPM)
	}
	return out
}

func (b *bench) enabled(part string) bool { return !b.cfg.Skip[part] }

func (b *bench) skip(part, why string) {
	if b.cfg.Skip[part] {
		return
	}
	b.cfg.Skip[part] = true
	msg := fmt.Sprintf("%s skipped: %s", part, why)
	b.res.Skipped = append(b.res.Skipped, msg)
	b.log.printf("%s", msg)
}

func (b *bench) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.res.Notes = append(b.res.Notes, msg)
	b.log.printf("note: %s", msg)
}

// add records a sample of step name.
func (b *bench) add(name, what string, s Sample) {
	st := b.res.Step(name)
	if st == nil {
		st = &Step{Name: name, What: what}
		b.res.Steps = append(b.res.Steps, st)
	}
	st.Samples = append(st.Samples, s)
	b.log.printf("%-44s %7.2fs wall  %6.2fs cpu  %6.2fs server  %7.1f MiB rss  %s  (load %.1f)",
		name, s.Wall, s.CPU(), s.Server, float64(max(s.TreeRSS, s.MaxRSS))/(1<<20), humanBytes(s.Bytes), s.Load)
}

func (b *bench) value(name string, v float64) {
	b.res.Values[name] = v
}

// Run runs the benchmark and returns what it measured; the report is
// also written to cfg.OutDir.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	if cfg.Tenants <= 0 || cfg.Size <= 0 {
		return nil, errors.New("bench: tenants and size must be positive")
	}
	if cfg.Reps <= 0 {
		cfg.Reps = 1
	}
	if cfg.LoadReps <= 0 {
		cfg.LoadReps = cfg.Reps
	}
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	if cfg.Skip == nil {
		cfg.Skip = map[string]bool{}
	} else {
		skip := map[string]bool{}
		for k, v := range cfg.Skip {
			skip[k] = v
		}
		cfg.Skip = skip
	}
	if cfg.PgBackRestCompress == "" {
		cfg.PgBackRestCompress = "zst:1"
	}
	if cfg.TenantVault == "" {
		return nil, errors.New("bench: no tenantvault binary given")
	}
	b := &bench{cfg: cfg, log: &lockedLog{w: cfg.Log}, res: &Results{
		Started: time.Now().UTC(), Values: map[string]float64{}, Machine: machineInfo(), Config: map[string]string{},
	}}
	var err error
	b.tmp, err = os.MkdirTemp(cfg.WorkDir, "tvbench-")
	if err != nil {
		return nil, err
	}
	// The postgres user must reach the clusters inside.
	os.Chmod(b.tmp, 0o711)
	if cfg.OutDir == "" {
		cfg.OutDir = filepath.Join(b.tmp, "out")
		b.cfg.OutDir = cfg.OutDir
	}
	b.logDir = filepath.Join(cfg.OutDir, "logs")
	if err := os.MkdirAll(b.logDir, 0o755); err != nil {
		return nil, err
	}
	defer b.cleanup()
	b.log.printf("work directory %s, results in %s", b.tmp, cfg.OutDir)
	err = b.run(ctx)
	b.res.Finished = time.Now().UTC()
	if werr := b.writeResults(); werr != nil && err == nil {
		err = werr
	}
	return b.res, err
}

func (b *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if b.pgbr != nil && b.own != nil {
		b.pgbr.stop(ctx)
	}
	b.side.stop()
	b.own.stop()
	if b.own == nil && b.adminDB != "" && len(b.created) > 0 {
		if conn, err := pgx.Connect(ctx, b.adminDB); err == nil {
			for _, db := range b.created {
				conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)")
			}
			conn.Close(ctx)
		}
	}
	if b.cfg.Keep {
		b.log.printf("kept %s", b.tmp)
		return
	}
	if err := os.RemoveAll(b.tmp); err != nil {
		b.log.printf("warning: remove %s: %v", b.tmp, err)
	}
}

func randomSuffix() string {
	var x [4]byte
	rand.Read(x[:])
	return hex.EncodeToString(x[:])
}

func (b *bench) dbURL(name string) string {
	u, _ := url.Parse(b.adminDB)
	u.Path = "/" + name
	return u.String()
}

// createDB creates an empty database and remembers it for cleanup.
func (b *bench) createDB(ctx context.Context, name string) (string, error) {
	if err := b.exec(ctx, b.adminDB, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", err
	}
	b.created = append(b.created, name)
	return b.dbURL(name), nil
}

func (b *bench) dropDB(ctx context.Context, name string) error {
	err := b.exec(ctx, b.adminDB, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	for i, n := range b.created {
		if n == name {
			b.created = append(b.created[:i], b.created[i+1:]...)
			break
		}
	}
	return err
}

func (b *bench) exec(ctx context.Context, dbURL string, sqls ...string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, s := range sqls {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%.120s: %w", s, err)
		}
	}
	return nil
}

func (b *bench) setup(ctx context.Context) error {
	cfg := &b.cfg
	bindir, binErr := findBindir(cfg.PGBindir)
	if cfg.PGURL == "" {
		if binErr != nil {
			return binErr
		}
		dir := filepath.Join(b.tmp, "pg")
		c, err := initCluster(ctx, bindir, dir)
		if err != nil {
			return err
		}
		b.own = c
		// archive_mode needs a restart to change, archive_command only a
		// reload: archiving is on from the start but discards WAL until
		// the pgBackRest stanza exists, so generating the data does not
		// archive gigabytes of WAL.
		if err := c.start(ctx, map[string]string{"archive_mode": "on", "archive_command": "'/bin/true'"}); err != nil {
			return err
		}
		b.adminDB = c.url("postgres")
		b.prefix = ""
		b.log.printf("started PostgreSQL on port %d (data %s)", c.port, c.data)
	} else {
		b.adminDB = cfg.PGURL
		b.prefix = "tvbench_" + randomSuffix() + "_"
		b.extPM = externalPostmaster(ctx, cfg.PGURL)
	}
	b.pgBin = bindir
	if binErr != nil {
		b.pgBin = "" // client programs from PATH
	}
	return nil
}

// externalPostmaster finds the postmaster of a server on this machine
// through a backend's parent process; 0 if it cannot.
func externalPostmaster(ctx context.Context, dbURL string) int {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0
	}
	defer conn.Close(ctx)
	var pid int
	if conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid) != nil {
		return 0
	}
	st, ok := readStat(pid)
	if !ok {
		return 0
	}
	return st.ppid
}

func (b *bench) pgProgram(name string) string {
	if b.pgBin != "" {
		if p := filepath.Join(b.pgBin, name); fileExists(p) {
			return p
		}
	}
	return name
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func (b *bench) run(ctx context.Context) error {
	cfg := &b.cfg
	if err := b.setup(ctx); err != nil {
		return err
	}
	b.res.Config["tenants"] = strconv.Itoa(cfg.Tenants)
	b.res.Config["size"] = humanBytes(cfg.Size)
	b.res.Config["seed"] = strconv.FormatInt(cfg.Seed, 10)
	if cfg.Shape == "" {
		cfg.Shape = datagen.ShapeTracker
	}
	b.res.Config["shape"] = cfg.Shape
	b.res.Config["reps"] = strconv.Itoa(cfg.Reps)
	b.res.Config["load_reps"] = strconv.Itoa(cfg.LoadReps)
	b.res.Config["smoke"] = strconv.FormatBool(cfg.Smoke)
	b.res.Config["pgbackrest_compress"] = cfg.PgBackRestCompress
	if v, err := exec.Command(b.pgProgram("postgres"), "--version").Output(); err == nil {
		b.res.Machine["postgres"] = strings.TrimSpace(string(v))
	}
	if v, err := exec.Command(b.pgProgram("pg_dump"), "--version").Output(); err == nil {
		b.res.Machine["pg_dump"] = strings.TrimSpace(string(v))
	}

	// pgBackRest needs a cluster we own, and the program.
	if b.enabled(PartPgBackRest) {
		bin := cfg.PgBackRest
		if bin == "" {
			bin, _ = exec.LookPath("pgbackrest")
		}
		switch {
		case bin == "":
			b.skip(PartPgBackRest, "pgbackrest is not installed (Debian: apt-get install pgbackrest)")
		case b.own == nil:
			b.skip(PartPgBackRest, "it needs a cluster this benchmark starts itself (a server URL was given)")
		default:
			b.pgbr = &pgbackrest{bin: bin, b: b}
			if v, err := exec.Command(bin, "version").Output(); err == nil {
				b.res.Machine["pgbackrest"] = strings.TrimSpace(string(v))
			}
		}
	}

	// The data.
	b.live = b.prefix + "saas"
	var err error
	if b.liveURL, err = b.createDB(ctx, b.live); err != nil {
		return err
	}
	b.log.printf("generating %d tenants, %s", cfg.Tenants, humanBytes(cfg.Size))
	st, err := datagen.Generate(ctx, b.liveURL, datagen.Options{
		Tenants: cfg.Tenants, TargetBytes: cfg.Size, Seed: cfg.Seed, Shape: cfg.Shape,
		Logf: func(f string, a ...any) { b.log.printf(f, a...) },
	})
	if err != nil {
		return err
	}
	b.res.Data = st
	b.res.Data.TenantRows = nil // a thousand lines of JSON nobody reads
	b.value("generate_s", st.Elapsed.Seconds())
	if err := b.exec(ctx, b.liveURL, "CHECKPOINT"); err != nil {
		return err
	}
	if err := b.chooseScenarios(ctx); err != nil {
		return err
	}
	if b.pgbr != nil {
		if err := b.pgbr.setup(ctx); err != nil {
			return fmt.Errorf("pgbackrest setup: %w", err)
		}
	}
	// A schema-only archive, to make empty copies of the live database.
	b.schema = filepath.Join(b.tmp, "schema.dump")
	if out, err := exec.CommandContext(ctx, b.pgProgram("pg_dump"), "--schema-only", "-Fc", "-f", b.schema, "-d", b.liveURL).CombinedOutput(); err != nil {
		return fmt.Errorf("pg_dump --schema-only: %v\n%s", err, out)
	}

	steps := []struct {
		name, part string // part "" always runs
		f          func(context.Context) error
	}{
		{"limits", PartLimits, b.limits},
		{"snapshots", "", b.snapshots},
		{"restores", "", b.restoreRounds},
		{"load", PartLoad, b.loadThroughput},
		{"profiles", PartProfile, b.profiles},
		{"incremental", PartIncremental, b.incremental},
	}
	for _, s := range steps {
		if s.part != "" && !b.enabled(s.part) {
			continue
		}
		t0 := time.Now()
		if err := s.f(ctx); err != nil {
			return err
		}
		b.log.printf("part %s done in %s", s.name, time.Since(t0).Round(time.Second))
	}
	return nil
}

// chooseScenarios picks the tenants of each restore size. Tenants are
// sorted by size, largest first, and cut into n strata of equal count; the
// tenant in the middle of each stratum is taken. One tenant is thus the
// median tenant; 1% of 1000 takes ranks 50, 150, ..., 950; 40% takes
// about every other tenant of every size. A systematic sample over the
// size distribution: the same tenants every run, a realistic mix of small
// and large, and the share of the data they hold is reported.
func (b *bench) chooseScenarios(ctx context.Context) error {
	sizes, err := datagen.TenantSizes(ctx, b.liveURL)
	if err != nil {
		return err
	}
	var total int64
	for _, s := range sizes {
		total += s.Bytes
	}
	n := len(sizes)
	pick := func(name string, k int) Scenario {
		k = min(max(k, 1), n)
		sc := Scenario{Name: name}
		var bytes int64
		for i := range k {
			idx := int(math.Floor((float64(i) + 0.5) * float64(n) / float64(k)))
			s := sizes[idx]
			sc.Tenants = append(sc.Tenants, s.ID)
			sc.Rows += s.Rows
			bytes += s.Bytes
		}
		sort.Strings(sc.Tenants)
		sc.Share = float64(bytes) / float64(total)
		return sc
	}
	b.res.Scenarios = []Scenario{
		pick("1 tenant", 1),
		pick("1% of tenants", int(math.Ceil(0.01*float64(n)))),
		pick("40% of tenants", int(math.Round(0.40*float64(n)))),
	}
	for _, s := range b.res.Scenarios {
		b.log.printf("scenario %s: %d tenants, %d rows, %.1f%% of the data", s.Name, len(s.Tenants), s.Rows, 100*s.Share)
	}
	if len(sizes) > 0 {
		b.value("largest_tenant_share", float64(sizes[0].Bytes)/float64(total))
		b.value("median_tenant_share", float64(sizes[n/2].Bytes)/float64(total))
	}
	return nil
}

func (b *bench) tenantsFile(sc Scenario) (string, error) {
	p := filepath.Join(b.tmp, "tenants-"+sanitize(sc.Name)+".txt")
	return p, os.WriteFile(p, []byte(strings.Join(sc.Tenants, "\n")+"\n"), 0o644)
}

// snapshots measures full snapshots: tenantvault (and its variants),
// pg_dump -Fd -j 2 and a pgBackRest full backup, interleaved rep by rep so
// that changes in the machine's load hit all of them alike.
func (b *bench) snapshots(ctx context.Context) error {
	for r := 1; r <= b.cfg.Reps; r++ {
		repo := filepath.Join(b.tmp, fmt.Sprintf("repo%d", r))
		b.repos = append(b.repos, repo)
		s, err := b.tvSnapshot(ctx, repo, "tenantvault snapshot", nil)
		if err != nil {
			return err
		}
		s.Bytes = dirSize(repo)
		b.add("snapshot/tenantvault", "tenantvault snapshot --parallel 2 (default zstd level 2, work-mem 64MB); bytes = repository size", s)
		if b.cfg.Baseline != "" {
			// The baseline's own repository: a build restores what it
			// wrote, whichever set format either writes.
			brepo := filepath.Join(b.tmp, fmt.Sprintf("repo-baseline%d", r))
			s, err := b.runMeasured(ctx, command{name: "baseline snapshot", args: b.tvSnapshotArgs(b.cfg.Baseline, brepo, nil)})
			if err != nil {
				return err
			}
			s.Bytes = dirSize(brepo)
			if r == 1 {
				b.baselineRepo = brepo
			} else {
				os.RemoveAll(brepo)
			}
			b.add("snapshot/baseline build", "the --baseline tenantvault binary's snapshot (its defaults); bytes = repository size", s)
		}
		for _, v := range b.cfg.Variants {
			vrepo := filepath.Join(b.tmp, "repo-variant")
			s, err := b.tvSnapshot(ctx, vrepo, "tenantvault snapshot "+v.Name, v.Args)
			if err != nil {
				return err
			}
			s.Bytes = dirSize(vrepo)
			os.RemoveAll(vrepo)
			b.add("snapshot/tenantvault "+v.Name, "tenantvault snapshot "+strings.Join(v.Args, " ")+"; bytes = repository size", s)
		}
		if b.enabled(PartPgDump) {
			dir := filepath.Join(b.tmp, fmt.Sprintf("dump%d", r))
			s, err := b.runMeasured(ctx, command{name: "pg_dump", args: []string{b.pgProgram("pg_dump"), "-Fd", "-j", "2", "-f", dir, "-d", b.liveURL}})
			if err != nil {
				return err
			}
			s.Bytes = dirSize(dir)
			b.add("snapshot/pg_dump", "pg_dump -Fd -j 2 (default gzip compression); bytes = dump directory size", s)
			if b.dump == "" {
				b.dump = dir
			} else {
				os.RemoveAll(dir)
			}
		}
		if b.pgbr != nil && b.enabled(PartPgBackRest) {
			s, err := b.pgbr.backup(ctx, "full")
			if err != nil {
				return err
			}
			b.add("snapshot/pgbackrest", "pgbackrest backup --type=full (process-max 2, "+b.cfg.PgBackRestCompress+"); bytes = repository growth (backup + its WAL)", s)
		}
	}
	return nil
}

func (b *bench) tvSnapshot(ctx context.Context, repo, name string, extra []string) (Sample, error) {
	return b.runMeasured(ctx, command{name: name, args: b.tvSnapshotArgs(b.cfg.TenantVault, repo, extra)})
}

func (b *bench) tvSnapshotArgs(bin, repo string, extra []string) []string {
	args := []string{bin, "snapshot", "--source", b.liveURL, "--repo", "file://" + repo, "--init",
		"--temp-dir", b.tmp, "--pg-dump", b.pgProgram("pg_dump")}
	return append(args, extra...)
}

// deleteTenants deletes tenants the way a bad maintenance script does.
func (b *bench) deleteTenants(ctx context.Context, ids []string) error {
	conn, err := pgx.Connect(ctx, b.liveURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	t0 := time.Now()
	tag, err := conn.Exec(ctx, "DELETE FROM public.tenants WHERE id = ANY($1)", ids)
	if err != nil {
		return fmt.Errorf("delete tenants: %w", err)
	}
	if int(tag.RowsAffected()) != len(ids) {
		return fmt.Errorf("delete tenants: %d deleted, %d expected", tag.RowsAffected(), len(ids))
	}
	b.log.printf("deleted %d tenants in %s", len(ids), time.Since(t0).Round(time.Millisecond))
	return nil
}

// settle vacuums the live database after a delete and restore, so that
// the next run finds it as the first did.
func (b *bench) settle(ctx context.Context, dbURL string) error {
	if b.cfg.Smoke {
		return nil // nothing to settle in a tiny database, and CI waits
	}
	t0 := time.Now()
	var stmts []string
	for _, t := range datagen.TablesOf(b.cfg.Shape) {
		stmts = append(stmts, "VACUUM (ANALYZE) public."+t)
	}
	stmts = append(stmts, "CHECKPOINT")
	err := b.exec(ctx, dbURL, stmts...)
	b.log.printf("vacuumed in %s", time.Since(t0).Round(time.Millisecond))
	return err
}

// checkTenants makes sure every tenant of ids is back.
func (b *bench) checkTenants(ctx context.Context, dbURL string, ids []string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM public.tenants WHERE id = ANY($1)", ids).Scan(&n); err != nil {
		return err
	}
	if n != len(ids) {
		return fmt.Errorf("after the restore %d of %d tenants are present", n, len(ids))
	}
	return nil
}

// restoreJSON is the part of tenantvault restore --json this reads.
type restoreJSON struct {
	Tenants []struct {
		Bytes    int64 `json:"bytes"`
		Rows     int64 `json:"rows"`
		Verified bool  `json:"verified"`
	} `json:"tenants"`
}

func (b *bench) tvRestore(ctx context.Context, name, repo, target string, sc Scenario, extra ...string) (Sample, error) {
	return b.tvRestoreWith(ctx, b.cfg.TenantVault, name, repo, target, sc, extra...)
}

func (b *bench) tvRestoreWith(ctx context.Context, bin, name, repo, target string, sc Scenario, extra ...string) (Sample, error) {
	f, err := b.tenantsFile(sc)
	if err != nil {
		return Sample{}, err
	}
	var out strings.Builder
	args := []string{bin, "restore", "--repo", "file://" + repo, "--target", target,
		"--tenants-file", f, "--yes", "--parallel", "2", "--json", "--temp-dir", b.tmp}
	args = append(args, extra...)
	s, err := b.runMeasured(ctx, command{name: name, args: args, stdout: &out})
	if err != nil {
		return s, err
	}
	var rj restoreJSON
	if err := json.Unmarshal([]byte(out.String()), &rj); err != nil {
		return s, fmt.Errorf("%s: read --json output: %v", name, err)
	}
	for _, t := range rj.Tenants {
		if !t.Verified {
			return s, fmt.Errorf("%s: a tenant was not verified", name)
		}
		s.Bytes += t.Bytes
	}
	return s, nil
}

// restoreRounds runs the restore comparisons rep by rep, each rep all of
// them one after the other, so that a change in the machine's load hits
// all of them alike and per-repetition ratios can be taken.
func (b *bench) restoreRounds(ctx context.Context) error {
	for r := 1; r <= b.cfg.Reps; r++ {
		if b.enabled(PartRestore) {
			if err := b.restores(ctx); err != nil {
				return err
			}
		}
		if b.enabled(PartPgDump) {
			if err := b.pgRestores(ctx); err != nil {
				return err
			}
		}
		if b.enabled(PartPgBackRest) {
			if err := b.pgbrRestores(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// restores measures tenantvault restoring each scenario into the live
// database after deleting its tenants.
func (b *bench) restores(ctx context.Context) error {
	for i, sc := range b.res.Scenarios {
		if err := b.deleteTenants(ctx, sc.Tenants); err != nil {
			return err
		}
		if i == len(b.res.Scenarios)-1 {
			// As before the floor's load, which it is compared with.
			if err := b.settle(ctx, b.liveURL); err != nil {
				return err
			}
		}
		s, err := b.tvRestore(ctx, "tenantvault restore "+sc.Name, b.repos[0], b.liveURL, sc)
		if err != nil {
			return err
		}
		b.add(fmt.Sprintf("restore/%d/tenantvault", i), "tenantvault restore --parallel 2 of "+sc.Name+" into the live database; bytes = COPY bytes loaded", s)
		if err := b.checkTenants(ctx, b.liveURL, sc.Tenants); err != nil {
			return err
		}
		if err := b.settle(ctx, b.liveURL); err != nil {
			return err
		}
		if i == len(b.res.Scenarios)-1 {
			if err := b.floor(ctx, i, sc); err != nil {
				return err
			}
			if b.cfg.Baseline != "" {
				if err := b.deleteTenants(ctx, sc.Tenants); err != nil {
					return err
				}
				if err := b.settle(ctx, b.liveURL); err != nil {
					return err
				}
				s, err := b.tvRestoreWith(ctx, b.cfg.Baseline, "baseline restore "+sc.Name, b.baselineRepo, b.liveURL, sc)
				if err != nil {
					return err
				}
				b.add(fmt.Sprintf("restore/%d/baseline", i), "the --baseline tenantvault binary's restore --parallel 2 of "+sc.Name+" into the live database", s)
				if err := b.checkTenants(ctx, b.liveURL, sc.Tenants); err != nil {
					return err
				}
				if err := b.settle(ctx, b.liveURL); err != nil {
					return err
				}
			}
		}
		for _, v := range b.cfg.RestoreVariants {
			if err := b.deleteTenants(ctx, sc.Tenants); err != nil {
				return err
			}
			if i == len(b.res.Scenarios)-1 {
				// Settled as the default restore of it was.
				if err := b.settle(ctx, b.liveURL); err != nil {
					return err
				}
			}
			s, err := b.tvRestore(ctx, "tenantvault restore "+sc.Name+" "+v.Name, b.repos[0], withParams(b.liveURL, v.Args), sc, v.Flags...)
			if err != nil {
				return err
			}
			b.add(fmt.Sprintf("restore/%d/tenantvault %s", i, v.Name), "what-if: tenantvault restore of "+sc.Name+" with "+v.describe(), s)
			if err := b.checkTenants(ctx, b.liveURL, sc.Tenants); err != nil {
				return err
			}
			if err := b.settle(ctx, b.liveURL); err != nil {
				return err
			}
		}
	}
	return nil
}

// floor measures the cost of only moving the scenario's rows: the same
// tenants' rows, extracted beforehand to one COPY file per table, deleted
// from the live database, then loaded back into the same live tables by
// bare COPY FROM STDIN on one connection, in one transaction, with
// triggers off and no checks. Only the load is timed. Mass restore is
// measured against it (issue 15).
func (b *bench) floor(ctx context.Context, i int, sc Scenario) error {
	if b.floorFiles == nil {
		files, size, err := extractTenants(ctx, b.cfg.Shape, b.liveURL, filepath.Join(b.tmp, "floor"), sc.Tenants)
		if err != nil {
			return err
		}
		b.floorFiles = files
		b.value("floor_copy_bytes", float64(size))
	}
	if err := b.deleteTenants(ctx, sc.Tenants); err != nil {
		return err
	}
	if err := b.settle(ctx, b.liveURL); err != nil {
		return err
	}
	s, err := b.measureFunc(func() (int64, error) { return loadFiles(ctx, b.liveURL, b.floorFiles, 1) })
	if err != nil {
		return err
	}
	b.add(fmt.Sprintf("restore/%d/floor", i), "the floor: the same rows, extracted beforehand, loaded back into the live tables by bare COPY FROM STDIN (one connection, triggers off, no checks); load only", s)
	if err := b.checkTenants(ctx, b.liveURL, sc.Tenants); err != nil {
		return err
	}
	return b.settle(ctx, b.liveURL)
}

// withParams adds URL query parameters (k=v&k2=v2, values unescaped) to
// a database URL.
// describe says what a restore variant changes.
func (v Variant) describe() string {
	if len(v.Flags) > 0 {
		return strings.Join(v.Flags, " ")
	}
	return strings.Join(v.Args, " ") + " on its connections"
}

func withParams(dbURL string, params []string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		return dbURL
	}
	q := u.Query()
	for _, p := range params {
		for _, kv := range strings.Split(p, "&") {
			k, v, _ := strings.Cut(kv, "=")
			q.Set(k, v)
		}
	}
	// libpq-style parsers (pgx among them) do not read '+' as a space.
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

// pgRestores measures pg_restore -j 2 of the whole dump into an empty
// database: the first half of restoring tenants from a pg_dump.
func (b *bench) pgRestores(ctx context.Context) error {
	if b.dump == "" {
		return nil
	}
	{
		name := b.prefix + "pgrestore"
		target, err := b.createDB(ctx, name)
		if err != nil {
			return err
		}
		s, err := b.runMeasured(ctx, command{name: "pg_restore", args: []string{b.pgProgram("pg_restore"), "-j", "2", "-d", target, b.dump}})
		if err != nil {
			return err
		}
		s.Bytes = dirSize(b.dump)
		b.add("restore/full/pg_restore", "pg_restore -j 2 of the whole pg_dump -Fd into an empty database; bytes = dump size", s)
		if err := b.dropDB(ctx, name); err != nil {
			return err
		}
		if err := b.exec(ctx, b.adminDB, "CHECKPOINT"); err != nil {
			return err
		}
	}
	return nil
}

// emptyCopy creates a database with the live schema (tables, keys,
// indexes, foreign keys) and the global reference rows, and no tenant: a
// copy of a template made once from the schema-only dump.
func (b *bench) emptyCopy(ctx context.Context, name string) (string, error) {
	tmpl := b.prefix + "template"
	if !slices.Contains(b.created, tmpl) {
		if err := b.makeTemplate(ctx, tmpl); err != nil {
			return "", err
		}
	}
	if err := b.dropDB(ctx, name); err != nil {
		return "", err
	}
	if err := b.exec(ctx, b.adminDB, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+pgx.Identifier{tmpl}.Sanitize()); err != nil {
		return "", err
	}
	b.created = append(b.created, name)
	return b.dbURL(name), nil
}

func (b *bench) makeTemplate(ctx context.Context, tmpl string) error {
	u, err := b.createDB(ctx, tmpl)
	if err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, b.pgProgram("pg_restore"), "--no-owner", "-d", u, b.schema).CombinedOutput(); err != nil {
		return fmt.Errorf("pg_restore --schema-only: %v\n%s", err, out)
	}
	src, err := pgx.Connect(ctx, b.liveURL)
	if err != nil {
		return err
	}
	defer src.Close(ctx)
	dst, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer dst.Close(ctx)
	globals := []string{"plans", "countries"}
	if b.cfg.Shape == datagen.ShapeChain {
		globals = nil
	}
	for _, t := range globals {
		if _, err := copyBetween(ctx, src, dst, "SELECT * FROM public."+t, t); err != nil {
			return err
		}
	}
	return b.exec(ctx, u, "VACUUM (ANALYZE)")
}

func machineInfo() map[string]string {
	m := map[string]string{}
	if out, err := exec.Command("nproc").Output(); err == nil {
		m["nproc"] = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "MemTotal:") {
				m["memory"] = strings.TrimSpace(strings.TrimPrefix(l, "MemTotal:"))
			}
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				m["cpu"] = strings.TrimSpace(l[strings.Index(l, ":")+1:])
				break
			}
		}
	}
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		m["kernel"] = strings.TrimSpace(string(out))
	}
	m["load_at_start"] = strconv.FormatFloat(loadAvg(), 'f', 2, 64)
	return m
}

func humanBytes(n int64) string {
	switch {
	case n == 0:
		return "-"
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
