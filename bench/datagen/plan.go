package datagen

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// The generated history spans four years, fixed so that the data never
// depends on the clock.
var (
	epoch    = time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)
	epochUS  = epoch.UnixMicro()
	endUS    = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	spanUS   = endUS - epochUS
	minuteUS = int64(60e6)
	hourUS   = 60 * minuteUS
	dayUS    = 24 * hourUS
)

// Shares of TargetBytes of the five large tables, in percent. The other
// tables' sizes follow from these (users, projects and milestones grow with
// issues, watchers come with issues) and hold about derivedPermille of the
// data: the five get the rest in proportion to their shares.
const (
	shareComments    = 40
	shareIssues      = 20
	shareAttachments = 15
	shareEvents      = 10
	shareAudit       = 10
	sumShares        = shareComments + shareIssues + shareAttachments + shareEvents + shareAudit
	derivedPermille  = 15
)

// Average stored bytes per row (heap and TOAST, tuple and page overhead
// included), measured on generated data, to turn byte budgets into row
// counts. They follow the length distributions in sources.go: change them
// together.
const (
	bytesPerComment    = 607
	bytesPerIssue      = 1500
	bytesPerAttachment = 10000 // less than the mean file size: pglz compresses text files in TOAST
	bytesPerEvent      = 230
	bytesPerAudit      = 420
)

// Minimum rows of every tenant, so that even the smallest tenant has data
// in most tables. Milestones and attachments may be absent, which also
// tests tenants with no rows in some table.
const (
	minIssues   = 4
	minComments = 4
	minEvents   = 4
	minAudit    = 2
)

// Random streams: each (stream, tenant) pair has its own generator, so a
// tenant's rows do not depend on how tenants interleave.
const (
	streamPlan = iota + 1
	streamUsersTime
	streamUsers
	streamProjectsTime
	streamProjects
	streamMilestonesTime
	streamMilestones
	streamIssuesTime
	streamIssues
	streamWatchers
	streamCommentsTime
	streamComments
	streamAttachments
	streamEventsTime
	streamEvents
	streamAuditTime
	streamAudit
	streamMilestoneProjects
)

type tenant struct {
	index                  int
	id, name, plan, domain string
	created                int64 // unix microseconds
	weight                 uint64

	// Planned row counts.
	users, projects, milestones, issues, comments, attachments, events, audit int64

	// Rows generated so far for the tables that other tables reference:
	// their IDs and creation times, in time order.
	userRows, projectRows, milestoneRows, issueRows []entity
}

// entity is one generated row that others refer to.
type entity struct {
	id, at int64
	aux    int64 // milestones: project ID
}

type plan struct {
	opts    Options
	tenants []tenant
}

// splitmix64 is a fast, well-mixed hash of one 64-bit value, used to derive
// independent seeds.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// pcg returns the seeded generator state of stream for tenant t.
func (p *plan) pcg(stream, t int) rand.PCG {
	s := uint64(p.opts.Seed)
	a := splitmix64(s ^ splitmix64(uint64(stream)<<32|uint64(t)))
	return *rand.NewPCG(a, splitmix64(a))
}

func (p *plan) rng(stream, t int) *rng { return &rng{pcg: p.pcg(stream, t)} }

// rngs returns the generators of stream for every tenant.
func (p *plan) rngs(stream int) []rng {
	rs := make([]rng, len(p.tenants))
	for i := range rs {
		rs[i].pcg = p.pcg(stream, i)
	}
	return rs
}

