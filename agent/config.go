package agent

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/robfig/cron/v3"
	"go.yaml.in/yaml/v3"

	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// Config is the agent's YAML configuration (docs/agent.md has the full
// reference). Load fills the defaults and the resolved fields.
type Config struct {
	Repository string `yaml:"repository"`
	// Init creates the bucket (or directory) and the repository when they
	// do not exist yet.
	Init            bool      `yaml:"init"`
	Listen          string    `yaml:"listen"`
	LogFormat       string    `yaml:"log_format"`
	LogLevel        string    `yaml:"log_level"`
	ShutdownTimeout Duration  `yaml:"shutdown_timeout"`
	WebhookURL      string    `yaml:"webhook_url"`
	Timezone        string    `yaml:"timezone"`
	PurgeSchedule   string    `yaml:"purge_schedule"`
	GCMinAge        Duration  `yaml:"gc_min_age"`
	TempDir         string    `yaml:"temp_dir"`
	PgDump          string    `yaml:"pg_dump"`
	PgRestore       string    `yaml:"pg_restore"` // for replay proofs
	Retention       Retention `yaml:"retention"`
	Sources         []Source  `yaml:"sources"`
	// Encryption, when set, encrypts every set (docs/SECURITY.md).
	Encryption *Encryption `yaml:"encryption"`

	// Resolved by Load.
	purge cron.Schedule
	keys  *vault.Keys
}

// Encryption holds what the agent needs to write encrypted sets: the
// recipients' public keys and the file with the signing key. It never
// holds an identity: the agent cannot decrypt what it writes.
type Encryption struct {
	Recipients     []string `yaml:"recipients"`
	RecipientsFile string   `yaml:"recipients_file"`
	SigningKeyFile string   `yaml:"signing_key_file"`
}

// Keys are the resolved encryption keys; nil without an encryption section.
func (cfg *Config) Keys() *vault.Keys { return cfg.keys }

// checkEncryption resolves the encryption section's keys.
func (cfg *Config) checkEncryption(c *checker) {
	e := cfg.Encryption
	if e == nil {
		return
	}
	k, before := &vault.Keys{}, len(c.problems)
	for i, r := range e.Recipients {
		if err := k.AddRecipient(r); err != nil {
			c.at(fmt.Sprintf("encryption.recipients[%d]", i), "%v", err)
		}
	}
	if e.RecipientsFile != "" {
		if err := k.LoadRecipientsFile(e.RecipientsFile); err != nil {
			c.at("encryption.recipients_file", "%v", err)
		}
	}
	if e.SigningKeyFile == "" {
		c.at("encryption.signing_key_file", "missing: encrypted sets are signed (tenantvault keygen writes the file)")
	} else if _, err := k.LoadSigningKeyFile(e.SigningKeyFile); err != nil {
		c.at("encryption.signing_key_file", "%v", err)
	}
	if len(k.Recipients) == 0 && len(c.problems) == before {
		c.at("encryption", "no recipients: list age public keys in recipients or recipients_file (or keep them in the signing key file)")
	}
	cfg.keys = k
}

// Retention is the keep_* policy and the deletion timings.
type Retention struct {
	KeepLast       int      `yaml:"keep_last"`
	KeepHourly     int      `yaml:"keep_hourly"`
	KeepDaily      int      `yaml:"keep_daily"`
	KeepWeekly     int      `yaml:"keep_weekly"`
	KeepMonthly    int      `yaml:"keep_monthly"`
	KeepPreRestore Duration `yaml:"keep_pre_restore"`
	KeepPartial    Duration `yaml:"keep_partial"`
	// Grace is how long a marked set waits before a purge may delete it;
	// repository-wide, so only in the top-level retention.
	Grace Duration `yaml:"grace"`
}

