package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgbackrest drives pgBackRest against the cluster the benchmark owns,
// with a repository in the work directory.
type pgbackrest struct {
	bin  string
	b    *bench
	dir  string
	conf string
	repo string
}

const stanza = "bench"

func (p *pgbackrest) setup(ctx context.Context) error {
	b := p.b
	p.dir = filepath.Join(b.tmp, "pgbackrest")
	p.repo = filepath.Join(p.dir, "repo")
	for _, d := range []string{p.dir, p.repo, filepath.Join(p.dir, "log"), filepath.Join(p.dir, "lock"), filepath.Join(p.dir, "spool")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
		if err := chownPG(d); err != nil {
			return err
		}
	}
	ctype, clevel, _ := strings.Cut(b.cfg.PgBackRestCompress, ":")
	conf := fmt.Sprintf(`[global]
repo1-path=%s
repo1-retention-full=100
log-path=%s
lock-path=%s
spool-path=%s
log-level-console=warn
log-level-file=info
compress-type=%s
process-max=2
start-fast=y
`, p.repo, filepath.Join(p.dir, "log"), filepath.Join(p.dir, "lock"), filepath.Join(p.dir, "spool"), ctype)
	if clevel != "" {
		conf += "compress-level=" + clevel + "\n"
	}
	conf += fmt.Sprintf("\n[%s]\npg1-path=%s\npg1-port=%d\npg1-socket-path=%s\npg1-user=postgres\n", stanza, b.own.data, b.own.port, b.own.dir)
	p.conf = filepath.Join(p.dir, "pgbackrest.conf")
	if err := os.WriteFile(p.conf, []byte(conf), 0o644); err != nil {
		return err
	}
	cmd := fmt.Sprintf("%s --config=%s --stanza=%s archive-push %%p", p.bin, p.conf, stanza)
	if err := b.exec(ctx, b.adminDB, "ALTER SYSTEM SET archive_command = "+quote(cmd), "SELECT pg_reload_conf()"); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond) // let the archiver see the new command
	if out, err := p.cmd(ctx, "stanza-create").CombinedOutput(); err != nil {
		return fmt.Errorf("pgbackrest stanza-create: %v\n%s", err, out)
	}
	return nil
}

func (p *pgbackrest) args(extra ...string) []string {
	a := []string{p.bin, "--config=" + p.conf, "--stanza=" + stanza}
	a = append(a, extra...)
	if p.b.own.runAsPG {
		a = append([]string{"runuser", "-u", "postgres", "--"}, a...)
	}
	return a
}

func (p *pgbackrest) cmd(ctx context.Context, extra ...string) *exec.Cmd {
	a := p.args(extra...)
	return exec.CommandContext(ctx, a[0], a[1:]...)
}

// backup takes a backup of the given type (full, diff, incr); the sample's
// bytes are how much the repository grew.
func (p *pgbackrest) backup(ctx context.Context, typ string) (Sample, error) {
	before := dirSize(p.repo)
	s, err := p.b.runMeasured(ctx, command{name: "pgbackrest backup " + typ, args: p.args("--type="+typ, "backup")})
	if err != nil {
		return s, err
	}
	s.Bytes = dirSize(p.repo) - before
	return s, nil
}

// restoreCluster restores the newest backup into a new data directory and
// starts it on another port; it returns the two measured steps.
func (p *pgbackrest) restoreCluster(ctx context.Context, name string) (restore, start Sample, err error) {
	b := p.b
	dir := filepath.Join(b.tmp, "pgbr-restored")
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return restore, start, err
	}
	if err := chownPG(dir); err != nil {
		return restore, start, err
	}
	side := &cluster{bindir: b.own.bindir, dir: dir, data: filepath.Join(dir, "data"), runAsPG: b.own.runAsPG}
	restore, err = b.runMeasured(ctx, command{name: name + " restore", args: p.args("--pg1-path="+side.data, "--type=immediate", "--target-action=promote", "restore")})
	if err != nil {
		return restore, start, err
	}
	restore.Bytes = dirSize(side.data)
	// Starting it and waiting for the end of recovery is the second step.
	start, err = b.measureFunc(func() (int64, error) {
		if err := side.start(ctx, map[string]string{"archive_mode": "off", "archive_command": "''"}); err != nil {
			return 0, err
		}
		b.side = side
		conn, err := pgx.Connect(ctx, side.url("postgres"))
		if err != nil {
			return 0, err
		}
		defer conn.Close(ctx)
		for {
			var rec bool
			if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
				return 0, err
			}
			if !rec {
				return 0, nil
			}
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	return restore, start, err
}

func (p *pgbackrest) dropCluster() {
	b := p.b
	if b.side != nil {
		b.side.stop()
		os.RemoveAll(b.side.dir)
		b.side = nil
	}
}

// stop stops and removes a restored cluster left running.
func (p *pgbackrest) stop(context.Context) {
	p.dropCluster()
}

// pgbrRestores measures the whole-cluster path: pgbackrest restore into a
// new data directory, start it on another port, then, for each scenario,
// copy the tenants' rows back into the live database after deleting them
// there. The total of a scenario is restore + start + its copy.
func (b *bench) pgbrRestores(ctx context.Context) error {
	if b.pgbr == nil {
		return nil
	}
	p := b.pgbr
	{
		rs, ss, err := p.restoreCluster(ctx, "pgbackrest")
		if err != nil {
			p.dropCluster()
			return err
		}
		b.add("restore/full/pgbackrest restore", "pgbackrest restore --type=immediate into a new data directory; bytes = data directory size", rs)
		b.add("restore/full/pgbackrest start", "start the restored cluster on another port and wait for the end of recovery", ss)
		srcURL := b.side.url(b.live)
		for i, sc := range b.res.Scenarios {
			if err := b.deleteTenants(ctx, sc.Tenants); err != nil {
				return err
			}
			cs, err := b.measureFunc(func() (int64, error) { return copyTenants(ctx, b.cfg.Shape, srcURL, b.liveURL, sc.Tenants) })
			if err != nil {
				return err
			}
			b.add(fmt.Sprintf("restore/%d/pgbackrest copy", i), "copy "+sc.Name+"' rows from the restored cluster into the live database (COPY TO | COPY FROM, one transaction, triggers off)", cs)
			total := Sample{
				Wall: rs.Wall + ss.Wall + cs.Wall, User: rs.User + ss.User + cs.User, Sys: rs.Sys + ss.Sys + cs.Sys,
				Server: rs.Server + ss.Server + cs.Server, MaxRSS: rs.MaxRSS, TreeRSS: rs.TreeRSS, Bytes: cs.Bytes, Load: cs.Load,
			}
			b.add(fmt.Sprintf("restore/%d/pgbackrest", i), "pgBackRest whole-cluster path for "+sc.Name+": restore + start + copy", total)
			if err := b.checkTenants(ctx, b.liveURL, sc.Tenants); err != nil {
				return err
			}
			if err := b.settle(ctx, b.liveURL); err != nil {
				return err
			}
		}
		p.dropCluster()
	}
	return nil
}
