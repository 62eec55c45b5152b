package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/testenv"
)

// The terminal tests run the real binary in tmux, which is the terminal
// emulator here: capture-pane returns the screen a person sees (cursor
// moves, line erasures and redraws applied), not the bytes written.

var cliBuild struct {
	once sync.Once
	path string
	err  error
}

// TestMain removes the binary cliBinary built.
func TestMain(m *testing.M) {
	code := m.Run()
	if cliBuild.path != "" {
		os.RemoveAll(filepath.Dir(cliBuild.path))
	}
	os.Exit(code)
}

// cliBinary builds the tenantvault binary once per test run (with the race
// detector when the tests have it).
func cliBinary(t *testing.T) string {
	t.Helper()
	cliBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "tenantvault-cli-")
		if err != nil {
			cliBuild.err = err
			return
		}
		cliBuild.path = filepath.Join(dir, "tenantvault")
		args := []string{"build", "-o", cliBuild.path}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			cliBuild.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if cliBuild.err != nil {
		t.Fatal(cliBuild.err)
	}
	return cliBuild.path
}

// requireTool finds a program the test needs; a missing one fails in CI
// (.ci/run installs it) and skips elsewhere.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		msg := fmt.Sprintf("%s is not installed (apt-get install %s; .ci/run does)", name, name)
		if testenv.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// tmuxServer is a private tmux server (its own socket), so the tests never
// touch a person's tmux.
type tmuxServer struct {
	bin  string
	sock string
	conf string
}

const paneWidth, paneHeight = 160, 50

func newTmux(t *testing.T) *tmuxServer {
	t.Helper()
	bin := requireTool(t, "tmux")
	dir, err := os.MkdirTemp("", "tvtmux") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	s := &tmuxServer{bin: bin, sock: filepath.Join(dir, "s"), conf: filepath.Join(dir, "tmux.conf")}
	os.WriteFile(s.conf, []byte("set -g history-limit 50000\n"), 0o644)
	t.Cleanup(func() {
		exec.Command(bin, "-S", s.sock, "kill-server").Run()
		os.RemoveAll(dir)
	})
	return s
}

func (s *tmuxServer) tmux(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(s.bin, append([]string{"-S", s.sock, "-f", s.conf}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// pane is one command running in its own tmux session, for one test.
type pane struct {
	s    *tmuxServer
	t    *testing.T
	name string
}

// start runs a shell command line in a new session of the usual terminal
// size; "[exit N]" is printed when it ends, and the pane stays for capture.
func (s *tmuxServer) start(t *testing.T, name string, env []string, cmdline string) *pane {
	t.Helper()
	args := []string{"new-session", "-d", "-s", name, "-x", strconv.Itoa(paneWidth), "-y", strconv.Itoa(paneHeight)}
	for _, e := range env {
		args = append(args, "-e", e)
	}
	// The shell traps Ctrl-C (so that it survives to print the code) and
	// leaves the command the default disposition.
	args = append(args, "sh -c 'trap : INT; "+cmdline+`; echo "[exit $?]"; sleep 600'`)
	s.tmux(t, args...)
	return &pane{s: s, t: t, name: name}
}

// screen is what the pane shows now, one string per row, trailing blanks
// removed.
func (p *pane) screen() []string { return p.capture("-p") }

// history is everything the pane printed, scrolled-off lines included.
func (p *pane) history() []string { return p.capture("-p", "-S", "-", "-E", "-") }

func (p *pane) capture(args ...string) []string {
	out := p.s.tmux(p.t, append([]string{"capture-pane", "-t", p.name}, args...)...)
	lines := strings.Split(strings.TrimRight(out, "\n "), "\n")
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], " ")
	}
	return lines
}

func (p *pane) send(keys ...string) {
	p.s.tmux(p.t, append([]string{"send-keys", "-t", p.name}, keys...)...)
}

// waitScreen polls the screen until ok accepts it, calling each on every
// screen seen on the way; it fails after d.
func (p *pane) waitScreen(d time.Duration, each func([]string), ok func([]string) bool) []string {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for {
		sc := p.screen()
		if each != nil {
			each(sc)
		}
		if ok(sc) {
			return sc
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("screen after %s:\n%s", d, strings.Join(sc, "\n"))
		}
		time.Sleep(40 * time.Millisecond)
	}
}

var exitLine = regexp.MustCompile(`^\[exit (\d+)\]$`)

