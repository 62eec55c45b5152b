package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
)

type snapshotOptions struct {
	repo        repoFlags
	source      string
	tenants     []string
	tenancy     tenancy.Config
	parallel    int
	level       int
	workMem     string
	serverSort  bool
	lockTimeout time.Duration
	tempDir     string
	pgDump      string
	schemaArch  string
	schemaBatch int
	full        bool
	exactLSN    bool
	dryRun      bool
	name        string
}

func (a *app) snapshotCmd() *cobra.Command {
	var o snapshotOptions
	cmd := &cobra.Command{
		Use:   "snapshot --source URL --repo URL",
		Short: "Take a consistent snapshot of every tenant (or the given ones)",
		Long: `Take one snapshot set: every tenant of the source captured at one consistent
instant (an exported snapshot shared by parallel workers, as pg_dump -j does),
each tenant's rows per table compressed and checksummed, the schema with
pg_dump --schema-only (unless --schema-archive=none), and a manifest
written last. Only ACCESS SHARE locks
are taken: the source keeps serving writes. Chunks equal to the previous
set's are referenced instead of stored again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runSnapshot(cmd.Context(), &o) },
	}
	fs := cmd.Flags()
	o.repo.add(fs, true)
	o.repo.keys.addWriter(fs)
	fs.StringVar(&o.source, "source", "", "source database URL (prefer PGPASSWORD or ~/.pgpass for the password)")
	fs.StringArrayVar(&o.tenants, "tenant", nil, "capture only this tenant (repeatable; any characters)")
	fs.StringVar(&o.tenancy.Model, "tenancy", "", "tenancy model: column (default), schema or database")
	fs.StringVar(&o.tenancy.TenantColumn, "tenant-column", "", "tenant key column of the column model (default tenant_id)")
	fs.StringVar(&o.tenancy.TenantTable, "tenant-table", "", "table whose primary key is the tenant ID (default: the table tenant key columns reference)")
	fs.StringVar(&o.tenancy.SchemaPattern, "schema-pattern", "", "schema model: LIKE pattern of tenant schemas, e.g. tenant_%")
	fs.StringVar(&o.tenancy.DatabasePattern, "database-pattern", "", "database model: LIKE pattern of tenant databases")
	fs.IntVar(&o.parallel, "parallel", 2, "tables exported at once")
	fs.IntVar(&o.level, "compression-level", snapshot.DefaultLevel, "zstd level: 1 fastest .. 4 smallest")
	fs.StringVar(&o.workMem, "work-mem", "64MB", "sort memory of each export session (server side)")
	fs.BoolVar(&o.serverSort, "server-sort", false, "order every table with ORDER BY on the server, instead of sorting on the client (more server CPU, no client sort runs in --temp-dir)")
	fs.DurationVar(&o.lockTimeout, "lock-timeout", 30*time.Second, "longest wait for the ACCESS SHARE table locks")
	fs.StringVar(&o.tempDir, "temp-dir", "", "directory for packs while they fill (default: the system temp dir)")
	fs.StringVar(&o.pgDump, "pg-dump", "pg_dump", "pg_dump binary for the schema (of the server's major version or newer)")
	fs.StringVar(&o.schemaArch, "schema-archive", manifest.SchemaArchivePgDump, "pg_dump: store the schema (restore --create-schema needs it); none: no pg_dump, restore into an existing schema only (e.g. one your migrations create)")
	fs.IntVar(&o.schemaBatch, "schema-batch", snapshot.DefaultSchemaBatch, "schema model: tenant schemas dumped by one pg_dump run, which bounds its memory (several runs under the one snapshot when there are more); 0: one run for all")
	fs.BoolVar(&o.full, "full", false, "store every chunk, even those equal to the previous set's")
	fs.BoolVar(&o.exactLSN, "exact-lsn", false, "take the set at a replication slot's consistent point, so the change log (capture) continues it exactly")
	fs.BoolVar(&o.dryRun, "dry-run", false, "print what would be captured, and write nothing")
	fs.StringVar(&o.name, "name", "", "source name recorded in the manifest")
	return cmd
}

func (a *app) runSnapshot(ctx context.Context, o *snapshotOptions) error {
	if o.source == "" {
		return &usageError{"--source is required (or TENANTVAULT_SOURCE)"}
	}
	if o.schemaArch != manifest.SchemaArchivePgDump && o.schemaArch != manifest.SchemaArchiveNone {
		return &usageError{fmt.Sprintf("--schema-archive %q: use pg_dump or none", o.schemaArch)}
	}
	if o.schemaBatch < 0 {
		return &usageError{fmt.Sprintf("--schema-batch %d: use a positive number of schemas, or 0 for one pg_dump run", o.schemaBatch)}
	}
	if o.schemaBatch == 0 {
		o.schemaBatch = -1 // snapshot.Options: one run
	}
	so := snapshot.Options{
		Source: o.source, Tenancy: o.tenancy, Tenants: o.tenants, Parallel: o.parallel, Level: o.level,
		WorkMem: o.workMem, ServerSort: o.serverSort, LockTimeout: o.lockTimeout, TempDir: o.tempDir, PgDump: o.pgDump,
		SchemaArchive: o.schemaArch, SchemaBatch: o.schemaBatch, Full: o.full, ExactLSN: o.exactLSN, SourceName: o.name, Logger: a.log,
	}
	if o.dryRun {
		p, err := snapshot.Explain(ctx, so)
		if err != nil {
			return err
		}
		return a.printSnapshotPlan(p)
	}
	v, closeRepo, err := a.openVault(ctx, &o.repo, true)
	if err != nil {
		return err
	}
	defer closeRepo()
	so.Vault = v
	sp := &snapshot.Progress{}
	so.Progress = sp
	// The byte total is estimated from the tables' size on disk.
	meter := a.startMeter(meterSpec{verb: "exported", noun: "tables", estimate: true,
		items: func() (int64, int64) { return sp.TablesDone.Load(), sp.TablesTotal.Load() },
		bytes: func() (int64, int64) { return sp.Bytes.Load(), sp.EstimatedBytes() },
	})
	m, err := snapshot.Run(ctx, so)
	meter.finish(err == nil)
	if err != nil {
		return err
	}
	if a.jsonOut {
		return a.printJSON(setSummary(m))
	}
	s := m.Stats
	fmt.Fprintf(a.stdout, "snapshot set %s\n", m.ID)
	fmt.Fprintf(a.stdout, "  consistent at  %s (LSN %s)\n", m.ConsistentAt.Format(time.RFC3339Nano), m.LSN)
	fmt.Fprintf(a.stdout, "  tenants        %d\n  tables         %d\n  rows           %d\n", s.Tenants, s.Tables, s.Rows)
	fmt.Fprintf(a.stdout, "  data           %s, stored %s (%s written, %s reused from earlier sets in %d chunks)\n",
		humanBytes(s.Size), humanBytes(s.Stored), humanBytes(s.Written), humanBytes(s.Reused), s.ReusedChunks)
	fmt.Fprintf(a.stdout, "  took           %.1fs\n", s.Seconds)
	return nil
}

// setJSON is the machine-readable summary of a set.
type setJSON struct {
	ID           string          `json:"id"`
	Kind         string          `json:"kind"`
	Note         string          `json:"note,omitempty"`
	Source       manifest.Source `json:"source"`
	ConsistentAt time.Time       `json:"consistent_at"`
	LSN          string          `json:"lsn,omitempty"`
	Partial      bool            `json:"partial,omitempty"`
	Stats        manifest.Stats  `json:"stats"`
}

func setSummary(m *manifest.Manifest) setJSON {
	return setJSON{ID: m.ID, Kind: m.Kind, Note: m.Note, Source: m.Source, ConsistentAt: m.ConsistentAt, LSN: m.LSN, Partial: m.Partial, Stats: m.Stats}
}

func (a *app) printSnapshotPlan(p *snapshot.Plan) error {
	if a.jsonOut {
		return a.printJSON(p)
	}
	if p.Tenancy.Model == tenancy.ModelDatabase {
		fmt.Fprintf(a.stdout, "tenancy: database, %d tenant database(s) match %q:\n", len(p.Databases), p.Tenancy.DatabasePattern)
		for _, d := range p.Databases {
			fmt.Fprintf(a.stdout, "  %s\n", d)
		}
		return nil
	}
	fmt.Fprintf(a.stdout, "tenancy: %s\n", describeTenancy(p.Tenancy))
	tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TABLE\tKIND\tTENANT FROM\tORDER BY\tSIZE")
	for i, t := range p.Tables {
		from := "-"
		switch {
		case t.Owner != "":
			from = "owner " + t.Owner
		case t.Scope != nil:
			from = scopePath(&t)
		}
		order := strings.Join(t.Key, ", ")
		if order == "" {
			order = "(row text: no primary key)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.QualifiedName(), t.Kind, from, order, humanBytes(p.Bytes[i]))
	}
	return tw.Flush()
}

func describeTenancy(c tenancy.Config) string {
	switch c.Model {
	case tenancy.ModelSchema:
		return fmt.Sprintf("schema (one schema per tenant, matching %q)", c.SchemaPattern)
	case tenancy.ModelDatabase:
		return fmt.Sprintf("database (one database per tenant, matching %q)", c.DatabasePattern)
	}
	s := fmt.Sprintf("column (tenant key column %q)", c.TenantColumn)
	if c.TenantTable != "" {
		s += fmt.Sprintf(", tenant table %s", c.TenantTable)
	}
	return s
}

func scopePath(t *manifest.Table) string {
	var b strings.Builder
	for _, h := range t.Scope.Hops {
		fmt.Fprintf(&b, "%s -> %s.%s.%s, ", strings.Join(h.Columns, ","), h.RefSchema, h.RefTable, strings.Join(h.RefCols, ","))
	}
	b.WriteString(t.Scope.Column)
	return b.String()
}