// Source is one database the agent snapshots.
type Source struct {
	Name string `yaml:"name"`
	// Exactly one of URL, URLFile (a file holding the URL, e.g. a mounted
	// Kubernetes Secret) and URLEnv (an environment variable holding it).
	URL     string `yaml:"url"`
	URLFile string `yaml:"url_file"`
	URLEnv  string `yaml:"url_env"`

	Tenancy         string `yaml:"tenancy"`
	TenantColumn    string `yaml:"tenant_column"`
	TenantTable     string `yaml:"tenant_table"`
	SchemaPattern   string `yaml:"schema_pattern"`
	DatabasePattern string `yaml:"database_pattern"`

	Schedule     string   `yaml:"schedule"`
	Timezone     string   `yaml:"timezone"`
	Jitter       Duration `yaml:"jitter"`
	Timeout      Duration `yaml:"timeout"`
	Retries      *int     `yaml:"retries"`
	RetryBackoff Duration `yaml:"retry_backoff"`

	Parallel         int      `yaml:"parallel"`
	CompressionLevel int      `yaml:"compression_level"`
	WorkMem          string   `yaml:"work_mem"`
	LockTimeout      Duration `yaml:"lock_timeout"`
	VerifyReadData   bool     `yaml:"verify_read_data"`
	// SchemaArchive is pg_dump (default) or none (snapshot --schema-archive).
	SchemaArchive string `yaml:"schema_archive"`
	// Capture archives every committed change for point-in-time restores
	// (docs/CHANGE-CAPTURE.md); snapshots are then taken at exact LSNs.
	Capture              bool     `yaml:"capture"`
	CaptureSlot          string   `yaml:"capture_slot"`
	CaptureFlushInterval Duration `yaml:"capture_flush_interval"`
	// CaptureLagAlert makes /readyz fail while the slot holds more WAL
	// than this; CaptureMaxLag drops the slot to protect the source.
	CaptureLagAlert    int64 `yaml:"capture_lag_alert"`
	CaptureMaxLag      int64 `yaml:"capture_max_lag"`
	SetReplicaIdentity bool  `yaml:"set_replica_identity"`
	// ReplayProof proves each new interval of the change log: after a set
	// is written, tenants of the previous set are restored into a scratch
	// database, the log replayed to the new set's LSN, and the digests
	// compared (verify --replay). On by default where capture is on.
	ReplayProof *bool `yaml:"replay_proof"`
	// ReplayProofScratch is a database URL on the server where the proof
	// creates and drops its scratch database (the role needs CREATEDB);
	// default: the source's own server.
	ReplayProofScratch    string `yaml:"replay_proof_scratch"`
	ReplayProofScratchEnv string `yaml:"replay_proof_scratch_env"`
	// ReplayProofTenants is how many tenants each proof replays (spread
	// evenly over the set); default 10.
	ReplayProofTenants int `yaml:"replay_proof_tenants"`
	// Retention, when given, replaces the top-level keep rules for this
	// source's sets.
	Retention *Retention `yaml:"retention"`

	// Resolved by Load.
	url      string // the secret: never logged
	proof    bool
	scratch  string // replay proof's scratch server: a secret too
	tenancy  tenancy.Config
	schedule cron.Schedule
	loc      *time.Location
	policy   vault.Policy
}

// Defaults.
const (
	DefaultListen          = "127.0.0.1:9187"
	DefaultShutdownTimeout = 5 * time.Minute
	DefaultPurgeSchedule   = "@hourly"
	DefaultTimeout         = time.Hour
	DefaultRetries         = 3
	DefaultRetryBackoff    = 30 * time.Second
)

// Duration is a YAML duration: Go syntax (90s, 36h) plus whole days (7d,
// 1d12h). Parse errors are kept and reported by Load with every other
// problem, instead of stopping the decoding at the first one.
type Duration struct {
	D    time.Duration
	raw  string
	line int
	set  bool
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	d.raw, d.line, d.set = n.Value, n.Line, true
	return nil
}

// ParseDuration reads Go duration syntax with an optional leading number of
// days ("7d", "1d12h", "36h").
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil {
			return 0, fmt.Errorf("bad duration %q (use e.g. 90s, 36h or 7d)", s)
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q (use e.g. 90s, 36h or 7d)", s)
	}
	return days + d, nil
}

// Problems is every problem Load found in a config, one per line.
type Problems []string

func (p Problems) Error() string { return strings.Join(p, "\n") }

