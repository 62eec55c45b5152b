package datagen

import (
	"bytes"
	"compress/flate"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

func testOptions() Options {
	o := Options{Tenants: 50, TargetBytes: 20 << 20, Seed: 7, OddIDs: true}
	if err := o.normalize(); err != nil {
		panic(err)
	}
	return o
}

func TestPlanIsDeterministic(t *testing.T) {
	a, b := newPlan(testOptions()), newPlan(testOptions())
	if !reflect.DeepEqual(a.tenants, b.tenants) {
		t.Fatal("two plans from the same options differ")
	}
	o := testOptions()
	o.Seed++
	c := newPlan(o)
	if reflect.DeepEqual(a.tenants[0].issueRows, c.tenants[0].issueRows) {
		t.Fatal("another seed gave the same issues")
	}
}

func TestZipfWeight(t *testing.T) {
	for _, s := range []float64{0.5, 1, 1.1, 2, 3.7} {
		for _, k := range []int{1, 2, 3, 10, 999, 123456} {
			want := math.Pow(float64(k), -s) * (1 << 40)
			got := float64(zipfWeight(k, s) - 1)
			if math.Abs(got-want) > want*1e-12+1 {
				t.Errorf("zipfWeight(%d, %g) = %g, want %g", k, s, got, want)
			}
		}
	}
}

func TestPlanTenants(t *testing.T) {
	p := newPlan(testOptions())
	seen := map[string]bool{}
	for _, tn := range p.tenants {
		if seen[tn.id] {
			t.Fatalf("duplicate tenant ID %q", tn.id)
		}
		seen[tn.id] = true
		if tn.users < 3 || tn.projects < 1 || tn.issues < minIssues || tn.comments < minComments ||
			tn.events < minEvents || tn.audit < minAudit {
			t.Errorf("tenant %q has too few rows: %+v", tn.id, tn)
		}
		if tn.created < epochUS || tn.created >= endUS {
			t.Errorf("tenant %q created outside the history", tn.id)
		}
	}
	for _, odd := range []string{"o'brien & co", "a/../b", "Ünïcödé-GmbH", "tab\there", `\N`, "T0002", "t0002"} {
		if !seen[odd] {
			t.Errorf("tenant %q missing", odd)
		}
	}
	// Zipf: a few tenants are large, most are small.
	issues := make([]int64, len(p.tenants))
	for i, tn := range p.tenants {
		issues[i] = tn.issues
	}
	slices.Sort(issues)
	if big, median := issues[len(issues)-1], issues[len(issues)/2]; big < 10*median {
		t.Errorf("largest tenant has %d issues, median %d: not skewed enough", big, median)
	}
}

func TestTimelines(t *testing.T) {
	p := newPlan(testOptions())
	for _, spec := range []timelineSpec{usersTL, projectsTL, milestonesTL, issuesTL, commentsTL, eventsTL, auditTL} {
		m := newMerge(p, spec)
		counts := make([]int64, len(p.tenants))
		last := int64(-1 << 62)
		for {
			ti, at, ok := m.next()
			if !ok {
				break
			}
			if at < last {
				t.Fatalf("stream %d: time goes back from %d to %d", spec.stream, last, at)
			}
			last = at
			n, lo, hi := spec.span(&p.tenants[ti])
			if at < lo || at >= hi {
				t.Fatalf("stream %d: tenant %d row at %d outside [%d, %d)", spec.stream, ti, at, lo, hi)
			}
			if counts[ti]++; counts[ti] > n {
				t.Fatalf("stream %d: tenant %d gets more than %d rows", spec.stream, ti, n)
			}
		}
		for ti := range p.tenants {
			if n, _, _ := spec.span(&p.tenants[ti]); counts[ti] != n {
				t.Errorf("stream %d: tenant %d got %d rows, want %d", spec.stream, ti, counts[ti], n)
			}
		}
	}
	// Rows that refer to issues come after the tenant's first issue.
	for i := range p.tenants {
		tn := &p.tenants[i]
		_, lo, _ := commentsTL.span(tn)
		if tn.issueRows[0].at >= lo {
			t.Errorf("tenant %d: first issue at %d, comments from %d", i, tn.issueRows[0].at, lo)
		}
		if tn.userRows[0].at != tn.created || tn.projectRows[0].at != tn.created {
			t.Errorf("tenant %d: first user or project not created with the tenant", i)
		}
	}
}

// TestProseCompressibility checks that generated text compresses like real
// text: neither random (about 1.5x) nor repetitive (10x and more).
func TestProseCompressibility(t *testing.T) {
	g := &textGen{r: &rng{}}
	var text []byte
	for len(text) < 512<<10 {
		text = g.prose(text, 1000)
		text = append(text, '\n')
	}
	var z bytes.Buffer
	w, _ := flate.NewWriter(&z, flate.DefaultCompression)
	w.Write(text)
	w.Close()
	ratio := float64(len(text)) / float64(z.Len())
	t.Logf("deflate ratio %.2f", ratio)
	if ratio < 2.5 || ratio > 6 {
		t.Errorf("deflate compresses generated text %.2fx, want 2.5x to 6x", ratio)
	}
}

func TestAppendJSONString(t *testing.T) {
	got := string(appendJSONString(nil, "a\"b\\c\td\x01é"))
	if want := `"a\"b\\c\u0009d\u0001é"`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// columnTypes names the PostgreSQL type of every generated column, for the
// encoding benchmark.
var columnTypes = map[string]string{
	"id": "int8", "tenant_id": "text", "email": "text", "name": "text", "country": "bpchar", "active": "bool",
	"created_at": "timestamptz", "key": "text", "description": "text", "lead_id": "int8", "archived": "bool",
	"project_id": "int8", "due_on": "date", "closed": "bool", "milestone_id": "int8", "number": "int4",
	"title": "text", "body": "text", "status": "text", "priority": "int4", "labels": "_text", "custom": "jsonb",
	"estimate": "numeric", "reporter_id": "int8", "assignee_id": "int8", "parent_id": "int8",
	"updated_at": "timestamptz", "issue_id": "int8", "user_id": "int8", "author_id": "int8",
	"edited_at": "timestamptz", "comment_id": "int8", "filename": "text", "content_type": "text", "size": "int4",
	"content": "bytea", "sha256": "bytea", "kind": "text", "payload": "jsonb", "at": "timestamptz",
	"actor": "text", "action": "text", "ip": "inet", "request_id": "uuid", "detail": "jsonb",
}

// BenchmarkSources measures the client side of a load: generating every
// row of a 20 MB database and encoding it as pgx does for COPY. It reports
// the generated bytes per second and allocations per row.
func BenchmarkSources(b *testing.B) {
	m := pgtype.NewMap()
	o := testOptions()
	o.OddIDs = false
	p := newPlan(o)
	buf := make([]byte, 0, 1<<20)
	var rows int64
	b.ReportAllocs()
	for b.Loop() {
		for _, s := range []source{p.commentsSource(), p.issuesSource(), p.attachmentsSource(), p.eventsSource(),
			p.auditSource(), p.watchersSource(), p.usersSource(), p.projectsSource(), p.milestonesSource()} {
			oids := make([]uint32, len(s.columns()))
			for i, c := range s.columns() {
				typ, ok := m.TypeForName(columnTypes[c])
				if !ok {
					b.Fatalf("no type for column %s", c)
				}
				oids[i] = typ.OID
			}
			for s.Next() {
				vals, _ := s.Values()
				for i, v := range vals {
					// Encode returns nil for NULL: keep buf for the next value.
					if _, err := m.Encode(oids[i], pgtype.BinaryFormatCode, v, buf[:0]); err != nil {
						b.Fatalf("%s.%s: %v", s.table(), s.columns()[i], err)
					}
				}
				rows++
			}
		}
	}
	b.SetBytes(o.TargetBytes)
	b.ReportMetric(float64(rows)/float64(b.N), "rows/op")
}

func TestOddIDsHaveNoNewline(t *testing.T) {
	for _, id := range oddTenantIDs {
		if strings.ContainsAny(id, "\n\r") || id == "" {
			t.Errorf("odd ID %q cannot be written one per line", id)
		}
	}
}
