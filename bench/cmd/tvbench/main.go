// Command tvbench runs tenantvault side by side with pg_dump/pg_restore and pgBackRest on one generated database and prints medians and ratios.
//
// Usage:
//
//	tvbench --tenantvault BIN [--tenants 1000] [--size 1GB] [--shape tracker|chain] [--reps 3] [--smoke] [--skip PART,...]
//
// bench/run.sh builds the binaries and calls it. It exits 0 on success, 1
// when a step fails, 2 on bad flags.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/tenantvault/tenantvault/bench"
	"github.com/tenantvault/tenantvault/bench/datagen"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("tvbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg       bench.Config
		size      = fs.String("size", "1GB", "approximate size of the generated tables: 50MB .. 10GB")
		skip      = fs.String("skip", "", "comma-separated parts to leave out: "+strings.Join(bench.AllParts, ", "))
		only      = fs.String("only", "", "comma-separated parts to run (the tenantvault snapshot always runs); overrides --skip")
		variants  multiFlag
		rvariants multiFlag
	)
	fs.IntVar(&cfg.Tenants, "tenants", 1000, "number of tenants")
	fs.Int64Var(&cfg.Seed, "seed", 1, "data generator seed")
	fs.StringVar(&cfg.Shape, "shape", datagen.ShapeTracker, "generated schema: tracker (twelve tables) or chain (issue 15's production shape)")
	fs.IntVar(&cfg.Reps, "reps", 3, "repetitions of every measured step (medians are reported)")
	fs.IntVar(&cfg.LoadReps, "load-reps", 0, "repetitions of the load-throughput pair (default: --reps)")
	fs.BoolVar(&cfg.Smoke, "smoke", false, "CI-sized run: 20 tenants, 20MB, 1 repetition, no profiles")
	fs.StringVar(&cfg.PGURL, "pg-url", "", "use this PostgreSQL server (superuser URL) instead of starting one; pgBackRest is then skipped")
	fs.StringVar(&cfg.PGBindir, "pg-bindir", "", "PostgreSQL 15 binaries (default: /usr/lib/postgresql/15/bin)")
	fs.StringVar(&cfg.TenantVault, "tenantvault", "", "tenantvault binary (required)")
	fs.StringVar(&cfg.Baseline, "baseline", "", "an earlier tenantvault binary: its snapshot (into its own repository) and its restore of the largest scenario are measured beside this one's, in the same repetitions")
	fs.StringVar(&cfg.PgBackRest, "pgbackrest", "", "pgbackrest binary (default: from PATH; skipped when missing)")
	fs.StringVar(&cfg.PgBackRestCompress, "pgbackrest-compress", "zst:1", "pgBackRest compress-type:level")
	fs.Var(&variants, "variant", "extra tenantvault snapshot configuration NAME=FLAGS (repeatable), e.g. 'work-mem 512MB=--work-mem=512MB'")
	fs.Var(&rvariants, "restore-variant", "what-if tenantvault restore NAME=URLPARAMS (repeatable): URLPARAMS go into the target URL's query, e.g. 'no seqscan=options=-c enable_seqscan=off'; a value starting with -- is tenantvault restore flags instead, e.g. 'parallel 3=--parallel 3'")
	fs.StringVar(&cfg.WorkDir, "work-dir", "", "where the temporary directory goes (needs ~4x --size free)")
	fs.StringVar(&cfg.OutDir, "out", "", "directory for results.json, report.md, logs and profiles (default: tvbench-results-<time>)")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the temporary directory")
	reportOnly := fs.String("report", "", "only print the report of an earlier run's results.json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *reportOnly != "" {
		data, err := os.ReadFile(*reportOnly)
		if err != nil {
			fmt.Fprintf(stderr, "tvbench: %v\n", err)
			return 1
		}
		var res bench.Results
		if err := json.Unmarshal(data, &res); err != nil {
			fmt.Fprintf(stderr, "tvbench: %s: %v\n", *reportOnly, err)
			return 1
		}
		fmt.Fprint(os.Stdout, res.Markdown())
		return 0
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "tvbench: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return usage("unexpected argument %q", fs.Arg(0))
	}
	if cfg.TenantVault == "" {
		return usage("--tenantvault is required (bench/run.sh builds it)")
	}
	n, err := parseSize(*size)
	if err != nil {
		return usage("--size: %v", err)
	}
	cfg.Size = n
	if !slices.Contains(datagen.Shapes, cfg.Shape) {
		return usage("--shape %q: use %s", cfg.Shape, strings.Join(datagen.Shapes, " or "))
	}
	if cfg.Smoke {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["tenants"] {
			cfg.Tenants = 20
		}
		if !set["size"] {
			cfg.Size = 20 << 20
		}
		if !set["reps"] {
			cfg.Reps = 1
		}
	}
	cfg.Skip = map[string]bool{}
	for _, p := range splitList(*skip) {
		if !slices.Contains(bench.AllParts, p) {
			return usage("--skip: unknown part %q (parts: %s)", p, strings.Join(bench.AllParts, ", "))
		}
		cfg.Skip[p] = true
	}
	if *only != "" {
		want := splitList(*only)
		for _, p := range want {
			if !slices.Contains(bench.AllParts, p) {
				return usage("--only: unknown part %q (parts: %s)", p, strings.Join(bench.AllParts, ", "))
			}
		}
		for _, p := range bench.AllParts {
			cfg.Skip[p] = !slices.Contains(want, p)
		}
	}
	if cfg.Smoke {
		cfg.Skip[bench.PartProfile] = true
	}
	for _, v := range variants {
		name, flags, ok := strings.Cut(v, "=")
		if !ok || name == "" {
			return usage("--variant %q: want NAME=FLAGS", v)
		}
		cfg.Variants = append(cfg.Variants, bench.Variant{Name: name, Args: strings.Fields(flags)})
	}
	for _, v := range rvariants {
		name, params, ok := strings.Cut(v, "=")
		if !ok || name == "" || params == "" {
			return usage("--restore-variant %q: want NAME=URLPARAMS", v)
		}
		if strings.HasPrefix(params, "--") {
			cfg.RestoreVariants = append(cfg.RestoreVariants, bench.Variant{Name: name, Flags: strings.Fields(params)})
			continue
		}
		cfg.RestoreVariants = append(cfg.RestoreVariants, bench.Variant{Name: name, Args: []string{params}})
	}
	if cfg.OutDir == "" {
		cfg.OutDir = "tvbench-results-" + strconv.FormatInt(int64(os.Getpid()), 10)
	}
	cfg.Log = stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if _, err := bench.Run(ctx, cfg); err != nil {
		fmt.Fprintf(stderr, "tvbench: %v\n", err)
		return 1
	}
	return 0
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parseSize reads 50MB, 1.5GB, 10GB (powers of 1024).
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GIB", 1 << 30}, {"MIB", 1 << 20}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("bad size %q: want e.g. 50MB, 1GB, 10GB", s)
	}
	return int64(v * float64(mult)), nil
}
