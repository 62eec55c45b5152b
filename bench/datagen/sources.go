package datagen

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"slices"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// A source generates the rows of one table for pgx's CopyFrom, one at a
// time, in ID order (which is time order: rows of all tenants interleave as
// in a real database, so one tenant's rows are spread over the whole table
// and not stored together). Its columns are reused from row to row, so a
// source allocates almost nothing per row.
type source interface {
	pgx.CopyFromSource
	table() string
	columns() []string
	// counts returns the rows generated so far per tenant index.
	counts() []int64
}

// base holds what every source has.
type base struct {
	p    *plan
	name string
	cols []string
	vals []any
	n    []int64 // rows per tenant so far
	rngs []rng   // content generator per tenant
	m    *merge
	tg   textGen
}

func (b *base) init(p *plan, name string, stream int, tl timelineSpec) {
	b.p, b.name = p, name
	b.n = make([]int64, len(p.tenants))
	b.rngs = p.rngs(stream)
	b.m = newMerge(p, tl)
}

func (b *base) table() string          { return b.name }
func (b *base) columns() []string      { return b.cols }
func (b *base) counts() []int64        { return b.n }
func (b *base) Values() ([]any, error) { return b.vals, nil }
func (b *base) Err() error             { return nil }

// text returns the text generator drawing from r.
func (b *base) text(r *rng) *textGen {
	b.tg.r, b.tg.nb = r, 0
	return &b.tg
}

// recent picks one of the first n rows of es, favouring the most recent:
// people comment on and change the issues they just opened.
func recent(r *rng, es []entity, n int) entity {
	if r.Percent() < 65 {
		return es[n-1-r.IntN(min(n, 25))]
	}
	return es[r.IntN(n)]
}

// --- users -----------------------------------------------------------------

type usersSource struct {
	base
	id              int8Col
	tenant, country strCol
	email, name     textCol
	active          boolCol
	created         tsCol
}

func (p *plan) usersSource() source {
	s := &usersSource{}
	s.init(p, "users", streamUsers, usersTL)
	s.cols = []string{"id", "tenant_id", "email", "name", "country", "active", "created_at"}
	s.vals = []any{&s.id, &s.tenant, &s.email, &s.name, &s.country, &s.active, &s.created}
	return s
}

func (s *usersSource) Next() bool {
	ti, _, ok := s.m.next()
	if !ok {
		return false
	}
	t := &s.p.tenants[ti]
	k := s.n[ti]
	s.n[ti]++
	e := t.userRows[k]
	r := &s.rngs[ti]
	s.id.v, s.created.us = e.id, e.at
	s.tenant.set(t.id)
	first, last := userName(s.p, t, k)
	s.name.b = append(append(append(s.name.b[:0], first...), ' '), last...)
	s.email.b = appendEmail(s.email.b[:0], s.p, t, k)
	switch x := r.Percent(); {
	case x < 8:
		s.country.null = true
	case x < 38:
		s.country.set("US")
	default:
		s.country.set(countries[r.IntN(len(countries))][0])
	}
	s.active.v = r.Percent() < 92
	return true
}

// userName returns the name of tenant t's k-th user. The (first, last)
// pairs of a tenant follow a permutation of all pairs, so that they are
// unique as long as there are enough pairs, and a suffix in appendEmail
// keeps e-mail addresses unique beyond.
func userName(p *plan, t *tenant, k int64) (first, last string) {
	const pairs = int64(len(firstNames) * len(lastNames))
	off := int64(splitmix64(uint64(p.opts.Seed)^uint64(t.index)) % uint64(pairs))
	c := (k*1201 + off) % pairs // 1201 is prime, so k -> c is one-to-one
	return firstNames[c%int64(len(firstNames))], lastNames[c/int64(len(firstNames))]
}

// appendEmail appends the e-mail address of tenant t's k-th user, unique
// within the tenant.
func appendEmail(b []byte, p *plan, t *tenant, k int64) []byte {
	const pairs = int64(len(firstNames) * len(lastNames))
	first, last := userName(p, t, k)
	b = appendLower(b, first)
	b = append(b, '.')
	b = appendLower(b, last)
	if k >= pairs {
		b = strconv.AppendInt(b, k/pairs+1, 10)
	}
	b = append(b, '@')
	return append(b, t.domain...)
}

// --- projects --------------------------------------------------------------

var projectKeys = [...]string{"CORE", "WEB", "API", "MOB", "OPS", "DATA", "INFRA", "SEC", "DOCS", "QA", "BILL", "GROW"}

