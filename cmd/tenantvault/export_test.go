package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// hostileTenant is a tenant ID no file name, shell word or SQL literal
// carries as it is.
const hostileTenant = "evil\"\n'; DROP TABLE tenants; -- \\ %2e/../ü"

// hostileRows adds values that COPY text and CSV render differently: NULL
// and the empty string, tabs, line breaks (LF, CR), quotes, commas,
// backslashes, the end-of-data marker, unicode, bytea, arrays, jsonb.
const hostileRows = `
INSERT INTO projects (tenant_id, name, settings, budget, tags, starts)
VALUES (%[1]s, '', NULL, NULL, '{}', NULL),
       (%[1]s, '\.', '{"a": "\\.", "b": "line\nbreak", "q": "\"", "u": "\u00fc\u20ac"}', 0, ARRAY['', NULL, 'NULL', '\N', 'a,b', E'tab\there', '{', '"'], '2026-02-03'),
       (%[1]s, E'cr\rlf\r\nend "quoted", comma \\ backslash \\N \\. ' || chr(11) || chr(8) || chr(12), '[]', -1.5, ARRAY[E'new\nline'], '2026-02-04'),
       (%[1]s, '\N', 'null', 1e-20, NULL, NULL);
INSERT INTO tasks (project_id, title, blob, grid, label)
SELECT id, 'hostile', '\x00ff5c0a09225c4e'::bytea, '{{1,2},{NULL,4}}', '' FROM projects WHERE tenant_id = %[1]s AND name = '';
INSERT INTO task_notes (task_id, note) SELECT t.id, x FROM tasks t JOIN projects p ON p.id = t.project_id,
  unnest(ARRAY['', NULL, E'\\', E'\t', E'\n', '\N']) x WHERE p.tenant_id = %[1]s AND t.title LIKE 'hostile%';
`

func sqlLit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// exportFixture is a source with the fixture's tenants plus the hostile
// one, snapshotted into repoURL.
func exportFixture(t *testing.T, repoURL string, snapArgs ...string) string {
	t.Helper()
	src := testenv.NewDatabase(t)
	fixture.Create(t, src)
	fixture.Populate(t, src, hostileTenant, 9, 2)
	testenv.Exec(t, src, strings.ReplaceAll(hostileRows, "%[1]s", sqlLit(hostileTenant)))
	expect(t, 0, "", append([]string{"snapshot", "--source", src, "--repo", repoURL, "--init"}, snapArgs...)...)
	return src
}

// unpack extracts an archive with tar, as README.txt says, and returns the
// directory the files are in.
func unpack(t *testing.T, archive string) string {
	t.Helper()
	dir := t.TempDir()
	args := []string{"-xf", archive, "-C", dir}
	if strings.HasSuffix(archive, ".zst") {
		requireTool(t, "zstd")
		args = append([]string{"--zstd"}, args...)
	}
	if out, err := exec.Command(requireTool(t, "tar"), args...).CombinedOutput(); err != nil {
		t.Fatalf("tar %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 || !entries[0].IsDir() {
		t.Fatalf("archive does not hold one directory: %v %v", entries, err)
	}
	return filepath.Join(dir, entries[0].Name())
}

type exportManifest struct {
	Tenant string `json:"tenant"`
	Set    struct {
		ID string `json:"id"`
	} `json:"set"`
	AsOf   time.Time `json:"as_of"`
	Replay *struct {
		Changes int `json:"changes"`
	} `json:"replay"`
	Tables []struct {
		Schema        string `json:"schema"`
		Name          string `json:"name"`
		File          string `json:"file"`
		Rows          int64  `json:"rows"`
		ContentDigest string `json:"content_digest"`
		SetDigest     string `json:"set_digest"`
	} `json:"tables"`
	Files []struct {
		Name   string `json:"name"`
		Rows   *int64 `json:"rows"`
		Bytes  int64  `json:"bytes"`
		SHA256 string `json:"sha256"`
	} `json:"files"`
}

// checkFiles reads manifest.json and proves every file it lists has the
// size and SHA-256 it says, and that SHA256SUMS agrees (sha256sum -c).
func checkFiles(t *testing.T, dir string) *exportManifest {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m exportManifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	listed := map[string]bool{}
	for _, f := range m.Files {
		listed[f.Name] = true
		b, err := os.ReadFile(filepath.Join(dir, f.Name))
		if err != nil {
			t.Fatalf("manifest.json lists %s: %v", f.Name, err)
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != f.SHA256 || int64(len(b)) != f.Bytes {
			t.Fatalf("%s: %d bytes, sha256 %x; manifest.json says %d, %s", f.Name, len(b), sum, f.Bytes, f.SHA256)
		}
	}
	for _, want := range []string{"README.txt", "schema.sql", "load.sql"} {
		if !listed[want] {
			t.Fatalf("manifest.json does not list %s", want)
		}
	}
	if p, err := exec.LookPath("sha256sum"); err == nil {
		c := exec.Command(p, "-c", "--strict", "SHA256SUMS")
		c.Dir = dir
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("sha256sum -c: %v\n%s", err, out)
		}
	}
	return &m
}

// psqlLoad loads an unpacked export into an empty database with psql only,
// as README.txt says.
func psqlLoad(t *testing.T, dir string) string {
	t.Helper()
	db := testenv.NewDatabase(t)
	c := exec.Command(requireTool(t, "psql"), "-X", "-q", "-d", db, "-v", "ON_ERROR_STOP=1", "-f", "load.sql")
	c.Dir = dir
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("psql -f load.sql: %v\n%s", err, out)
	}
	return db
}

