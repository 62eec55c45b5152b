package drill

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantvault/tenantvault/tenancy"
)

// Kinds of database check, as Problem.Check names them.
const (
	CheckForeignKey = "foreign key"
	CheckConstraint = "check constraint"
	CheckIndex      = "btree index"
)

// DatabaseChecks is what the server's own checks found in one restored
// database.
type DatabaseChecks struct {
	Database string
	// Tenant is set when the database belongs to one tenant (database model).
	Tenant string
	// ForeignKeys and Constraints count the foreign keys and CHECK
	// constraints that were validated again over every row.
	ForeignKeys int
	Constraints int
	// Indexes counts the btree indexes verified with amcheck.
	Indexes int
	// Skipped says which checks did not run, and why (amcheck missing, a
	// constraint that was NOT VALID in the source already).
	Skipped  []string
	Problems []Problem
	Duration time.Duration
	// Err says why the checks did not finish (a lost connection, the
	// context ended); "" when they did.
	Err string
}

// Problem is one check that found the restored data or an index wrong.
type Problem struct {
	Check  string `json:"check"`  // CheckForeignKey, CheckConstraint or CheckIndex
	Object string `json:"object"` // the constraint or index, schema-qualified
	Table  string `json:"table"`  // its table, schema-qualified
	// Tenant is the tenant the table belongs to: the schema (schema model)
	// or the database (database model). It is empty in the column model,
	// whose tables every tenant shares.
	Tenant  string `json:"tenant,omitempty"`
	Message string `json:"message"`
}

func (p Problem) String() string {
	return fmt.Sprintf("%s %s on %s: %s", p.Check, p.Object, p.Table, p.Message)
}

// checkSchema is where amcheck is installed for the checks; everything the
// checks create is rolled back, so a kept database shows only what was
// restored.
const checkSchema = "tenantvault_drill_check"

// checkDatabase runs the checks that are cheap next to a restore:
//
//   - every validated foreign key and CHECK constraint is dropped and added
//     again, which makes the server validate all rows with its own code (for
//     a foreign key, the same anti-join ALTER TABLE ... VALIDATE CONSTRAINT
//     uses; that statement alone does nothing for a constraint already
//     marked valid). Restore loads with triggers suppressed, so this is the
//     server's independent word that every reference resolves;
//   - amcheck's bt_index_check with heapallindexed verifies the structure of
//     every btree index and that it holds every row of its table, when the
//     amcheck extension can be created (it needs a superuser).
//
// Everything runs in one transaction that is rolled back, one savepoint per
// check so that one problem does not hide the next. owner maps a table's
// schema to the tenant it belongs to ("" when shared).
func checkDatabase(ctx context.Context, cfg *pgx.ConnConfig, owner func(schema string) string) (DatabaseChecks, error) {
	start := time.Now()
	dc := DatabaseChecks{Database: cfg.Database}
	conn, err := tenancy.Connect(ctx, cfg)
	if err != nil {
		return dc, err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return dc, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		conn.Exec(rctx, "ROLLBACK")
		cancel()
	}()
	if err := checkConstraints(ctx, conn, &dc, owner); err != nil {
		return dc, err
	}
	if err := checkIndexes(ctx, conn, &dc, owner); err != nil {
		return dc, err
	}
	dc.Duration = time.Since(start)
	return dc, nil
}

// userSchemas leaves out the system's schemas and the one the checks use.
const userSchemas = `n.nspname NOT IN ('pg_catalog', 'information_schema', '` + checkSchema + `') AND n.nspname NOT LIKE 'pg\_%'`

// checkConstraints validates every foreign key and CHECK constraint again.
func checkConstraints(ctx context.Context, conn *pgx.Conn, dc *DatabaseChecks, owner func(string) string) error {
	// Foreign keys cloned onto partitions (conparentid) and CHECK
	// constraints inherited from a parent (coninhcount) are re-created by
	// their parent's statement; domain constraints (conrelid 0) are enforced
	// on every value COPY loads, triggers or not.
	rows, err := conn.Query(ctx, `
SELECT c.contype = 'f', c.convalidated, n.nspname, r.relname, c.conname, pg_get_constraintdef(c.oid)
FROM pg_constraint c
JOIN pg_class r ON r.oid = c.conrelid
JOIN pg_namespace n ON n.oid = r.relnamespace
WHERE c.contype IN ('f', 'c') AND c.conparentid = 0 AND c.coninhcount = 0 AND `+userSchemas+`
ORDER BY n.nspname, r.relname, c.conname`)
	if err != nil {
		return fmt.Errorf("list constraints: %w", err)
	}
	type constraint struct {
		fk, valid                bool
		schema, table, name, def string
	}
	cons, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (constraint, error) {
		var c constraint
		err := r.Scan(&c.fk, &c.valid, &c.schema, &c.table, &c.name, &c.def)
		return c, err
	})
	if err != nil {
		return fmt.Errorf("list constraints: %w", err)
	}
	for _, c := range cons {
		if err := ctx.Err(); err != nil {
			return err
		}
		kind := CheckConstraint
		if c.fk {
			kind = CheckForeignKey
		}
		table := tenancy.Ident(c.schema, c.table)
		object := c.schema + "." + c.name
		if !c.valid {
			// The source marked it NOT VALID: its old rows were never held
			// to it there either, so a violation here would be no news.
			dc.Skipped = append(dc.Skipped, fmt.Sprintf("%s %s: NOT VALID in the snapshot's schema", kind, object))
			continue
		}
		// Definitions are rendered with an empty search_path, so every
		// name in them is qualified.
		sql := fmt.Sprintf("ALTER TABLE %s DROP CONSTRAINT %s, ADD CONSTRAINT %s %s", table, tenancy.Ident(c.name), tenancy.Ident(c.name), c.def)
		problem, err := inSavepoint(ctx, conn, sql, nil, false)
		if err != nil {
			return fmt.Errorf("validate %s %s: %w", kind, object, err)
		}
		if c.fk {
			dc.ForeignKeys++
		} else {
			dc.Constraints++
		}
		switch {
		case problem == nil:
		case problem.Code[:2] == "23": // integrity_constraint_violation
			dc.Problems = append(dc.Problems, Problem{Check: kind, Object: object, Table: c.schema + "." + c.table,
				Tenant: owner(c.schema), Message: pgMessage(problem)})
		default:
			dc.Skipped = append(dc.Skipped, fmt.Sprintf("%s %s: could not be validated again: %s", kind, object, pgMessage(problem)))
		}
	}
	return nil
}

