// Package capture streams committed row changes from a source through logical replication, tags each with its tenant, and archives them in checksummed segments that continue the snapshot sets without gap or overlap.
package capture

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// Options configure a capture.
type Options struct {
	Source  string
	Vault   *vault.Vault
	Tenancy tenancy.Config
	// Slot is the replication slot the capture owns; "" derives one from
	// the database name.
	Slot string
	// Publication is created FOR ALL TABLES when missing.
	Publication string
	// FlushInterval bounds how long a committed change waits before it is
	// archived (the recovery point objective).
	FlushInterval time.Duration
	// FlushBytes archives a segment early once this much is buffered.
	FlushBytes int
	// Heartbeat is how often a segment without changes is written while
	// the source is idle, to record that the log is complete up to then:
	// restore --at a time later than the last one waits for the next.
	Heartbeat time.Duration
	// MaxLag drops the slot when the source holds more WAL than this for
	// it, so the capture never fills the source's disk.
	MaxLag int64
	// SetReplicaIdentity runs ALTER TABLE ... REPLICA IDENTITY FULL on the
	// scoped tables (partitioned roots and partitions too) whose deletes
	// would otherwise not carry their tenant, or whose rows that change
	// tenant would lack unchanged out-of-line values.
	SetReplicaIdentity bool
	Logger             *slog.Logger
	// Stats, when set, is kept up to date for metrics.
	Stats *Stats
}

// Stats are the capture's counters, for metrics.
type Stats struct {
	Segments   atomic.Int64
	Records    atomic.Int64
	Shared     atomic.Int64 // records not attributed at capture time
	LagBytes   atomic.Int64 // WAL the source holds for the slot
	ArchivedAt atomic.Int64 // unix seconds of the newest archived position
	CommitLag  atomic.Int64 // milliseconds from commit to archive, last segment
}

// Defaults.
const (
	DefaultPublication   = "tenantvault"
	DefaultFlushInterval = 5 * time.Second
	DefaultFlushBytes    = 16 << 20
	DefaultMaxLag        = 16 << 30
	DefaultHeartbeat     = 30 * time.Second
	statusEvery          = 10 * time.Second
)