// openSet reads a set's header and a tenant's entry as restore does.
func openSet(t *testing.T, repoURL, setID, tenant string, keys *vault.Keys) (*manifest.Manifest, *manifest.Tenant) {
	t.Helper()
	ctx := testenv.Context(t, time.Minute)
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	v, err := vault.Open(ctx, b, vault.Options{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	s, err := v.OpenSet(ctx, setID)
	if err != nil {
		t.Fatal(err)
	}
	tn, err := s.Tenant(ctx, tenant)
	if err != nil || tn == nil {
		t.Fatalf("tenant %q in set %s: %v", tenant, setID, err)
	}
	return s.Header(), tn
}

// digests computes every table's content digest in db as docs/FORMAT.md
// defines it: COPY text of the rows in canonical order, under the fixed
// session settings.
func digests(t *testing.T, db string, set *manifest.Manifest, tenant string) map[string]string {
	t.Helper()
	ctx := testenv.Context(t, time.Minute)
	conn := testenv.Connect(t, db)
	if _, err := conn.Exec(ctx, tenancy.SessionSQL); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, ti := range tenancy.TablesOf(set.Tables, tenant) {
		tb := &set.Tables[ti]
		h := sha256.New()
		if _, err := conn.PgConn().CopyTo(ctx, h, tenancy.TenantCopySQL(tb, tenant)); err != nil {
			t.Fatalf("digest of %s: %v", tb.QualifiedName(), err)
		}
		out[tb.QualifiedName()] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

// sameAsSet proves the loaded database holds the tenant's rows of the set,
// row for row: every table's content digest equals the set's.
func sameAsSet(t *testing.T, db string, set *manifest.Manifest, tn *manifest.Tenant) {
	t.Helper()
	got := digests(t, db, set, tn.ID)
	want := map[string]string{}
	for _, c := range tn.Chunks {
		want[set.Tables[c.Table].QualifiedName()] = c.Digest
	}
	if len(got) == 0 {
		t.Fatal("no tables")
	}
	for name, g := range got {
		w, ok := want[name]
		if !ok {
			w = hex.EncodeToString(func() []byte { s := sha256.Sum256(nil); return s[:] }())
		}
		if g != w {
			t.Errorf("%s: digest after loading %s, the set's %s", name, g[:12], w[:12])
		}
	}
}

// TestExportLoadsWithPsql: a tenant with hostile values and a hostile ID,
// exported from file:// and MinIO, unpacked with tar and loaded into an
// empty database with psql alone, equals the set row for row; the files
// match manifest.json.
func TestExportLoadsWithPsql(t *testing.T) {
	fileRepo := "file://" + filepath.Join(t.TempDir(), "repo")
	exportFixture(t, fileRepo)
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			repoURL := fileRepo
			tenant, name := hostileTenant, "hostile.tar.zst"
			if kind == "s3" {
				repoURL = testenv.NewS3Repo(t)
				exportFixture(t, repoURL)
				tenant, name = "Ünïcödé GmbH", "unicode.tar"
			}
			out := filepath.Join(t.TempDir(), name)
			stdout := expect(t, 0, "", "export", "--repo", repoURL, "--tenant", tenant, "--output", out)
			if !strings.Contains(stdout, "exported tenant ") || !strings.Contains(stdout, out) {
				t.Fatalf("export output:\n%s", stdout)
			}
			if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("archive %v, mode %v", err, fi)
			}
			dir := unpack(t, out)
			m := checkFiles(t, dir)
			if m.Tenant != tenant || len(m.Tables) != 6 || m.Replay != nil {
				t.Fatalf("manifest.json: tenant %q, %d tables, replay %v", m.Tenant, len(m.Tables), m.Replay)
			}
			readme, _ := os.ReadFile(filepath.Join(dir, "README.txt"))
			if !strings.Contains(string(readme), "psql -d tenant_copy -v ON_ERROR_STOP=1 -f load.sql") {
				t.Fatalf("README.txt does not say how to load:\n%s", readme)
			}
			db := psqlLoad(t, dir)
			set, tn := openSet(t, repoURL, m.Set.ID, tenant, nil)
			sameAsSet(t, db, set, tn)
			var rows int64
			for _, tb := range m.Tables {
				if tb.ContentDigest != tb.SetDigest {
					t.Errorf("%s.%s: content digest %s, set digest %s", tb.Schema, tb.Name, tb.ContentDigest, tb.SetDigest)
				}
				rows += tb.Rows
			}
			if rows != tn.Rows {
				t.Fatalf("manifest.json counts %d rows, the set %d", rows, tn.Rows)
			}
			if kind == "file" {
				// The values that differ between NULL and "" came through.
				var nulls, empties int
				testenv.Connect(t, db).QueryRow(context.Background(),
					`SELECT count(*) FILTER (WHERE note IS NULL), count(*) FILTER (WHERE note = '') FROM task_notes`).Scan(&nulls, &empties)
				if nulls < 2 || empties != 1 {
					t.Fatalf("task_notes: %d NULL notes, %d empty", nulls, empties)
				}
				// New rows get identities after the loaded ones.
				testenv.Exec(t, db, "INSERT INTO projects (tenant_id, name) VALUES ("+sqlLit(tenant)+", 'new')")
			}
		})
	}
}