var projectNames = [...]string{"Core Platform", "Web App", "Public API", "Mobile", "Operations", "Data Pipeline",
	"Infrastructure", "Security", "Documentation", "Quality", "Billing", "Growth"}

type projectsSource struct {
	base
	id, lead          int8Col
	tenant, key       strCol
	name, description textCol
	archived          boolCol
	created           tsCol
}

func (p *plan) projectsSource() source {
	s := &projectsSource{}
	s.init(p, "projects", streamProjects, projectsTL)
	s.cols = []string{"id", "tenant_id", "key", "name", "description", "lead_id", "archived", "created_at"}
	s.vals = []any{&s.id, &s.tenant, &s.key, &s.name, &s.description, &s.lead, &s.archived, &s.created}
	return s
}

func (s *projectsSource) Next() bool {
	ti, _, ok := s.m.next()
	if !ok {
		return false
	}
	t := &s.p.tenants[ti]
	k := s.n[ti]
	s.n[ti]++
	e := t.projectRows[k]
	r := &s.rngs[ti]
	s.id.v, s.created.us = e.id, e.at
	s.tenant.set(t.id)
	if k < int64(len(projectKeys)) {
		s.key.set(projectKeys[k])
		s.name.b = append(s.name.b[:0], projectNames[k]...)
	} else {
		s.key.set("P" + strconv.FormatInt(k+1, 10))
		s.name.b = append(append(s.name.b[:0], "Project "...), s.key.s...)
	}
	g := s.text(r)
	s.description.b = g.prose(s.description.b[:0], 80+r.IntN(500))
	s.lead.null = r.Percent() < 15
	s.lead.v = t.userRows[r.IntN(countBefore(t.userRows, e.at))].id
	s.archived.v = r.Percent() < 8
	return true
}

// --- milestones ------------------------------------------------------------

type milestonesSource struct {
	base
	id, project int8Col
	tenant      strCol
	name        textCol
	due         dateCol
	closed      boolCol
	created     tsCol
}

func (p *plan) milestonesSource() source {
	s := &milestonesSource{}
	s.init(p, "milestones", streamMilestones, milestonesTL)
	s.cols = []string{"id", "tenant_id", "project_id", "name", "due_on", "closed", "created_at"}
	s.vals = []any{&s.id, &s.tenant, &s.project, &s.name, &s.due, &s.closed, &s.created}
	return s
}

func (s *milestonesSource) Next() bool {
	ti, _, ok := s.m.next()
	if !ok {
		return false
	}
	t := &s.p.tenants[ti]
	k := s.n[ti]
	s.n[ti]++
	e := t.milestoneRows[k]
	r := &s.rngs[ti]
	s.id.v, s.project.v, s.created.us = e.id, e.aux, e.at
	s.tenant.set(t.id)
	b := s.name.b[:0]
	switch r.IntN(3) {
	case 0:
		b = append(b, 'v')
		b = strconv.AppendInt(b, 1+k/10, 10)
		b = append(b, '.')
		b = strconv.AppendInt(b, k%10, 10)
	case 1:
		b = append(b, "Sprint "...)
		b = strconv.AppendInt(b, k+1, 10)
	default:
		b = append(b, 'Q')
		b = strconv.AppendInt(b, 1+k%4, 10)
		b = append(b, ' ')
		b = strconv.AppendInt(b, 2021+k/4%4, 10)
		b = append(b, " release"...)
	}
	s.name.b = b
	s.due.us = e.at + (14+r.Int64N(107))*dayUS
	s.due.null = r.Percent() < 15
	s.closed.v = s.due.us < endUS-30*dayUS && r.Percent() < 85
	return true
}

// --- issues ----------------------------------------------------------------

var statuses = [...]string{"backlog", "todo", "in_progress", "in_review", "blocked", "done", "cancelled"}

type issuesSource struct {
	base
	id, project, milestone, number, priority int8Col
	reporter, assignee, parent               int8Col
	tenant, status                           strCol
	title, body                              textCol
	labels                                   []string
	custom                                   []byte
	estimate                                 decimalCol
	due                                      dateCol
	created, updated                         tsCol
	scratch                                  []byte
}

func (p *plan) issuesSource() source {
	s := &issuesSource{}
	s.init(p, "issues", streamIssues, issuesTL)
	s.labels = make([]string, 0, 8) // never nil: pgx sends a nil slice as NULL, not as {}
	s.cols = []string{"id", "tenant_id", "project_id", "milestone_id", "number", "title", "body", "status", "priority",
		"labels", "custom", "estimate", "due_on", "reporter_id", "assignee_id", "parent_id", "created_at", "updated_at"}
	s.vals = []any{&s.id, &s.tenant, &s.project, &s.milestone, &s.number, &s.title, &s.body, &s.status, &s.priority,
		nil, nil, &s.estimate, &s.due, &s.reporter, &s.assignee, &s.parent, &s.created, &s.updated}
	return s
}