// newPlan decides the tenants and their row counts and generates the
// timelines of the referenced tables. It touches no database.
func newPlan(opts Options) *plan {
	p := &plan{opts: opts}
	n := opts.Tenants
	r := p.rng(streamPlan, 0)

	ids := make([]string, n)
	width := max(4, len(strconv.Itoa(n)))
	for i := range ids {
		ids[i] = fmt.Sprintf("t%0*d", width, i+1)
	}
	if opts.OddIDs {
		k := min(len(oddTenantIDs), n/2)
		if n == 1 {
			k = 1
		}
		// Odd IDs take the last places, so that t0002 stays next to its
		// case twin T0002 whenever there are enough tenants.
		copy(ids[n-k:], oddTenantIDs[:k])
	}

	// Sizes: a random rank per tenant, so that size is not correlated with
	// the ID, and a Zipf weight per rank. The weights are quantized to
	// integers once, so that everything after is exact integer arithmetic.
	ranks := r.Perm(n)
	p.tenants = make([]tenant, n)
	var sumW uint64
	for i := range p.tenants {
		t := &p.tenants[i]
		rank := ranks[i] + 1
		t.index = i
		t.id = ids[i]
		t.weight = zipfWeight(rank, opts.ZipfS)
		sumW += t.weight
		t.name = companyWords[r.IntN(len(companyWords))] + " " + companyWords[r.IntN(len(companyWords))] + " " +
			companyKinds[r.IntN(len(companyKinds))]
		t.domain = strings.ToLower(strings.ReplaceAll(t.name, " ", "")) + strconv.Itoa(i+1) + ".example"
		// Large customers pay more and have been customers for longer.
		switch q := int64(rank) * 100 / int64(n); {
		case q < 2:
			t.plan = "enterprise"
		case q < 12:
			t.plan = "business"
		case q < 40:
			t.plan = "team"
		case q < 70:
			t.plan = "starter"
		default:
			t.plan = "free"
		}
		age := r.Int64N(spanUS * 8 / 10)
		if rank*10 <= n {
			age = age * 4 / 10
		}
		t.created = epochUS + age
	}

	budget := func(share, perRow int64) int64 {
		return mulDiv(opts.TargetBytes, uint64(share*(1000-derivedPermille)), sumShares*1000) / perRow
	}
	nIssues := budget(shareIssues, bytesPerIssue)
	nComments := budget(shareComments, bytesPerComment)
	nAttach := budget(shareAttachments, bytesPerAttachment)
	nEvents := budget(shareEvents, bytesPerEvent)
	nAudit := budget(shareAudit, bytesPerAudit)
	spread := func(total, minimum int64, t *tenant) int64 {
		extra := total - minimum*int64(n)
		if extra <= 0 {
			return minimum
		}
		return minimum + mulDiv(extra, t.weight, sumW)
	}
	for i := range p.tenants {
		t := &p.tenants[i]
		t.issues = spread(nIssues, minIssues, t)
		t.comments = spread(nComments, minComments, t)
		t.attachments = min(spread(nAttach, 0, t), t.comments)
		t.events = spread(nEvents, minEvents, t)
		t.audit = spread(nAudit, minAudit, t)
		// People, projects and milestones grow with the amount of work.
		t.users = 2 + ceilDiv(t.issues, 20)
		t.projects = 1 + t.issues/250
		t.milestones = t.issues / 40
	}

	// The referenced tables get their IDs and times now, so that every
	// table can then be generated independently of the others, in parallel.
	p.timeline(usersTL, func(t *tenant, id, at int64) { t.userRows = append(t.userRows, entity{id: id, at: at}) })
	p.timeline(projectsTL, func(t *tenant, id, at int64) { t.projectRows = append(t.projectRows, entity{id: id, at: at}) })
	mr := p.rngs(streamMilestoneProjects)
	p.timeline(milestonesTL, func(t *tenant, id, at int64) {
		proj := t.projectRows[mr[t.index].IntN(countBefore(t.projectRows, at))]
		t.milestoneRows = append(t.milestoneRows, entity{id: id, at: at, aux: proj.id})
	})
	p.timeline(issuesTL, func(t *tenant, id, at int64) { t.issueRows = append(t.issueRows, entity{id: id, at: at}) })
	return p
}

// A timelineSpec says when the rows of one table are created: span gives
// each tenant's row count and time range; with first, a tenant's first row
// is at the very start of its range (its first user and first project
// exist when it signs up).
type timelineSpec struct {
	stream int
	span   func(t *tenant) (n, lo, hi int64)
	first  bool
}

var (
	usersTL = timelineSpec{streamUsersTime,
		func(t *tenant) (int64, int64, int64) { return t.users, t.created, endUS }, true}
	projectsTL = timelineSpec{streamProjectsTime,
		func(t *tenant) (int64, int64, int64) { return t.projects, t.created, endUS }, true}
	milestonesTL = timelineSpec{streamMilestonesTime,
		func(t *tenant) (int64, int64, int64) { return t.milestones, t.created + dayUS, endUS }, false}
	issuesTL   = timelineSpec{streamIssuesTime, issueSpan, false}
	commentsTL = timelineSpec{streamCommentsTime, afterFirstIssue(func(t *tenant) int64 { return t.comments }), false}
	eventsTL   = timelineSpec{streamEventsTime, afterFirstIssue(func(t *tenant) int64 { return t.events }), false}
	auditTL    = timelineSpec{streamAuditTime,
		func(t *tenant) (int64, int64, int64) { return t.audit, t.created, endUS }, false}
)