// wait waits for the command to end and returns its exit code.
func (p *pane) wait(d time.Duration) int {
	p.t.Helper()
	sc := p.waitScreen(d, nil, func(sc []string) bool { return exitLine.MatchString(lastLine(sc)) })
	code, _ := strconv.Atoi(exitLine.FindStringSubmatch(lastLine(sc))[1])
	return code
}

func lastLine(sc []string) string {
	for i := len(sc) - 1; i >= 0; i-- {
		if sc[i] != "" {
			return sc[i]
		}
	}
	return ""
}

func contains(lines []string, re *regexp.Regexp) int {
	n := 0
	for _, l := range lines {
		if re.MatchString(l) {
			n++
		}
	}
	return n
}

var (
	promptLine = regexp.MustCompile(`^Restore (\d+) tenant\(s\) into \S+\? This writes to the database\. Type 'yes' to go on:( .*)?$`)
	// Anything that looks like part of a progress bar: the old line, or
	// mpb's.
	barAnywhere = regexp.MustCompile(`restored \d+ tenant\(s\)$|restored \d+/\d+ tenants?|\[[=>-]{5,}`)
	// A running restore bar: counts, bytes, bar, rate and ETA.
	barRunning = regexp.MustCompile(`^restored (\d+)/(\d+) tenants, [\d.]+ (b|KiB|MiB)/[\d.]+ (b|KiB|MiB) \[[=>-]+\] +[\d.]+ (b|KiB|MiB)/s, ETA ((\d\d:)?\d\d:\d\d|-)$`)
	barDone    = regexp.MustCompile(`^restored (\d+)/(\d+) tenants, [\d.]+ (KiB|MiB)/[\d.]+ (KiB|MiB) \[=+\] +([\d.]+ (b|KiB|MiB)/s)?, in \d+(\.\d+)?[a-z]+$`)
	logLine    = regexp.MustCompile(`^time=\S+ level=[A-Z]+ msg=`)
	logRestore = regexp.MustCompile(`^time=\S+ level=INFO msg="tenant restored" tenant=t\d+ set=\S+ rows=\d+ seconds=[\d.]+$`)
	planHeader = regexp.MustCompile(`^plan: restore (\d+) tenant\(s\) into \S+$`)
	planTable  = regexp.MustCompile(`^TENANT +SET +TABLES +ROWS +DATA +STORED +IN TARGET NOW$`)
	planRow    = regexp.MustCompile(`^"t\d+" +\S+ +\d+ +\d+ +[\d.]+ (B|KiB|MiB) +[\d.]+ (B|KiB|MiB) +-$`)
	doneTable  = regexp.MustCompile(`^TENANT +SET +TABLES +ROWS +BYTES +REPLACED +TIME +VERIFIED$`)
)

// tearIn describes how a screen shows a progress bar anywhere but alone on
// the last line, more than once, or mixed with another line's text; "" when
// it does not.
func tearIn(sc []string) string {
	last := -1
	for i := len(sc) - 1; i >= 0; i-- {
		if sc[i] != "" {
			last = i
			break
		}
	}
	bars := 0
	for i, l := range sc {
		if !barAnywhere.MatchString(l) {
			if strings.HasPrefix(l, "time=") && !logLine.MatchString(l) {
				return fmt.Sprintf("torn log line %d: %q", i, l)
			}
			continue
		}
		bars++
		// A running bar stays on the last line; a finished one stays
		// where it ended, above what follows.
		if bars > 1 || !(barRunning.MatchString(l) && i == last || barDone.MatchString(l)) {
			return fmt.Sprintf("progress bar torn or misplaced (line %d: %q)", i, l)
		}
	}
	return ""
}

// checkNoTear fails when the screen shows a tear that is still there a
// moment later: a capture can land between two halves of one frame that the
// terminal received in two reads, which nobody sees; a tear stays.
func checkNoTear(t *testing.T, p *pane, sc []string) {
	t.Helper()
	if tearIn(sc) == "" {
		return
	}
	time.Sleep(300 * time.Millisecond)
	if again := p.screen(); tearIn(again) != "" {
		t.Fatalf("%s\n%s", tearIn(again), strings.Join(again, "\n"))
	}
}