// LoadFile reads and checks a config file; getenv resolves url_env (nil
// means os.Getenv). A config with problems returns them all as Problems.
func LoadFile(path string, getenv func(string) string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Problems{fmt.Sprintf("cannot read config: %v", errors.Unwrap(err))}
	}
	return Load(data, getenv)
}

// Load parses YAML config data strictly (an unknown key is a problem, with
// its line), fills defaults, resolves secrets and checks everything. It
// returns every problem found, not just the first.
func Load(data []byte, getenv func(string) string) (*Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, Problems{strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if len(doc.Content) == 0 {
		return nil, Problems{"the config is empty"}
	}
	c := &checker{}
	root := doc.Content[0]
	c.strict(root, reflect.TypeOf(Config{}), "")
	cfg := &Config{}
	c.nodes = nodes(root)
	c.lines = map[string]int{}
	for p, n := range c.nodes {
		c.lines[p] = n.Line
	}
	if err := root.Decode(cfg); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, e := range te.Errors {
				c.typeError(e)
			}
		} else {
			c.add(0, "%v", err)
		}
	}
	cfg.check(c, getenv)
	return cfg, c.result()
}

type problem struct {
	line int
	msg  string
}

// checker collects problems with the line they are about.
type checker struct {
	problems []problem
	lines    map[string]int // path -> line
	nodes    map[string]*yaml.Node
}

func (c *checker) add(line int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if line > 0 {
		msg = fmt.Sprintf("line %d: %s", line, msg)
	}
	c.problems = append(c.problems, problem{line: line, msg: msg})
}

// at reports a problem about the value at path, or about its nearest
// ancestor present in the file.
func (c *checker) at(path, format string, args ...any) {
	p := path
	for {
		if l, ok := c.lines[p]; ok {
			c.add(l, "%s: "+format, append([]any{path}, args...)...)
			return
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			c.add(0, "%s: "+format, append([]any{path}, args...)...)
			return
		}
		p = p[:i]
	}
}

func (c *checker) result() error {
	if len(c.problems) == 0 {
		return nil
	}
	sort.SliceStable(c.problems, func(i, j int) bool {
		a, b := c.problems[i].line, c.problems[j].line
		if a == 0 || b == 0 {
			return a != 0 && b == 0
		}
		return a < b
	})
	out := make(Problems, len(c.problems))
	for i, p := range c.problems {
		out[i] = p.msg
	}
	return out
}

// typeError rewrites yaml's "line 6: cannot unmarshal !!str `two` into
// int" as "line 6: retention.keep_last: `two` is not a whole number".
func (c *checker) typeError(msg string) {
	var line int
	fmt.Sscanf(msg, "line %d:", &line)
	val, into := "", ""
	if i := strings.Index(msg, "cannot unmarshal "); i >= 0 {
		rest := msg[i+len("cannot unmarshal "):]
		if j := strings.LastIndex(rest, " into "); j >= 0 {
			val, into = rest[:j], rest[j+len(" into "):]
		}
	}
	// The deepest path on that line whose node is of the kind yaml
	// complains about.
	kind := yaml.ScalarNode
	switch val {
	case "!!map":
		kind = yaml.MappingNode
	case "!!seq":
		kind = yaml.SequenceNode
	}
	path := ""
	for p, n := range c.nodes {
		if n.Line == line && n.Kind == kind && len(p) > len(path) {
			path = p
		}
	}
	if into == "" || path == "" {
		c.add(line, "%s", strings.TrimPrefix(msg, fmt.Sprintf("line %d: ", line)))
		return
	}
	want := map[string]string{"int": "a whole number", "bool": "true or false", "string": "a string"}[into]
	switch {
	case want != "":
	case strings.HasPrefix(into, "[]"):
		want = "a list"
	case strings.HasPrefix(into, "*int"):
		want = "a whole number"
	default:
		want = "a mapping of keys to values"
	}
	val = strings.TrimPrefix(val, "!!str ")
	for _, tag := range []string{"!!map", "!!seq"} {
		if val == tag {
			val = map[string]string{"!!map": "a mapping", "!!seq": "a list"}[tag]
		}
	}
	c.add(line, "%s: %s is not %s", path, val, want)
}

