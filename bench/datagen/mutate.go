package datagen

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Mutate changes the data of about fraction (0 < fraction <= 1) of the
// tenants of a generated database, at least one, as a day of use would:
// for each chosen tenant it updates a few issues, adds comments, an event
// and an audit row, and deletes an attachment if the tenant has one. It
// returns the changed tenant IDs in byte order. The other tenants' rows are
// not touched. Everything happens in one transaction; the same seed on the
// same database chooses the same tenants and makes the same changes.
//
// It serves the "incremental snapshot after 1% of tenants changed"
// benchmark and tests of change detection.
func Mutate(ctx context.Context, dbURL string, fraction float64, seed int64) ([]string, error) {
	if !(fraction > 0 && fraction <= 1) {
		return nil, fmt.Errorf("datagen: fraction must be in (0, 1], got %g", fraction)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, fmt.Errorf("datagen: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	ids, err := tenantIDs(ctx, conn)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, errNoTenants
	}
	k := min(max(int(math.Ceil(fraction*float64(len(ids)))), 1), len(ids))
	r := &rng{pcg: *rand.NewPCG(uint64(seed), splitmix64(uint64(seed)^0x6d757461))}
	var chosen []string
	for _, i := range r.Perm(len(ids))[:k] {
		chosen = append(chosen, ids[i])
	}
	slices.Sort(chosen)

	// The changes are dated on the last day of the generated history, so
	// that new events land in the last monthly partition.
	at := time.UnixMicro(endUS - 12*hourUS + int64(uint64(seed)%3600)*1e6).UTC()
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, id := range chosen {
			if err := mutateTenant(ctx, tx, r, id, at); err != nil {
				return fmt.Errorf("datagen: mutate tenant %q: %w", id, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return chosen, nil
}

func mutateTenant(ctx context.Context, tx pgx.Tx, r *rng, tenantID string, at time.Time) error {
	ids := func(sql string) ([]int64, error) {
		rows, err := tx.Query(ctx, sql, tenantID)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowTo[int64])
	}
	issues, err := ids(`SELECT id FROM public.issues WHERE tenant_id = $1 ORDER BY id`)
	if err != nil {
		return err
	}
	users, err := ids(`SELECT id FROM public.users WHERE tenant_id = $1 ORDER BY id`)
	if err != nil {
		return err
	}
	attachments, err := ids(`
		SELECT a.id FROM public.attachments a
		JOIN public.comments c ON c.id = a.comment_id
		JOIN public.issues i ON i.id = c.issue_id
		WHERE i.tenant_id = $1 ORDER BY a.id`)
	if err != nil {
		return err
	}
	if len(issues) == 0 || len(users) == 0 {
		return fmt.Errorf("tenant has no issues or no users")
	}
	g := &textGen{r: r}
	var text []byte
	b := &pgx.Batch{}
	for range min(3, len(issues)) {
		text = g.sentence(append(text[:0], "\n\nUpdate: "...))
		b.Queue(`UPDATE public.issues SET status = 'in_review', updated_at = $2, body = body || $3 WHERE id = $1`,
			issues[r.IntN(len(issues))], at, string(text))
	}
	for range 2 {
		text = g.paragraph(text[:0])
		b.Queue(`INSERT INTO public.comments (issue_id, author_id, body, created_at) VALUES ($1, $2, $3, $4)`,
			issues[r.IntN(len(issues))], users[r.IntN(len(users))], string(text), at)
	}
	if len(attachments) > 0 {
		b.Queue(`DELETE FROM public.attachments WHERE id = $1`, attachments[r.IntN(len(attachments))])
	}
	b.Queue(`INSERT INTO public.events (tenant_id, issue_id, kind, payload, created_at) VALUES ($1, $2, 'status_changed', $3, $4)`,
		tenantID, issues[r.IntN(len(issues))], `{"from": "in_progress", "to": "in_review", "source": "mutate"}`, at)
	// audit_log has no key nor sequence: its IDs come from the application.
	var reqID pgtype.UUID
	binary.BigEndian.PutUint64(reqID.Bytes[:8], r.Uint64())
	binary.BigEndian.PutUint64(reqID.Bytes[8:], r.Uint64())
	reqID.Valid = true
	b.Queue(`INSERT INTO public.audit_log (tenant_id, id, at, actor, action, ip, request_id, detail)
		SELECT $1, coalesce(max(id), 0) + 1, $2, 'system', 'issue.update', NULL, $3, '{"source": "mutate"}'
		FROM public.audit_log`, tenantID, at, reqID)
	return tx.SendBatch(ctx, b).Close()
}
