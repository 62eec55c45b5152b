// Command tvgen fills an empty PostgreSQL database with a deterministic multi-tenant issue tracker for benchmarks.
//
// Usage:
//
//	tvgen --db URL --tenants N --size 1GB [--shape tracker|chain] [--seed S] [--odd-ids] [--zipf S] [--workers N]
//
// It exits 0 on success, 1 when generation fails, 2 on bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tenantvault/tenantvault/bench/datagen"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks a bad command line: exit code 2.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	opts, dbURL, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		if err != errUsage {
			fmt.Fprintf(stderr, "tvgen: %v\n", err)
		}
		fmt.Fprintln(stderr, "run 'tvgen --help' for usage")
		return 2
	}
	logger := log.New(stderr, "", log.LstdFlags)
	opts.Logf = logger.Printf

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	st, err := datagen.Generate(ctx, dbURL, opts)
	if err != nil {
		fmt.Fprintf(stderr, "tvgen: %v\n", err)
		return 1
	}
	printStats(stdout, opts, st)
	return 0
}

func parseFlags(args []string, stderr io.Writer) (datagen.Options, string, error) {
	fs := flag.NewFlagSet("tvgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		opts datagen.Options
		db   = fs.String("db", "", "URL of the empty database to fill (required)")
		size = fs.String("size", "", "approximate size of the tables without indexes: 50MB, 1GB, 10GB (required)")
	)
	fs.IntVar(&opts.Tenants, "tenants", 0, "number of tenants (required)")
	fs.Int64Var(&opts.Seed, "seed", 1, "seed: the same flags give the same data")
	fs.BoolVar(&opts.OddIDs, "odd-ids", false, "give some tenants IDs with quotes, slashes, tabs, non-ASCII...")
	fs.Float64Var(&opts.ZipfS, "zipf", datagen.DefaultZipfS, "exponent of the Zipf law of tenant sizes")
	fs.IntVar(&opts.Workers, "workers", 2, "connections loading at the same time")
	fs.StringVar(&opts.Shape, "shape", datagen.ShapeTracker, "schema: tracker (twelve tables) or chain (tenants, issues, comments through issues, reactions through comments; issue 15)")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: tvgen --db URL --tenants N --size SIZE [flags]\n\n"+
			"Creates the sample schema in an empty database and fills it with generated data.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return opts, "", err
		}
		return opts, "", errUsage // the flag package has printed the problem
	}
	if fs.NArg() > 0 {
		return opts, "", fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var missing []string
	if *db == "" {
		missing = append(missing, "--db")
	}
	if opts.Tenants == 0 {
		missing = append(missing, "--tenants")
	}
	if *size == "" {
		missing = append(missing, "--size")
	}
	if len(missing) > 0 {
		return opts, "", fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	if opts.Tenants < 0 {
		return opts, "", fmt.Errorf("--tenants must be positive, got %d", opts.Tenants)
	}
	if opts.ZipfS <= 0 {
		return opts, "", fmt.Errorf("--zipf must be positive, got %g", opts.ZipfS)
	}
	if !slices.Contains(datagen.Shapes, opts.Shape) {
		return opts, "", fmt.Errorf("--shape %q: use %s", opts.Shape, strings.Join(datagen.Shapes, " or "))
	}
	if opts.Workers < 1 {
		return opts, "", fmt.Errorf("--workers must be positive, got %d", opts.Workers)
	}
	n, err := parseSize(*size)
	if err != nil {
		return opts, "", fmt.Errorf("--size: %w", err)
	}
	opts.TargetBytes = n
	return opts, *db, nil
}

// parseSize reads sizes such as 50MB, 1.5GB or 1048576. Units are powers of
// 1024, as in PostgreSQL's settings; KiB, MiB... are accepted too.
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10},
		{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || v*float64(mult) > 1<<50 {
		return 0, fmt.Errorf("bad size %q: want a positive number with an optional unit, like 50MB, 1GB or 10GB", s)
	}
	return int64(v * float64(mult)), nil
}

func printStats(w io.Writer, opts datagen.Options, st datagen.Stats) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "table\trows\ttable MB\tindex MB\t")
	for _, t := range st.Tables {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t\n", t.Name, t.Rows, mb(t.Bytes), mb(t.IndexBytes))
	}
	var idx int64
	for _, t := range st.Tables {
		idx += t.IndexBytes
	}
	fmt.Fprintf(tw, "total\t%d\t%.1f\t%.1f\t\n", st.TotalRows(), mb(st.TableBytes), mb(idx))
	tw.Flush()

	rows := make([]int64, 0, len(st.TenantRows))
	for _, n := range st.TenantRows {
		rows = append(rows, n)
	}
	slices.Sort(rows)
	if len(rows) > 0 {
		fmt.Fprintf(w, "tenants: %d; rows per tenant: largest %d, median %d, smallest %d\n",
			len(rows), rows[len(rows)-1], rows[len(rows)/2], rows[0])
	}
	fmt.Fprintf(w, "target %.1f MB, tables %.1f MB, database %.1f MB\n", mb(opts.TargetBytes), mb(st.TableBytes), mb(st.DatabaseBytes))
	fmt.Fprintf(w, "elapsed %s (load %s, %.1f MB/s; indexes %s; vacuum %s)\n",
		st.Elapsed.Round(time.Millisecond), st.LoadElapsed.Round(time.Millisecond),
		mb(st.TableBytes)/st.LoadElapsed.Seconds(), st.IndexElapsed.Round(time.Millisecond),
		st.VacuumElapsed.Round(time.Millisecond))
}

func mb(n int64) float64 { return float64(n) / (1 << 20) }
