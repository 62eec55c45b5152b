package restore

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
)

// SchemaMismatchError lists, column by column, why a target cannot take a
// set's rows.
type SchemaMismatchError struct {
	Set      string
	Problems []string
}

func (e *SchemaMismatchError) Error() string {
	return fmt.Sprintf("the target's schema does not match snapshot set %s:\n  %s", e.Set, strings.Join(e.Problems, "\n  "))
}

// compareTable reports what keeps rows of snapshot table s from loading
// into target table t and reading back identical.
func compareTable(s, t *manifest.Table) []string {
	var out []string
	name := s.QualifiedName()
	tcols := map[string]manifest.Column{}
	for _, c := range t.Columns {
		tcols[c.Name] = c
	}
	scols := map[string]bool{}
	for _, c := range s.Columns {
		scols[c.Name] = true
		tc, ok := tcols[c.Name]
		switch {
		case !ok && c.Generated:
			// Never exported; nothing to load.
		case !ok:
			out = append(out, fmt.Sprintf("%s.%s: missing in the target (snapshot has %s)", name, c.Name, c.Type))
		case tc.Type != c.Type:
			out = append(out, fmt.Sprintf("%s.%s: type is %s in the target, %s in the snapshot", name, c.Name, tc.Type, c.Type))
		case tc.Generated && !c.Generated:
			out = append(out, fmt.Sprintf("%s.%s: generated in the target, a plain column in the snapshot", name, c.Name))
		case !tc.Generated && c.Generated:
			out = append(out, fmt.Sprintf("%s.%s: generated in the snapshot, a plain column in the target", name, c.Name))
		}
	}
	for _, c := range t.Columns {
		if !scols[c.Name] && c.NotNull && !c.HasDefault && !c.Generated && c.Identity == "" {
			out = append(out, fmt.Sprintf("%s.%s: NOT NULL without a default in the target, absent from the snapshot", name, c.Name))
		}
	}
	return out
}

