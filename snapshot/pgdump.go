package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
)

// sslKeys are the libpq settings pg_dump needs beyond what pgx keeps in
// its parsed config.
var sslKeys = []string{"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslpassword"}

// libpqParams extracts the ssl* settings from a URL or keyword/value
// connection string.
func libpqParams(conn string) map[string]string {
	out := map[string]string{}
	if u, err := url.Parse(conn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		for _, k := range sslKeys {
			if v := q.Get(k); v != "" {
				out[k] = v
			}
		}
		return out
	}
	for _, kv := range splitDSN(conn) {
		k, v, _ := strings.Cut(kv, "=")
		for _, want := range sslKeys {
			if strings.TrimSpace(k) == want {
				out[want] = v
			}
		}
	}
	return out
}

// splitDSN splits "a=1 b='x y'" into unquoted key=value pairs.
func splitDSN(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, escaped := false, false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped = true
		case r == '\'':
			quoted = !quoted
		case r == ' ' && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

func dsnQuote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// pgDumpCommand builds a pg_dump run against cfg's database with the password
// passed in the environment, never on the command line.
func pgDumpCommand(ctx context.Context, pgDump string, cfg *pgx.ConnConfig, ssl map[string]string, args ...string) *exec.Cmd {
	dsn := []string{
		"host=" + dsnQuote(cfg.Host),
		fmt.Sprintf("port=%d", cfg.Port),
		"user=" + dsnQuote(cfg.User),
		"dbname=" + dsnQuote(cfg.Database),
		"application_name='tenantvault pg_dump'",
	}
	for _, k := range sslKeys {
		if v, ok := ssl[k]; ok && k != "sslpassword" {
			dsn = append(dsn, k+"="+dsnQuote(v))
		}
	}
	cmd := exec.CommandContext(ctx, pgDump, append(args, "--dbname="+strings.Join(dsn, " "))...)
	cmd.Env = os.Environ()
	if cfg.Password != "" {
		cmd.Env = append(cmd.Env, "PGPASSWORD="+cfg.Password)
	}
	if v := ssl["sslpassword"]; v != "" {
		cmd.Env = append(cmd.Env, "PGSSLPASSWORD="+v)
	}
	return cmd
}

func lookPgDump(pgDump string) (string, error) {
	if pgDump == "" {
		pgDump = "pg_dump"
	}
	path, err := exec.LookPath(pgDump)
	if err != nil {
		return "", tenantvault.WithHint(fmt.Sprintf("cannot run %s: %v", pgDump, err),
			"install the PostgreSQL client (pg_dump of the server's major version or newer) or point --pg-dump at it, "+
				"or snapshot without a schema archive: --schema-archive=none")
	}
	return path, nil
}

// pgDumpTooOld says what to do when pg_dump cannot read the server.
func pgDumpTooOld(server int, detail string) error {
	major := server / 10000
	return tenantvault.WithHint(fmt.Sprintf("pg_dump cannot read this server: %s", detail),
		fmt.Sprintf("install pg_dump %d or newer (the PostgreSQL %d client, e.g. postgresql-client-%d from apt.postgresql.org) and point --pg-dump at it, "+
			"or snapshot without a schema archive with --schema-archive=none (such a set restores into an existing schema, e.g. one your migrations create, not with --create-schema)",
			major, major, major))
}

// dumpSchema writes pg_dump's schema-only custom-format archive of cfg's
// database, as of the exported snapshot, to w: of the whole database, or
// of what filter (schemaArgs) selects.
func dumpSchema(ctx context.Context, pgDump string, cfg *pgx.ConnConfig, ssl map[string]string, snapshotName string, server int, filter []string, w io.Writer) error {
	path, err := lookPgDump(pgDump)
	if err != nil {
		return err
	}
	args := []string{"--schema-only", "--format=custom", "--no-sync"}
	if snapshotName != "" {
		args = append(args, "--snapshot="+snapshotName)
	}
	args = append(args, filter...)
	cmd := pgDumpCommand(ctx, path, cfg, ssl, args...)
	var stderr bytes.Buffer
	cmd.Stdout = w
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "server version mismatch") {
			return pgDumpTooOld(server, strings.ReplaceAll(strings.TrimSpace(msg), "\n", "; "))
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) && msg != "" {
			return fmt.Errorf("pg_dump --schema-only: %s", firstLine(msg))
		}
		return fmt.Errorf("pg_dump --schema-only: %w", err)
	}
	return nil
}

// spoolSchema runs dumpSchema into a temporary file in dir, so that the
// archive is stored and split from the file, never held in memory. The
// caller closes and removes it (dropTemp).
func spoolSchema(ctx context.Context, dir, pgDump string, cfg *pgx.ConnConfig, ssl map[string]string, snapshotName string, server int, filter []string) (*os.File, error) {
	f, err := os.CreateTemp(dir, "tenantvault-schema-*.dump")
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	err = dumpSchema(ctx, pgDump, cfg, ssl, snapshotName, server, filter, bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		dropTemp(f)
		return nil, err
	}
	return f, nil
}

// schemaArgs are pg_dump arguments of option (--schema or
// --exclude-schema) for each of the named schemas, matched exactly.
func schemaArgs(option string, names []string) []string {
	out := make([]string, len(names))
	for i, s := range names {
		out[i] = option + "=" + exactPattern(s)
	}
	return out
}

// exactPattern is a pg_dump name pattern matching name only: within
// double quotes every character is literal, and a quote is doubled.
func exactPattern(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// dropTemp closes and removes a temporary file.
func dropTemp(f *os.File) {
	f.Close()
	os.Remove(f.Name())
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