// strict reports every mapping key the config types do not have.
func (c *checker) strict(n *yaml.Node, t reflect.Type, path string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == reflect.TypeOf(Duration{}):
		return
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := map[string]reflect.Type{}
		var names []string
		for i := range t.NumField() {
			f := t.Field(i)
			if tag := strings.Split(f.Tag.Get("yaml"), ",")[0]; tag != "" && tag != "-" {
				fields[tag] = f.Type
				names = append(names, tag)
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			ft, ok := fields[k.Value]
			if !ok {
				where := "at the top level"
				if path != "" {
					where = "in " + path
				}
				msg := fmt.Sprintf("unknown key %q %s", k.Value, where)
				if s := suggest(k.Value, names); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				c.add(k.Line, "%s", msg)
				continue
			}
			c.strict(v, ft, join(path, k.Value))
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, e := range n.Content {
			c.strict(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	}
}

// nodes maps every path in the document to its value node.
func nodes(root *yaml.Node) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		if path != "" {
			out[path] = n
		}
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				walk(n.Content[i+1], join(path, n.Content[i].Value))
			}
		case yaml.SequenceNode:
			for i, e := range n.Content {
				walk(e, fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	walk(root, "")
	return out
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// suggest returns the known name closest to a misspelt key, if any is close.
func suggest(key string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(key, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// cronParser accepts standard cron with an optional seconds field and
// descriptors (@hourly, @every 30s).
var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// parseSchedule reads a schedule in the given time zone; a CRON_TZ= or TZ=
// prefix in the spec wins.
func parseSchedule(spec string, loc *time.Location) (cron.Schedule, *time.Location, error) {
	spec = strings.TrimSpace(spec)
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		// cron's parser panics on a time zone prefix with nothing after it.
		tz, rest, ok := strings.Cut(spec, " ")
		if !ok || strings.TrimSpace(rest) == "" {
			return nil, nil, fmt.Errorf("%q has a time zone but no schedule", spec)
		}
		l, err := time.LoadLocation(tz[strings.IndexByte(tz, '=')+1:])
		if err != nil {
			return nil, nil, fmt.Errorf("unknown time zone in %q", spec)
		}
		loc, spec = l, strings.TrimSpace(rest)
	}
	s, err := cronParser.Parse("CRON_TZ=" + loc.String() + " " + spec)
	if err != nil {
		return nil, nil, fmt.Errorf("bad schedule %q: %v", spec, err)
	}
	return s, loc, nil
}

// interval estimates how far apart a schedule's runs are, from the next
// two runs after t.
func interval(s cron.Schedule, t time.Time) time.Duration {
	a := s.Next(t)
	return s.Next(a).Sub(a)
}

func (c *checker) duration(d *Duration, path string, def time.Duration) time.Duration {
	if !d.set {
		d.D = def
		return def
	}
	v, err := ParseDuration(d.raw)
	if err != nil {
		c.add(d.line, "%s: %v", path, err)
		d.D = def
		return def
	}
	if v < 0 {
		c.add(d.line, "%s: %s is negative", path, d.raw)
	}
	d.D = v
	return v
}

// check fills defaults and resolved fields and reports problems.
func (cfg *Config) check(c *checker, getenv func(string) string) {
	if cfg.Repository == "" {
		c.at("repository", "missing (file:///path or s3://bucket/prefix)")
	} else if err := checkRepoURL(cfg.Repository); err != nil {
		c.at("repository", "%v", err)
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	} else if _, port, err := net.SplitHostPort(cfg.Listen); err != nil || port == "" {
		c.at("listen", "%q is not host:port (e.g. 127.0.0.1:9187, or :9187 for every interface)", cfg.Listen)
	}
	switch cfg.LogFormat {
	case "":
		cfg.LogFormat = "json"
	case "json", "text":
	default:
		c.at("log_format", "%q: use json or text", cfg.LogFormat)
	}
	switch cfg.LogLevel {
	case "":
		cfg.LogLevel = "info"
	case "debug", "info", "warn", "error":
	default:
		c.at("log_level", "%q: use debug, info, warn or error", cfg.LogLevel)
	}
	c.duration(&cfg.ShutdownTimeout, "shutdown_timeout", DefaultShutdownTimeout)
	if cfg.WebhookURL != "" {
		if u, err := url.Parse(cfg.WebhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			// Never repeat the URL: webhook URLs often carry a token.
			c.at("webhook_url", "not an http:// or https:// URL")
		}
	}
	loc := time.UTC
	if cfg.Timezone != "" {
		l, err := time.LoadLocation(cfg.Timezone)
		if err != nil {
			c.at("timezone", "unknown time zone %q", cfg.Timezone)
		} else {
			loc = l
		}
	}
	if cfg.PurgeSchedule == "" {
		cfg.PurgeSchedule = DefaultPurgeSchedule
	}
	if s, _, err := parseSchedule(cfg.PurgeSchedule, loc); err != nil {
		c.at("purge_schedule", "%v", err)
	} else {
		cfg.purge = s
	}
	c.duration(&cfg.GCMinAge, "gc_min_age", vault.DefaultGCMinAge)
	if cfg.GCMinAge.set && cfg.GCMinAge.D < time.Hour {
		c.at("gc_min_age", "%s is shorter than 1h: GC could collect the packs of a snapshot that is still running", cfg.GCMinAge.raw)
	}
	cfg.checkRetention(c, &cfg.Retention, "retention", true, nil)
	cfg.checkEncryption(c)
	if len(cfg.Sources) == 0 {
		c.at("sources", "no sources: list at least one database to snapshot")
	}
	names := map[string]int{}
	for i := range cfg.Sources {
		s := &cfg.Sources[i]
		path := fmt.Sprintf("sources[%d]", i)
		if s.Name == "" {
			c.at(path+".name", "missing")
		} else if j, dup := names[s.Name]; dup {
			c.at(path+".name", "%q is also the name of sources[%d]", s.Name, j)
		} else {
			names[s.Name] = i
		}
		cfg.checkSource(c, s, path, loc, getenv)
	}
}

func checkRepoURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return fmt.Errorf("%q cannot be parsed", repo.Redact(raw))
	case u.User != nil:
		return fmt.Errorf("%q must not contain credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead", repo.Redact(raw))
	case u.Scheme != "file" && u.Scheme != "s3":
		return fmt.Errorf("%q: use file:///path or s3://bucket/prefix", raw)
	case u.Scheme == "s3" && u.Host == "":
		return fmt.Errorf("%q has no bucket", raw)
	case u.Scheme == "file" && u.Path == "":
		return fmt.Errorf("%q has no path", raw)
	}
	return nil
}

func (cfg *Config) checkRetention(c *checker, r *Retention, path string, top bool, inherit *Retention) {
	for _, n := range []struct {
		name string
		v    int
	}{{"keep_last", r.KeepLast}, {"keep_hourly", r.KeepHourly}, {"keep_daily", r.KeepDaily}, {"keep_weekly", r.KeepWeekly}, {"keep_monthly", r.KeepMonthly}} {
		if n.v < 0 {
			c.at(path+"."+n.name, "%d is negative", n.v)
		}
	}
	defPre, defPartial := vault.DefaultKeepPreRestore, vault.DefaultKeepPartial
	if inherit != nil {
		defPre, defPartial = inherit.KeepPreRestore.D, inherit.KeepPartial.D
	}
	if d := c.duration(&r.KeepPreRestore, path+".keep_pre_restore", defPre); r.KeepPreRestore.set && d < 24*time.Hour {
		c.at(path+".keep_pre_restore", "%s is shorter than 24h: pre-restore sets hold the only copy of rows a restore replaced", r.KeepPreRestore.raw)
	}
	c.duration(&r.KeepPartial, path+".keep_partial", defPartial)
	if top {
		c.duration(&r.Grace, path+".grace", vault.DefaultGrace)
	} else if r.Grace.set {
		c.at(path+".grace", "the grace period applies to the whole repository: set it in the top-level retention")
	}
}

func (cfg *Config) checkSource(c *checker, s *Source, path string, defLoc *time.Location, getenv func(string) string) {
	// The secret reference.
	refs := 0
	for _, v := range []string{s.URL, s.URLFile, s.URLEnv} {
		if v != "" {
			refs++
		}
	}
	switch {
	case refs == 0:
		c.at(path, "no database URL: set one of url, url_file or url_env")
	case refs > 1:
		c.at(path, "set only one of url, url_file and url_env")
	case s.URLFile != "":
		data, err := os.ReadFile(s.URLFile)
		if err != nil {
			c.at(path+".url_file", "cannot read %s: %v", s.URLFile, errors.Unwrap(err))
		} else if s.url = strings.TrimSpace(string(data)); s.url == "" {
			c.at(path+".url_file", "%s is empty", s.URLFile)
		}
	case s.URLEnv != "":
		if s.url = strings.TrimSpace(getenv(s.URLEnv)); s.url == "" {
			c.at(path+".url_env", "environment variable %s is not set or empty", s.URLEnv)
		}
	default:
		s.url = s.URL
	}
	if s.url != "" {
		if err := checkDatabaseURL(s.url); err != nil {
			field := "url"
			switch {
			case s.URLFile != "":
				field = "url_file"
			case s.URLEnv != "":
				field = "url_env"
			}
			c.at(path+"."+field, "%v", err)
		}
	}
	s.tenancy = tenancy.Config{Model: s.Tenancy, TenantColumn: s.TenantColumn, TenantTable: s.TenantTable, SchemaPattern: s.SchemaPattern, DatabasePattern: s.DatabasePattern}
	if err := s.tenancy.Normalize(); err != nil {
		// Name the YAML keys, not the command line flags.
		msg := strings.NewReplacer("--tenancy", "tenancy", "--schema-pattern", "schema_pattern", "--database-pattern", "database_pattern", "--tenant-table", "tenant_table").Replace(err.Error())
		c.at(path+".tenancy", "%s", msg)
	}
	loc := defLoc
	if s.Timezone != "" {
		l, err := time.LoadLocation(s.Timezone)
		if err != nil {
			c.at(path+".timezone", "unknown time zone %q", s.Timezone)
		} else {
			loc = l
		}
	}
	var every time.Duration
	if s.Schedule == "" {
		c.at(path+".schedule", "missing (cron, e.g. \"0 */6 * * *\", or \"@every 1h\")")
	} else if sched, l, err := parseSchedule(s.Schedule, loc); err != nil {
		c.at(path+".schedule", "%v", err)
	} else {
		s.schedule, s.loc = sched, l
		every = interval(sched, time.Now())
	}
	if s.loc == nil {
		s.loc = loc
	}
	jitter := c.duration(&s.Jitter, path+".jitter", 0)
	if every > 0 && jitter >= every {
		c.at(path+".jitter", "%s is not shorter than the schedule's interval (%s)", s.Jitter.raw, durationText(every))
	}
	timeout := c.duration(&s.Timeout, path+".timeout", DefaultTimeout)
	if s.Timeout.set && timeout == 0 {
		c.at(path+".timeout", "must be more than 0")
	}
	c.duration(&s.RetryBackoff, path+".retry_backoff", DefaultRetryBackoff)
	if s.Retries == nil {
		n := DefaultRetries
		s.Retries = &n
	} else if *s.Retries < 0 {
		c.at(path+".retries", "%d is negative", *s.Retries)
	}
	if s.Parallel == 0 {
		s.Parallel = 2
	} else if s.Parallel < 1 || s.Parallel > 64 {
		c.at(path+".parallel", "%d is out of range 1..64", s.Parallel)
	}
	if s.CompressionLevel == 0 {
		s.CompressionLevel = snapshot.DefaultLevel
	} else if s.CompressionLevel < 1 || s.CompressionLevel > 4 {
		c.at(path+".compression_level", "%d is out of range 1 (fastest) .. 4 (smallest)", s.CompressionLevel)
	}
	switch s.SchemaArchive {
	case "":
		s.SchemaArchive = manifest.SchemaArchivePgDump
	case manifest.SchemaArchivePgDump, manifest.SchemaArchiveNone:
	default:
		c.at(path+".schema_archive", "%q: use pg_dump or none", s.SchemaArchive)
	}
	c.duration(&s.LockTimeout, path+".lock_timeout", 30*time.Second)
	c.duration(&s.CaptureFlushInterval, path+".capture_flush_interval", capture.DefaultFlushInterval)
	if s.Capture && s.tenancy.Model == tenancy.ModelDatabase {
		c.at(path+".capture", "change capture supports the column and schema tenancy models, not database")
	}
	if s.CaptureMaxLag == 0 {
		s.CaptureMaxLag = capture.DefaultMaxLag
	}
	if s.CaptureLagAlert == 0 {
		s.CaptureLagAlert = s.CaptureMaxLag / 2
	}
	if s.CaptureLagAlert < 0 || s.CaptureMaxLag < 0 || s.CaptureLagAlert > s.CaptureMaxLag {
		c.at(path+".capture_lag_alert", "must be between 0 and capture_max_lag (%d bytes)", s.CaptureMaxLag)
	}
	s.proof = s.Capture
	if s.ReplayProof != nil {
		s.proof = *s.ReplayProof
		if s.proof && !s.Capture {
			c.at(path+".replay_proof", "needs capture: true (it proves the change log)")
		}
	}
	if s.ReplayProofScratch != "" && s.ReplayProofScratchEnv != "" {
		c.at(path+".replay_proof_scratch", "give replay_proof_scratch or replay_proof_scratch_env, not both")
	}
	s.scratch = s.ReplayProofScratch
	if s.ReplayProofScratchEnv != "" {
		if s.scratch = strings.TrimSpace(getenv(s.ReplayProofScratchEnv)); s.scratch == "" {
			c.at(path+".replay_proof_scratch_env", "environment variable %s is empty or not set", s.ReplayProofScratchEnv)
		}
	}
	if s.scratch != "" {
		if err := checkDatabaseURL(s.scratch); err != nil {
			c.at(path+".replay_proof_scratch", "%v", err)
		}
	}
	if s.ReplayProofTenants == 0 {
		s.ReplayProofTenants = 10
	} else if s.ReplayProofTenants < 0 {
		c.at(path+".replay_proof_tenants", "%d is negative", s.ReplayProofTenants)
	}
	r := &cfg.Retention
	if s.Retention != nil {
		cfg.checkRetention(c, s.Retention, path+".retention", false, &cfg.Retention)
		r = s.Retention
	}
	s.policy = vault.Policy{
		KeepLast: r.KeepLast, KeepHourly: r.KeepHourly, KeepDaily: r.KeepDaily, KeepWeekly: r.KeepWeekly, KeepMonthly: r.KeepMonthly,
		KeepPreRestore: r.KeepPreRestore.D, KeepPartial: r.KeepPartial.D, Location: s.loc,
	}
	// A purge during a snapshot that reuses chunks of the purged set would
	// take them away; a grace longer than any snapshot rules that out.
	if grace := cfg.Retention.Grace.D; timeout > 0 && grace <= timeout {
		c.at(path+".timeout", "%s is not shorter than retention.grace (%s): a set marked while this source's snapshot runs could be purged before it finishes", durationText(timeout), durationText(grace))
	}
}

func checkDatabaseURL(s string) error {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return fmt.Errorf("bad database URL %s", tenancy.RedactURL(s))
		}
		if u.Scheme != "postgres" && u.Scheme != "postgresql" {
			return fmt.Errorf("bad database URL %s: the scheme must be postgres:// or postgresql://", tenancy.RedactURL(s))
		}
	}
	if _, err := pgx.ParseConfig(s); err != nil {
		_, err = tenancy.ParseURL(s)
		return err
	}
	return nil
}

// durationText renders 168h as 7d and 1h0m0s as 1h.
func durationText(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Summary is the one line --check prints for a valid config.
func (cfg *Config) Summary() string {
	var parts []string
	for _, s := range cfg.Sources {
		parts = append(parts, fmt.Sprintf("%s (%s)", s.Name, s.Schedule))
	}
	enc := ""
	if cfg.keys != nil {
		enc = fmt.Sprintf("; encrypted to %d recipient(s)", len(cfg.keys.RecipientStrings()))
	}
	return fmt.Sprintf("config OK: %d source(s): %s; repository %s%s; listen %s", len(cfg.Sources), strings.Join(parts, ", "), repo.Redact(cfg.Repository), enc, cfg.Listen)
}