// smallSource is a source with two tenants, snapshotted into a new file://
// repository; it returns the source and the repository.
func smallSource(t *testing.T, snapArgs ...string) (string, string) {
	t.Helper()
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, pitrSchema+`
INSERT INTO tenants VALUES ('acme'), ('globex');
INSERT INTO issues (tenant_id, title) SELECT id, 'issue ' || g FROM tenants, generate_series(1, 3) g;
INSERT INTO comments (issue_id, body) SELECT id, E'comment\twith "tab"' FROM issues`)
	repoURL := "file://" + t.TempDir() + "/repo"
	expect(t, 0, "", append([]string{"snapshot", "--source", db, "--repo", repoURL, "--init", "--tenant-table", "public.tenants"}, snapArgs...)...)
	return db, repoURL
}

// noFiles fails when dir holds anything: a refused or failed export
// leaves nothing behind, no temporary file either.
func noFiles(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		t.Errorf("left behind: %s", e.Name())
	}
}

// TestExportBadInput: bad flags, unknown tenants, an existing file, a
// damaged chunk: the documented exit code and message, and nothing
// written.
func TestExportBadInput(t *testing.T) {
	_, repoURL := smallSource(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "acme.tar")
	base := []string{"export", "--repo", repoURL}
	expect(t, 2, "no tenant given: use --tenant ID", append(base, "--output", out)...)
	expect(t, 2, "export writes one tenant, and 2 were given", append(base, "--tenant", "acme", "--tenant", "globex", "--output", out)...)
	expect(t, 2, "--output is required: a FILE (.tar or .tar.zst), or - for stdout", append(base, "--tenant", "acme")...)
	expect(t, 2, "--at and --snapshot exclude each other", append(base, "--tenant", "acme", "--output", out, "--at", "2026-01-01T00:00:00Z", "--snapshot", "x")...)
	expect(t, 2, `--at "yesterday" is not an RFC 3339 time`, append(base, "--tenant", "acme", "--output", out, "--at", "yesterday")...)
	expect(t, 2, "export writes a tar (.tar) or a zstd-compressed tar (.tar.zst), not .gz", append(base, "--tenant", "acme", "--output", out+".gz")...)
	expect(t, 2, "--json and --output - exclude each other", append(base, "--tenant", "acme", "--output", "-", "--json")...)
	expect(t, 2, `1 unknown tenant(s) in any snapshot set of `+repoURL+`: "nobody"`, append(base, "--tenant", "nobody", "--output", out)...)
	expect(t, 2, `unknown tenant(s) in any snapshot set of `+repoURL+`: "acme\n"`, append(base, "--tenant", "acme\n", "--output", out)...)
	expect(t, 2, "--at 2000-01-01T00:00:00Z is before the oldest snapshot set", append(base, "--tenant", "acme", "--output", out, "--at", "2000-01-01T00:00:00Z")...)
	// A whole second after the set (RFC 3339 to the second could fall
	// before it, in the same second).
	expect(t, 2, "no change log continues snapshot set ", append(base, "--tenant", "acme", "--output", out, "--at", time.Now().UTC().Add(time.Second).Truncate(time.Second).Add(time.Second).Format(time.RFC3339))...)
	expect(t, 2, "no such file or directory", append(base, "--tenant", "acme", "--output", filepath.Join(dir, "missing", "x.tar"))...)
	expect(t, 2, "--repo is required", "export", "--tenant", "acme", "--output", out)
	plan := expect(t, 0, "", append(base, "--tenant", "acme", "--output", out, "--dry-run")...)
	if !strings.Contains(plan, `plan: export tenant "acme" from set `) || !strings.Contains(plan, "public.comments  3") || !strings.Contains(plan, "nothing written") {
		t.Fatalf("dry run:\n%s", plan)
	}
	noFiles(t, dir)

	// An existing file is replaced only with --force.
	os.WriteFile(out, []byte("keep me"), 0o644)
	expect(t, 2, "--output "+out+" already exists", append(base, "--tenant", "acme", "--output", out)...)
	if b, _ := os.ReadFile(out); string(b) != "keep me" {
		t.Fatalf("the existing file changed: %q", b)
	}
	expect(t, 0, "", append(base, "--tenant", "acme", "--output", out, "--force")...)
	if b, _ := os.ReadFile(out); string(b) == "keep me" {
		t.Fatal("--force did not replace the file")
	}
	checkFiles(t, unpack(t, out))
	os.Remove(out)

	// To stdout: the archive on stdout, the summary on stderr.
	code, stdout, stderr := tv(t, append(base, "--tenant", "globex", "--output", "-", "--zstd")...)
	if code != 0 || !strings.Contains(stderr, `exported tenant "globex"`) {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	piped := filepath.Join(t.TempDir(), "piped.tar.zst")
	os.WriteFile(piped, []byte(stdout), 0o600)
	if m := checkFiles(t, unpack(t, piped)); m.Tenant != "globex" || filepath.Base(m.Files[0].Name) != "README.txt" {
		t.Fatalf("manifest.json of the piped archive: %+v", m)
	}

	// A damaged chunk: exit 3, and no archive.
	packs, _ := filepath.Glob(filepath.Join(strings.TrimPrefix(repoURL, "file://"), "packs", "*", "*.pack"))
	if len(packs) == 0 {
		t.Fatal("no packs")
	}
	for _, p := range packs {
		b, _ := os.ReadFile(p)
		for i := 8; i < len(b); i += 97 {
			b[i] ^= 0x20
		}
		os.Chmod(p, 0o644)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	expect(t, 3, "", append(base, "--tenant", "acme", "--output", out)...)
	noFiles(t, dir)
}

// TestExportEncrypted: an encrypted repository exports with --identity and
// the result loads with psql and equals the set; without it, exit 2.
func TestExportEncrypted(t *testing.T) {
	identity, signing, recipient := keygen(t, t.TempDir())
	_, repoURL := smallSource(t, "--recipient", recipient, "--signing-key", signing)
	dir := t.TempDir()
	out := filepath.Join(dir, "acme.tar.zst")
	expect(t, 2, "is encrypted: exporting a tenant's rows needs the identity file (--identity FILE or TENANTVAULT_IDENTITY)", "export", "--repo", repoURL, "--tenant", "acme", "--output", out)
	noFiles(t, dir)
	expect(t, 0, "", "export", "--repo", repoURL, "--tenant", "acme", "--output", out, "--identity", identity)
	unpacked := unpack(t, out)
	m := checkFiles(t, unpacked)
	db := psqlLoad(t, unpacked)
	keys := &vault.Keys{}
	if _, err := keys.LoadKeyFile(identity); err != nil {
		t.Fatal(err)
	}
	set, tn := openSet(t, repoURL, m.Set.ID, "acme", keys)
	if tn.Rows != 7 {
		t.Fatalf("tenant acme has %d rows in the set", tn.Rows)
	}
	sameAsSet(t, db, set, tn)
}

// TestExportAt: --at after the set replays the change log as restore --at
// does (in a scratch database, dropped again); the archive loaded with psql
// equals a restore --at of the tenant, table by table. Without --scratch,
// or without a change log reaching the time, it refuses with exit 2.
func TestExportAt(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, pitrSchema+`
INSERT INTO tenants VALUES ('acme'), ('globex');
INSERT INTO issues (tenant_id, title) SELECT id, 'issue ' || g FROM tenants, generate_series(1, 3) g;
INSERT INTO comments (issue_id, body) SELECT id, 'comment' FROM issues`)
	repoURL := "file://" + t.TempDir() + "/repo"
	cfg := tenancy.Config{TenantTable: "public.tenants"}
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--init", "--tenant-table", "public.tenants")
	v, _ := runCapture(t, ctx, db, repoURL, nil, cfg)
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--tenant-table", "public.tenants", "--exact-lsn")
	testenv.Exec(t, db, `DELETE FROM comments WHERE issue_id = (SELECT min(id) FROM issues WHERE tenant_id = 'acme');
INSERT INTO comments (issue_id, body) SELECT id, E'new\n"" \\ ' || id FROM issues WHERE tenant_id = 'acme';
UPDATE issues SET title = NULL WHERE tenant_id = 'acme' AND title = 'issue 2'`)
	time.Sleep(50 * time.Millisecond)
	at := clock(t, db).Format(time.RFC3339Nano)
	time.Sleep(50 * time.Millisecond)
	testenv.Exec(t, db, `UPDATE issues SET title = 'after' WHERE tenant_id = 'acme'`)
	waitLog(t, ctx, v, db)

	dir := t.TempDir()
	out := filepath.Join(dir, "acme.tar")
	base := []string{"export", "--repo", repoURL, "--tenant", "acme", "--output", out, "--at", at}
	expect(t, 2, "the tenant's rows as of then need the change log replayed on the set, which export does in a scratch database: give --scratch URL", base...)
	noFiles(t, dir)

	stdout := expect(t, 0, "", append(base, "--scratch", testenv.PostgresURL(t))...)
	if !strings.Contains(stdout, "5 change(s) replayed on the set") {
		t.Fatalf("export --at output:\n%s", stdout)
	}
	var left int
	testenv.Connect(t, testenv.PostgresURL(t)).QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname LIKE 'tenantvault_export_%'").Scan(&left)
	if left != 0 {
		t.Fatalf("%d scratch database(s) left behind", left)
	}
	unpacked := unpack(t, out)
	m := checkFiles(t, unpacked)
	if m.Replay == nil || m.Replay.Changes != 5 || m.AsOf.Format(time.RFC3339Nano) != at {
		t.Fatalf("manifest.json: as of %s, replay %+v; want %s and 5 changes", m.AsOf, m.Replay, at)
	}
	loaded := psqlLoad(t, unpacked)

	// What restore --at puts back is what the export holds.
	restored := testenv.NewDatabase(t)
	testenv.Exec(t, restored, pitrSchema)
	expect(t, 0, "", "restore", "--repo", repoURL, "--target", restored, "--tenant", "acme", "--yes", "--at", at)
	set, _ := openSet(t, repoURL, m.Set.ID, "acme", nil)
	want, got := digests(t, restored, set, "acme"), digests(t, loaded, set, "acme")
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: export digest %s, restore --at digest %s", name, got[name], w)
		}
	}
	for _, tb := range m.Tables {
		if q := tb.Schema + "." + tb.Name; tb.ContentDigest != want[q] {
			t.Errorf("manifest.json: %s content digest %s, restore --at %s", q, tb.ContentDigest, want[q])
		}
	}
	var titles int
	testenv.Connect(t, loaded).QueryRow(ctx, "SELECT count(*) FROM issues WHERE title IS NULL").Scan(&titles)
	if titles != 1 {
		t.Fatalf("the replayed NULL title: %d rows", titles)
	}

	// With the schema from a template database instead of the set's
	// archive (what sets taken with --schema-archive=none need): the same.
	tmplURL := testenv.NewDatabase(t)
	testenv.Exec(t, tmplURL, pitrSchema)
	tcfg, _ := tenancy.ParseURL(tmplURL)
	out2 := filepath.Join(t.TempDir(), "acme2.tar")
	expect(t, 0, "", "export", "--repo", repoURL, "--tenant", "acme", "--output", out2, "--at", at, "--scratch", testenv.PostgresURL(t), "--template", tcfg.Database)
	m2 := checkFiles(t, unpack(t, out2))
	for i, tb := range m2.Tables {
		if tb.ContentDigest != m.Tables[i].ContentDigest {
			t.Errorf("with --template: %s.%s digest %s, without %s", tb.Schema, tb.Name, tb.ContentDigest, m.Tables[i].ContentDigest)
		}
	}

	// Interrupted (Ctrl-C) once the tenant is in the scratch database:
	// no archive, no temporary file, no scratch database left.
	idir := t.TempDir()
	ictx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var iout bytes.Buffer
	ierr := &cancelOn{needle: "tenant restored", cancel: cancel}
	err := newApp(strings.NewReader(""), &iout, ierr).execute(ictx, []string{"export", "--repo", repoURL, "--tenant", "acme",
		"--output", filepath.Join(idir, "acme.tar"), "--at", at, "--scratch", testenv.PostgresURL(t)})
	if err == nil || !ierr.seen() {
		t.Fatalf("interrupted export: %v (interrupted: %v)\n%s", err, ierr.seen(), ierr.String())
	}
	noFiles(t, idir)
	testenv.Connect(t, testenv.PostgresURL(t)).QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname LIKE 'tenantvault_export_%'").Scan(&left)
	if left != 0 {
		t.Fatalf("an interrupted export left %d scratch database(s)", left)
	}
}

