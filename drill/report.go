package drill

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Names of the test cases that are not tenants, in JUnit and JSON reports.
const (
	CaseChecks = "database checks"
	CaseRTO    = "RTO budget"
)

// JUnit class names: CI systems group and track test cases by them, so they
// stay the same from run to run.
const (
	junitTenantClass = "tenantvault.drill.tenant"
	junitDrillClass  = "tenantvault.drill"
)

// The JUnit dialect written is the one Jenkins' junit-10.xsd describes and
// GitLab, GitHub test reporters and most CI systems read: one testsuite, one
// testcase per tenant plus CaseChecks and CaseRTO, each with a failure
// (the data or the budget is wrong), an error (the drill could not find
// out) or a skipped element.
type junitSuite struct {
	XMLName    xml.Name        `xml:"testsuite"`
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Errors     int             `xml:"errors,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Time       string          `xml:"time,attr"`
	Timestamp  string          `xml:"timestamp,attr"`
	Hostname   string          `xml:"hostname,attr,omitempty"`
	Properties []junitProperty `xml:"properties>property"`
	Cases      []junitCase     `xml:"testcase"`
	SystemOut  string          `xml:"system-out"`
	SystemErr  string          `xml:"system-err"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string       `xml:"name,attr"`
	Classname string       `xml:"classname,attr"`
	Time      string       `xml:"time,attr"`
	Skipped   *junitResult `xml:"skipped,omitempty"`
	Error     *junitResult `xml:"error,omitempty"`
	Failure   *junitResult `xml:"failure,omitempty"`
	SystemOut string       `xml:"system-out,omitempty"`
}

type junitResult struct {
	Message string `xml:"message,attr,omitempty"`
	Type    string `xml:"type,attr,omitempty"`
	Text    string `xml:",chardata"`
}

