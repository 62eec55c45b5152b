package main

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/vault"
)

type verifyOptions struct {
	repo     repoFlags
	snapshot string
	readData bool
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
	cmd.Flags().StringVar(&o.snapshot, "snapshot", "", "verify only this set (default: all)")
	cmd.Flags().BoolVar(&o.readData, "read-data", false, "read and check every chunk's content too")
	return cmd
}

func (a *app) runVerify(ctx context.Context, o *verifyOptions) error {
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
	stop := a.progress(func() string { return fmt.Sprintf("checked %d of %d chunks", done.Load(), total.Load()) })
	res, err := v.Verify(ctx, ids, o.readData, func(d, t int64) { done.Store(d); total.Store(t) })
	stop()
	if err != nil {
		return err
	}
	if err := recordVerified(ctx, v, ids, res, o.readData); err != nil {
		a.log.Warn("could not record which sets verified", "err", err)
	}
	if a.jsonOut {
		if err := a.printJSON(res); err != nil {
			return err
		}
	} else {
		for _, p := range res.Problems {
			fmt.Fprintln(a.stdout, "PROBLEM", p.String())
		}
		what := "objects present"
		if o.readData {
			what = fmt.Sprintf("data read back (%s)", humanBytes(res.BytesRead))
		}
		fmt.Fprintf(a.stdout, "verified %d set(s), %d pack(s), %d chunk(s): %s; %d problem(s)\n", res.Sets, res.Packs, res.Chunks, what, len(res.Problems))
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