func (s *issuesSource) Next() bool {
	ti, _, ok := s.m.next()
	if !ok {
		return false
	}
	t := &s.p.tenants[ti]
	k := s.n[ti]
	s.n[ti]++
	e := t.issueRows[k]
	r := &s.rngs[ti]
	g := s.text(r)
	s.id.v, s.number.v, s.created.us = e.id, k+1, e.at
	s.tenant.set(t.id)

	s.project.v = t.projectRows[r.Skewed(countBefore(t.projectRows, e.at))].id
	s.milestone.null = true
	if nm := sort.Search(len(t.milestoneRows), func(i int) bool { return t.milestoneRows[i].at > e.at }); nm > 0 && r.Percent() < 55 {
		// Recent milestones, and the issue in the milestone's project.
		m := t.milestoneRows[nm-1-r.IntN(min(nm, 4))]
		s.milestone.v, s.milestone.null, s.project.v = m.id, false, m.aux
	}

	s.title.b = g.title(s.title.b[:0])
	b := s.body.b[:0]
	if r.Percent() < 30 {
		b = append(b, "Steps to reproduce:\n"...)
		for i := range 2 + r.IntN(4) {
			b = strconv.AppendInt(b, int64(i+1), 10)
			b = append(b, ". "...)
			b = g.sentence(b)
			b = append(b, '\n')
		}
		b = append(b, "\nExpected: "...)
		b = g.sentence(b)
		b = append(b, "\nActual: "...)
		b = g.sentence(b)
		if r.Percent() < 40 {
			b = append(b, "\n\n"...)
			b = g.logExcerpt(b)
		}
	} else {
		var n int
		switch x := r.Percent(); {
		case x < 50:
			n = 150 + r.IntN(600)
		case x < 85:
			n = 600 + r.IntN(1500)
		default:
			n = 2000 + r.IntN(4000)
		}
		b = g.prose(b, n)
	}
	s.body.b = b

	// Old issues are mostly closed, new ones mostly open.
	age := (endUS - e.at) / dayUS
	x := r.Percent()
	var st int
	switch {
	case age > 90:
		st = pickBucket(x, 5, 5, 3, 3, 2, 72) // backlog todo in_progress in_review blocked done, else cancelled
	case age > 14:
		st = pickBucket(x, 10, 15, 20, 10, 5, 35)
	default:
		st = pickBucket(x, 30, 30, 25, 10, 5, 0)
	}
	s.status.set(statuses[st])
	s.priority.v = int64([...]int{0, 1, 1, 2, 2, 2, 2, 3, 3, 4}[r.IntN(10)])

	s.labels = s.labels[:0]
	for range [...]int{0, 0, 0, 1, 1, 1, 2, 2, 3, 4}[r.IntN(10)] {
		l := labelNames[r.Skewed(len(labelNames))]
		if !slices.Contains(s.labels, l) {
			s.labels = append(s.labels, l)
		}
	}
	s.vals[9] = s.labels
	s.custom = s.appendCustom(s.custom[:0], r, g, t, e)
	s.vals[10] = s.custom

	s.estimate.null = r.Percent() < 40
	s.estimate.tenths = int64(5 * (1 + r.IntN(80)))
	s.due.null = r.Percent() < 70
	s.due.us = e.at + (3+r.Int64N(58))*dayUS
	nu := countBefore(t.userRows, e.at)
	s.reporter.v = t.userRows[r.Skewed(nu)].id
	s.assignee.null = r.Percent() < 25
	s.assignee.v = t.userRows[r.IntN(nu)].id
	s.parent.null = true
	if k > 0 && r.Percent() < 12 {
		s.parent.v, s.parent.null = t.issueRows[r.Int64N(k)].id, false
	}
	s.updated.us = e.at + r.Int64N(max(1, min(60*dayUS, endUS-e.at)))
	return true
}

// pickBucket returns the index of the bucket x (in [0, 100)) falls in, for
// buckets of the given percentages; the last bucket takes the rest.
func pickBucket(x int, pct ...int) int {
	for i, p := range pct {
		if x < p {
			return i
		}
		x -= p
	}
	return len(pct)
}

