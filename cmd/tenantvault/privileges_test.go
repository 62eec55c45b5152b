package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// role is a PostgreSQL login role made for one test, with a password that
// the server checks (scram-sha-256, see requirePasswords).
type role struct {
	name, password string
}

// roleURL is a URL to db as r, without the password: that comes from
// PGPASSWORD, as the docs tell users to do.
func roleURL(t *testing.T, db string, r role) string {
	t.Helper()
	u, err := url.Parse(db)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(r.name)
	return u.String()
}

// requirePasswords makes the test cluster check the passwords of the
// members of group over TCP (scram-sha-256), by putting a line first in
// pg_hba.conf for as long as the test runs. The rest of the cluster keeps
// trusting local connections, so other tests are not affected.
func requirePasswords(t *testing.T, group string) {
	t.Helper()
	ctx := testenv.Context(t, 30*time.Second)
	admin := testenv.Connect(t, testenv.PostgresURL(t))
	var hba string
	if err := admin.QueryRow(ctx, "SHOW hba_file").Scan(&hba); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(hba)
	if err != nil {
		t.Fatalf("read pg_hba.conf: %v", err)
	}
	line := fmt.Sprintf("host all +%s 127.0.0.1/32 scram-sha-256\nhost all +%s ::1/128 scram-sha-256\n", group, group)
	if err := os.WriteFile(hba, append([]byte(line), orig...), 0o600); err != nil {
		t.Fatalf("write pg_hba.conf: %v", err)
	}
	t.Cleanup(func() {
		os.WriteFile(hba, orig, 0o600)
		testenv.Exec(t, testenv.PostgresURL(t), "SELECT pg_reload_conf()")
	})
	testenv.Exec(t, testenv.PostgresURL(t), "SELECT pg_reload_conf()")
	time.Sleep(200 * time.Millisecond) // the postmaster reloads asynchronously
}