// cancelOn is a log writer that cancels a context once a line holds
// needle: an interrupt at a chosen step.
type cancelOn struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	needle string
	cancel context.CancelFunc
	hit    bool
}

func (c *cancelOn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if !c.hit && bytes.Contains(p, []byte(c.needle)) {
		c.hit = true
		c.cancel()
	}
	return len(p), nil
}

func (c *cancelOn) seen() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.hit }

func (c *cancelOn) String() string { c.mu.Lock(); defer c.mu.Unlock(); return c.buf.String() }

// TestExportSchemaModel: a tenant of the schema model, its schema and
// tables named with quotes, spaces and unicode, loads with psql and equals
// the set.
func TestExportSchemaModel(t *testing.T) {
	db := testenv.NewDatabase(t)
	for _, s := range []string{`tenant_a`, `tenant_"b" 'ü'`} {
		id := pgxIdent(s)
		testenv.Exec(t, db, `CREATE SCHEMA `+id+`;
CREATE TABLE `+id+`."Order Lines, ""all""" (id serial PRIMARY KEY, "we'ird col" text, n numeric);
CREATE TABLE `+id+`.plain (k text, v jsonb);
INSERT INTO `+id+`."Order Lines, ""all""" ("we'ird col", n) VALUES (E'x\ty', 1.5), (NULL, NULL), ('', 0);
INSERT INTO `+id+`.plain VALUES ('a', '{"x": [1, "\\u00fc"]}'), ('a', '{"x": [1, "\\u00fc"]}'), (NULL, 'null')`)
	}
	testenv.Exec(t, db, `CREATE SCHEMA tenant_c; CREATE TABLE tenant_c."two
lines" (id int PRIMARY KEY); INSERT INTO tenant_c."two
lines" VALUES (1)`)
	repoURL := "file://" + t.TempDir() + "/repo"
	expect(t, 0, "", "snapshot", "--source", db, "--repo", repoURL, "--init", "--tenancy", "schema", "--schema-pattern", "tenant_%")
	refused := t.TempDir()
	expect(t, 2, `has a line break in a name ("two\nlines"), which the \copy lines of load.sql cannot carry`, "export", "--repo", repoURL, "--tenant", "tenant_c", "--output", filepath.Join(refused, "c.tar"))
	noFiles(t, refused)
	tenant := `tenant_"b" 'ü'`
	out := filepath.Join(t.TempDir(), "b.tar")
	expect(t, 0, "", "export", "--repo", repoURL, "--tenant", tenant, "--output", out)
	dir := unpack(t, out)
	m := checkFiles(t, dir)
	if len(m.Tables) != 2 {
		t.Fatalf("%d tables", len(m.Tables))
	}
	loaded := psqlLoad(t, dir)
	set, tn := openSet(t, repoURL, m.Set.ID, tenant, nil)
	sameAsSet(t, loaded, set, tn)
	var other int
	testenv.Connect(t, loaded).QueryRow(context.Background(), "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_a'").Scan(&other)
	if other != 0 {
		t.Fatal("another tenant's schema is in the export")
	}
}

