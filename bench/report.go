package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Median is the step's median sample, field by field.
func (st *Step) Median() Sample {
	if st == nil {
		return Sample{}
	}
	f := func(g func(Sample) float64) float64 {
		xs := make([]float64, len(st.Samples))
		for i, s := range st.Samples {
			xs[i] = g(s)
		}
		return median(xs)
	}
	return Sample{
		Wall: f(func(s Sample) float64 { return s.Wall }),
		User: f(func(s Sample) float64 { return s.User }),
		Sys:  f(func(s Sample) float64 { return s.Sys }),
		// Server CPU and memory: medians too.
		Server:  f(func(s Sample) float64 { return s.Server }),
		MaxRSS:  int64(f(func(s Sample) float64 { return float64(s.MaxRSS) })),
		TreeRSS: int64(f(func(s Sample) float64 { return float64(s.TreeRSS) })),
		Bytes:   int64(f(func(s Sample) float64 { return float64(s.Bytes) })),
		Load:    f(func(s Sample) float64 { return s.Load }),
	}
}

// spread is the range of the walls, for the tables.
func (st *Step) spread() string {
	if st == nil || len(st.Samples) < 2 {
		return ""
	}
	lo, hi := st.Samples[0].Wall, st.Samples[0].Wall
	for _, s := range st.Samples {
		lo, hi = min(lo, s.Wall), max(hi, s.Wall)
	}
	return fmt.Sprintf(" (%.1f–%.1f)", lo, hi)
}

func mib(n int64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", float64(n)/(1<<20))
}

