package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const goodConfig = `
repository: s3://backups/tenantvault?endpoint=http://127.0.0.1:9000&region=us-east-1
listen: 127.0.0.1:9187
timezone: Europe/Berlin
retention:
  keep_last: 3
  keep_daily: 7
  grace: 7d
sources:
  - name: main
    url_env: MAIN_URL
    schedule: "0 */6 * * *"
    jitter: 5m
    timeout: 2h
  - name: eu
    url: postgres://backup@db-eu:5432/app
    tenancy: schema
    schema_pattern: tenant_%
    schedule: "CRON_TZ=UTC 30 0 3 * * *"
    retention:
      keep_last: 10
`

func TestLoadGoodConfig(t *testing.T) {
	cfg, err := Load([]byte(goodConfig), func(k string) string {
		if k == "MAIN_URL" {
			return "postgres://backup:pw@db:5432/app\n"
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	main, eu := cfg.Sources[0], cfg.Sources[1]
	if main.url != "postgres://backup:pw@db:5432/app" || main.Timeout.D != 2*time.Hour || main.Jitter.D != 5*time.Minute || *main.Retries != DefaultRetries {
		t.Fatalf("main: %+v", main)
	}
	if main.loc.String() != "Europe/Berlin" || eu.loc.String() != "UTC" {
		t.Fatalf("time zones %s %s", main.loc, eu.loc)
	}
	if main.policy.KeepLast != 3 || main.policy.KeepDaily != 7 || eu.policy.KeepLast != 10 || eu.policy.KeepDaily != 0 {
		t.Fatalf("policies %+v %+v", main.policy, eu.policy)
	}
	if eu.policy.KeepPreRestore != 30*24*time.Hour || cfg.Retention.Grace.D != 7*24*time.Hour || cfg.ShutdownTimeout.D != DefaultShutdownTimeout {
		t.Fatalf("defaults: %+v %+v", eu.policy, cfg.Retention)
	}
	// Next run of "0 */6 * * *" in Berlin after 04:00 UTC (06:00 CEST) in summer.
	if next := main.schedule.Next(time.Date(2026, 7, 1, 4, 0, 0, 0, time.UTC)); !next.Equal(time.Date(2026, 7, 1, 10, 0, 0, 0, time.UTC)) {
		t.Fatalf("next run %s", next.UTC())
	}
	// Seconds field.
	if next := eu.schedule.Next(time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC)); !next.Equal(time.Date(2026, 7, 1, 3, 0, 30, 0, time.UTC)) {
		t.Fatalf("next run %s", next.UTC())
	}
	if s := cfg.Summary(); s != "config OK: 2 source(s): main (0 */6 * * *), eu (CRON_TZ=UTC 30 0 3 * * *); repository s3://backups/tenantvault?endpoint=http://127.0.0.1:9000&region=us-east-1; listen 127.0.0.1:9187" {
		t.Fatalf("summary %q", s)
	}
}

func TestConfigProblems(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "url")
	os.WriteFile(secretFile, []byte("  \n"), 0o600)
	const head = "repository: file:///var/lib/tenantvault\n"
	src := "sources:\n  - name: main\n    url: postgres://u@h/db\n    schedule: '@every 1h'\n"
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{"empty", "", []string{"the config is empty"}},
		{"syntax", "sources: [\n", []string{"line 1: did not find expected node content"}},
		{"unknown keys with lines", head + "listn: x\n" + src + "    schedul: x\nretention:\n  keep_dialy: 3\n", []string{
			`line 2: unknown key "listn" at the top level (did you mean "listen"?)`,
			`line 7: unknown key "schedul" in sources[0] (did you mean "schedule"?)`,
			`line 9: unknown key "keep_dialy" in retention (did you mean "keep_daily"?)`,
		}},
		{"missing everything", "listen: ':9187'\n", []string{
			"repository: missing (file:///path or s3://bucket/prefix)",
			"sources: no sources: list at least one database to snapshot",
		}},
		{"bad repository", "repository: ftp://host/x\n" + src, []string{`line 1: repository: "ftp://host/x": use file:///path or s3://bucket/prefix`}},
		{"repository with credentials", "repository: s3://key:secret@bucket/x\n" + src, []string{`line 1: repository: "s3://REDACTED@bucket/x" must not contain credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead`}},
		{"bad cron", head + "sources:\n  - name: main\n    url: postgres://u@h/db\n    schedule: '61 * * * *'\n", []string{
			`line 5: sources[0].schedule: bad schedule "61 * * * *": end of range (61) above maximum (59): 61`}},
		{"bad descriptor", head + "sources:\n  - name: main\n    url: postgres://u@h/db\n    schedule: '@fortnightly'\n", []string{
			`line 5: sources[0].schedule: bad schedule "@fortnightly": unrecognized descriptor: @fortnightly`}},
		{"time zone prefix alone", head + "sources:\n  - name: main\n    url: postgres://u@h/db\n    schedule: 'CRON_TZ=UTC'\n", []string{
			`line 5: sources[0].schedule: "CRON_TZ=UTC" has a time zone but no schedule`}},
		{"bad time zones", head + "timezone: Mars/Olympus\n" + src + "    timezone: Nowhere\n", []string{
			`line 2: timezone: unknown time zone "Mars/Olympus"`,
			`line 7: sources[0].timezone: unknown time zone "Nowhere"`}},
		{"missing schedule and URL", head + "sources:\n  - name: main\n", []string{
			"line 3: sources[0]: no database URL: set one of url, url_file or url_env",
			`line 3: sources[0].schedule: missing (cron, e.g. "0 */6 * * *", or "@every 1h")`}},
		{"two URL references", head + src + "    url_env: X\n", []string{"line 3: sources[0]: set only one of url, url_file and url_env"}},
		{"missing secret env", head + "sources:\n  - name: main\n    url_env: TV_TEST_UNSET\n    schedule: '@hourly'\n", []string{
			"line 4: sources[0].url_env: environment variable TV_TEST_UNSET is not set or empty"}},
		{"missing secret file", head + "sources:\n  - name: main\n    url_file: /nonexistent/url\n    schedule: '@hourly'\n", []string{
			"line 4: sources[0].url_file: cannot read /nonexistent/url: no such file or directory"}},
		{"empty secret file", head + "sources:\n  - name: main\n    url_file: " + secretFile + "\n    schedule: '@hourly'\n", []string{
			"line 4: sources[0].url_file: " + secretFile + " is empty"}},
		{"bad database URL, password redacted", head + "sources:\n  - name: main\n    url: 'postgres://u:hunter22@h/db?sslmode=bogus'\n    schedule: '@hourly'\n", []string{
			"line 4: sources[0].url: bad database URL postgres://u:REDACTED@h/db?sslmode=bogus: sslmode is invalid"}},
		{"wrong URL scheme", head + "sources:\n  - name: main\n    url: 'mysql://u:hunter22@h/db'\n    schedule: '@hourly'\n", []string{
			"line 4: sources[0].url: bad database URL mysql://u:REDACTED@h/db: the scheme must be postgres:// or postgresql://"}},
		{"bad durations", head + "shutdown_timeout: 5 minutes\ngc_min_age: 10m\n" + src + "    jitter: 2h\n    timeout: soon\nretention:\n  keep_last: -1\n  keep_pre_restore: 1h\n  grace: 1x\n", []string{
			`line 2: shutdown_timeout: bad duration "5 minutes" (use e.g. 90s, 36h or 7d)`,
			"line 3: gc_min_age: 10m is shorter than 1h: GC could collect the packs of a snapshot that is still running",
			"line 8: sources[0].jitter: 2h is not shorter than the schedule's interval (1h)",
			`line 9: sources[0].timeout: bad duration "soon" (use e.g. 90s, 36h or 7d)`,
			"line 11: retention.keep_last: -1 is negative",
			"line 12: retention.keep_pre_restore: 1h is shorter than 24h: pre-restore sets hold the only copy of rows a restore replaced",
			`line 13: retention.grace: bad duration "1x" (use e.g. 90s, 36h or 7d)`,
		}},
		{"timeout not shorter than grace", head + "retention:\n  grace: 1h\n" + src + "    timeout: 2h\n", []string{
			"line 8: sources[0].timeout: 2h is not shorter than retention.grace (1h): a set marked while this source's snapshot runs could be purged before it finishes"}},
		{"wrong types", head + "listen: [a]\nretention:\n  keep_last: two\n" + src + "    parallel: 100\n    compression_level: 9\n    retries: many\n", []string{
			"line 2: listen: a list is not a string",
			"line 4: retention.keep_last: `two` is not a whole number",
			"line 9: sources[0].parallel: 100 is out of range 1..64",
			"line 10: sources[0].compression_level: 9 is out of range 1 (fastest) .. 4 (smallest)",
			"line 11: sources[0].retries: `many` is not a whole number",
		}},
		{"schema archive", head + src + "    schema_archive: pgdump\n", []string{
			`line 6: sources[0].schema_archive: "pgdump": use pg_dump or none`}},
		{"tenancy", head + src + "    tenancy: schema\n", []string{
			"line 6: sources[0].tenancy: tenancy schema needs schema_pattern (a LIKE pattern such as tenant_%)"}},
		{"duplicate names and per-source grace", head + src + "    retention:\n      grace: 1d\n  - name: main\n    url: postgres://u@h/db2\n    schedule: '@daily'\n", []string{
			"line 7: sources[0].retention.grace: the grace period applies to the whole repository: set it in the top-level retention",
			`line 8: sources[1].name: "main" is also the name of sources[0]`}},
		{"log settings and webhook", head + "log_format: xml\nlog_level: loud\nwebhook_url: 'ftp://hooks/abc-token'\n" + src, []string{
			`line 2: log_format: "xml": use json or text`,
			`line 3: log_level: "loud": use debug, info, warn or error`,
			"line 4: webhook_url: not an http:// or https:// URL"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load([]byte(tc.yaml), func(string) string { return "" })
			var p Problems
			if !errors.As(err, &p) {
				t.Fatalf("got %v, want problems", err)
			}
			if !reflect.DeepEqual([]string(p), tc.want) {
				t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(p, "\n"), strings.Join(tc.want, "\n"))
			}
			for _, line := range p {
				if strings.Contains(line, "hunter22") || strings.Contains(line, "abc-token") {
					t.Fatalf("secret in %q", line)
				}
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "90s": 90 * time.Second, "0": 0} {
		if got, err := ParseDuration(in); err != nil || got != want {
			t.Errorf("%s: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"", "d", "7days", "1x"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
