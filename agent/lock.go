package agent

import (
	"context"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/tenancy"
)

// sourceLock is a PostgreSQL session advisory lock on a source, held on a
// connection of its own for as long as the job runs. Agent replicas that
// share a source take turns through it; if the connection drops, the server
// releases the lock.
type sourceLock struct {
	conn *pgx.Conn
	key  int64
}

// LockKey is the advisory lock key of a source database: a hash of
// "tenantvault:" and the database name. Advisory locks are scoped to the
// database they are taken in, so the name completes the identity (server
// and database) that replicas share.
func LockKey(database string) int64 {
	h := fnv.New64a()
	h.Write([]byte("tenantvault:" + database))
	return int64(h.Sum64())
}

// captureLockKey is the key of the lock a source's change capture holds
// for as long as it runs: one replica captures, the others stand by (two
// would fight over the one replication slot).
func captureLockKey(database string) int64 {
	h := fnv.New64a()
	h.Write([]byte("tenantvault-capture:" + database))
	return int64(h.Sum64())
}

// lockSource tries to take the source's snapshot lock without waiting. It
// returns nil and no error when another session holds it.
func lockSource(ctx context.Context, dbURL string) (*sourceLock, error) {
	return tryLock(ctx, dbURL, LockKey, "tenantvault agent lock")
}

// tryLock takes the advisory lock key(database) on a connection of its own.
func tryLock(ctx context.Context, dbURL string, key func(string) int64, app string) (*sourceLock, error) {
	cfg, err := tenancy.ParseURL(dbURL)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = app
	conn, err := tenancy.Connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	l := &sourceLock{conn: conn, key: key(cfg.Database)}
	var got bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", l.key).Scan(&got); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	if !got {
		conn.Close(context.Background())
		return nil, nil
	}
	return l, nil
}

// release unlocks and closes; closing alone would release it too, the
// explicit unlock just makes it immediate and visible in the server log.
func (l *sourceLock) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l.conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", l.key)
	l.conn.Close(ctx)
}