var (
	severities  = [...]string{"trivial", "minor", "major", "critical", "blocker"}
	components  = [...]string{"api", "web", "mobile", "billing", "auth", "search", "notifications", "reports", "import", "integrations"}
	browsers    = [...]string{"Chrome", "Firefox", "Safari", "Edge"}
	tiers       = [...]string{"bronze", "silver", "gold", "platinum"}
	environment = [...]string{"production", "staging", "development"}
)

// appendCustom appends the custom fields of an issue: JSON whose keys vary
// from issue to issue, nested objects and arrays, numbers, booleans and
// nulls, as custom fields in real trackers.
func (s *issuesSource) appendCustom(b []byte, r *rng, g *textGen, t *tenant, e entity) []byte {
	b = append(b, `{"severity": `...)
	b = appendJSONString(b, severities[r.Skewed(len(severities))])
	b = append(b, `, "component": `...)
	b = appendJSONString(b, components[r.IntN(len(components))])
	if r.Percent() < 60 {
		b = append(b, `, "environment": `...)
		b = appendJSONString(b, environment[r.Skewed(len(environment))])
		b = append(b, `, "browser": {"name": `...)
		b = appendJSONString(b, browsers[r.IntN(len(browsers))])
		b = append(b, `, "version": "`...)
		b = strconv.AppendInt(b, int64(90+r.IntN(40)), 10)
		b = append(b, `.0", "mobile": `...)
		b = strconv.AppendBool(b, r.Percent() < 20)
		b = append(b, '}')
	}
	if r.Percent() < 40 {
		b = append(b, `, "customer": {"account_id": `...)
		b = strconv.AppendInt(b, int64(10000+r.IntN(90000)), 10)
		b = append(b, `, "tier": `...)
		b = appendJSONString(b, tiers[r.IntN(len(tiers))])
		b = append(b, `, "tickets": [`...)
		for i := range 1 + r.IntN(4) {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = strconv.AppendInt(b, int64(100000+r.IntN(900000)), 10)
		}
		b = append(b, `], "tenant": `...)
		b = appendJSONString(b, t.id)
		b = append(b, '}')
	}
	b = append(b, `, "story_points": `...)
	if r.Percent() < 30 {
		b = append(b, "null"...)
	} else {
		b = strconv.AppendInt(b, int64([...]int{1, 2, 3, 5, 8, 13}[r.IntN(6)]), 10)
	}
	b = append(b, `, "flags": {"regression": `...)
	b = strconv.AppendBool(b, r.Percent() < 10)
	b = append(b, `, "security": `...)
	b = strconv.AppendBool(b, r.Percent() < 3)
	b = append(b, `, "needs_docs": `...)
	b = strconv.AppendBool(b, r.Percent() < 15)
	b = append(b, '}')
	if r.Percent() < 25 && len(t.issueRows) > 1 {
		b = append(b, `, "links": [`...)
		for i := range 1 + r.IntN(3) {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = append(b, `{"type": `...)
			b = appendJSONString(b, [...]string{"blocks", "relates_to", "duplicates", "caused_by"}[r.IntN(4)])
			b = append(b, `, "issue": `...)
			b = strconv.AppendInt(b, t.issueRows[r.IntN(len(t.issueRows))].id, 10)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if r.Percent() < 15 {
		s.scratch = g.sentence(s.scratch[:0])
		b = append(b, `, "notes": `...)
		b = appendJSONText(b, s.scratch)
	}
	return append(b, '}')
}

// --- issue_watchers --------------------------------------------------------

type watchersSource struct {
	base
	issue, user int8Col
	created     tsCol
	pending     []entity // watchers of the current issue still to emit: user ID, time, tenant index
	seen        []int64  // issues seen per tenant
}

func (p *plan) watchersSource() source {
	s := &watchersSource{}
	s.init(p, "issue_watchers", streamWatchers, issuesTL)
	s.seen = make([]int64, len(p.tenants))
	s.cols = []string{"issue_id", "user_id", "created_at"}
	s.vals = []any{&s.issue, &s.user, &s.created}
	return s
}

func (s *watchersSource) Next() bool {
	for len(s.pending) == 0 {
		ti, _, ok := s.m.next()
		if !ok {
			return false
		}
		t := &s.p.tenants[ti]
		r := &s.rngs[ti]
		e := t.issueRows[s.seen[ti]]
		s.seen[ti]++
		n := [...]int{0, 1, 1, 1, 2, 2, 2, 3, 3, 0}[r.IntN(10)]
		if r.Percent() < 5 {
			n = 4 + r.IntN(5)
		}
		n = min(n, len(t.userRows))
		s.issue.v = e.id
		for range n {
			for range 20 {
				u := t.userRows[r.IntN(len(t.userRows))]
				if !slices.ContainsFunc(s.pending, func(p entity) bool { return p.id == u.id }) {
					at := min(max(e.at, u.at)+r.Int64N(7*dayUS), endUS-1)
					s.pending = append(s.pending, entity{id: u.id, at: at, aux: int64(ti)})
					break
				}
			}
		}
		slices.SortFunc(s.pending, func(a, b entity) int { return cmp.Compare(b.id, a.id) }) // popped from the end
	}
	w := s.pending[len(s.pending)-1]
	s.pending = s.pending[:len(s.pending)-1]
	s.user.v, s.created.us = w.id, w.at
	s.n[w.aux]++
	return true
}

// --- comments --------------------------------------------------------------

type commentsSource struct {
	base
	id, issue, author int8Col
	body              textCol
	created, edited   tsCol
	nextID            int64
}

func (p *plan) commentsSource() source {
	s := &commentsSource{}
	s.init(p, "comments", streamComments, commentsTL)
	s.cols = []string{"id", "issue_id", "author_id", "body", "created_at", "edited_at"}
	s.vals = []any{&s.id, &s.issue, &s.author, &s.body, &s.created, &s.edited}
	return s
}

var botComments = [...]string{
	"Deployed to staging in build #",
	"Linked pull request #",
	"This issue was automatically marked as stale because it has had no recent activity. It will be closed in 7 days unless there is new activity. Reference: #",
	"SLA warning: the first response to this ticket is due soon. Escalation policy #",
	"Synced from the customer support inbox, conversation #",
}

func (s *commentsSource) Next() bool {
	ti, at, ok := s.m.next()
	if !ok {
		return false
	}
	t := &s.p.tenants[ti]
	s.n[ti]++
	s.nextID++
	r := &s.rngs[ti]
	g := s.text(r)
	s.id.v, s.created.us = s.nextID, at
	s.issue.v = recent(r, t.issueRows, countBefore(t.issueRows, at)).id
	nu := countBefore(t.userRows, at)
	if r.Percent() < 50 {
		s.author.v = t.userRows[r.Skewed(nu)].id
	} else {
		s.author.v = t.userRows[r.IntN(nu)].id
	}
	b := s.body.b[:0]
	switch x := r.Percent(); {
	case x < 10:
		b = append(b, botComments[r.IntN(len(botComments))]...)
		b = strconv.AppendInt(b, int64(1000+r.IntN(9000)), 10)
		b = append(b, '.')
	case x < 58:
		b = g.sentence(b)
		for len(b) < 20+r.IntN(180) {
			b = append(b, ' ')
			b = g.sentence(b)
		}
	case x < 93:
		b = g.prose(b, 200+r.IntN(1000))
	default:
		b = g.prose(b, 1200+r.IntN(4800))
	}
	s.body.b = b
	s.edited.null = r.Percent() >= 7
	s.edited.us = at + 1 + r.Int64N(2*dayUS)
	return true
}

// --- attachments -----------------------------------------------------------

type attachmentsSource struct {
	base
	id, comment, size    int8Col
	filename             textCol
	contentType          strCol
	content, sum         byteaCol
	created              tsCol
	seen                 []int64 // comments seen per tenant
	commentID, nextID    int64
	digest               [sha256.Size]byte
	filenameScratch, tmp []byte
}

func (p *plan) attachmentsSource() source {
	s := &attachmentsSource{}
	// It walks the comments' timeline again, to attach files to comments
	// by their IDs without storing them.
	s.init(p, "attachments", streamAttachments, commentsTL)
	s.seen = make([]int64, len(p.tenants))
	s.cols = []string{"id", "comment_id", "filename", "content_type", "size", "content", "sha256", "created_at"}
	s.vals = []any{&s.id, &s.comment, &s.filename, &s.contentType, &s.size, &s.content, &s.sum, &s.created}
	return s
}

var attachmentKinds = [...]struct{ ext, contentType, magic string }{
	{"png", "image/png", "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"},
	{"jpg", "image/jpeg", "\xff\xd8\xff\xe0\x00\x10JFIF\x00"},
	{"pdf", "application/pdf", "%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"},
	{"zip", "application/zip", "PK\x03\x04\x14\x00\x00\x00\x08\x00"},
	{"log", "text/plain", ""},
	{"csv", "text/csv", ""},
	{"txt", "text/plain", ""},
	{"json", "application/json", ""},
}

var attachmentNames = [...]string{"screenshot", "export", "server", "invoice", "report", "trace", "error", "scan", "data", "notes"}

func (s *attachmentsSource) Next() bool {
	for {
		ti, at, ok := s.m.next()
		if !ok {
			return false
		}
		s.commentID++
		t := &s.p.tenants[ti]
		r := &s.rngs[ti]
		// Selection sampling (Knuth's algorithm S): exactly t.attachments
		// of the tenant's comments get a file, each equally likely.
		left := t.comments - s.seen[ti]
		s.seen[ti]++
		if need := t.attachments - s.n[ti]; need <= 0 || r.Int64N(left) >= need {
			continue
		}
		s.n[ti]++
		s.nextID++
		s.id.v, s.comment.v, s.created.us = s.nextID, s.commentID, at
		s.generate(r)
		return true
	}
}

// generate makes the file: a few hundred bytes to 64 KiB, log-uniformly;
// images and archives are random bytes (already compressed data does not
// compress), text files are generated text.
func (s *attachmentsSource) generate(r *rng) {
	ki := pickBucket(r.Percent(), 25, 10, 10, 10, 15, 15, 10) // else json
	k := attachmentKinds[ki]
	e := r.IntN(8)
	size := 256<<e + r.IntN(256<<e)
	b := append(s.content.b[:0], k.magic...)
	g := s.text(r)
	switch k.ext {
	case "png", "jpg", "zip":
		b = appendRandom(b, r, size)
	case "pdf":
		// Text streams and compressed images, half and half.
		for len(b) < size {
			b = append(b, "BT /F1 11 Tf ("...)
			b = g.sentence(b)
			b = append(b, ") Tj ET\n"...)
			b = appendRandom(b, r, 200+r.IntN(400))
		}
	case "log":
		for len(b) < size {
			b = g.logExcerpt(b)
			b = append(b, '\n')
		}
	case "csv":
		b = append(b, "date,account,amount,currency,status,description\n"...)
		for len(b) < size {
			b = append(b, "2024-"...)
			b = appendTwo(b, 1+r.IntN(12))
			b = append(b, '-')
			b = appendTwo(b, 1+r.IntN(28))
			b = append(b, ",ACC-"...)
			b = strconv.AppendInt(b, int64(1000+r.IntN(9000)), 10)
			b = append(b, ',')
			b = strconv.AppendInt(b, int64(r.IntN(100000)), 10)
			b = append(b, '.')
			b = appendTwo(b, r.IntN(100))
			b = append(b, [...]string{",EUR,", ",USD,", ",GBP,"}[r.IntN(3)]...)
			b = append(b, [...]string{"paid,", "pending,", "refunded,", "failed,"}[r.Skewed(4)]...)
			b = append(b, g.word()...)
			b = append(b, ' ')
			b = append(b, g.word()...)
			b = append(b, '\n')
		}
	case "txt":
		b = g.prose(b, size)
	default:
		b = append(b, '[')
		for i := 0; len(b) < size; i++ {
			if i > 0 {
				b = append(b, ",\n"...)
			}
			b = append(b, `{"id": `...)
			b = strconv.AppendInt(b, int64(i+1), 10)
			b = append(b, `, "event": `...)
			b = appendJSONString(b, g.word())
			b = append(b, `, "ok": `...)
			b = strconv.AppendBool(b, r.Percent() < 90)
			b = append(b, `, "latency_ms": `...)
			b = strconv.AppendInt(b, int64(r.IntN(3000)), 10)
			b = append(b, `, "message": `...)
			s.tmp = g.sentence(s.tmp[:0])
			b = appendJSONText(b, s.tmp)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	s.content.b = b
	s.size.v = int64(len(b))
	s.digest = sha256.Sum256(b)
	s.sum.b = s.digest[:]
	s.contentType.set(k.contentType)
	f := append(s.filename.b[:0], attachmentNames[r.IntN(len(attachmentNames))]...)
	f = append(f, '-')
	f = strconv.AppendInt(f, int64(1+r.IntN(9999)), 10)
	f = append(f, '.')
	s.filename.b = append(f, k.ext...)
}

// appendRandom appends n random bytes.
func appendRandom(b []byte, r *rng, n int) []byte {
	b = slices.Grow(b, n+8)
	for n > 0 {
		b = binary.LittleEndian.AppendUint64(b, r.Uint64())
		n -= 8
	}
	return b[:len(b)+n] // n <= 0 drops the extra bytes of the last word
}

// --- events ----------------------------------------------------------------

var eventKinds = [...]string{"status_changed", "assigned", "commented", "labeled", "priority_changed", "viewed", "field_updated"}

type eventsSource struct {
	base
	id, issue    int8Col
	tenant, kind strCol
	payload      []byte
	created      tsCol
	nextID       int64
}

func (p *plan) eventsSource() source {
	s := &eventsSource{}
	s.init(p, "events", streamEvents, eventsTL)
	s.cols = []string{"id", "tenant_id", "issue_id", "kind", "payload", "created_at"}
	s.vals = []any{&s.id, &s.tenant, &s.issue, &s.kind, nil, &s.created}
	return s
}

func (s *eventsSource) Next() bool {
	ti, at, ok := s.m.next()
	if !ok {
		return false
	}
	t := &s.p.tenants[ti]
	s.n[ti]++
	s.nextID++
	r := &s.rngs[ti]
	s.id.v, s.created.us = s.nextID, at
	s.tenant.set(t.id)
	s.issue.v = recent(r, t.issueRows, countBefore(t.issueRows, at)).id
	actor := t.userRows[r.IntN(countBefore(t.userRows, at))].id
	b := append(s.payload[:0], `{"actor_id": `...)
	b = strconv.AppendInt(b, actor, 10)
	if r.Percent() < 1 {
		// Events imported from a previous tool, dated before the history
		// starts: they land in the default partition.
		s.kind.set("legacy_import")
		s.created.us = epochUS - 1 - r.Int64N(400*dayUS)
		b = append(b, `, "source": "jira", "original_id": "`...)
		b = append(b, projectKeys[r.IntN(len(projectKeys))]...)
		b = append(b, '-')
		b = strconv.AppendInt(b, int64(1+r.IntN(20000)), 10)
		b = append(b, `"}`...)
		s.payload = b
		s.vals[4] = b
		return true
	}
	kind := eventKinds[pickBucket(r.Percent(), 30, 15, 20, 10, 7, 13)]
	s.kind.set(kind)
	switch kind {
	case "status_changed":
		b = append(b, `, "from": `...)
		b = appendJSONString(b, statuses[r.IntN(len(statuses))])
		b = append(b, `, "to": `...)
		b = appendJSONString(b, statuses[r.IntN(len(statuses))])
	case "assigned":
		b = append(b, `, "assignee_id": `...)
		b = strconv.AppendInt(b, t.userRows[r.IntN(countBefore(t.userRows, at))].id, 10)
		b = append(b, `, "previous_assignee_id": null`...)
	case "commented":
		b = append(b, `, "length": `...)
		b = strconv.AppendInt(b, int64(20+r.IntN(2000)), 10)
		b = append(b, `, "mentions": [`...)
		for i := range r.IntN(3) {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = strconv.AppendInt(b, t.userRows[r.IntN(len(t.userRows))].id, 10)
		}
		b = append(b, ']')
	case "labeled":
		b = append(b, `, "added": [`...)
		b = appendJSONString(b, labelNames[r.Skewed(len(labelNames))])
		b = append(b, `], "removed": []`...)
	case "priority_changed":
		b = append(b, `, "from": `...)
		b = strconv.AppendInt(b, int64(r.IntN(5)), 10)
		b = append(b, `, "to": `...)
		b = strconv.AppendInt(b, int64(r.IntN(5)), 10)
	case "viewed":
		b = append(b, `, "client": `...)
		b = appendJSONString(b, [...]string{"web", "ios", "android", "api"}[r.Skewed(4)])
		b = append(b, `, "duration_ms": `...)
		b = strconv.AppendInt(b, int64(r.IntN(120000)), 10)
	default:
		b = append(b, `, "field": `...)
		b = appendJSONString(b, [...]string{"due_on", "estimate", "title", "milestone_id"}[r.IntN(4)])
		b = append(b, `, "old": null, "new": `...)
		b = strconv.AppendInt(b, int64(r.IntN(1000)), 10)
	}
	if r.Percent() < 30 {
		b = append(b, `, "request": {"ip": "203.0.113.`...)
		b = strconv.AppendInt(b, int64(1+r.IntN(254)), 10)
		b = append(b, `", "user_agent": `...)
		b = appendJSONString(b, userAgents[r.Skewed(len(userAgents))])
		b = append(b, '}')
	}
	b = append(b, '}')
	s.payload = b
	s.vals[4] = b
	return true
}

var userAgents = [...]string{
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
	"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
	"Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
	"tracker-cli/2.4.1 (linux; amd64)",
	"python-requests/2.31.0",
}

// --- audit_log -------------------------------------------------------------

var auditActions = [...]string{
	"user.login", "user.login", "user.login", "user.logout", "issue.update", "issue.update", "issue.create",
	"issue.delete", "project.update", "settings.change", "export.download", "api_key.rotate", "member.invite",
	"permission.grant", "sso.configure", "webhook.update",
}

type auditSource struct {
	base
	id         int8Col
	tenant     strCol
	at         tsCol
	actor      textCol
	action     strCol
	ip         inetCol
	requestID  uuidCol
	detail     []byte
	nextID     int64
	last       int  // tenant index of the current row
	duplicates bool // the next row repeats this one
}

func (p *plan) auditSource() source {
	s := &auditSource{}
	s.init(p, "audit_log", streamAudit, auditTL)
	s.cols = []string{"tenant_id", "id", "at", "actor", "action", "ip", "request_id", "detail"}
	s.vals = []any{&s.tenant, &s.id, &s.at, &s.actor, &s.action, &s.ip, &s.requestID, nil}
	return s
}

func (s *auditSource) Next() bool {
	if s.duplicates {
		// An exact duplicate row, as a retried insert leaves in a table
		// without a key: a backup must keep both copies.
		s.duplicates = false
		s.n[s.last]++
		return true
	}
	ti, at, ok := s.m.next()
	if !ok {
		return false
	}
	t := &s.p.tenants[ti]
	s.n[ti]++
	s.nextID++
	r := &s.rngs[ti]
	s.id.v, s.at.us = s.nextID, at
	s.tenant.set(t.id)
	s.last = ti
	b := s.actor.b[:0]
	switch x := r.Percent(); {
	case x < 75:
		b = append(b, "user:"...)
		b = appendEmail(b, s.p, t, int64(r.IntN(countBefore(t.userRows, at))))
	case x < 90:
		b = append(b, "system"...)
	default:
		b = append(b, "api-key:ak_"...)
		b = appendHex(b, splitmix64(uint64(ti)<<4|uint64(r.IntN(3))))
	}
	s.actor.b = b
	s.action.set(auditActions[r.IntN(len(auditActions))])
	var ip [4]byte
	switch x := r.Percent(); {
	case x < 10:
		s.ip.null = true
	case x < 55:
		// The tenant's office: the same few addresses again and again.
		h := splitmix64(uint64(ti))
		ip = [4]byte{198, 51, 100, byte(h>>8) | 1}
		s.ip.null, s.ip.v = false, netip.PrefixFrom(netip.AddrFrom4(ip), 32)
	case x < 90:
		ip = [4]byte{203, 0, 113, byte(1 + r.IntN(254))}
		s.ip.null, s.ip.v = false, netip.PrefixFrom(netip.AddrFrom4(ip), 32)
	default:
		var v6 [16]byte
		binary.BigEndian.PutUint32(v6[:], 0x20010db8)
		binary.BigEndian.PutUint64(v6[8:], r.Uint64())
		s.ip.null, s.ip.v = false, netip.PrefixFrom(netip.AddrFrom16(v6), 128)
	}
	binary.BigEndian.PutUint64(s.requestID.v[:8], r.Uint64())
	binary.BigEndian.PutUint64(s.requestID.v[8:], r.Uint64())
	s.requestID.v[6] = s.requestID.v[6]&0x0f | 0x40 // version 4
	s.requestID.v[8] = s.requestID.v[8]&0x3f | 0x80 // RFC 4122 variant

	d := append(s.detail[:0], `{"user_agent": `...)
	d = appendJSONString(d, userAgents[r.Skewed(len(userAgents))])
	d = append(d, `, "mfa": `...)
	d = strconv.AppendBool(d, r.Percent() < 60)
	d = append(d, `, "target": {"type": `...)
	d = appendJSONString(d, [...]string{"issue", "project", "user", "settings"}[r.Skewed(4)])
	d = append(d, `, "id": `...)
	d = strconv.AppendInt(d, int64(1+r.IntN(100000)), 10)
	d = append(d, '}')
	if r.Percent() < 50 {
		d = append(d, `, "changes": {"status": [`...)
		d = appendJSONString(d, statuses[r.IntN(len(statuses))])
		d = append(d, ", "...)
		d = appendJSONString(d, statuses[r.IntN(len(statuses))])
		d = append(d, `], "priority": [`...)
		d = strconv.AppendInt(d, int64(r.IntN(5)), 10)
		d = append(d, ", "...)
		d = strconv.AppendInt(d, int64(r.IntN(5)), 10)
		d = append(d, "]}"...)
	}
	d = append(d, `, "session": "`...)
	d = appendHex(d, r.Uint64())
	d = append(d, `"}`...)
	s.detail = d
	s.vals[7] = d
	s.duplicates = r.Percent() < 1 && r.IntN(3) == 0 // about 0.3% of rows
	return true
}