// TestTerminalRestore is the new user's session in tmux: a restore into a
// live database without --yes shows its plan and the prompt, and nothing
// else, until it is answered; "no" exits 2 and writes nothing; "yes" starts
// a progress bar with counts, bytes, rate and ETA, under which the log lines
// scroll without tearing it, and ends with the report table.
func TestTerminalRestore(t *testing.T) {
	tm := newTmux(t)
	bin := cliBinary(t)
	db := testenv.NewDatabase(t)
	const live, restored, rowsEach = 2, 40, 200
	// Each restored row waits a millisecond in a CHECK constraint, so the
	// restore takes seconds on any machine and a screen is caught mid-run.
	// NOT VALID: the rows loaded here are not slowed.
	testenv.Exec(t, db, fmt.Sprintf(`
CREATE TABLE tenants (id text PRIMARY KEY, name text NOT NULL);
CREATE TABLE items (id bigserial PRIMARY KEY, tenant_id text NOT NULL REFERENCES tenants(id), payload text);
CREATE INDEX ON items (tenant_id);
INSERT INTO tenants SELECT 't' || lpad(g::text, 3, '0'), 'Tenant ' || g FROM generate_series(1, %[1]d) g;
INSERT INTO items (tenant_id, payload) SELECT 't' || lpad(g::text, 3, '0'), repeat(md5(g::text || r), 4) FROM generate_series(1, %[1]d) g, generate_series(1, %[2]d) r;
CREATE FUNCTION slow_row(text) RETURNS boolean LANGUAGE sql AS $$ SELECT true FROM pg_sleep(0.001) $$;
ALTER TABLE items ADD CONSTRAINT slow CHECK (slow_row(payload)) NOT VALID;
ANALYZE;`, live+restored, rowsEach))
	repo := "file://" + t.TempDir()
	env := []string{"TENANTVAULT_REPO=" + repo, "TENANTVAULT_TARGET=" + db, "TENANTVAULT_SOURCE=" + db}

	// The snapshot, in the terminal too: its bar ends as one line.
	p := tm.start(t, "snapshot", env, bin+" snapshot --init")
	if code := p.wait(time.Minute); code != 0 {
		t.Fatalf("snapshot exit %d:\n%s", code, strings.Join(p.history(), "\n"))
	}
	// On a terminal the bar commands log at warn unless told: no "initialised
	// repository" info line.
	// The bar is drawn on the pane's first row, where a frame that erases
	// the screen from its corner would leave its old frames in tmux's
	// history: there is one bar line in all, the finished one.
	if h := p.history(); contains(h, regexp.MustCompile(`^exported 2/2 tables, [\d.]+ (KiB|MiB)/~[\d.]+ (KiB|MiB) \[=+\] +([\d.]+ (b|KiB|MiB)/s)?, in \d`)) != 1 ||
		contains(h, regexp.MustCompile(`exported \d+`)) != 1 || contains(h, logLine) != 0 {
		t.Fatalf("snapshot: want its finished bar once, and no log lines:\n%s", strings.Join(h, "\n"))
	}

	// The incident: the tenants' rows are gone, the live ones stay.
	testenv.Exec(t, db, fmt.Sprintf(`DELETE FROM items WHERE tenant_id > 't%03[1]d'; DELETE FROM tenants WHERE id > 't%03[1]d'`, live))
	fingerprint := func() string {
		var s string
		conn := testenv.Connect(t, db)
		if err := conn.QueryRow(testenv.Context(t, time.Minute), `SELECT count(*) || ' ' || md5(string_agg(i::text, ',' ORDER BY i.id)) FROM items i`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		conn.Close(t.Context())
		return s
	}
	before := fingerprint()
	list := filepath.Join(t.TempDir(), "tenants.txt")
	var ids []string
	for i := live + 1; i <= live+restored; i++ {
		ids = append(ids, fmt.Sprintf("t%03d", i))
	}
	os.WriteFile(list, []byte(strings.Join(ids, "\n")+"\n"), 0o644)
	restoreCmd := bin + " restore --tenants-file " + list

	waitPrompt := func(p *pane) []string {
		t := p.t
		t.Helper()
		sc := p.waitScreen(time.Minute, func(sc []string) {
			if contains(sc, barAnywhere) > 0 {
				t.Fatalf("progress drawn before the prompt was answered:\n%s", strings.Join(sc, "\n"))
			}
		}, func(sc []string) bool { return promptLine.MatchString(lastLine(sc)) })
		// Everything on the screen is the plan, then the prompt.
		var rows int
		for i, l := range sc {
			switch {
			case l == "":
			case i == 0 && planHeader.MatchString(l), i == 1 && planTable.MatchString(l):
			case planRow.MatchString(l):
				rows++
			case promptLine.MatchString(l) && l == lastLine(sc):
			default:
				t.Fatalf("line %d before the answer is neither plan nor prompt: %q\n%s", i, l, strings.Join(sc, "\n"))
			}
		}
		if !planHeader.MatchString(sc[0]) || !planTable.MatchString(sc[1]) || rows != restored {
			t.Fatalf("want the plan of %d tenants above the prompt:\n%s", restored, strings.Join(sc, "\n"))
		}
		// The old code drew its line every 500 ms over the prompt: it
		// must still be there, alone, after a few of those.
		time.Sleep(1600 * time.Millisecond)
		if again := p.screen(); strings.Join(again, "\n") != strings.Join(sc, "\n") {
			t.Fatalf("the screen changed while waiting for the answer:\n%s", strings.Join(again, "\n"))
		}
		return sc
	}

	t.Run("no", func(t *testing.T) {
		p := tm.start(t, "refuse", env, restoreCmd)
		waitPrompt(p)
		p.send("no", "Enter")
		if code := p.wait(time.Minute); code != 2 {
			t.Fatalf("exit %d, want 2:\n%s", code, strings.Join(p.history(), "\n"))
		}
		h := p.history()
		if contains(h, regexp.MustCompile(`^tenantvault: restore cancelled: nothing was written$`)) != 1 ||
			contains(h, barAnywhere) != 0 || contains(h, planHeader) != 1 {
			t.Fatalf("want the plan once, the refusal and no progress:\n%s", strings.Join(h, "\n"))
		}
		if after := fingerprint(); after != before {
			t.Fatalf("target changed by a refused restore: %s -> %s", before, after)
		}
	})

	t.Run("stderr to a file", func(t *testing.T) {
		// The prompt moves to the terminal's stdout; the error stays in
		// the file.
		errFile := filepath.Join(t.TempDir(), "stderr")
		p := tm.start(t, "stderr-file", env, restoreCmd+" 2>"+errFile)
		waitPrompt(p)
		p.send("nope", "Enter")
		if code := p.wait(time.Minute); code != 2 {
			t.Fatalf("exit %d, want 2:\n%s", code, strings.Join(p.history(), "\n"))
		}
		if b, _ := os.ReadFile(errFile); string(b) != "tenantvault: restore cancelled: nothing was written\n" {
			t.Fatalf("stderr: %q", b)
		}
	})

	t.Run("ctrl-c", func(t *testing.T) {
		p := tm.start(t, "interrupt", env, restoreCmd)
		waitPrompt(p)
		p.send("C-c")
		if code := p.wait(time.Minute); code != 2 {
			t.Fatalf("exit %d, want 2:\n%s", code, strings.Join(p.history(), "\n"))
		}
		if h := p.history(); contains(h, regexp.MustCompile(`^tenantvault: restore cancelled: nothing was written$`)) != 1 || contains(h, barAnywhere) != 0 {
			t.Fatalf("want the refusal and no progress:\n%s", strings.Join(h, "\n"))
		}
		if after := fingerprint(); after != before {
			t.Fatalf("target changed by an interrupted restore: %s -> %s", before, after)
		}
	})

	t.Run("yes", func(t *testing.T) {
		// --log-level info: the tenants' log lines scroll above the bar.
		p := tm.start(t, "restore", env, restoreCmd+" --log-level info")
		waitPrompt(p)
		p.send("yes", "Enter")
		var mid []string
		seen := 0
		sc := p.waitScreen(2*time.Minute, func(sc []string) {
			checkNoTear(t, p, sc)
			if m := barRunning.FindStringSubmatch(lastLine(sc)); m != nil {
				seen++
				if done, _ := strconv.Atoi(m[1]); done > 0 && done < restored && m[6] != "-" && mid == nil &&
					contains(sc, logRestore) > 0 {
					mid = sc
				}
			}
		}, func(sc []string) bool { return exitLine.MatchString(lastLine(sc)) })
		if lastLine(sc) != "[exit 0]" {
			t.Fatalf("restore failed:\n%s", strings.Join(p.history(), "\n"))
		}
		if mid == nil {
			t.Fatalf("no screen showed the bar mid-run with log lines above it (%d with a bar)", seen)
		}
		t.Logf("mid-run screen:\n%s", strings.Join(mid, "\n"))

		// The whole session: the plan, the answered prompt, one log line
		// per tenant, whole; the bar once (finished); then the table.
		h := p.history()
		var prompt, bar, table = -1, -1, -1
		for i, l := range h {
			switch {
			case promptLine.MatchString(l):
				prompt = i
			case barAnywhere.MatchString(l):
				if bar >= 0 || !barDone.MatchString(l) {
					t.Fatalf("history holds a stale or torn bar at line %d: %q\n%s", i, l, strings.Join(h, "\n"))
				}
				bar = i
			case doneTable.MatchString(l):
				table = i
			case strings.HasPrefix(l, "time=") && !logRestore.MatchString(l):
				t.Fatalf("torn log line %d: %q", i, l)
			}
		}
		if prompt < 0 || !strings.HasSuffix(h[prompt], "go on: yes") || bar < prompt || table < bar {
			t.Fatalf("want prompt, bar, table in that order (%d, %d, %d):\n%s", prompt, bar, table, strings.Join(h, "\n"))
		}
		if m := barDone.FindStringSubmatch(h[bar]); m[1] != strconv.Itoa(restored) || m[2] != strconv.Itoa(restored) {
			t.Fatalf("final bar %q", h[bar])
		}
		if n := contains(h[prompt:bar], logRestore); n != restored {
			t.Fatalf("%d whole 'tenant restored' log lines above the bar, want %d", n, restored)
		}
		verified := regexp.MustCompile(`^"t\d+" +\S+ +2 +\d+ +[\d.]+ KiB +0 +[\d.]+s +yes: 2 digests$`)
		if n := contains(h[table:], verified); n != restored || !slicesContain(h[table:], fmt.Sprintf("restored %d of %d tenant(s) in", restored, restored)) {
			t.Fatalf("final table: %d verified rows, want %d:\n%s", n, restored, strings.Join(h[table:], "\n"))
		}
		var n int
		conn := testenv.Connect(t, db)
		if err := conn.QueryRow(testenv.Context(t, time.Minute), `SELECT count(*) FROM items`).Scan(&n); err != nil || n != (live+restored)*rowsEach {
			t.Fatalf("items after restore: %d (%v), want %d", n, err, (live+restored)*rowsEach)
		}
	})

	t.Run("drill", func(t *testing.T) {
		p := tm.start(t, "drill", append(env, "TENANTVAULT_SCRATCH="+testenv.PostgresURL(t)), bin+" drill --tenants 3 --seed 1")
		if code := p.wait(2 * time.Minute); code != 0 {
			t.Fatalf("exit %d:\n%s", code, strings.Join(p.history(), "\n"))
		}
		h := p.history()
		if contains(h, regexp.MustCompile(`^drill: restored 3/3 tenants, [\d.]+ KiB/[\d.]+ KiB \[=+\] +([\d.]+ (b|KiB|MiB)/s)?, in \d`)) != 1 ||
			contains(h, regexp.MustCompile(`drill: restored \d+`)) != 1 ||
			contains(h, regexp.MustCompile(`^result: PASS$`)) != 1 || contains(h, logLine) != 0 {
			t.Fatalf("drill: want its finished bar once, no log lines, and a pass:\n%s", strings.Join(h, "\n"))
		}
	})

	t.Run("verify", func(t *testing.T) {
		// With --json the terminal gets no bar and stdout stays JSON.
		p := tm.start(t, "verify-json", env, bin+" verify --read-data --json")
		if code := p.wait(time.Minute); code != 0 {
			t.Fatalf("exit %d:\n%s", code, strings.Join(p.history(), "\n"))
		}
		h := p.history()
		if contains(h, regexp.MustCompile(`checked \d+|\[[=>-]{3,}`)) != 0 || h[0] != "{" {
			t.Fatalf("--json on a terminal:\n%s", strings.Join(h, "\n"))
		}
		// Nor when stderr is a pipe: no bar, no escape sequences.
		p = tm.start(t, "verify-pipe", env, bin+" verify --read-data 2>&1 | cat -v")
		if code := p.wait(time.Minute); code != 0 {
			t.Fatalf("exit %d:\n%s", code, strings.Join(p.history(), "\n"))
		}
		h = p.history()
		if contains(h, regexp.MustCompile(`checked \d+|\[[=>-]{3,}|\^\[`)) != 0 || contains(h, regexp.MustCompile(`^verified \d+ set`)) != 1 {
			t.Fatalf("stderr into a pipe:\n%s", strings.Join(h, "\n"))
		}
		p = tm.start(t, "verify", env, bin+" verify --read-data")
		if code := p.wait(time.Minute); code != 0 {
			t.Fatalf("exit %d:\n%s", code, strings.Join(p.history(), "\n"))
		}
		h = p.history()
		if contains(h, regexp.MustCompile(`^checked (\d+)/(\d+) chunks? \[=+\] +([\d.]+ chunks/s)?, in \d`)) != 1 ||
			contains(h, regexp.MustCompile(`checked \d+`)) != 1 {
			t.Fatalf("verify: want its finished bar once:\n%s", strings.Join(h, "\n"))
		}
	})
}

func slicesContain(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}