// makeRoles creates login roles in the password-checked group, runs grants
// (with %[1]s the role name and %[2]s the database) and drops them again
// when the test ends.
func makeRoles(t *testing.T, db, group string, grants map[string]string) map[string]role {
	t.Helper()
	dbName := strings.TrimPrefix(mustParse(t, db).Path, "/")
	out := map[string]role{}
	for key, sql := range grants {
		r := role{name: testenv.RandomName("tv_" + key + "_"), password: testenv.RandomName("Pw-" + key + "-secret-")}
		testenv.Exec(t, testenv.PostgresURL(t), fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE %s", r.name, r.password, group))
		if sql != "" {
			testenv.Exec(t, db, fmt.Sprintf(sql, r.name, dbName))
		}
		t.Cleanup(func() {
			testenv.Exec(t, db, "DROP OWNED BY "+r.name)
			testenv.Exec(t, testenv.PostgresURL(t), fmt.Sprintf("REVOKE ALL ON PARAMETER session_replication_role FROM %[1]s; DROP ROLE %[1]s", r.name))
		})
		out[key] = r
	}
	return out
}

func mustParse(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// Grants of the least-privileged roles, as docs/SECURITY.md lists them.
const (
	// snapshotGrants: read the tables, nothing else (pg_dump --schema-only
	// reads sequence definitions from the catalog, which needs no grant).
	snapshotGrants = `GRANT CONNECT ON DATABASE %[2]s TO %[1]s;
GRANT USAGE ON SCHEMA public TO %[1]s;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO %[1]s;`
	// snapshotPredefined: the same through PostgreSQL 14+'s predefined role.
	snapshotPredefined = `GRANT CONNECT ON DATABASE %[2]s TO %[1]s; GRANT pg_read_all_data TO %[1]s;`
	// restoreGrants: read, insert and delete tenant rows, move owned
	// sequences forward (setval needs UPDATE), and suppress triggers.
	restoreGrants = `GRANT CONNECT ON DATABASE %[2]s TO %[1]s;
GRANT USAGE ON SCHEMA public TO %[1]s;
GRANT SELECT, INSERT, DELETE ON ALL TABLES IN SCHEMA public TO %[1]s;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO %[1]s;
GRANT SET ON PARAMETER session_replication_role TO %[1]s;`
	// restoreNoTriggerGrant lacks the one grant that suppressing triggers needs.
	restoreNoTriggerGrant = `GRANT CONNECT ON DATABASE %[2]s TO %[1]s;
GRANT USAGE ON SCHEMA public TO %[1]s;
GRANT SELECT, INSERT, DELETE ON ALL TABLES IN SCHEMA public TO %[1]s;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO %[1]s;`
)

// TestLeastPrivilege runs snapshot and restore as roles with only the
// grants docs/SECURITY.md lists, authenticating with passwords the server
// checks, given only through PGPASSWORD; and checks that no password (nor
// the S3 secret key) ever appears in output, logs, errors, stored objects
// or, for the agent, metrics and health pages.
func TestLeastPrivilege(t *testing.T) {
	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	group := testenv.RandomName("tv_pwauth_")
	testenv.Exec(t, testenv.PostgresURL(t), "CREATE ROLE "+group+" NOLOGIN")
	t.Cleanup(func() { testenv.Exec(t, testenv.PostgresURL(t), "DROP ROLE IF EXISTS "+group) })
	roles := makeRoles(t, db, group, map[string]string{
		"snap": snapshotGrants, "snapall": snapshotPredefined, "restore": restoreGrants, "notrig": restoreNoTriggerGrant, "none": "",
	})
	requirePasswords(t, group)
	secrets := []string{os.Getenv("AWS_SECRET_ACCESS_KEY")}
	for _, r := range roles {
		secrets = append(secrets, r.password)
	}
	var transcript strings.Builder
	run := func(wantCode int, wantErr, password string, args ...string) string {
		t.Helper()
		t.Setenv("PGPASSWORD", password)
		code, out, errOut := tv(t, append(args, "--log-level", "debug")...)
		// The transcript holds what tenantvault printed, not the command
		// line (one of which deliberately holds a password).
		fmt.Fprintf(&transcript, "$ %s\n%s%s", args[0], out, errOut)
		if code != wantCode || !strings.Contains(errOut, wantErr) {
			t.Fatalf("tenantvault %s: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant %q", strings.Join(args, " "), code, wantCode, out, errOut, wantErr)
		}
		return out
	}
	repoURL := testenv.NewS3Repo(t)
	snap, restoreRole := roles["snap"], roles["restore"]

	// The password is checked: none, or a wrong one, is refused (exit 2).
	run(2, "password authentication failed", "", "snapshot", "--source", roleURL(t, db, snap), "--repo", repoURL, "--init")
	run(2, "check the user and password", "wrong-"+snap.password, "snapshot", "--source", roleURL(t, db, snap), "--repo", repoURL, "--init")
	// A role without grants cannot read the tables.
	run(1, "permission denied", roles["none"].password, "snapshot", "--source", roleURL(t, db, roles["none"]), "--repo", repoURL, "--init")

	// Snapshot with SELECT only, and with pg_read_all_data.
	run(0, "", snap.password, "snapshot", "--source", roleURL(t, db, snap), "--repo", repoURL, "--init")
	run(0, "", roles["snapall"].password, "snapshot", "--source", roleURL(t, db, roles["snapall"]), "--repo", repoURL)
	run(0, "", "", "verify", "--repo", repoURL, "--read-data")

	// Restore as the restore role: a deleted tenant comes back exactly.
	ctx := testenv.Context(t, 2*time.Minute)
	conn := testenv.Connect(t, db)
	want, err := fixture.Read(ctx, conn, "acme")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Exec(t, db, `DELETE FROM events WHERE tenant_id = 'acme'; DELETE FROM tenants WHERE id = 'acme'`)
	run(2, "may not set session_replication_role", roles["notrig"].password, "restore", "--repo", repoURL, "--target", roleURL(t, db, roles["notrig"]), "--tenant", "acme", "--yes")
	run(0, "", restoreRole.password, "restore", "--repo", repoURL, "--target", roleURL(t, db, restoreRole), "--tenant", "acme", "--yes")
	got, err := fixture.Read(ctx, conn, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if d := fixture.Diff(want, got); d != "" {
		t.Fatalf("restored tenant differs:\n%s", d)
	}
	// Replacing takes a pre-restore snapshot as the restore role, then
	// deletes and reloads.
	testenv.Exec(t, db, `UPDATE projects SET name = 'broken' WHERE tenant_id = 'globex'`)
	run(0, "pre-restore snapshot set", restoreRole.password, "restore", "--repo", repoURL, "--target", roleURL(t, db, restoreRole), "--tenant", "globex", "--if-exists", "replace", "--yes")

	// A password in a URL on the command line works, with a warning.
	withPw := strings.Replace(roleURL(t, db, snap), snap.name+"@", snap.name+":"+url.QueryEscape(snap.password)+"@", 1)
	run(0, "other users of this machine can read", "", "snapshot", "--source", withPw, "--repo", repoURL)
	// Connection errors do not repeat it.
	badDB := strings.Replace(withPw, mustParse(t, db).Path, "/no_such_db", 1)
	run(2, "does not exist", "", "snapshot", "--source", badDB, "--repo", repoURL)

	// The agent, with the password in a URL from the environment: logs,
	// metrics and health pages never show it.
	agentOut := runAgentBriefly(t, repoURL, withPw)
	transcript.WriteString(agentOut)

	// Nothing anywhere holds a secret: not the output, not the logs, not
	// the errors, not a stored object, not a decompressed manifest.
	text := transcript.String()
	for key, data := range objectBytes(t, repoURL) {
		text += "\n" + key + "\n" + string(data)
	}
	text += manifestsText(t, repoURL)
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			i := strings.Index(text, s)
			t.Fatalf("a secret leaked: ...%s...", text[max(0, i-200):i])
		}
	}
	if !strings.Contains(text, "REDACTED") && !strings.Contains(text, snap.name) {
		t.Fatal("the transcript looks empty")
	}
}

// manifestsText renders every manifest of a repository as JSON.
func manifestsText(t *testing.T, repoURL string) string {
	t.Helper()
	ctx := testenv.Context(t, time.Minute)
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v, err := vault.Open(ctx, b, vault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := v.ListSets(ctx)
	ms, err := v.ReadManifests(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(ms)
	if len(ids) == 0 || !strings.Contains(string(data), `"tenants"`) {
		t.Fatalf("no manifests: %s", data)
	}
	return string(data)
}

// runAgentBriefly runs the agent until it has written and verified a set,
// fetches its metrics and health pages, and returns its logs and those
// pages.
func runAgentBriefly(t *testing.T, repoURL, sourceURL string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
repository: %q
listen: %s
log_level: debug
sources:
  - name: main
    url_env: TV_PRIV_SOURCE
    schedule: "@every 1s"
    verify_read_data: true
`, repoURL, addr)), 0o600)
	c := agentChild(t, []string{"TV_PRIV_SOURCE=" + sourceURL, "PGPASSWORD="}, "agent", "--config", cfg)
	get := func(p string) string {
		resp, err := http.Get("http://" + addr + p)
		if err != nil {
			return ""
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(body)
	}
	// Its stderr is not safe to read while it runs: wait on the metrics.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(get("/metrics"), `tenantvault_snapshots_total{source="main"} 1`) {
		if time.Now().After(deadline) {
			c.cmd.Process.Signal(syscall.SIGTERM)
			c.wait(t, 30*time.Second)
			t.Fatalf("agent did not write a set:\n%s", c.stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // its verification
	var pages strings.Builder
	for _, p := range []string{"/metrics", "/healthz", "/readyz"} {
		fmt.Fprintf(&pages, "GET %s\n%s\n", p, get(p))
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	c.wait(t, 30*time.Second)
	if !strings.Contains(c.stderr.String(), "snapshot verified") {
		t.Fatalf("agent logs:\n%s", c.stderr.String())
	}
	return c.stderr.String() + c.stdout.String() + pages.String()
}
