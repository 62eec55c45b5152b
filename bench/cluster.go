package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cluster is a PostgreSQL cluster this benchmark started and owns.
type cluster struct {
	bindir  string
	dir     string // holds data/, the socket and the log
	data    string
	port    int
	runAsPG bool // we are root: server binaries run as the postgres user
}

func (c *cluster) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// postmaster returns the server's process ID, or 0.
func (c *cluster) postmaster() int {
	b, err := os.ReadFile(filepath.Join(c.data, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	return pid
}

// findBindir returns the directory of PostgreSQL 15's server binaries.
func findBindir(given string) (string, error) {
	if given != "" {
		if _, err := os.Stat(filepath.Join(given, "initdb")); err != nil {
			return "", fmt.Errorf("no initdb in %s", given)
		}
		return given, nil
	}
	for _, d := range []string{"/usr/lib/postgresql/15/bin", "/usr/pgsql-15/bin", "/usr/local/pgsql/bin"} {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql-15 or pass --pg-bindir")
}

func isRoot() bool { return os.Geteuid() == 0 }

// asPG builds a command that runs as the postgres user when we are root
// (initdb, pg_ctl and pgBackRest refuse to run as root or must own the
// files they write).
func asPG(ctx context.Context, runAsPG bool, args ...string) *exec.Cmd {
	if runAsPG {
		args = append([]string{"runuser", "-u", "postgres", "--"}, args...)
	}
	return exec.CommandContext(ctx, args[0], args[1:]...)
}

// chownPG gives path to the postgres user when we are root.
func chownPG(path string) error {
	if !isRoot() {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("user postgres: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(path, uid, gid)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// initCluster creates a new cluster in dir (which must not exist).
func initCluster(ctx context.Context, bindir, dir string) (*cluster, error) {
	c := &cluster{bindir: bindir, dir: dir, data: filepath.Join(dir, "data"), runAsPG: isRoot()}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := chownPG(dir); err != nil {
		return nil, err
	}
	out, err := asPG(ctx, c.runAsPG, filepath.Join(bindir, "initdb"), "-D", c.data, "--auth=trust", "-U", "postgres",
		"--encoding=UTF8", "--locale=C.UTF-8", "--no-sync").CombinedOutput()
	if err != nil {
		// C.UTF-8 may be missing: fall back to C.
		out, err = asPG(ctx, c.runAsPG, filepath.Join(bindir, "initdb"), "-D", c.data, "--auth=trust", "-U", "postgres",
			"--encoding=UTF8", "--locale=C", "--no-sync").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("initdb: %v\n%s", err, out)
		}
	}
	return c, nil
}

// baseSettings are those of a small production server: durable (fsync,
// full page writes), with room for checkpoints so that bulk loads are not
// dominated by them.
func baseSettings(dir string, port int) map[string]string {
	return map[string]string{
		"listen_addresses":          "'127.0.0.1'",
		"port":                      strconv.Itoa(port),
		"unix_socket_directories":   quote(dir),
		"shared_buffers":            "'512MB'",
		"max_wal_size":              "'8GB'",
		"checkpoint_timeout":        "'30min'",
		"max_connections":           "100",
		"max_locks_per_transaction": "256",
		"maintenance_work_mem":      "'256MB'",
		"wal_level":                 "replica",
		"max_wal_senders":           "4",
		"log_min_messages":          "warning",
		"log_checkpoints":           "on",
	}
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// start starts the server on a free port and waits until it accepts
// connections; extra settings go on the command line.
func (c *cluster) start(ctx context.Context, settings map[string]string) error {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		s := baseSettings(c.dir, port)
		for k, v := range settings {
			s[k] = v
		}
		// Settings go into a file included last, not through pg_ctl -o,
		// which passes them through a shell.
		auto := filepath.Join(c.data, "tvbench.conf")
		var b strings.Builder
		for _, k := range sortedKeys(s) {
			fmt.Fprintf(&b, "%s = %s\n", k, s[k])
		}
		if err := os.WriteFile(auto, []byte(b.String()), 0o600); err != nil {
			return err
		}
		if err := chownPG(auto); err != nil {
			return err
		}
		if err := c.ensureInclude(); err != nil {
			return err
		}
		logf := filepath.Join(c.dir, "postgres.log")
		out, err := asPG(ctx, c.runAsPG, filepath.Join(c.bindir, "pg_ctl"), "start", "-D", c.data, "-w", "-t", "120", "-l", logf).CombinedOutput()
		if err == nil {
			c.port = port
			return nil
		}
		lastErr = fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, tail(logf, 20))
		if !strings.Contains(tail(logf, 20), "could not bind") {
			break
		}
	}
	return lastErr
}

func (c *cluster) ensureInclude() error {
	conf := filepath.Join(c.data, "postgresql.conf")
	b, err := os.ReadFile(conf)
	if err != nil {
		return err
	}
	if strings.Contains(string(b), "include_if_exists = 'tvbench.conf'") {
		return nil
	}
	return os.WriteFile(conf, append(b, []byte("\ninclude_if_exists = 'tvbench.conf'\n")...), 0o600)
}

// stop stops the server (fast shutdown, immediate if that fails).
func (c *cluster) stop() {
	if c == nil || c.postmaster() == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := asPG(ctx, c.runAsPG, filepath.Join(c.bindir, "pg_ctl"), "stop", "-D", c.data, "-m", "fast", "-w", "-t", "30").Run(); err != nil {
		asPG(ctx, c.runAsPG, filepath.Join(c.bindir, "pg_ctl"), "stop", "-D", c.data, "-m", "immediate", "-w", "-t", "30").Run()
	}
}
