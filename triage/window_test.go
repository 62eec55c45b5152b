package triage

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file"
	"github.com/tenantvault/tenantvault/vault"
)

// TestWindowOverSegments builds a change log by hand, the way the capture
// lays it out (an empty chain marker stamped with the capture's clock,
// segments without a watermark after a (re)start, then watermarks; a gap
// and a new chain), and checks which windows are accepted, which segments
// are read, and what is counted.
func TestWindowOverSegments(t *testing.T) {
	ctx := context.Background()
	b, err := repo.Open(ctx, "file://"+t.TempDir(), repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v, err := vault.Open(ctx, b, vault.Options{Init: true})
	if err != nil {
		t.Fatal(err)
	}
	const stream = "sys_db"
	t0 := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	rel := vault.Relation{OID: 7, Schema: "public", Name: "users", Columns: []string{"id", "tenant_id"}, Types: []string{"bigint", "text"}}
	type rec struct {
		tenant string
		op     byte
		sec    int
	}
	write := func(epoch string, start, end uint64, until time.Time, recs ...rec) {
		t.Helper()
		sb := vault.NewSegmentBuilder(stream, epoch, start)
		sb.AddRelation(rel)
		for i, r := range recs {
			c := &vault.Change{LSN: start + uint64(i), Time: at(r.sec), Rel: 7, Op: r.op,
				New: []vault.Value{{Kind: vault.ValueText, Data: []byte("1")}, {Kind: vault.ValueText, Data: []byte(r.tenant)}}}
			sb.Add(r.tenant, false, c)
		}
		if _, err := v.WriteSegment(ctx, sb, end, until); err != nil {
			t.Fatal(err)
		}
	}
	// Chain 1: marker at 100 (capture clock 0 s), a segment before any
	// watermark, then watermarks at 10 s, 20 s, 30 s.
	write("e1", 100, 100, at(0))
	write("e1", 100, 200, time.Time{}, rec{"a", vault.OpInsert, 2})
	write("e1", 200, 300, at(10), rec{"a", vault.OpDelete, 9}, rec{"b", vault.OpInsert, 10})
	// Archived with the watermark of 20 s, though one of its records
	// committed after it (the watermark was read before that commit).
	write("e1", 300, 400, at(20), rec{"b", vault.OpDelete, 15}, rec{"e", vault.OpUpdate, 23})
	write("e1", 400, 500, at(30), rec{"c", vault.OpUpdate, 25})
	// A gap, then chain 2 from 600: marker at 40 s, watermark at 50 s.
	write("e2", 600, 600, at(40))
	write("e2", 600, 700, at(50), rec{"d", vault.OpDelete, 45})

	count := func(from, to int) (*ChangesReport, error) {
		return Changes(ctx, ChangesOptions{Vault: v, From: at(from), To: at(to)})
	}
	inputErr := func(err error, want string) {
		t.Helper()
		var ie *tenantvault.InputError
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v, want an input error with %q", err, want)
		}
	}
	// The first watermark of chain 1 is 10 s: complete from 11 s.
	_, err = count(5, 20)
	inputErr(err, "--from 2026-11-28T10:00:05Z is before the change log covers it: the change log is complete from 2026-11-28T10:00:11Z")
	rep, err := count(11, 20)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Tenants) != 1 || rep.Tenants[0].Tenant != "b" || rep.Tenants[0].Tables["public.users"].Deleted != 1 || rep.Records != 1 {
		t.Fatalf("11..20: %+v", rep.Tenants)
	}
	// Across the gap: refused; inside chain 2 only after its watermark.
	_, err = count(25, 45)
	inputErr(err, "the change log has a gap inside the window")
	_, err = count(42, 50)
	inputErr(err, "after a gap, the change log is complete again from 2026-11-28T10:00:51Z")
	_, err = count(60, 61)
	inputErr(err, "--to 2026-11-28T10:01:01Z is after the end of the change log: changes are archived up to 2026-11-28T10:00:50Z")
	// Binary search: a window late in chain 1 reads only the segments that
	// may hold it: 400 and 300, whose own watermark (20 s) does not bound
	// its records (one taken before it was archived may lie inside it);
	// the next new watermark (30 s, at 400) does.
	w, err := findWindow(ctx, v, stream, at(21), at(29))
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Segments) != 2 || w.Segments[0].Start != 300 || w.Segments[1].Start != 400 {
		var got []uint64
		for _, s := range w.Segments {
			got = append(got, s.Start)
		}
		t.Fatalf("segments for 21..29: %v", got)
	}
	// ... and counts the record of 23 s in 300, which a search by each
	// segment's own watermark once skipped.
	rep, err = count(21, 29)
	if err != nil || len(rep.Tenants) != 2 || rep.Tenants[0].Tenant != "c" || rep.Tenants[1].Tenant != "e" || rep.Tenants[0].LostRows || rep.Records != 2 {
		t.Fatalf("21..29: %+v, %v", rep, err)
	}
	_, err = Changes(ctx, ChangesOptions{Vault: v, From: at(20), To: at(10)})
	inputErr(err, "--from 2026-11-28T10:00:20Z is after --to 2026-11-28T10:00:10Z")
}
