package export

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/tenancy"
)

// DatabasePrefix starts the name of every scratch database an export
// creates, so that one left behind by a killed export is easy to find.
const DatabasePrefix = "tenantvault_export_"

// checkReplay refuses, before anything is created, a replay export cannot
// run.
func (e *exporter) checkReplay() error {
	at := e.o.Select.At.UTC().Format(time.RFC3339Nano)
	if strings.TrimSpace(e.o.Scratch) == "" {
		return &tenantvault.InputError{
			Msg: fmt.Sprintf("--at %s is after snapshot set %s (taken at %s): the tenant's rows as of then need the change log replayed on the set, which export does in a scratch database: give --scratch URL",
				at, e.set.ID, e.set.ConsistentAt.UTC().Format(time.RFC3339Nano)),
			Hint: "nothing was written; --scratch names a database on a scratch server (never the live one), where export creates and drops its own database; or export the set as it is with --snapshot " + e.set.ID,
		}
	}
	if e.set.Tenancy.Model == tenancy.ModelDatabase {
		return &tenantvault.InputError{
			Msg:  fmt.Sprintf("--at %s after set %s needs a replay, which export does not do for the database tenancy model yet", at, e.set.ID),
			Hint: "restore the tenant with restore --at into a scratch server, or export the set as it is with --snapshot " + e.set.ID,
		}
	}
	if e.o.Template != "" && e.set.Tenancy.Model != tenancy.ModelColumn {
		return tenantvault.Inputf("--template works for the column tenancy model only; set %s uses the %s model", e.set.ID, e.set.Tenancy.Model)
	}
	if e.o.Template == "" && !e.set.HasSchemaArchive() {
		return &tenantvault.InputError{
			Msg:  fmt.Sprintf("--at %s after set %s needs a replay in a scratch database, created from the set's schema archive, but the set has none (it was taken with --schema-archive=none)", at, e.set.ID),
			Err:  restore.ErrNoSchemaArchive,
			Hint: "nothing was written; give --template DB, a database on the scratch server that holds the schema and no rows (e.g. made by your migrations), or export the set as it is with --snapshot " + e.set.ID,
		}
	}
	return nil
}

// scratchDB is the database a replayed tenant is read from.
type scratchDB struct {
	admin    *pgx.ConnConfig
	name     string
	describe string
	conn     *pgx.Conn
	tenant   string
}

// replay creates a fresh database on the scratch server, restores the
// tenant into it with restore.Run as restore --at does (the set's schema
// and global tables, the tenant's chunks with every content digest
// checked, then the change log), and keeps a connection to read it. The
// returned scratchDB must be dropped, also on error.
func (e *exporter) replay(ctx context.Context) (*scratchDB, *restore.TenantResult, error) {
	o := e.o
	cfg, err := tenancy.ParseURL(o.Scratch)
	if err != nil {
		return nil, nil, err
	}
	admin, err := tenancy.Connect(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	defer admin.Close(context.Background())
	var rnd [4]byte
	rand.Read(rnd[:])
	name := DatabasePrefix + o.Now().UTC().Format("20060102T150405") + "_" + hex.EncodeToString(rnd[:])
	create := "CREATE DATABASE " + tenancy.Ident(name) + " TEMPLATE template0 ENCODING 'UTF8'"
	if o.Template != "" {
		create = "CREATE DATABASE " + tenancy.Ident(name) + " TEMPLATE " + tenancy.Ident(o.Template)
	}
	_, err = admin.Exec(ctx, create)
	var pg *pgconn.PgError
	if o.Template == "" && errors.As(err, &pg) && pg.Code == "22023" {
		_, err = admin.Exec(ctx, create+" LC_COLLATE 'C' LC_CTYPE 'C'")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("create scratch database %s on %s: %w", name, tenancy.Describe(cfg), err)
	}
	sdb := &scratchDB{admin: cfg, name: name, tenant: o.Tenant, describe: tenancy.Describe(tenancy.WithDatabase(cfg, name))}
	o.Logger.Info("replaying the change log in a scratch database", "database", sdb.describe, "set", e.set.ID, "at", o.Select.At)
	target, err := tenancy.URLWithDatabase(o.Scratch, name)
	if err != nil {
		return sdb, nil, err
	}
	rr, err := restore.Run(ctx, restore.Options{
		Vault: o.Vault, Target: target, Tenants: []string{o.Tenant}, Select: o.Select,
		CreateSchema: true, SchemaInPlace: o.Template != "", Parallel: 1, PgRestore: o.PgRestore, Logger: o.Logger,
	})
	if err != nil {
		return sdb, nil, fmt.Errorf("replay into scratch database %s: %w", sdb.describe, err)
	}
	if len(rr.Tenants) != 1 || !rr.Tenants[0].Verified {
		return sdb, nil, fmt.Errorf("replay into scratch database %s did not restore the tenant", sdb.describe)
	}
	tr := rr.Tenants[0]
	if tr.Set != e.set.ID || tr.Replayed == nil {
		// A set landed in between: the plan no longer holds.
		return sdb, nil, fmt.Errorf("the restore into the scratch database used set %s, not %s: run the export again", tr.Set, e.set.ID)
	}
	if sdb.conn, err = tenancy.Connect(ctx, tenancy.WithDatabase(cfg, name)); err != nil {
		return sdb, nil, err
	}
	// The same settings as the snapshot's, so the COPY text (and its
	// digest) is rendered the same way.
	if _, err := sdb.conn.Exec(ctx, tenancy.SessionSQL); err != nil {
		return sdb, nil, err
	}
	return sdb, &tr, nil
}

// copyTable reads the tenant's rows of a table from the scratch database
// in canonical order and converts them to CSV.
func (s *scratchDB) copyTable(ctx context.Context, f *tableFile, w io.Writer, content hash.Hash) (int64, error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := s.conn.PgConn().CopyTo(ctx, pw, tenancy.TenantCopySQL(f.t, s.tenant))
		pw.CloseWithError(err)
		done <- err
	}()
	rows, err := copyToCSV(io.TeeReader(pr, content), w, f.colNames())
	pr.CloseWithError(errors.New("export stopped reading"))
	if cerr := <-done; err == nil && cerr != nil {
		err = cerr
	}
	return rows, err
}

// drop removes the scratch database, with a context of its own so that it
// happens also when the export was interrupted.
func (s *scratchDB) drop(log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if s.conn != nil {
		s.conn.Close(ctx)
	}
	admin, err := tenancy.Connect(ctx, s.admin)
	if err == nil {
		_, err = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+tenancy.Ident(s.name)+" WITH (FORCE)")
		admin.Close(ctx)
	}
	if err != nil {
		log.Error("could not drop the export's scratch database; drop it by hand", "database", s.describe, "err", err)
		return
	}
	log.Info("dropped the scratch database", "database", s.describe)
}