func (o *Options) normalize() error {
	if o.Vault == nil {
		return errors.New("capture: no repository")
	}
	if err := o.Tenancy.Normalize(); err != nil {
		return err
	}
	if o.Tenancy.Model == tenancy.ModelDatabase {
		return tenantvault.Inputf("change capture supports the column and schema tenancy models; the database model would need a slot per tenant database")
	}
	if o.Publication == "" {
		o.Publication = DefaultPublication
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.FlushBytes <= 0 {
		o.FlushBytes = DefaultFlushBytes
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.MaxLag <= 0 {
		o.MaxLag = DefaultMaxLag
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Stats == nil {
		o.Stats = &Stats{}
	}
	return nil
}

// SlotName derives the default slot name of a database.
func SlotName(database string) string {
	sum := sha256.Sum256([]byte(database))
	return "tenantvault_" + hex.EncodeToString(sum[:6])
}

// ErrLagExceeded is returned when the capture fell so far behind that it
// dropped its slot to protect the source.
var ErrLagExceeded = errors.New("capture fell too far behind")

// Run captures changes until ctx ends, then archives what is complete and
// returns nil. An error means the capture stopped; run it again to resume
// from the last archived position.
func Run(ctx context.Context, o Options) error {
	if err := o.normalize(); err != nil {
		return err
	}
	cfg, err := tenancy.ParseURL(o.Source)
	if err != nil {
		return err
	}
	c := &capturer{o: o, cfg: cfg, noFull: map[string]bool{}, partitioned: map[string]identityNeed{}}
	defer c.close()
	if err := c.prepare(ctx); err != nil {
		return err
	}
	return c.receive(ctx)
}

type capturer struct {
	o      Options
	cfg    *pgx.ConnConfig
	conn   *pgx.Conn      // ordinary connection: catalog, lookups, slot status
	repl   *pgconn.PgConn // replication connection
	stream string
	epoch  string
	start  uint64 // where the next segment starts
	res    *resolver
	rels   map[uint32]*relInfo
	// noFull holds the tables (raw schema\x00name) that need FULL for
	// their moves but cannot have it (generated columns, PostgreSQL 18).
	noFull map[string]bool
	// partitioned holds what the partitions of each partitioned tenant
	// table (root's raw schema\x00name) must keep in their identity.
	partitioned map[string]identityNeed
}

// identityNeed is what a relation's replica identity must hold.
type identityNeed struct {
	cols    []string // attribution columns
	movable bool     // its rows can change tenant: out-of-line values too
}

type relInfo struct {
	rel   vault.Relation
	table *manifest.Table // nil: not a tenant table, not captured
	tcol  int             // position of the tenant column (direct scope), or -1
	hop   []int           // positions of the first hop's columns (chain scope)
	// ident marks the replica identity's columns: the only ones a key-only
	// old tuple carries (the server sends the others as NULL).
	ident []bool
	// parent: other tables are scoped through this one's rows, so a row of
	// it that changes tenant takes rows the change log never mentions along.
	parent bool
	// refs are the keys chain-scoped tables reference this one's rows by
	// (its primary key or another unique key).
	refs []refKey
	// full: the relation's replica identity is FULL, so every UPDATE and
	// DELETE carries the whole old row.
	full bool
	// notNull marks the columns the catalog declares NOT NULL.
	notNull []bool
	// noFull: needs FULL for a row that changes tenant to be archived
	// whole, and cannot have it (see capturer.noFull).
	noFull bool
}

func (c *capturer) close() {
	if c.repl != nil {
		c.repl.Close(context.Background())
	}
	if c.conn != nil {
		c.conn.Close(context.Background())
	}
}

// prepare checks the source, creates the publication and slot when
// missing, and finds where the archived chain ends.
func (c *capturer) prepare(ctx context.Context) error {
	o := &c.o
	conn, err := tenancy.Connect(ctx, c.cfg)
	if err != nil {
		return err
	}
	c.conn = conn
	var walLevel, sysID string
	if err := conn.QueryRow(ctx, `SELECT current_setting('wal_level'), coalesce((SELECT system_identifier::text FROM pg_control_system()), '')`).Scan(&walLevel, &sysID); err != nil {
		return fmt.Errorf("read source settings: %w", err)
	}
	if walLevel != "logical" {
		return tenantvault.WithHint(fmt.Sprintf("the source has wal_level=%s; change capture needs wal_level=logical", walLevel),
			"set wal_level = logical in postgresql.conf and restart the server")
	}
	if o.Slot == "" {
		o.Slot = SlotName(c.cfg.Database)
	}
	c.stream = vault.StreamName(sysID, c.cfg.Database)
	cat, err := tenancy.Discover(ctx, conn, o.Tenancy, "")
	if err != nil {
		return err
	}
	c.res = newResolver(conn, cat.Tables, o.Tenancy)
	// A horizon older than the slot lets lookups of rows nobody wrote
	// since the capture began be trusted from the first change on.
	if err := c.res.takeHorizon(ctx); err != nil {
		return err
	}
	if err := c.checkIdentity(ctx, cat.Tables); err != nil {
		return err
	}
	if err := c.ensurePublication(ctx, cat.Tables); err != nil {
		return err
	}
	replCfg := c.cfg.Config.Copy()
	replCfg.RuntimeParams["replication"] = "database"
	c.repl, err = pgconn.ConnectConfig(ctx, replCfg)
	if err != nil {
		return fmt.Errorf("open replication connection to %s (the role needs the REPLICATION attribute): %w", tenancy.Describe(c.cfg), err)
	}
	return c.ensureSlot(ctx)
}

func (c *capturer) ensurePublication(ctx context.Context, tables []manifest.Table) error {
	var viaRoot, all bool
	err := c.conn.QueryRow(ctx, `SELECT pubviaroot, puballtables FROM pg_publication WHERE pubname = $1`, c.o.Publication).Scan(&viaRoot, &all)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("read publication %s: %w", c.o.Publication, err)
	}
	if err == nil {
		// Without publish_via_partition_root, a partition's changes
		// arrive under the partition's name, which is no tenant table of
		// the catalog (partitions are read through their parent): they
		// would be missed, silently.
		for i := range tables {
			if t := &tables[i]; t.Partitioned && t.Kind == manifest.TableScoped && !viaRoot {
				return &tenantvault.InputError{
					Msg: fmt.Sprintf("publication %s does not publish through partition roots: changes to the partitions of %s would be missed", c.o.Publication, t.QualifiedName()),
					Hint: "run ALTER PUBLICATION " + tenancy.Ident(c.o.Publication) + " SET (publish_via_partition_root = true), " +
						"or drop it and let the capture create its own",
				}
			}
		}
		if !all {
			return c.checkPublished(ctx, tables)
		}
		return nil
	}
	if _, err := c.conn.Exec(ctx, "CREATE PUBLICATION "+tenancy.Ident(c.o.Publication)+" FOR ALL TABLES WITH (publish_via_partition_root = true)"); err != nil {
		return &tenantvault.InputError{Msg: fmt.Sprintf("create publication %s: %v", c.o.Publication, err),
			Hint: "create it as a superuser: CREATE PUBLICATION " + c.o.Publication + " FOR ALL TABLES (or FOR TABLE with every tenant table)"}
	}
	c.o.Logger.Info("created publication", "publication", c.o.Publication)
	return nil
}

// checkPublished refuses a publication that leaves out a tenant table:
// its changes would never reach the log, and replays would silently lack
// them.
func (c *capturer) checkPublished(ctx context.Context, tables []manifest.Table) error {
	rows, err := c.conn.Query(ctx, `SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1`, c.o.Publication)
	if err != nil {
		return fmt.Errorf("read publication %s: %w", c.o.Publication, err)
	}
	published := map[string]bool{}
	for rows.Next() {
		var schema, name string
		if err := rows.Scan(&schema, &name); err != nil {
			rows.Close()
			return err
		}
		published[schema+"\x00"+name] = true
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var missing []string
	for i := range tables {
		if t := &tables[i]; t.Kind == manifest.TableScoped && !published[t.Schema+"\x00"+t.Name] {
			missing = append(missing, t.QualifiedName())
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return &tenantvault.InputError{
		Msg:  fmt.Sprintf("publication %s leaves out tenant table(s) %s: their changes would be missed", c.o.Publication, strings.Join(missing, ", ")),
		Hint: "add them with ALTER PUBLICATION " + tenancy.Ident(c.o.Publication) + " ADD TABLE ..., or drop it and let the capture create its own (FOR ALL TABLES)",
	}
}

// ensureSlot resumes the archived chain of this slot, or starts a new one.
// A chain is only continued when the slot still exists and has not moved
// past what was archived; otherwise a new epoch begins (a gap that restore
// will not cross).
func (c *capturer) ensureSlot(ctx context.Context) error {
	segs, err := c.o.Vault.ListSegments(ctx, c.stream)
	if err != nil {
		return err
	}
	var confirmed *string
	err = c.conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`, c.o.Slot).Scan(&confirmed)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("read replication slot %s: %w", c.o.Slot, err)
	}
	slotExists := err == nil
	if slotExists && len(segs) > 0 {
		last, err := c.o.Vault.ReadSegmentIndex(ctx, segs[len(segs)-1])
		if err != nil {
			return err
		}
		conf, _ := vault.ParseLSN(deref(confirmed))
		if strings.HasPrefix(last.Epoch, c.o.Slot+"@") && conf <= last.End {
			c.epoch, c.start = last.Epoch, last.End
			c.o.Logger.Info("resuming change capture", "slot", c.o.Slot, "from", vault.LSNString(c.start), "epoch", c.epoch)
			return nil
		}
		c.o.Logger.Warn("replication slot does not continue the archived change log; starting a new chain", "slot", c.o.Slot)
	}
	if slotExists {
		if err := pglogrepl.DropReplicationSlot(ctx, c.repl, c.o.Slot, pglogrepl.DropReplicationSlotOptions{}); err != nil {
			return fmt.Errorf("drop stale replication slot %s: %w", c.o.Slot, err)
		}
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, c.repl, c.o.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if err != nil {
		return fmt.Errorf("create replication slot %s: %w", c.o.Slot, err)
	}
	start, err := vault.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return err
	}
	c.epoch, c.start = fmt.Sprintf("%s@%s", c.o.Slot, res.ConsistentPoint), start
	// An empty first segment records where the chain begins, durably,
	// before any change is acknowledged.
	if _, err := c.o.Vault.WriteSegment(ctx, vault.NewSegmentBuilder(c.stream, c.epoch, start), start, time.Now()); err != nil {
		return err
	}
	c.o.Logger.Info("created replication slot; change log starts", "slot", c.o.Slot, "lsn", res.ConsistentPoint)
	return nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// txn is the transaction being received.
type txn struct {
	lsn  uint64
	time time.Time
	seq  uint32
}

// receive receives changes and archives them every FlushInterval.
func (c *capturer) receive(ctx context.Context) error {
	o := &c.o
	err := pglogrepl.StartReplication(ctx, c.repl, o.Slot, pglogrepl.LSN(c.start), pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", "publication_names " + tenancy.Literal(o.Publication)},
	})
	if err != nil {
		return fmt.Errorf("start replication from slot %s: %w", o.Slot, err)
	}
	c.rels = map[uint32]*relInfo{}
	b := vault.NewSegmentBuilder(c.stream, c.epoch, c.start)
	var cur *txn
	var committed uint64 = c.start // end of the last complete transaction
	// until is how far in time the archive is complete. A watermark is a
	// WAL position and the server's clock read together: once everything
	// before the position is archived, so is every transaction that
	// committed before the clock reading (minus a margin for a commit
	// stamped before its record reached the WAL).
	var until time.Time
	var wm, nextWM watermark
	lastFlush, lastStatus := time.Now(), time.Now()
	var lastLagCheck time.Time

	var lastHead time.Time
	headDirty := false
	flush := func(force bool) error {
		if cur != nil {
			return nil // only whole transactions are archived
		}
		if wm.lsn != 0 && committed >= wm.lsn {
			if wm.at.After(until) {
				until, headDirty = wm.at, true
			}
			if !nextWM.at.IsZero() {
				wm, nextWM = nextWM, watermark{}
			}
		}
		// A segment holds new records, or, every Heartbeat, only moves the
		// archived position forward (the WAL moved, nothing of ours in it).
		moved := committed > b.Index.Start
		if b.Records() > 0 || moved && (force || time.Since(lastFlush) >= o.Heartbeat) {
			if b.Records() > 0 {
				if err := c.checkPartitions(ctx); err != nil {
					return err
				}
			}
			idx, err := o.Vault.WriteSegment(ctx, b, committed, until)
			if err != nil {
				return err
			}
			if err := pglogrepl.SendStandbyStatusUpdate(ctx, c.repl, pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(committed)}); err != nil {
				return fmt.Errorf("acknowledge %s: %w", vault.LSNString(committed), err)
			}
			o.Stats.Segments.Add(1)
			o.Stats.ArchivedAt.Store(until.Unix())
			if !idx.Last.IsZero() {
				o.Stats.CommitLag.Store(time.Since(idx.Last).Milliseconds())
			}
			o.Logger.Debug("archived change segment", "start", vault.LSNString(idx.Start), "end", vault.LSNString(idx.End), "records", idx.Records)
			c.start = committed
			b = vault.NewSegmentBuilder(c.stream, c.epoch, committed)
			lastFlush, lastStatus = time.Now(), time.Now()
			headDirty = false
			return nil
		}
		// Nothing to archive: the head alone says the log is complete
		// up to now.
		if headDirty && (force || time.Since(lastHead) >= o.Heartbeat) {
			if err := o.Vault.WriteHead(ctx, vault.Head{Stream: c.stream, Epoch: c.epoch, End: c.start, Until: until}); err != nil {
				return err
			}
			o.Stats.ArchivedAt.Store(until.Unix())
			lastHead, headDirty = time.Now(), false
		}
		return nil
	}

	for {
		if ctx.Err() != nil {
			// Archive what is complete with a fresh context, then stop.
			fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			ctx = fctx
			err := flush(true)
			cancel()
			return err
		}
		if time.Since(lastFlush) >= o.FlushInterval || b.Size() >= o.FlushBytes {
			if nextWM.at.IsZero() {
				if nextWM, err = c.watermark(ctx); err != nil {
					if ctx.Err() != nil {
						continue
					}
					return err
				}
				if wm.at.IsZero() {
					wm, nextWM = nextWM, watermark{}
				}
			}
			if err := flush(false); err != nil {
				if ctx.Err() != nil {
					continue // stopping: archive it again with a fresh context
				}
				return err
			}
			// Behind the watermark and nothing arriving: ask the server
			// where it is, so an idle database's log keeps up too.
			if cur == nil && committed < wm.lsn {
				if err := pglogrepl.SendStandbyStatusUpdate(ctx, c.repl, pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(c.start), ReplyRequested: true}); err != nil {
					return fmt.Errorf("send status: %w", err)
				}
				lastStatus = time.Now()
			}
		}
		if time.Since(lastStatus) >= statusEvery {
			if err := pglogrepl.SendStandbyStatusUpdate(ctx, c.repl, pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(c.start)}); err != nil {
				return fmt.Errorf("send status: %w", err)
			}
			lastStatus = time.Now()
		}
		if time.Since(lastLagCheck) >= statusEvery {
			lastLagCheck = time.Now()
			if err := c.checkLag(ctx); err != nil {
				return err
			}
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		msg, err := c.repl.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				continue
			}
			if ctx.Err() != nil {
				continue
			}
			return fmt.Errorf("receive changes: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return err
				}
				// Between transactions the server has sent everything up
				// to its WAL end: that position is archived once the
				// records before it are.
				if cur == nil && uint64(ka.ServerWALEnd) > committed {
					committed = uint64(ka.ServerWALEnd)
				}
				if ka.ReplyRequested {
					lastStatus = time.Time{}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return err
				}
				if err := c.handle(ctx, b, &cur, &committed, xld.WALData); err != nil {
					if ctx.Err() != nil {
						// Stopping in the middle of a transaction (a
						// lookup was cancelled): it was not acknowledged,
						// so the server sends it again next time.
						continue
					}
					return err
				}
			}
		}
	}
}

type watermark struct {
	lsn uint64
	at  time.Time
}

// commitMargin covers a transaction stamped with its commit time just
// before its commit record was flushed (asynchronous commits reach the disk
// within a few wal_writer_delay periods). The watermark uses the flush
// position: that is as far as logical decoding reads.
const commitMargin = time.Second

func (c *capturer) watermark(ctx context.Context) (watermark, error) {
	var lsn string
	var at time.Time
	if err := c.conn.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn()::text, clock_timestamp()`).Scan(&lsn, &at); err != nil {
		return watermark{}, fmt.Errorf("read WAL position: %w", err)
	}
	l, err := vault.ParseLSN(lsn)
	return watermark{lsn: l, at: at.Add(-commitMargin).UTC()}, err
}

// handle decodes one logical replication message into the segment.
func (c *capturer) handle(ctx context.Context, b *vault.SegmentBuilder, cur **txn, committed *uint64, data []byte) error {
	m, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("decode replication message: %w", err)
	}
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		ri, err := c.relation(ctx, m)
		if err != nil {
			return err
		}
		c.rels[m.RelationID] = ri
	case *pglogrepl.BeginMessage:
		*cur = &txn{lsn: uint64(m.FinalLSN), time: m.CommitTime.UTC()}
		c.res.beginTxn()
	case *pglogrepl.CommitMessage:
		if *cur != nil && uint64(m.TransactionEndLSN) > *committed {
			*committed = uint64(m.TransactionEndLSN)
		}
		*cur = nil
	case *pglogrepl.InsertMessage:
		return c.change(ctx, b, *cur, m.RelationID, vault.OpInsert, m.Tuple, 0, nil)
	case *pglogrepl.UpdateMessage:
		return c.change(ctx, b, *cur, m.RelationID, vault.OpUpdate, m.NewTuple, m.OldTupleType, m.OldTuple)
	case *pglogrepl.DeleteMessage:
		return c.change(ctx, b, *cur, m.RelationID, vault.OpDelete, nil, m.OldTupleType, m.OldTuple)
	case *pglogrepl.TruncateMessage:
		if *cur == nil {
			return nil
		}
		var rels []uint32
		for _, id := range m.RelationIDs {
			if ri := c.rels[id]; ri != nil && ri.table != nil {
				rels = append(rels, id)
				b.AddRelation(ri.rel)
			}
		}
		if len(rels) > 0 {
			(*cur).seq++
			b.Add("", true, &vault.Change{LSN: (*cur).lsn, Seq: (*cur).seq, Time: (*cur).time, Op: vault.OpTruncate, Rels: rels})
			c.o.Stats.Records.Add(1)
		}
	}
	return nil
}

// relation learns a relation's shape and whether it holds tenant rows.
func (c *capturer) relation(ctx context.Context, m *pglogrepl.RelationMessage) (*relInfo, error) {
	ri := &relInfo{rel: vault.Relation{OID: m.RelationID, Schema: m.Namespace, Name: m.RelationName}, tcol: -1, full: m.ReplicaIdentity == 'f'}
	for _, col := range m.Columns {
		var typ string
		if err := c.conn.QueryRow(ctx, `SELECT format_type($1::oid, $2)`, col.DataType, col.TypeModifier).Scan(&typ); err != nil {
			return nil, fmt.Errorf("read type of %s.%s: %w", m.RelationName, col.Name, err)
		}
		ri.rel.Columns = append(ri.rel.Columns, col.Name)
		ri.rel.Types = append(ri.rel.Types, typ)
		ri.ident = append(ri.ident, col.Flags&1 != 0)
	}
	ri.table = c.res.table(m.Namespace, m.RelationName)
	if ri.table == nil {
		return ri, nil
	}
	ri.noFull = c.noFull[m.Namespace+"\x00"+m.RelationName]
	notNull := map[string]bool{}
	for _, col := range ri.table.Columns {
		notNull[col.Name] = col.NotNull
	}
	for _, n := range ri.rel.Columns {
		ri.notNull = append(ri.notNull, notNull[n])
	}
	pos := map[string]int{}
	for i, n := range ri.rel.Columns {
		pos[n] = i
	}
	ri.refs = c.res.refKeys(m.Namespace, m.RelationName, pos)
	ri.parent = len(c.res.referenced[m.Namespace+"\x00"+m.RelationName]) > 0
	if s := ri.table.Scope; s != nil {
		if len(s.Hops) == 0 {
			if p, ok := pos[s.Column]; ok {
				ri.tcol = p
			}
		} else {
			for _, h := range s.Hops[0].Columns {
				if p, ok := pos[h]; ok {
					ri.hop = append(ri.hop, p)
				}
			}
		}
	}
	return ri, nil
}

// change attributes a row change to its tenant and buffers it.
func (c *capturer) change(ctx context.Context, b *vault.SegmentBuilder, cur *txn, relID uint32, op byte, newT *pglogrepl.TupleData, oldType uint8, oldT *pglogrepl.TupleData) error {
	ri := c.rels[relID]
	if cur == nil || ri == nil || ri.table == nil {
		return nil
	}
	// The server describes a relation once per connection; every segment
	// carries the description of the relations its records use.
	b.AddRelation(ri.rel)
	ch := &vault.Change{LSN: cur.lsn, Time: cur.time, Rel: relID, Op: op, New: values(newT), Old: values(oldT)}
	if oldType == pglogrepl.UpdateMessageTupleTypeKey {
		// A key-only old tuple: the columns outside the replica identity
		// were not sent, whatever they held. Taking them for NULLs once lost
		// the deletes of rows whose tenant is not in their key.
		for i := range ch.Old {
			if i >= len(ri.ident) || !ri.ident[i] {
				ch.Old[i] = vault.Value{Kind: vault.ValueAbsent}
			}
		}
	}
	if err := c.checkOldRow(ctx, ri, ch, oldType); err != nil {
		return err
	}
	tenants, shared, err := c.res.tenantsOf(ctx, ri, ch)
	if err != nil {
		return err
	}
	if shared {
		cur.seq++
		ch.Seq = cur.seq
		b.Add("", true, ch)
		c.o.Stats.Records.Add(1)
		c.o.Stats.Shared.Add(1)
		return nil
	}
	for _, tc := range tenants {
		cur.seq++
		tc.change.Seq = cur.seq
		b.Add(tc.tenant, false, tc.change)
		c.o.Stats.Records.Add(1)
	}
	return nil
}

// checkOldRow refuses a change whose old row is narrower than the
// relation's replica identity says. That happens to a partitioned table:
// the server describes the old rows of all its partitions with the root's
// identity, while each partition logs only what its own identity holds, and
// sends the columns it did not log as NULL. A partition attached while the
// capture runs keeps the default identity, so the evidence is checked on
// every change: identity columns are NOT NULL, so is what the catalog
// declares so, an unchanged out-of-line value was not NULL before, and a
// FULL identity logs the old row of every UPDATE.
func (c *capturer) checkOldRow(ctx context.Context, ri *relInfo, ch *vault.Change, oldType uint8) error {
	narrow := ch.Op == vault.OpUpdate && ch.Old == nil && ri.full
	for i, v := range ch.Old {
		if v.Kind != vault.ValueNull {
			continue
		}
		switch {
		case oldType == pglogrepl.UpdateMessageTupleTypeKey, i < len(ri.notNull) && ri.notNull[i],
			i < len(ch.New) && ch.New[i].Kind == vault.ValueUnchanged:
			// Not sent, whatever it held.
			ch.Old[i] = vault.Value{Kind: vault.ValueAbsent}
			narrow = true
		}
	}
	if !narrow || !ri.table.Partitioned {
		// Elsewhere the server sends what the identity holds; what is
		// absent is judged by what the change needs.
		return nil
	}
	return c.narrowPartitionError(ctx, ri.table)
}

// checkPartitions refuses to archive while a partition of a partitioned
// tenant table keeps a narrower identity than the table needs (attached
// since the capture started): its changes may carry NULL for what it did
// not log, which no change can tell from a real NULL in a nullable column.
func (c *capturer) checkPartitions(ctx context.Context) error {
	for root, need := range c.partitioned {
		rels, err := c.identities(ctx, root)
		if err != nil {
			return err
		}
		for _, x := range rels {
			if x.root || x.ident == "f" {
				continue
			}
			if x.ident == "n" || !containsAll(x.cols, need.cols) || need.movable && !x.virtual && len(missing(x.cols, x.toastable)) > 0 {
				schema, name, _ := strings.Cut(root, "\x00")
				t := c.res.table(schema, name)
				if t == nil {
					t = &manifest.Table{Schema: schema, Name: name, Partitioned: true}
				}
				return partitionError(t, []string{x.name}, "it cannot be archived")
			}
		}
	}
	return nil
}

// narrowPartitionError names the partitions of t whose replica identity
// holds less than t's.
func (c *capturer) narrowPartitionError(ctx context.Context, t *manifest.Table) error {
	rels, err := c.identities(ctx, t.Schema+"\x00"+t.Name)
	if err != nil {
		return err
	}
	var root *relIdentity
	for i := range rels {
		if rels[i].root {
			root = &rels[i]
		}
	}
	var narrow []string
	for _, x := range rels {
		if !x.root && root != nil && x.ident != "f" && (root.ident == "f" || !containsAll(x.cols, root.cols)) {
			narrow = append(narrow, x.name)
		}
	}
	sort.Strings(narrow)
	return partitionError(t, narrow, "the change cannot be attributed")
}

func partitionError(t *manifest.Table, narrow []string, what string) error {
	which := "one of its partitions"
	fix := "ALTER TABLE <partition> REPLICA IDENTITY FULL"
	if len(narrow) > 0 {
		which = "partition(s) " + strings.Join(narrow, ", ")
		fix = ""
		for _, n := range narrow {
			fix += "ALTER TABLE " + n + " REPLICA IDENTITY FULL; "
		}
		fix = strings.TrimSuffix(fix, "; ")
	}
	return &tenantvault.InputError{
		Msg: fmt.Sprintf("%s of %s keep a narrower replica identity than the table needs (attached since the capture started?): the server sends what they did not log as NULL, so %s and the change log cannot continue",
			which, t.QualifiedName(), what),
		Hint: fix + "; then start a new change log, since the changes already written cannot be attributed: tenantvault capture --drop-slot, start the capture again, and take a set with --exact-lsn. Attach partitions with their replica identity already set",
	}
}

func values(t *pglogrepl.TupleData) []vault.Value {
	if t == nil {
		return nil
	}
	out := make([]vault.Value, len(t.Columns))
	for i, col := range t.Columns {
		switch col.DataType {
		case pglogrepl.TupleDataTypeNull:
			out[i] = vault.Value{Kind: vault.ValueNull}
		case pglogrepl.TupleDataTypeToast:
			out[i] = vault.Value{Kind: vault.ValueUnchanged}
		default:
			out[i] = vault.Value{Kind: vault.ValueText, Data: append([]byte(nil), col.Data...)}
		}
	}
	return out
}

// checkLag measures the WAL the source keeps for the slot, and drops the
// slot when it passes MaxLag.
func (c *capturer) checkLag(ctx context.Context) error {
	var lag *int64
	err := c.conn.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1`, c.o.Slot).Scan(&lag)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("replication slot %s was removed: the change log stops here", c.o.Slot)
	}
	if err != nil || lag == nil {
		return err
	}
	c.o.Stats.LagBytes.Store(*lag)
	if *lag <= c.o.MaxLag {
		return nil
	}
	c.o.Logger.Error("capture is too far behind; dropping its slot so the source keeps its disk", "slot", c.o.Slot, "lag_bytes", *lag, "max", c.o.MaxLag)
	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.repl.Close(dctx)
	c.repl = nil
	if _, err := dropSlot(dctx, c.conn, c.o.Slot); err != nil {
		return fmt.Errorf("%w (%d bytes) and dropping slot %s failed: %v", ErrLagExceeded, *lag, c.o.Slot, err)
	}
	return fmt.Errorf("%w (%d bytes of WAL held, limit %d): slot %s dropped; the change log has a gap until the next snapshot", ErrLagExceeded, *lag, c.o.MaxLag, c.o.Slot)
}

// DropSlot removes the capture's slot (and nothing else), for a source
// whose capture is turned off.
func DropSlot(ctx context.Context, source, slot string) error {
	cfg, err := tenancy.ParseURL(source)
	if err != nil {
		return err
	}
	if slot == "" {
		slot = SlotName(cfg.Database)
	}
	conn, err := tenancy.Connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	n, err := dropSlot(ctx, conn, slot)
	if err != nil {
		return fmt.Errorf("drop replication slot %s: %w", slot, err)
	}
	if n == 0 {
		return tenantvault.Inputf("no replication slot %s on %s", slot, tenancy.Describe(cfg))
	}
	return nil
}

// slotReleaseWait is how long a drop waits for a slot to be released: the
// server ends a capture's walsender a moment after its client has gone,
// and the slot stays active until then.
const slotReleaseWait = 5 * time.Second

// dropSlot drops slot if it exists and reports how many it dropped. A slot
// still in use after slotReleaseWait (a capture that is running) is left
// alone, with the server's error.
func dropSlot(ctx context.Context, conn *pgx.Conn, slot string) (int64, error) {
	deadline := time.Now().Add(slotReleaseWait)
	for {
		tag, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot)
		var pe *pgconn.PgError
		if err == nil || !errors.As(err, &pe) || pe.Code != "55006" || time.Now().After(deadline) {
			return tag.RowsAffected(), err
		}
		select {
		case <-ctx.Done():
			return 0, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