func mb(n int64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(n)/1e6)
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "-"
	}
	r := a / b
	switch {
	case r >= 100:
		return fmt.Sprintf("%.0f×", r)
	case r >= 10:
		return fmt.Sprintf("%.1f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

func rss(s Sample) int64 { return s.MaxRSS }

// pairedRatio is the median over repetitions of st's wall time divided by
// base's in the same repetition: steps that ran interleaved saw the same
// machine load, so their per-repetition ratio is steadier than the ratio
// of medians on a shared machine. "" when the samples do not pair up.
func pairedRatio(st, base *Step) string {
	if st == nil || base == nil || len(st.Samples) != len(base.Samples) || len(st.Samples) < 2 {
		return ""
	}
	var rs []float64
	for i := range st.Samples {
		if base.Samples[i].Wall > 0 {
			rs = append(rs, st.Samples[i].Wall/base.Samples[i].Wall)
		}
	}
	return ratio(median(rs), 1)
}

// Markdown renders the results as the tables of BENCHMARKS.md.
func (r *Results) Markdown() string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p("Run %s → %s; %s tenants, target %s, seed %s, %s repetition(s) (medians; wall range in parentheses).\n\n",
		r.Started.Format("2006-01-02 15:04"), r.Finished.Format("15:04"), r.Config["tenants"], r.Config["size"], r.Config["seed"], r.Config["reps"])
	for _, k := range sortedKeys(r.Machine) {
		p("- %s: %s\n", k, r.Machine[k])
	}
	p("\nData: %d rows, tables %s, database %s.\n\n", r.Data.TotalRows(), humanBytes(r.Data.TableBytes), humanBytes(r.Data.DatabaseBytes))
	p("| table | rows | table MiB | index MiB |\n|---|---:|---:|---:|\n")
	for _, t := range r.Data.Tables {
		p("| %s | %d | %s | %s |\n", t.Name, t.Rows, mib(t.Bytes), mib(t.IndexBytes))
	}
	p("\nRestore scenarios (tenants sorted by size, the middle tenant of each of n equal strata):\n\n")
	for _, s := range r.Scenarios {
		p("- %s: %d tenant(s), %d rows, %.1f%% of the tenant data\n", s.Name, len(s.Tenants), s.Rows, 100*s.Share)
	}

	tvStep := r.Step("snapshot/tenantvault")
	tv := tvStep.Median()
	p("\n### Full snapshot\n\n| tool | wall s | client CPU s | server CPU s | peak RSS MiB (process / tree) | output MB | wall ÷ tenantvault's (of medians / per rep) | CPU ÷ tenantvault's | size ÷ tenantvault's |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, st := range r.Steps {
		if !strings.HasPrefix(st.Name, "snapshot/") {
			continue
		}
		m := st.Median()
		paired := pairedRatio(st, tvStep)
		if paired != "" {
			paired = " / " + paired
		}
		p("| %s | %.1f%s | %.1f | %.1f | %s / %s | %s | %s%s | %s | %s |\n", strings.TrimPrefix(st.Name, "snapshot/"), m.Wall, st.spread(), m.CPU(), m.Server, mib(m.MaxRSS), mib(m.TreeRSS), mb(m.Bytes),
			ratio(m.Wall, tv.Wall), paired, ratio(m.CPU()+m.Server, tv.CPU()+tv.Server), ratio(float64(m.Bytes), float64(tv.Bytes)))
	}

	pgr := r.Step("restore/full/pg_restore").Median()
	p("\n### Restore into the live database\n\n")
	p("pg_restore -j 2 of the whole dump into an empty database: %.1f s", pgr.Wall)
	if s := r.Step("restore/full/pg_restore"); s != nil {
		p("%s", s.spread())
	}
	if rs := r.Step("restore/full/pgbackrest restore"); rs != nil {
		p("; pgBackRest restore of the cluster %.1f s%s, start and recovery %.1f s", rs.Median().Wall, rs.spread(), r.Step("restore/full/pgbackrest start").Median().Wall)
	}
	p(".\n\n| scenario | tenantvault wall s | CPU s | server CPU s | peak RSS MiB | MB loaded | pg_restore (whole) ÷ tenantvault (of medians / per rep) | pgBackRest path s | pgBackRest path ÷ tenantvault (of medians / per rep) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	pgrStep := r.Step("restore/full/pg_restore")
	for i, sc := range r.Scenarios {
		st := r.Step(fmt.Sprintf("restore/%d/tenantvault", i))
		m := st.Median()
		pb := r.Step(fmt.Sprintf("restore/%d/pgbackrest", i))
		pbs := "-"
		if pb != nil {
			pbs = fmt.Sprintf("%.1f%s", pb.Median().Wall, pb.spread())
		}
		withPaired := func(a, b string) string {
			if b == "" {
				return a
			}
			return a + " / " + b
		}
		p("| %s (%d) | %.2f%s | %.1f | %.1f | %s | %s | %s | %s | %s |\n", sc.Name, len(sc.Tenants), m.Wall, st.spread(), m.CPU(), m.Server, mib(rss(m)), mb(m.Bytes),
			withPaired(ratio(pgr.Wall, m.Wall), pairedRatio(pgrStep, st)), pbs, withPaired(ratio(pb.Median().Wall, m.Wall), pairedRatio(pb, st)))
	}

	r.massRestore(p)

	var whatIf []*Step
	for _, st := range r.Steps {
		if strings.HasPrefix(st.What, "what-if") {
			whatIf = append(whatIf, st)
		}
	}
	if len(whatIf) > 0 {
		p("\n### What-if runs (benchmark-only settings, not tenantvault's defaults)\n\n| step | what | wall s | server CPU s | pg_restore (whole) ÷ it |\n|---|---|---:|---:|---:|\n")
		for _, st := range whatIf {
			m := st.Median()
			p("| %s | %s | %.2f%s | %.1f | %s |\n", st.Name, st.What, m.Wall, st.spread(), m.Server, ratio(pgr.Wall, m.Wall))
		}
	}

	if st := r.Step("incremental/tenantvault"); st != nil {
		m := st.Median()
		p("\n### Second snapshot after 1%% of tenants changed (%.0f tenants)\n\n| tool | wall s | bytes written MB | of the full set |\n|---|---:|---:|---:|\n", r.Values["incremental_changed_tenants"])
		p("| tenantvault | %.1f%s | %s | %.2f%% |\n", m.Wall, st.spread(), mb(m.Bytes), 100*float64(m.Bytes)/float64(tv.Bytes))
		if pb := r.Step("incremental/pgbackrest diff"); pb != nil {
			pm := pb.Median()
			full := r.Step("incremental/pgbackrest full (base)").Median()
			if full.Bytes == 0 {
				full = r.Step("snapshot/pgbackrest").Median()
			}
			p("| pgBackRest diff | %.1f%s | %s | %.2f%% |\n", pm.Wall, pb.spread(), mb(pm.Bytes), 100*float64(pm.Bytes)/float64(full.Bytes))
		}
	}

	if st := r.Step("load/tenantvault"); st != nil {
		m := st.Median()
		c := r.Step("load/plain COPY").Median()
		bytes := r.Values["load_copy_bytes"]
		p("\n### Load throughput (%s, %.0f MB of COPY text, into an empty copy)\n\n| loader | wall s | MB/s | CPU s | server CPU s |\n|---|---:|---:|---:|---:|\n", r.Scenarios[len(r.Scenarios)-1].Name, bytes/1e6)
		p("| tenantvault restore | %.1f%s | %.1f | %.1f | %.1f |\n", m.Wall, st.spread(), bytes/1e6/m.Wall, m.CPU(), m.Server)
		p("| plain COPY FROM STDIN | %.1f%s | %.1f | %.1f | %.1f |\n", c.Wall, r.Step("load/plain COPY").spread(), bytes/1e6/c.Wall, c.CPU(), c.Server)
		p("\ntenantvault loads at %.0f%% of plain COPY's throughput.\n", 100*c.Wall/m.Wall)
	}

	p("\n### Physical limits of this machine\n\n| what | MB/s | note |\n|---|---:|---|\n")
	thr := func(name, note string) {
		if st := r.Step(name); st != nil {
			m := st.Median()
			p("| %s | %.0f | %s |\n", strings.TrimPrefix(name, "limits/"), float64(m.Bytes)/1e6/m.Wall, note)
		}
	}
	thr("limits/disk write", "1 MiB writes + fsync")
	thr("limits/copy out all tables", "2 sessions")
	thr("limits/copy out comments", "1 session")
	thr("limits/export query comments", "1 session, ORDER BY tenant, key; work_mem 64MB")
	thr("limits/copy in comments (no indexes)", "1 session")
	for _, l := range []int{1, 2} {
		if v := r.Values[fmt.Sprintf("zstd%d_compress_Bps", l)]; v > 0 {
			p("| zstd level %d compress | %.0f | klauspost, 1 goroutine, ratio %.2f |\n", l, v/1e6, r.Values[fmt.Sprintf("zstd%d_ratio", l)])
			p("| zstd level %d decompress | %.0f | |\n", l, r.Values[fmt.Sprintf("zstd%d_decompress_Bps", l)]/1e6)
		}
	}
	if v := r.Values["sha256_Bps"]; v > 0 {
		p("| SHA-256 | %.0f | crypto/sha256 |\n", v/1e6)
	}

	p("\n### Targets (issue 8)\n\n| target | measured | met |\n|---|---|---|\n")
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	if pd := r.Step("snapshot/pg_dump"); pd != nil {
		m := pd.Median()
		p("| snapshot wall ≤ pg_dump -Fd -j 2 | %.1f s vs %.1f s (%s) | %s |\n", tv.Wall, m.Wall, ratio(tv.Wall, m.Wall), yes(tv.Wall <= m.Wall))
		p("| repository ≤ pg_dump directory | %s MB vs %s MB (%s) | %s |\n", mb(tv.Bytes), mb(m.Bytes), ratio(float64(tv.Bytes), float64(m.Bytes)), yes(tv.Bytes <= m.Bytes))
	}
	one := r.Step("restore/0/tenantvault").Median()
	if pgr.Wall > 0 {
		p("| 1 tenant ≥ 100× faster than full pg_restore | %s | %s |\n", ratio(pgr.Wall, one.Wall), yes(pgr.Wall/one.Wall >= 100))
	}
	if pb := r.Step("restore/0/pgbackrest"); pb != nil {
		p("| 1 tenant ≥ 1000× faster than the pgBackRest path | %s | %s |\n", ratio(pb.Median().Wall, one.Wall), yes(pb.Median().Wall/one.Wall >= 1000))
	}
	forty := r.Step(fmt.Sprintf("restore/%d/tenantvault", len(r.Scenarios)-1)).Median()
	if pgr.Wall > 0 {
		p("| 40%% of tenants < ½ full pg_restore | %.1f s vs %.1f s (%.0f%%) | %s |\n", forty.Wall, pgr.Wall, 100*forty.Wall/pgr.Wall, yes(forty.Wall < pgr.Wall/2))
	}
	if st := r.Step("incremental/tenantvault"); st != nil {
		f := float64(st.Median().Bytes) / float64(tv.Bytes)
		p("| incremental after 1%% changed < 5%% of the full set | %.2f%% | %s |\n", 100*f, yes(f < 0.05))
	}
	if st := r.Step("load/tenantvault"); st != nil {
		f := r.Step("load/plain COPY").Median().Wall / st.Median().Wall
		p("| load throughput ≥ 70%% of plain COPY | %.0f%% | %s |\n", 100*f, yes(f >= 0.7))
	}
	var peak int64
	for _, st := range r.Steps {
		if strings.Contains(st.Name, "tenantvault") {
			for _, s := range st.Samples {
				peak = max(peak, s.MaxRSS)
			}
		}
	}
	p("| peak memory < 256 MiB | %s MiB (largest tenantvault process seen) | %s |\n", mib(peak), yes(peak < 256<<20))

	if len(r.Skipped) > 0 || len(r.Notes) > 0 {
		p("\n")
		for _, s := range r.Skipped {
			p("- %s\n", s)
		}
		for _, s := range r.Notes {
			p("- %s\n", s)
		}
	}
	return w.String()
}

func (b *bench) writeResults() error {
	data, err := json.MarshalIndent(b.res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.cfg.OutDir, "results.json"), data, 0o644); err != nil {
		return err
	}
	md := b.res.Markdown()
	if err := os.WriteFile(filepath.Join(b.cfg.OutDir, "report.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(b.cfg.Log, "\n"+md)
	return nil
}

// massRestore renders issue 15's comparison: the largest scenario into the
// live database against the bare-COPY floor and a full pg_restore, and one
// tenant against the full pg_restore, all from the same run.
func (r *Results) massRestore(p func(string, ...any)) {
	last := len(r.Scenarios) - 1
	if last < 0 {
		return
	}
	floor := r.Step(fmt.Sprintf("restore/%d/floor", last))
	tvStep := r.Step(fmt.Sprintf("restore/%d/tenantvault", last))
	if floor == nil || tvStep == nil {
		return
	}
	pgrStep := r.Step("restore/full/pg_restore")
	tv, fl, pgr := tvStep.Median(), floor.Median(), pgrStep.Median()
	paired := func(a, b *Step) string {
		if s := pairedRatio(a, b); s != "" {
			return " / " + s
		}
		return ""
	}
	sc := r.Scenarios[last]
	p("\n### Mass restore (issue 15): %s into the live database vs the bare-COPY floor\n\n", sc.Name)
	p("The floor: the same rows (%.0f MB of COPY text), extracted beforehand, loaded back into the same live tables by bare COPY, one connection, triggers off, no checks; load only.\n\n", r.Values["floor_copy_bytes"]/1e6)
	p("| step | wall s | client CPU s | server CPU s | peak RSS MiB | ÷ floor (of medians / per rep) | ÷ full pg_restore -j 2 (of medians / per rep) |\n|---|---:|---:|---:|---:|---:|---:|\n")
	p("| tenantvault restore | %.2f%s | %.1f | %.1f | %s | %s%s | %s%s |\n", tv.Wall, tvStep.spread(), tv.CPU(), tv.Server, mib(tv.MaxRSS),
		ratio(tv.Wall, fl.Wall), paired(tvStep, floor), ratio(tv.Wall, pgr.Wall), paired(tvStep, pgrStep))
	if bl := r.Step(fmt.Sprintf("restore/%d/baseline", last)); bl != nil {
		m := bl.Median()
		p("| baseline build's restore (before) | %.2f%s | %.1f | %.1f | %s | %s%s | %s%s |\n", m.Wall, bl.spread(), m.CPU(), m.Server, mib(m.MaxRSS),
			ratio(m.Wall, fl.Wall), paired(bl, floor), ratio(m.Wall, pgr.Wall), paired(bl, pgrStep))
	}
	p("| bare-COPY floor | %.2f%s | %.1f | %.1f | - | 1× | %s%s |\n", fl.Wall, floor.spread(), fl.CPU(), fl.Server, ratio(fl.Wall, pgr.Wall), paired(floor, pgrStep))
	if pgr.Wall > 0 {
		p("| full pg_restore -j 2 | %.2f%s | %.1f | %.1f | %s | %s | 1× |\n", pgr.Wall, pgrStep.spread(), pgr.CPU(), pgr.Server, mib(pgr.MaxRSS), ratio(pgr.Wall, fl.Wall))
		if oneStep := r.Step("restore/0/tenantvault"); oneStep != nil {
			one := oneStep.Median()
			p("\nOne median tenant: %.2f s%s, full pg_restore -j 2 ÷ it = %s.\n", one.Wall, oneStep.spread(), ratio(pgr.Wall, one.Wall))
		}
	}
	p("\nTarget: tenantvault ≤ 1.15× the floor: %s.\n", map[bool]string{true: "met", false: "**missed**"}[fl.Wall > 0 && tv.Wall <= 1.15*fl.Wall])
}