// renderSchema turns a schema archive into SQL with pg_restore, leaving out
// owners and privileges (the target's roles may differ). schema, when set,
// limits it to one schema's objects; exclude leaves schemas out.
func renderSchema(ctx context.Context, pgRestore string, archive []byte, schema string, exclude []string) (string, error) {
	if pgRestore == "" {
		pgRestore = "pg_restore"
	}
	path, err := exec.LookPath(pgRestore)
	if err != nil {
		return "", tenantvault.WithHint(fmt.Sprintf("cannot run %s: %v", pgRestore, err),
			"--create-schema needs pg_restore (the PostgreSQL client); install it or point --pg-restore at it")
	}
	f, err := os.CreateTemp("", "tenantvault-schema-*.dump")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(archive); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	args := []string{"--schema-only", "--no-owner", "--no-privileges", "--file=-"}
	if schema != "" {
		args = append(args, "--schema="+schema)
	}
	for _, x := range exclude {
		args = append(args, "--exclude-schema="+x)
	}
	cmd := exec.CommandContext(ctx, path, append(args, f.Name())...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("pg_restore --schema-only: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	// pg_restore wraps its script in psql meta-commands (\restrict) that
	// guard psql sessions; they mean nothing to the server. Any other
	// meta-command would, so it is refused rather than skipped.
	excluded := map[string]bool{}
	for _, x := range exclude {
		excluded[x] = true
	}
	var sql strings.Builder
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, `\restrict `) || strings.HasPrefix(line, `\unrestrict `) {
			continue
		}
		if strings.HasPrefix(line, `\`) {
			return "", fmt.Errorf("pg_restore output has an unexpected psql meta-command: %.40s", line)
		}
		if line == "SET transaction_timeout = 0;" {
			line = PortableTransactionTimeout
		}
		// --exclude-schema leaves out what is in a schema, not the schema:
		// its CREATE SCHEMA (and comment) would make an empty schema that
		// looks like a tenant with no rows, and that a later restore of
		// that tenant could not create.
		if name, ok := schemaStatement(line); ok && excluded[name] {
			continue
		}
		sql.WriteString(line)
		sql.WriteByte('\n')
	}
	return sql.String(), sc.Err()
}

// schemaStatement returns the schema a pg_restore line creates or
// comments on ("CREATE SCHEMA name;", "COMMENT ON SCHEMA name IS ..."),
// with the name unquoted as pg_dump quotes it.
func schemaStatement(line string) (string, bool) {
	rest, ok := strings.CutPrefix(line, "CREATE SCHEMA ")
	if ok {
		if rest, ok = strings.CutSuffix(rest, ";"); !ok {
			return "", false
		}
	} else if rest, ok = strings.CutPrefix(line, "COMMENT ON SCHEMA "); !ok {
		return "", false
	}
	if !strings.HasPrefix(rest, `"`) {
		name, _, _ := strings.Cut(rest, " ")
		return name, name != ""
	}
	var b strings.Builder
	for i := 1; i < len(rest); i++ {
		if rest[i] == '"' {
			if i+1 < len(rest) && rest[i+1] == '"' {
				b.WriteByte('"')
				i++
				continue
			}
			if tail := rest[i+1:]; tail == "" || strings.HasPrefix(tail, " ") {
				return b.String(), true
			}
			return "", false
		}
		b.WriteByte(rest[i])
	}
	return "", false
}

// PortableTransactionTimeout replaces the "SET transaction_timeout = 0;"
// of pg_restore 17 and newer, which every script of theirs carries whatever
// the archive's server, and which servers before 17 reject as an unknown
// parameter: the image's pg_restore is new enough for every supported
// server, so its scripts must run on the older ones too.
const PortableTransactionTimeout = `SELECT pg_catalog.set_config('transaction_timeout', '0', false) FROM pg_catalog.pg_settings WHERE name = 'transaction_timeout';`

// execScript runs a multi-statement script in the current transaction.
func execScript(ctx context.Context, conn *pgx.Conn, sql string) error {
	// The simple protocol runs every statement of the script in one call.
	_, err := conn.PgConn().Exec(ctx, sql).ReadAll()
	return err
}

// splitSchemaScript assembles the schema SQL of tenants from their set's
// split schema (docs/FORMAT.md, "Split schema SQL"): the prelude, the
// shared part when withShared (an empty target), then each tenant's part,
// reading only those parts. ok is false when the set or a tenant has no
// split part; the caller then renders the whole archive, as before.
func (r *runner) splitSchemaScript(ctx context.Context, dump *manifest.SchemaDump, withShared bool, tenants []*manifest.Tenant) (sql string, ok bool, err error) {
	sp := dump.Split
	if sp == nil {
		return "", false, nil
	}
	for _, t := range tenants {
		if t == nil || t.SchemaSQL == nil {
			return "", false, nil
		}
	}
	var b strings.Builder
	add := func(rg manifest.Range, t *manifest.Tenant) error {
		tenant := ""
		if t != nil {
			tenant = t.ID
		}
		part, err := r.o.Vault.GetSchemaPart(ctx, sp, rg, t)
		if err != nil {
			return err
		}
		for len(part) > 0 {
			line, rest, _ := bytes.Cut(part, []byte{'\n'})
			part = rest
			s := string(line)
			switch {
			case s == "SET transaction_timeout = 0;":
				s = PortableTransactionTimeout
			case tenant != "" && strings.HasPrefix(s, "CREATE SCHEMA "):
				// The schema may exist (created by hand, or empty after
				// an earlier restore); its objects are what is restored.
				if name, ok := schemaStatement(s); ok && name == tenant {
					s = "CREATE SCHEMA IF NOT EXISTS " + strings.TrimPrefix(s, "CREATE SCHEMA ")
				}
			}
			b.WriteString(s)
			b.WriteByte('\n')
		}
		return nil
	}
	if err := add(sp.Prelude, nil); err != nil {
		return "", false, err
	}
	if withShared {
		if err := add(sp.Shared, nil); err != nil {
			return "", false, err
		}
	}
	for _, t := range tenants {
		if err := add(*t.SchemaSQL, t); err != nil {
			return "", false, err
		}
	}
	return b.String(), true, nil
}

// renderTenantSchema renders a tenant's schema from the whole archive: a
// set without a split schema, or the database model.
func (r *runner) renderTenantSchema(ctx context.Context, p *Plan, it *Item, dumps []manifest.SchemaDump) (string, error) {
	filter := ""
	if p.Model == tenancy.ModelSchema {
		filter = it.Tenant
	}
	return r.renderArchives(ctx, dumps, filter, nil)
}

// renderArchives renders schema archives one after the other (renderSchema):
// a schema dumped in batches is its shared archive, then those of its tenant
// schemas, each a script of its own.
func (r *runner) renderArchives(ctx context.Context, dumps []manifest.SchemaDump, schema string, exclude []string) (string, error) {
	var sql strings.Builder
	for _, d := range dumps {
		archive, err := r.o.Vault.GetSchema(ctx, d)
		if err != nil {
			return "", err
		}
		s, err := renderSchema(ctx, r.o.PgRestore, archive, schema, exclude)
		if err != nil {
			return "", err
		}
		sql.WriteString(s)
	}
	return sql.String(), nil
}