// checkIndexes verifies every btree index with amcheck, if it can be had.
func checkIndexes(ctx context.Context, conn *pgx.Conn, dc *DatabaseChecks, owner func(string) string) error {
	var schema string
	err := conn.QueryRow(ctx, `SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'amcheck'`).Scan(&schema)
	if errors.Is(err, pgx.ErrNoRows) {
		schema = tenancy.Ident(checkSchema)
		create := fmt.Sprintf("CREATE SCHEMA %s; CREATE EXTENSION amcheck SCHEMA %s", schema, schema)
		// Kept until the whole transaction rolls back.
		problem, err := inSavepoint(ctx, conn, create, nil, true)
		if err != nil {
			return fmt.Errorf("create extension amcheck: %w", err)
		}
		if problem != nil {
			dc.Skipped = append(dc.Skipped, "btree indexes: amcheck is not available: "+pgMessage(problem))
			return nil
		}
	} else if err != nil {
		return fmt.Errorf("look for amcheck: %w", err)
	}
	// Partitioned indexes (relkind I) have no storage of their own; their
	// partitions' indexes are checked. Invalid indexes (a failed CREATE
	// INDEX CONCURRENTLY in the source) are not used by the server either.
	rows, err := conn.Query(ctx, `
SELECT i.indexrelid, n.nspname, ic.relname, r.relname
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_am am ON am.oid = ic.relam
JOIN pg_class r ON r.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE am.amname = 'btree' AND ic.relkind = 'i' AND ic.relpersistence <> 't' AND i.indisvalid AND i.indisready AND `+userSchemas+`
ORDER BY n.nspname, r.relname, ic.relname`)
	if err != nil {
		return fmt.Errorf("list indexes: %w", err)
	}
	type index struct {
		oid                 uint32
		schema, name, table string
	}
	idx, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (index, error) {
		var x index
		err := r.Scan(&x.oid, &x.schema, &x.name, &x.table)
		return x, err
	})
	if err != nil {
		return fmt.Errorf("list indexes: %w", err)
	}
	sql := fmt.Sprintf("SELECT %s.bt_index_check($1::oid::regclass, true)", schema)
	for _, x := range idx {
		if err := ctx.Err(); err != nil {
			return err
		}
		object := x.schema + "." + x.name
		problem, err := inSavepoint(ctx, conn, sql, []any{x.oid}, false)
		if err != nil {
			return fmt.Errorf("check index %s: %w", object, err)
		}
		dc.Indexes++
		switch {
		case problem == nil:
		case problem.Code[:2] == "XX": // internal_error, data_corrupted, index_corrupted
			dc.Problems = append(dc.Problems, Problem{Check: CheckIndex, Object: object, Table: x.schema + "." + x.table,
				Tenant: owner(x.schema), Message: pgMessage(problem)})
		default:
			dc.Indexes--
			dc.Skipped = append(dc.Skipped, fmt.Sprintf("%s %s: could not be checked: %s", CheckIndex, object, pgMessage(problem)))
		}
	}
	return nil
}

// inSavepoint runs sql in a savepoint. A server error is returned as the
// problem, and the savepoint rolled back; any other error (a lost
// connection, a cancelled context) is returned as err. After success the
// savepoint is released when keep is set, else rolled back too: that keeps
// the schema exactly as restored and frees the subtransaction's locks.
func inSavepoint(ctx context.Context, conn *pgx.Conn, sql string, args []any, keep bool) (*pgconn.PgError, error) {
	if _, err := conn.Exec(ctx, "SAVEPOINT drill_check"); err != nil {
		return nil, err
	}
	var err error
	if args == nil {
		// Simple protocol: sql may hold several statements.
		_, err = conn.PgConn().Exec(ctx, sql).ReadAll()
	} else {
		_, err = conn.Exec(ctx, sql, args...)
	}
	var pg *pgconn.PgError
	if err != nil && !errors.As(err, &pg) {
		return nil, err
	}
	end := "ROLLBACK TO SAVEPOINT drill_check"
	if err == nil && keep {
		end = "RELEASE SAVEPOINT drill_check"
	}
	if _, err := conn.Exec(ctx, end); err != nil {
		return nil, err
	}
	return pg, nil
}

// pgMessage renders a server error with its detail, which names the
// offending key.
func pgMessage(e *pgconn.PgError) string {
	msg := e.Message
	if e.Detail != "" {
		msg += " (" + e.Detail + ")"
	}
	return msg + " [SQLSTATE " + e.Code + "]"
}