// seconds renders a duration as JUnit wants it: decimal seconds.
func seconds(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// firstLine shortens a message for an attribute; the element's text keeps
// all of it.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// WriteJUnit writes the report as JUnit XML.
func (r *Report) WriteJUnit(w io.Writer) error {
	s := junitSuite{
		Name:      "tenantvault drill",
		Time:      seconds(r.Duration),
		Timestamp: r.Started.UTC().Format("2006-01-02T15:04:05"), // ISO 8601 without zone, as Ant writes it
		Properties: []junitProperty{
			{"repository", r.Repository}, {"set", r.Set}, {"set_consistent_at", r.SetTime.UTC().Format(time.RFC3339)},
			{"model", r.Model}, {"sampled", fmt.Sprint(r.Sampled)},
			{"scratch", r.Scratch}, {"database", r.Database}, {"cleanup", r.Cleanup},
			{"rto_seconds", seconds(r.RTO)},
		},
	}
	if r.Sampled {
		s.Properties = append(s.Properties, junitProperty{"seed", fmt.Sprint(r.Seed)})
	}
	if r.MaxRTO > 0 {
		s.Properties = append(s.Properties, junitProperty{"max_rto_seconds", seconds(r.MaxRTO)})
	}
	s.Hostname, _ = os.Hostname()
	for _, t := range r.Tenants {
		c := junitCase{Name: t.Tenant, Classname: junitTenantClass, Time: seconds(t.Duration),
			SystemOut: fmt.Sprintf("database %s: %d table(s), %d row(s), %d byte(s); digests verified: %v", t.Database, t.Tables, t.Rows, t.Bytes, t.Verified)}
		switch {
		case t.Passed:
		case t.Integrity:
			c.Failure = &junitResult{Type: "integrity", Message: firstLine(t.Failure), Text: t.Failure}
		case t.Err != nil:
			c.Failure = &junitResult{Type: "restore", Message: firstLine(t.Failure), Text: t.Failure}
		case len(t.Problems) > 0:
			c.Failure = &junitResult{Type: "database check", Message: firstLine(t.Failure), Text: problemsText(t.Problems)}
		default:
			c.Error = &junitResult{Type: "not restored", Message: firstLine(t.Failure), Text: t.Failure}
		}
		s.Cases = append(s.Cases, c)
	}
	s.Cases = append(s.Cases, r.checksCase(), r.rtoCase())
	for _, c := range s.Cases {
		s.Tests++
		switch {
		case c.Failure != nil:
			s.Failures++
		case c.Error != nil:
			s.Errors++
		case c.Skipped != nil:
			s.Skipped++
		}
	}
	if r.Passed {
		s.SystemOut = "drill passed"
	} else {
		s.SystemOut = "drill failed"
	}
	var errs []string
	if r.Error != "" {
		errs = append(errs, r.Error)
	}
	if r.Cleanup != "" && r.Cleanup != "dropped" && r.Cleanup != "kept" {
		errs = append(errs, "scratch database(s) "+r.Cleanup)
	}
	s.SystemErr = strings.Join(errs, "\n")
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(s); err != nil {
		return fmt.Errorf("write JUnit report: %w", err)
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func (r *Report) checksCase() junitCase {
	c := junitCase{Name: CaseChecks, Classname: junitDrillClass}
	if len(r.Checks) == 0 {
		c.Time = seconds(0)
		c.Skipped = &junitResult{Message: "no database was checked: nothing was restored"}
		if r.Error != "" {
			c.Skipped.Text = r.Error
		}
		return c
	}
	var d time.Duration
	var out []string
	for _, dc := range r.Checks {
		d += dc.Duration
		out = append(out, fmt.Sprintf("database %s: %d foreign key(s), %d check constraint(s), %d btree index(es) checked", dc.Database, dc.ForeignKeys, dc.Constraints, dc.Indexes))
		for _, s := range dc.Skipped {
			out = append(out, "  not checked: "+s)
		}
	}
	c.Time, c.SystemOut = seconds(d), strings.Join(out, "\n")
	var unfinished []string
	for _, dc := range r.Checks {
		if dc.Err != "" {
			unfinished = append(unfinished, fmt.Sprintf("database %s: %s", dc.Database, dc.Err))
		}
	}
	if ps := r.DatabaseProblems(); len(ps) > 0 {
		c.Failure = &junitResult{Type: "database check", Message: fmt.Sprintf("%d check(s) failed: %s", len(ps), ps[0]), Text: problemsText(ps)}
	} else if len(unfinished) > 0 {
		c.Error = &junitResult{Type: "not checked", Message: "the checks did not finish: " + firstLine(unfinished[0]), Text: strings.Join(unfinished, "\n")}
	}
	return c
}

func (r *Report) rtoCase() junitCase {
	c := junitCase{Name: CaseRTO, Classname: junitDrillClass, Time: seconds(r.RTO)}
	switch {
	case r.RTO == 0:
		c.Skipped = &junitResult{Message: "not measured: the restore did not run to its end"}
	case r.MaxRTO <= 0:
		c.Skipped = &junitResult{Message: fmt.Sprintf("no budget set (--max-rto); the restore took %s", r.RTO.Round(time.Millisecond))}
	case r.RTOExceeded:
		msg := fmt.Sprintf("the restore took %s, over the budget of %s", r.RTO.Round(time.Millisecond), r.MaxRTO)
		c.Failure = &junitResult{Type: "rto", Message: msg, Text: msg}
	default:
		c.SystemOut = fmt.Sprintf("the restore took %s, within the budget of %s", r.RTO.Round(time.Millisecond), r.MaxRTO)
	}
	return c
}

func problemsText(ps []Problem) string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// JSONReport is the machine-readable form of a Report (`drill --json`,
// `--report FILE.json`): durations in seconds, errors as text.
type JSONReport struct {
	Passed          bool         `json:"passed"`
	Repository      string       `json:"repository"`
	Set             string       `json:"set"`
	SetConsistentAt time.Time    `json:"set_consistent_at"`
	Model           string       `json:"model"`
	Seed            int64        `json:"seed,omitempty"`
	Sampled         bool         `json:"sampled"`
	ErasedSkipped   int          `json:"erased_skipped,omitempty"`
	Scratch         string       `json:"scratch"`
	Database        string       `json:"database"`
	TenantDatabases []string     `json:"tenant_databases,omitempty"`
	Cleanup         string       `json:"cleanup"`
	StartedAt       time.Time    `json:"started_at"`
	Seconds         float64      `json:"seconds"`
	RTOSeconds      float64      `json:"rto_seconds"`
	MaxRTOSeconds   float64      `json:"max_rto_seconds,omitempty"`
	RTO             string       `json:"rto"` // ok, exceeded, no budget, not measured
	Rows            int64        `json:"rows"`
	Bytes           int64        `json:"bytes"`
	Tenants         []JSONTenant `json:"tenants"`
	Checks          []JSONChecks `json:"checks"`
	Interrupted     bool         `json:"interrupted,omitempty"`
	Error           string       `json:"error,omitempty"`
	Failures        []string     `json:"failures,omitempty"`
}

// JSONTenant is one tenant of a JSONReport.
type JSONTenant struct {
	Tenant    string    `json:"tenant"`
	Database  string    `json:"database"`
	Tables    int       `json:"tables"`
	Rows      int64     `json:"rows"`
	Bytes     int64     `json:"bytes"`
	Seconds   float64   `json:"seconds"`
	Verified  bool      `json:"verified"`
	Passed    bool      `json:"passed"`
	Failure   string    `json:"failure,omitempty"`
	Integrity bool      `json:"integrity,omitempty"`
	Problems  []Problem `json:"problems,omitempty"`
}

// JSONChecks is one database's checks in a JSONReport.
type JSONChecks struct {
	Database    string    `json:"database"`
	Tenant      string    `json:"tenant,omitempty"`
	ForeignKeys int       `json:"foreign_keys"`
	Constraints int       `json:"check_constraints"`
	Indexes     int       `json:"btree_indexes"`
	Seconds     float64   `json:"seconds"`
	Skipped     []string  `json:"skipped,omitempty"`
	Problems    []Problem `json:"problems,omitempty"`
	Error       string    `json:"error,omitempty"`
}

// RTOVerdict is "ok", "exceeded", "no budget" or "not measured".
func (r *Report) RTOVerdict() string {
	switch {
	case r.RTO == 0:
		return "not measured"
	case r.MaxRTO <= 0:
		return "no budget"
	case r.RTOExceeded:
		return "exceeded"
	}
	return "ok"
}

// JSON returns the report in its machine-readable form.
func (r *Report) JSON() JSONReport {
	j := JSONReport{
		Passed: r.Passed, Repository: r.Repository, Set: r.Set, SetConsistentAt: r.SetTime, Model: r.Model,
		Seed: r.Seed, Sampled: r.Sampled, ErasedSkipped: r.ErasedSkipped, Scratch: r.Scratch, Database: r.Database, TenantDatabases: r.TenantDatabases,
		Cleanup: r.Cleanup, StartedAt: r.Started, Seconds: r.Duration.Seconds(), RTOSeconds: r.RTO.Seconds(),
		MaxRTOSeconds: r.MaxRTO.Seconds(), RTO: r.RTOVerdict(), Rows: r.Rows, Bytes: r.Bytes,
		Interrupted: r.Interrupted, Error: r.Error, Tenants: []JSONTenant{}, Checks: []JSONChecks{},
	}
	for _, t := range r.Tenants {
		j.Tenants = append(j.Tenants, JSONTenant{Tenant: t.Tenant, Database: t.Database, Tables: t.Tables, Rows: t.Rows, Bytes: t.Bytes,
			Seconds: t.Duration.Seconds(), Verified: t.Verified, Passed: t.Passed, Failure: t.Failure, Integrity: t.Integrity, Problems: t.Problems})
		if !t.Passed {
			j.Failures = append(j.Failures, fmt.Sprintf("tenant %q: %s", t.Tenant, t.Failure))
		}
	}
	for _, dc := range r.Checks {
		j.Checks = append(j.Checks, JSONChecks{Database: dc.Database, Tenant: dc.Tenant, ForeignKeys: dc.ForeignKeys, Constraints: dc.Constraints,
			Indexes: dc.Indexes, Seconds: dc.Duration.Seconds(), Skipped: dc.Skipped, Problems: dc.Problems, Error: dc.Err})
	}
	for _, p := range r.DatabaseProblems() {
		j.Failures = append(j.Failures, "database check: "+p.String())
	}
	if r.RTOExceeded {
		j.Failures = append(j.Failures, fmt.Sprintf("RTO budget: the restore took %.3fs, over the budget of %s", r.RTO.Seconds(), r.MaxRTO))
	}
	return j
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r.JSON())
}
