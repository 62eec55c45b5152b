package main

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/vault"
)

type verifyOptions struct {
	repo     repoFlags
	snapshot string
	readData bool
	replay   bool
	scratch  string
}

func (a *app) verifyCmd() *cobra.Command {
	var o verifyOptions
	cmd := &cobra.Command{
		Use:   "verify --repo URL [--snapshot ID] [--read-data]",
		Short: "Check that snapshot sets are complete and undamaged",
		Long: `Check manifests, and that every object they reference exists with the
recorded size; with --read-data also read every chunk back, check its
checksum, decompress it and recompute its content digest. Exits 3 when
anything is wrong, naming the set, tenant and table.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runVerify(cmd.Context(), &o) },
	}
	o.repo.add(cmd.Flags(), false)
	o.repo.keys.addReader(cmd.Flags())
	cmd.Flags().StringVar(&o.snapshot, "snapshot", "", "verify only this set (default: all)")
	cmd.Flags().BoolVar(&o.readData, "read-data", false, "read and check every chunk's content too")
	cmd.Flags().BoolVar(&o.replay, "replay", false, "prove the change log: replay it from each exact set to the next in a scratch database and compare digests")
	cmd.Flags().StringVar(&o.scratch, "scratch", "", "with --replay: a database URL on a server where a temporary database may be created")
	return cmd
}

func (a *app) runVerify(ctx context.Context, o *verifyOptions) error {
	if o.replay && o.scratch == "" {
		return &usageError{"--replay needs --scratch URL (a server where a temporary database may be created)"}
	}
	v, closeRepo, err := a.openVault(ctx, &o.repo, false)
	if err != nil {
		return err
	}
	defer closeRepo()
	var ids []string
	if o.snapshot != "" {
		ids = []string{o.snapshot}
	}
	var done, total atomic.Int64
	m := a.startMeter(meterSpec{verb: "checked", noun: "chunks", items: func() (int64, int64) { return done.Load(), total.Load() }})
	res, err := v.Verify(ctx, ids, o.readData, func(d, t int64) { done.Store(d); total.Store(t) })
	m.finish(err == nil)
	if err != nil {
		return err
	}
	if err := recordVerified(ctx, v, ids, res, o.readData); err != nil {
		a.log.Warn("could not record which sets verified", "err", err)
	}
	// The change log is checked with the whole repository, and proved by
	// replay on request.
	var log *vault.SegmentCheck
	if o.snapshot == "" {
		if log, err = v.VerifySegments(ctx, o.readData && v.CanDecrypt()); err != nil {
			return err
		}
		res.Problems = append(res.Problems, log.Problems...)
	}
	var replays []restore.ReplayCheck
	if o.replay {
		replays, err = restore.VerifyReplay(ctx, restore.VerifyReplayOptions{Vault: v, Scratch: o.scratch, Logger: a.log})
		if err != nil {
			return err
		}
		for _, c := range replays {
			for _, p := range c.Problems {
				res.Problems = append(res.Problems, vault.Problem{Set: c.From + " -> " + c.To, Problem: "replay: " + p})
			}
		}
	}
	if a.jsonOut {
		out := struct {
			*vault.VerifyResult
			ChangeLog *vault.SegmentCheck   `json:"change_log,omitempty"`
			Replay    []restore.ReplayCheck `json:"replay,omitempty"`
		}{res, log, replays}
		if err := a.printJSON(out); err != nil {
			return err
		}
	} else {
		if log != nil && log.Segments > 0 {
			fmt.Fprintf(a.stdout, "change log: %d stream(s), %d segment(s)", log.Streams, log.Segments)
			if log.Records > 0 {
				fmt.Fprintf(a.stdout, ", %d change(s) read back", log.Records)
			}
			fmt.Fprintln(a.stdout)
			for _, g := range log.Gaps {
				fmt.Fprintln(a.stdout, "note:", g)
			}
		}
		for _, c := range replays {
			switch {
			case c.Skipped != "":
				fmt.Fprintf(a.stdout, "replay %s -> %s: not checked (%s)\n", c.From, c.To, c.Skipped)
			case len(c.Problems) == 0:
				fmt.Fprintf(a.stdout, "replay %s -> %s: %d tenant(s) replayed to the next set's digests exactly\n", c.From, c.To, c.Tenants)
			}
			for _, u := range c.Unprovable {
				fmt.Fprintf(a.stdout, "replay %s -> %s: not provable: %s\n", c.From, c.To, u)
			}
		}
		for _, p := range res.Problems {
			fmt.Fprintln(a.stdout, "PROBLEM", p.String())
		}
		what := "objects present"
		switch {
		case o.readData && res.StoredOnly:
			what = fmt.Sprintf("stored bytes read back and checksummed (%s)", humanBytes(res.BytesRead))
		case o.readData:
			what = fmt.Sprintf("data read back (%s)", humanBytes(res.BytesRead))
		}
		fmt.Fprintf(a.stdout, "verified %d set(s), %d pack(s), %d chunk(s): %s; %d problem(s)\n", res.Sets, res.Packs, res.Chunks, what, len(res.Problems))
		if res.StoredOnly && o.readData {
			fmt.Fprintln(a.stdout, "note: the repository is encrypted and no --identity was given: every stored byte was checked, nothing was decrypted; give --identity to also check the content digests")
		}
		if res.Shredded > 0 {
			fmt.Fprintf(a.stdout, "note: %d chunk(s) of %d tenant snapshot(s) have a destroyed tenant data key (crypto-shredded by forget, or deleted): their stored bytes were checked against their checksums; their content cannot be decrypted by anyone, so it was not proven\n", res.Shredded, res.ShreddedTenants)
		}
		if len(res.Unpinned) > 0 {
			fmt.Fprintf(a.stdout, "note: %d set(s) are signed by a signer none of your key files names: they are intact, who wrote them is not proven (give --identity or --signing-key)\n", len(res.Unpinned))
		}
	}
	if len(res.Problems) > 0 {
		if a.jsonOut {
			return &silentError{code: exitIntegrity}
		}
		return tenantvault.Integrityf("%d problem(s) found", len(res.Problems))
	}
	return nil
}

// recordVerified notes every set that passed, so retention knows the
// newest verified set of each source, whoever verified it.
func recordVerified(ctx context.Context, v *vault.Vault, ids []string, res *vault.VerifyResult, readData bool) error {
	if len(ids) == 0 {
		var err error
		if ids, err = v.ListSets(ctx); err != nil {
			return err
		}
	}
	bad := map[string]bool{}
	for _, p := range res.Problems {
		bad[p.Set] = true
	}
	for _, id := range ids {
		if bad[id] {
			continue
		}
		if err := v.RecordVerification(ctx, vault.Verification{Set: id, ReadData: readData, By: "tenantvault verify"}); err != nil {
			return err
		}
	}
	return nil
}
