package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/tenancy"
)

type captureOptions struct {
	repo          repoFlags
	source        string
	tenancy       tenancy.Config
	slot          string
	publication   string
	flushInterval time.Duration
	heartbeat     time.Duration
	maxLag        int64
	setIdentity   bool
	dropSlot      bool
}

func (a *app) captureCmd() *cobra.Command {
	var o captureOptions
	cmd := &cobra.Command{
		Use:   "capture --source URL --repo URL",
		Short: "Archive every committed change, tagged by tenant, for point-in-time restores",
		Long: `Stream the source's committed row changes through logical replication
(a publication and a replication slot this command owns), tag each with its
tenant, and archive them in compressed, checksummed segments every
--flush-interval. Snapshot sets taken with --exact-lsn (the agent does this
when capture is on) are continued by the change log without gap or overlap,
so 'restore --at TIME' reaches any second.

Runs in the foreground until interrupted; it resumes where it stopped. A
capture that falls more than --max-lag bytes behind drops its slot so the
source never fills its disk. --drop-slot removes the slot and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runCapture(cmd.Context(), &o) },
	}
	fs := cmd.Flags()
	o.repo.add(fs, true)
	o.repo.keys.addWriter(fs)
	fs.StringVar(&o.source, "source", "", "source database URL (the role needs REPLICATION; wal_level must be logical)")
	fs.StringVar(&o.tenancy.Model, "tenancy", "", "tenancy model: column (default) or schema")
	fs.StringVar(&o.tenancy.TenantColumn, "tenant-column", "", "tenant key column (default tenant_id)")
	fs.StringVar(&o.tenancy.TenantTable, "tenant-table", "", "table whose primary key is the tenant ID")
	fs.StringVar(&o.tenancy.SchemaPattern, "schema-pattern", "", "schema model: LIKE pattern of tenant schemas")
	fs.StringVar(&o.slot, "slot", "", "replication slot name (default tenantvault_<hash of the database name>)")
	fs.StringVar(&o.publication, "publication", capture.DefaultPublication, "publication name (created FOR ALL TABLES when missing)")
	fs.DurationVar(&o.flushInterval, "flush-interval", capture.DefaultFlushInterval, "longest time a committed change waits before it is archived")
	fs.DurationVar(&o.heartbeat, "heartbeat", capture.DefaultHeartbeat, "how often an idle source's log records that it is complete up to now")
	fs.Int64Var(&o.maxLag, "max-lag", capture.DefaultMaxLag, "bytes of WAL the source may hold for the slot before the capture drops it")
	fs.BoolVar(&o.setIdentity, "set-replica-identity", false, "set REPLICA IDENTITY FULL on tables (and partitions) whose changes would otherwise not carry their tenant, or the whole row of one that changes tenant")
	fs.BoolVar(&o.dropSlot, "drop-slot", false, "drop the capture's replication slot and exit")
	return cmd
}

func (a *app) runCapture(ctx context.Context, o *captureOptions) error {
	if o.source == "" {
		return &usageError{"--source is required (or TENANTVAULT_SOURCE)"}
	}
	if o.dropSlot {
		if err := capture.DropSlot(ctx, o.source, o.slot); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout, "replication slot dropped")
		return nil
	}
	v, closeRepo, err := a.openVault(ctx, &o.repo, true)
	if err != nil {
		return err
	}
	defer closeRepo()
	stats := &capture.Stats{}
	m := a.startMeter(meterSpec{verb: "captured", noun: "changes", open: true,
		items: func() (int64, int64) { return stats.Records.Load(), 0 },
		detail: func() string {
			return fmt.Sprintf("in %d segments (%d shared), slot holds %s of WAL", stats.Segments.Load(), stats.Shared.Load(), humanBytes(stats.LagBytes.Load()))
		},
	})
	defer m.finish(false)
	a.log.Info("capturing changes; interrupt to stop", "source", tenancy.RedactURL(o.source), "repo", v.Location())
	return capture.Run(ctx, capture.Options{
		Source: o.source, Vault: v, Tenancy: o.tenancy, Slot: o.slot, Publication: o.publication,
		FlushInterval: o.flushInterval, Heartbeat: o.heartbeat, MaxLag: o.maxLag, SetReplicaIdentity: o.setIdentity,
		Logger: a.log, Stats: stats,
	})
}
