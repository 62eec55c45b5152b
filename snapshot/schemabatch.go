package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
)

// DefaultSchemaBatch is how many tenant schemas one pg_dump run dumps. pg_dump
// reads the whole catalog whatever it dumps, and then holds the definitions
// of what it dumps: at 10,000 schemas of three tables (PostgreSQL 15) one run
// of them all peaks at 264 MiB, one of 5,000 at 175 MiB, one of everything
// but the tenant schemas at 140 MiB.
const DefaultSchemaBatch = 5000

// maxFilterArgs bounds the bytes of the --exclude-schema arguments of the
// shared run (Linux allows 2 MiB of arguments and environment in all).
const maxFilterArgs = 1 << 20

// schemaBatches cuts the tenant schemas of a whole-database schema archive
// into batches of at most SchemaBatch, in sorted order, or returns nil when
// one pg_dump run dumps them all: the schema fits one batch, it is not
// split (every restore would read the whole archive, so there must be one),
// or the names would not fit the command line.
func (r *run) schemaBatches() (all []string, batches [][]string) {
	all = r.owners
	if r.splitTenants != nil {
		all = r.splitTenants
	}
	n := len(all)
	if r.o.Tenancy.Model != tenancy.ModelSchema || !r.o.Vault.WritesIndexed() || r.o.SchemaBatch < 0 || n <= r.o.SchemaBatch {
		return nil, nil
	}
	size := 0
	for _, s := range all {
		size += len(exactPattern(s)) + len("--exclude-schema=") + 1
	}
	if size > maxFilterArgs {
		r.o.Logger.Warn("too many tenant schemas to name on pg_dump's command line: the schema is dumped by one run", "tenant_schemas", n)
		return nil, nil
	}
	all = slices.Sorted(slices.Values(all))
	k := (n + r.o.SchemaBatch - 1) / r.o.SchemaBatch
	for i := range k {
		batches = append(batches, all[i*n/k:(i+1)*n/k])
	}
	return all, batches
}

// dumpSchemaBatched dumps the schema of a schema-model database with many
// tenant schemas by several pg_dump runs under the one exported snapshot,
// one after the other, so that no run holds them all: first everything but
// the tenant schemas, then each batch of them (set format 5, docs/FORMAT.md).
// Every archive is split as it comes; the parts make one split schema, and
// restores read only that. done is false when the schema is left to one
// run: too few tenant schemas, or an archive that could not be split (the
// whole-database archive is then what restores read).
func (r *run) dumpSchemaBatched(ctx context.Context, snap snapInfo) (done bool, err error) {
	all, batches := r.schemaBatches()
	if batches == nil {
		return false, nil
	}
	dumps, err := r.dumpBatches(ctx, snap, all, batches)
	var ns *errNoSplit
	if errors.As(err, &ns) {
		r.schemaParts = nil
		r.o.Logger.Warn("the schema is dumped by one pg_dump run", "err", err)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	r.o.Logger.Info("dumped the schema in batches", "tenant_schemas", len(all), "pg_dump_runs", len(dumps))
	r.m.Schemas = dumps
	return true, nil
}

func (r *run) dumpBatches(ctx context.Context, snap snapInfo, all []string, batches [][]string) ([]manifest.SchemaDump, error) {
	// dump runs pg_dump with filter, stores the archive and splits it.
	dump := func(filter []string, tenants []string, covers string) (manifest.SchemaDump, *splitSQL, error) {
		f, err := spoolSchema(ctx, r.o.TempDir, r.o.PgDump, r.cfg, r.ssl, snap.name, snap.source.ServerNum, filter)
		if err != nil {
			return manifest.SchemaDump{}, nil, err
		}
		defer dropTemp(f)
		d, err := r.w.PutSchemaFile(ctx, r.cfg.Database, f)
		if err != nil {
			return d, nil, err
		}
		d.Covers = covers
		s, err := splitArchive(ctx, r.o.PgDump, f.Name(), tenants, r.o.TempDir)
		return d, s, err
	}
	d, shared, err := dump(schemaArgs("--exclude-schema", all), all, manifest.CoversShared)
	if err != nil {
		return nil, err
	}
	defer shared.close()
	for i := range all {
		if len(shared.byOwner[i+1]) != 0 {
			return nil, &errNoSplit{fmt.Sprintf("the archive without the tenant schemas holds objects of %q", all[i])}
		}
	}
	dumps := []manifest.SchemaDump{d}
	parts := make([]*splitSQL, len(batches))
	defer func() {
		for _, s := range parts {
			s.close()
		}
	}()
	for b, batch := range batches {
		d, s, err := dump(schemaArgs("--schema", batch), batch, manifest.CoversTenants)
		if err != nil {
			return nil, err
		}
		parts[b] = s
		if len(s.byOwner[0]) != 0 {
			return nil, &errNoSplit{"an archive of tenant schemas holds objects outside them"}
		}
		if !bytes.Equal(s.prelude, shared.prelude) {
			return nil, &errNoSplit{"the archives' preludes differ"}
		}
		dumps = append(dumps, d)
	}
	sharedPart, err := shared.part(-1)
	if err != nil {
		return nil, err
	}
	// Batches are consecutive runs of all (sorted), as are their splits'
	// tenants: tenant i of all is tenant i-first of the batch holding it.
	first := make([]int, len(batches))
	for b := 1; b < len(batches); b++ {
		first[b] = first[b-1] + len(batches[b-1])
	}
	part := func(i int) ([]byte, error) {
		b := 0
		for b+1 < len(first) && first[b+1] <= i {
			b++
		}
		return parts[b].part(int32(i - first[b]))
	}
	sp, ranges, err := r.w.PutSchemaSplit(ctx, r.o.TempDir, shared.prelude, sharedPart, all, part)
	if err != nil {
		return nil, err
	}
	r.schemaParts = ranges
	dumps[0].Split = sp
	return dumps, nil
}