// issueSpan is the time range of a tenant's issues: from an hour after its
// first user and first project.
func issueSpan(t *tenant) (int64, int64, int64) { return t.issues, t.created + hourUS, endUS }

// afterFirstIssue is the time range of the rows that refer to issues: from
// a minute after the tenant's first issue, which is in the first slot of
// issueSpan.
func afterFirstIssue(count func(*tenant) int64) func(t *tenant) (int64, int64, int64) {
	return func(t *tenant) (int64, int64, int64) {
		c, lo, hi := issueSpan(t)
		return count(t), lo + (hi-lo)/c + minuteUS, endUS
	}
}

// timeline generates the creation times of one table's rows: the rows of
// all tenants are merged in time order and numbered from 1 (their IDs),
// and emit receives them.
func (p *plan) timeline(spec timelineSpec, emit func(t *tenant, id, at int64)) {
	m := newMerge(p, spec)
	var id int64
	for {
		ti, at, ok := m.next()
		if !ok {
			return
		}
		id++
		emit(&p.tenants[ti], id, at)
	}
}

// merge yields the rows of one table of all tenants in time order. Each
// tenant's n rows are spread over its range [lo, hi) one per equal slot,
// at a random point of the slot; a heap merges the tenants. Only integer
// arithmetic is involved, so the order is the same on every platform.
type merge struct {
	cur  []cursor
	heap []int32
}

type cursor struct {
	i, n, lo, hi, at int64
	jit              rand.PCG
}

func newMerge(p *plan, spec timelineSpec) *merge {
	m := &merge{cur: make([]cursor, len(p.tenants))}
	for i := range p.tenants {
		n, lo, hi := spec.span(&p.tenants[i])
		c := &m.cur[i]
		c.n, c.lo, c.hi = n, lo, max(hi, lo+1)
		c.jit = p.pcg(spec.stream, i)
		if n > 0 {
			c.at = c.slot()
			if spec.first {
				c.at = lo
			}
			m.heap = append(m.heap, int32(i))
		}
	}
	for i := len(m.heap)/2 - 1; i >= 0; i-- {
		m.down(i)
	}
	return m
}

// slot returns a random time in slot c.i.
func (c *cursor) slot() int64 {
	a := c.lo + mulDiv(c.hi-c.lo, uint64(c.i), uint64(c.n))
	b := c.lo + mulDiv(c.hi-c.lo, uint64(c.i+1), uint64(c.n))
	if b <= a {
		return a
	}
	return a + int64(c.jit.Uint64()%uint64(b-a))
}

func (m *merge) less(a, b int32) bool {
	ca, cb := &m.cur[a], &m.cur[b]
	if ca.at != cb.at {
		return ca.at < cb.at
	}
	return a < b
}

func (m *merge) down(i int) {
	h := m.heap
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		j := l
		if r := l + 1; r < len(h) && m.less(h[r], h[l]) {
			j = r
		}
		if !m.less(h[j], h[i]) {
			return
		}
		h[i], h[j] = h[j], h[i]
		i = j
	}
}

// next returns the tenant and time of the next row.
func (m *merge) next() (tenant int, at int64, ok bool) {
	if len(m.heap) == 0 {
		return 0, 0, false
	}
	ti := m.heap[0]
	c := &m.cur[ti]
	at = c.at
	c.i++
	if c.i < c.n {
		c.at = c.slot()
	} else {
		last := len(m.heap) - 1
		m.heap[0] = m.heap[last]
		m.heap = m.heap[:last]
	}
	if len(m.heap) > 0 {
		m.down(0)
	}
	return int(ti), at, true
}