func pgxIdent(s string) string { return tenancy.Ident(s) }

// TestExportDatabaseModel: a tenant that is a database of its own
// exports its schemas' tables, and loads into one empty database.
func TestExportDatabaseModel(t *testing.T) {
	prefix := testenv.RandomName("tvexpdb_")
	admin := testenv.PostgresURL(t)
	for _, name := range []string{"a", "b"} {
		dbName := prefix + "_" + name
		testenv.Exec(t, admin, "CREATE DATABASE "+dbName)
		t.Cleanup(func() { testenv.Exec(t, admin, "DROP DATABASE IF EXISTS "+dbName+" WITH (FORCE)") })
		testenv.Exec(t, testenv.DatabaseURL(t, dbName), `CREATE SCHEMA app; CREATE TYPE app.tier AS ENUM ('free', 'gold');
CREATE TABLE app.customers (id serial PRIMARY KEY, name text NOT NULL, tier app.tier, tiers app.tier[]);
CREATE TABLE public.notes (customer_id int REFERENCES app.customers, body text);
INSERT INTO app.customers (name, tier, tiers) VALUES ('one', 'gold', '{free,gold}'), (E'two\n"2"', NULL, '{}');
INSERT INTO public.notes SELECT id, name || ' note' FROM app.customers;`)
	}
	repoURL := "file://" + t.TempDir() + "/repo"
	expect(t, 0, "", "snapshot", "--source", admin, "--repo", repoURL, "--init", "--tenancy", "database", "--database-pattern", prefix+`\_%`)
	tenant := prefix + "_b"
	out := filepath.Join(t.TempDir(), "b.tar.zst")
	expect(t, 0, "", "export", "--repo", repoURL, "--tenant", tenant, "--output", out)
	dir := unpack(t, out)
	m := checkFiles(t, dir)
	if len(m.Tables) != 2 {
		t.Fatalf("%d tables", len(m.Tables))
	}
	loaded := psqlLoad(t, dir)
	set, tn := openSet(t, repoURL, m.Set.ID, tenant, nil)
	sameAsSet(t, loaded, set, tn)
}
