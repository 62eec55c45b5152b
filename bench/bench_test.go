package bench_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/bench"
	"github.com/tenantvault/tenantvault/bench/datagen"
	"github.com/tenantvault/tenantvault/internal/testenv"
)

// buildTenantvault builds the CLI the benchmark drives, with the same
// race setting as this test binary so that the build cache serves it.
func buildTenantvault(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("TVBENCH_TENANTVAULT"); p != "" {
		return p
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go is not on PATH to build tenantvault: %v", err)
	}
	out := filepath.Join(t.TempDir(), "tenantvault")
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command(goBin, append(args, "github.com/tenantvault/tenantvault/cmd/tenantvault")...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build tenantvault: %v\n%s", err, b)
	}
	return out
}

// TestSmoke runs the whole side-by-side benchmark on a tiny database, so
// that it cannot rot: every part runs (pgBackRest only where it is
// installed), nothing is timed against a target.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("the smoke benchmark takes a quarter of a minute")
	}
	cfg := bench.Config{
		Tenants: 10, Size: 5 << 20, Seed: 1, Reps: 1, Smoke: true,
		Skip:   map[string]bool{bench.PartProfile: true},
		OutDir: t.TempDir(),
		Log:    testLog{t},
	}
	// pgBackRest needs a cluster the benchmark starts itself, with
	// archiving; without pgBackRest the test environment's server does.
	if _, err := exec.LookPath("pgbackrest"); err == nil {
		t.Log("pgbackrest is installed: the benchmark starts its own cluster")
	} else {
		t.Log("pgbackrest is not installed: its part is skipped; using the test server")
		cfg.PGURL = testenv.PostgresURL(t)
	}
	cfg.TenantVault = buildTenantvault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t0 := time.Now()
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("smoke benchmark took %s", time.Since(t0).Round(time.Millisecond))
	for _, name := range []string{"snapshot/tenantvault", "snapshot/pg_dump", "restore/0/tenantvault", "restore/2/tenantvault",
		"restore/2/floor", "restore/full/pg_restore", "incremental/tenantvault", "load/tenantvault", "load/plain COPY", "limits/copy out all tables"} {
		st := res.Step(name)
		if st == nil || len(st.Samples) == 0 || st.Samples[0].Wall <= 0 {
			t.Errorf("step %s was not measured", name)
		}
	}
	if cfg.PGURL == "" {
		if res.Step("restore/0/pgbackrest") == nil || res.Step("incremental/pgbackrest diff") == nil {
			t.Errorf("pgBackRest is installed but its steps were not measured (skipped: %v)", res.Skipped)
		}
	}
	if tv := res.Step("snapshot/tenantvault").Median(); tv.Bytes <= 0 {
		t.Errorf("repository size not measured")
	}
	md := res.Markdown()
	for _, want := range []string{"### Full snapshot", "### Restore into the live database", "### Mass restore (issue 15)", "### Targets"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, f := range []string{"results.json", "report.md"} {
		if _, err := os.Stat(filepath.Join(cfg.OutDir, f)); err != nil {
			t.Error(err)
		}
	}
}

// TestSmokeChain runs the snapshot and restore parts on a tiny database of
// the chain shape (issue 15), on the test server: the floor and the report
// of the mass restore work on it too.
func TestSmokeChain(t *testing.T) {
	if testing.Short() {
		t.Skip("a smoke benchmark")
	}
	cfg := bench.Config{
		Tenants: 12, Size: 3 << 20, Seed: 1, Reps: 1, Smoke: true, Shape: datagen.ShapeChain,
		Skip: map[string]bool{bench.PartProfile: true, bench.PartPgBackRest: true, bench.PartIncremental: true,
			bench.PartLoad: true, bench.PartLimits: true},
		OutDir: t.TempDir(),
		Log:    testLog{t},
		PGURL:  testenv.PostgresURL(t),
	}
	cfg.TenantVault = buildTenantvault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"snapshot/tenantvault", "restore/0/tenantvault", "restore/2/tenantvault", "restore/2/floor", "restore/full/pg_restore"} {
		st := res.Step(name)
		if st == nil || len(st.Samples) == 0 || st.Samples[0].Wall <= 0 {
			t.Errorf("step %s was not measured", name)
		}
	}
	if res.Data.Rows("reactions") == 0 || res.Data.Rows("attachments") != 0 {
		t.Errorf("not the chain shape: %+v", res.Data.Tables)
	}
	if md := res.Markdown(); !strings.Contains(md, "### Mass restore (issue 15)") {
		t.Errorf("report lacks the mass restore section:\n%s", md)
	}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