// zipfWeight returns rank^-s scaled to 2^40, at least 1. It computes the
// power with +, -, * and / only, each rounded on its own (the float64
// conversions forbid fused multiply-adds), because math.Pow goes through
// math.Exp, whose assembly on amd64 uses FMA instructions when the
// processor has them: its last bit, and so a tenant's row counts, could
// differ from machine to machine.
func zipfWeight(rank int, s float64) uint64 {
	// ln(rank) = e*ln(2) + ln(m), m in [0.5, 1), by the series of atanh.
	m, e := math.Frexp(float64(rank))
	z := float64((m - 1) / (m + 1))
	z2 := float64(z * z)
	var lnM float64
	term := z
	for i := 1; i < 60; i += 2 {
		lnM = float64(lnM + float64(term/float64(i)))
		term = float64(term * z2)
	}
	x := float64(-s * float64(float64(float64(e)*math.Ln2)+float64(2*lnM))) // ln(rank^-s) <= 0
	// exp(x) = 2^n * exp(r), r in [0, ln 2), by Taylor's series.
	n := math.Floor(x / math.Ln2)
	r := float64(x - float64(n*math.Ln2))
	sum, t := 1.0, 1.0
	for i := 1; i < 30; i++ {
		t = float64(float64(t*r) / float64(i))
		sum = float64(sum + t)
	}
	return uint64(math.Ldexp(sum, int(n)+40)) + 1
}

// mulDiv returns a*b/c without overflow, for a, c > 0 and a*b/c < 2^63.
func mulDiv(a int64, b, c uint64) int64 {
	hi, lo := bits.Mul64(uint64(a), b)
	q, _ := bits.Div64(hi, lo, c)
	return int64(q)
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// countBefore returns how many rows of es (in time order) exist at time at,
// at least 1: the first row of every referenced table is created before
// the rows that refer to it.
func countBefore(es []entity, at int64) int {
	n := sort.Search(len(es), func(i int) bool { return es[i].at > at })
	return max(n, 1)
}

// minimumBytes estimates the size of the minimum rows of all tenants.
func (p *plan) minimumBytes() int64 {
	per := int64(minIssues)*bytesPerIssue + minComments*bytesPerComment + minEvents*bytesPerEvent + minAudit*bytesPerAudit
	return int64(len(p.tenants)) * per
}

func (p *plan) summary() string {
	var s tenant
	for i := range p.tenants {
		t := &p.tenants[i]
		s.users += t.users
		s.projects += t.projects
		s.milestones += t.milestones
		s.issues += t.issues
		s.comments += t.comments
		s.attachments += t.attachments
		s.events += t.events
		s.audit += t.audit
	}
	return fmt.Sprintf("%d users, %d projects, %d milestones, %d issues, %d comments, %d attachments, %d events, %d audit rows",
		s.users, s.projects, s.milestones, s.issues, s.comments, s.attachments, s.events, s.audit)
}

// partitionDDL creates one partition of events per month of the generated
// history. Older rows (legacy imports, see eventsSource) land in the
// default partition.
func (p *plan) partitionDDL() string {
	var b strings.Builder
	for m := epoch; m.UnixMicro() < endUS; m = m.AddDate(0, 1, 0) {
		next := m.AddDate(0, 1, 0)
		fmt.Fprintf(&b, "CREATE TABLE public.events_%s PARTITION OF public.events FOR VALUES FROM ('%s') TO ('%s');\n",
			m.Format("2006_01"), m.Format(time.RFC3339), next.Format(time.RFC3339))
	}
	return b.String()
}

// loadReference fills the reference tables and tenants.
func (p *plan) loadReference(ctx context.Context, conn *pgx.Conn) error {
	b := &pgx.Batch{}
	for _, pl := range plans {
		b.Queue(`INSERT INTO public.plans (code, name, monthly_price) VALUES ($1, $2, $3::numeric / 100)`, pl.code, pl.name, pl.cents)
	}
	for _, c := range countries {
		b.Queue(`INSERT INTO public.countries (code, name) VALUES ($1, $2)`, c[0], c[1])
	}
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("datagen: load reference tables: %w", err)
	}
	i := -1
	_, err := conn.CopyFrom(ctx, pgx.Identifier{"public", "tenants"}, []string{"id", "name", "plan", "created_at"},
		pgx.CopyFromFunc(func() ([]any, error) {
			i++
			if i == len(p.tenants) {
				return nil, nil
			}
			t := &p.tenants[i]
			return []any{t.id, t.name, t.plan, time.UnixMicro(t.created)}, nil
		}))
	if err != nil {
		return fmt.Errorf("datagen: load tenants: %w", err)
	}
	return nil
}

// tenantRows adds up the rows each source generated per tenant.
func (p *plan) tenantRows(sources []source) map[string]int64 {
	m := make(map[string]int64, len(p.tenants))
	for i := range p.tenants {
		var n int64 = 1 // the tenant's own row
		for _, s := range sources {
			n += s.counts()[i]
		}
		m[p.tenants[i].id] = n
	}
	return m
}
