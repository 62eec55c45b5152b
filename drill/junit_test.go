package drill_test

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"testing"

	junit "github.com/joshdk/go-junit"
)

// The rules below are those of the JUnit schema Jenkins publishes
// (junit-10.xsd in jenkinsci/xunit-plugin, the dialect GitLab, GitHub test
// reporters and most CI systems read), restated as code so that the test
// needs nothing installed: which elements may appear where, which attributes
// each may and must have, that result elements hold only text, and the
// pattern a suite's time must match.
var junitRules = map[string]struct {
	required, optional []string
	children           []string // nil: text only
}{
	"testsuites": {nil, []string{"name", "time", "tests", "failures", "errors"}, []string{"testsuite"}},
	"testsuite": {[]string{"name", "tests", "failures", "errors"},
		[]string{"group", "time", "skipped", "timestamp", "hostname", "id", "package", "file", "log", "url"},
		[]string{"testsuite", "properties", "testcase", "system-out", "system-err"}},
	"properties": {nil, nil, []string{"property"}},
	"property":   {[]string{"name", "value"}, nil, []string{}},
	"testcase": {[]string{"name"}, []string{"time", "classname", "group"},
		[]string{"skipped", "error", "failure", "rerunFailure", "rerunError", "flakyFailure", "flakyError", "system-out", "system-err"}},
	"failure":    {nil, []string{"type", "message"}, nil},
	"error":      {nil, []string{"type", "message"}, nil},
	"skipped":    {nil, []string{"type", "message"}, nil},
	"system-out": {nil, nil, nil},
	"system-err": {nil, nil, nil},
}

// surefireTime is the schema's SUREFIRE_TIME pattern for a suite's time.
var surefireTime = regexp.MustCompile(`^(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?$`)

type xmlNode struct {
	XMLName xml.Name
	Attrs   []xml.Attr `xml:",any,attr"`
	Nodes   []xmlNode  `xml:",any"`
	Text    string     `xml:",chardata"`
}

// junitProblems checks a JUnit report against the schema's rules and says
// what breaks them.
func junitProblems(data []byte) []string {
	var root xmlNode
	if err := xml.NewDecoder(bytes.NewReader(data)).Decode(&root); err != nil {
		return []string{fmt.Sprintf("not XML: %v", err)}
	}
	if root.XMLName.Local != "testsuite" && root.XMLName.Local != "testsuites" {
		return []string{fmt.Sprintf("root is <%s>, want <testsuite> or <testsuites>", root.XMLName.Local)}
	}
	var out []string
	var walk func(n xmlNode, path string)
	walk = func(n xmlNode, path string) {
		path += "/" + n.XMLName.Local
		rule, ok := junitRules[n.XMLName.Local]
		if !ok || n.XMLName.Space != "" {
			out = append(out, path+": element not in the schema")
			return
		}
		have := map[string]string{}
		for _, a := range n.Attrs {
			have[a.Name.Local] = a.Value
			if a.Name.Space != "" || !slices.Contains(rule.required, a.Name.Local) && !slices.Contains(rule.optional, a.Name.Local) {
				out = append(out, fmt.Sprintf("%s: attribute %q not in the schema", path, a.Name.Local))
			}
		}
		for _, r := range rule.required {
			if _, ok := have[r]; !ok {
				out = append(out, fmt.Sprintf("%s: required attribute %q missing", path, r))
			}
		}
		if v, ok := have["time"]; ok && n.XMLName.Local != "testcase" && !surefireTime.MatchString(v) {
			out = append(out, fmt.Sprintf("%s: time %q does not match SUREFIRE_TIME", path, v))
		}
		if rule.children == nil && len(n.Nodes) > 0 {
			out = append(out, path+": holds elements, the schema allows text only")
		}
		for _, c := range n.Nodes {
			if rule.children != nil && !slices.Contains(rule.children, c.XMLName.Local) {
				out = append(out, fmt.Sprintf("%s: <%s> not allowed here", path, c.XMLName.Local))
				continue
			}
			walk(c, path)
		}
	}
	walk(root, "")
	return out
}

// validateJUnit checks a JUnit report against the schema's rules, then reads
// it with a real consumer (github.com/joshdk/go-junit, with which tools
// written in Go ingest CI reports) and checks that the suite's counts agree
// with the cases the consumer read. It returns the consumer's view.
func validateJUnit(t *testing.T, data []byte) junit.Suite {
	t.Helper()
	for _, p := range junitProblems(data) {
		t.Errorf("JUnit report breaks the schema: %s", p)
	}
	suites, err := junit.Ingest(data)
	if err != nil {
		t.Fatalf("go-junit cannot read the report: %v", err)
	}
	if len(suites) != 1 {
		t.Fatalf("go-junit reads %d suites, want 1", len(suites))
	}
	s := suites[0]
	var root xmlNode
	if err := xml.Unmarshal(data, &root); err != nil {
		t.Fatal(err)
	}
	attr := map[string]string{}
	for _, a := range root.Attrs {
		attr[a.Name.Local] = a.Value
	}
	for name, want := range map[string]int{"tests": s.Totals.Tests, "failures": s.Totals.Failed, "errors": s.Totals.Error, "skipped": s.Totals.Skipped} {
		if got, err := strconv.Atoi(attr[name]); err != nil || got != want {
			t.Errorf("testsuite %s=%q, but the cases say %d", name, attr[name], want)
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", data)
	}
	return s
}

// junitCase finds a test case by name.
func junitCase(t *testing.T, s junit.Suite, name string) junit.Test {
	t.Helper()
	for _, c := range s.Tests {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no test case %q in the JUnit report", name)
	return junit.Test{}
}

// TestDrillJUnitRules keeps the rules honest: they pass a report as Jenkins
// documents it and catch what the schema forbids.
func TestDrillJUnitRules(t *testing.T) {
	good := `<?xml version="1.0"?>
<testsuite name="x" tests="2" failures="1" errors="0" skipped="0" time="1,234.5" timestamp="2026-01-01T00:00:00">
  <properties><property name="a" value="b"/></properties>
  <testcase name="a" classname="c" time="0.1"><failure message="m" type="t">text</failure><system-out>o</system-out></testcase>
  <testcase name="b"/>
  <system-out/><system-err/>
</testsuite>`
	if p := junitProblems([]byte(good)); len(p) > 0 {
		t.Fatalf("a valid report is refused: %q", p)
	}
	bad := map[string]string{
		"errors missing":     `<testsuite name="x" tests="1" failures="0"><testcase name="a"/></testsuite>`,
		"time pattern":       `<testsuite name="x" tests="1" failures="0" errors="0" time="1s"><testcase name="a"/></testsuite>`,
		"testcase name":      `<testsuite name="x" tests="1" failures="0" errors="0"><testcase/></testsuite>`,
		"unknown attribute":  `<testsuite name="x" tests="1" failures="0" errors="0"><testcase name="a" status="ok"/></testsuite>`,
		"element in failure": `<testsuite name="x" tests="1" failures="1" errors="0"><testcase name="a"><failure><b/></failure></testcase></testsuite>`,
		"unknown element":    `<testsuite name="x" tests="1" failures="0" errors="0"><case name="a"/></testsuite>`,
		"property value":     `<testsuite name="x" tests="0" failures="0" errors="0"><properties><property name="a"/></properties></testsuite>`,
		"root":               `<report/>`,
	}
	for name, doc := range bad {
		if p := junitProblems([]byte(doc)); len(p) == 0 {
			t.Errorf("%s: invalid report accepted", name)
		}
	}
}
