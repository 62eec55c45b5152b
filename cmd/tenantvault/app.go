package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
	"golang.org/x/term"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// app holds what every command shares: streams, global options, the logger.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	root           *cobra.Command

	configFile string
	logLevel   string
	logFormat  string
	jsonOut    bool
	cpuProfile string
	profFile   *os.File
	log        *slog.Logger
	// logs is where log lines go: stderr, above the progress bar while one
	// is drawn.
	logs *logSink
	args []string
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *app {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, logs: &logSink{w: stderr}}
	root := &cobra.Command{
		Use:   "tenantvault",
		Short: "Per-tenant backup and restore for multi-tenant PostgreSQL",
		Long: `tenantvault makes the tenant the unit of backup and restore: consistent,
compressed, verifiable per-tenant snapshots in S3-compatible storage or a
directory, and restores of chosen tenants, as of a chosen time, into a live
or scratch database, with every byte checked.

Every flag can also be set with a TENANTVAULT_<FLAG> environment variable
(e.g. TENANTVAULT_REPO) or in the YAML file named by --config.

Exit codes: 0 success, 1 operational failure, 2 usage or bad input,
3 integrity failure.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		Version:           version,
		DisableAutoGenTag: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.bind(cmd); err != nil {
				return err
			}
			if err := a.startProfile(); err != nil {
				return err
			}
			a.terminalLogLevel(cmd)
			if err := a.setupLogging(); err != nil {
				return err
			}
			a.warnPasswordInArgs()
			return nil
		},
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err.Error()} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.configFile, "config", "", "YAML file with flag values (top level, or under a section named after the command)")
	pf.StringVar(&a.logLevel, "log-level", "info", "log level: debug, info, warn, error (restore, snapshot, verify and drill drawing a progress bar on a terminal: warn unless given)")
	pf.StringVar(&a.logFormat, "log-format", "text", "log format on stderr: text or json")
	pf.BoolVar(&a.jsonOut, "json", false, "print results as JSON on stdout")
	pf.StringVar(&a.cpuProfile, "cpu-profile", "", "write a Go CPU profile of the command to this file")
	pf.MarkHidden("cpu-profile")
	root.AddCommand(
		a.snapshotCmd(), a.listCmd(), a.restoreCmd(), a.verifyCmd(),
		a.drillCmd(), a.agentCmd(), a.pruneCmd(), a.captureCmd(), a.keygenCmd(),
		a.diffCmd(), a.changesCmd(), a.exportCmd(), a.forgetCmd(),
		a.manCmd(),
	)
	addCompletions(root)
	a.root = root
	return a
}

func (a *app) execute(ctx context.Context, args []string) error {
	a.args = args
	a.root.SetArgs(args)
	defer a.stopProfile()
	cmd, err := a.root.ExecuteContextC(ctx)
	if err != nil && cmd != nil && isCobraUsage(err) {
		return &usageError{fmt.Sprintf("%s (see '%s --help')", err, cmd.CommandPath())}
	}
	return err
}

// warnPasswordInArgs warns when a database URL on the command line holds a
// password: every user of the machine can read a process's arguments (ps,
// /proc), and shells keep them in their history. The command still runs:
// refusing would break scripts in the middle of an incident.
func (a *app) warnPasswordInArgs() {
	for _, arg := range a.args {
		if strings.HasPrefix(arg, "-") {
			if _, v, ok := strings.Cut(arg, "="); ok {
				arg = v // --source=postgres://...
			}
		}
		if tenancy.RedactURL(arg) != arg {
			a.log.Warn("a database URL on the command line holds a password, which other users of this machine can read; put it in PGPASSWORD or ~/.pgpass (or the URL in TENANTVAULT_SOURCE/TARGET) instead")
			return
		}
	}
}

// isCobraUsage recognises cobra's own argument errors.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "accepts ", "requires ", "invalid argument", "flag needs an argument", "required flag"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// bind fills every flag the user did not set from TENANTVAULT_<FLAG> and
// then from the config file: flags win over the environment, which wins
// over the file.
func (a *app) bind(cmd *cobra.Command) error {
	if !cmd.Flags().Changed("config") {
		if v := os.Getenv("TENANTVAULT_CONFIG"); v != "" {
			a.configFile = v
		}
	}
	var file map[string]any
	if a.configFile != "" {
		data, err := os.ReadFile(a.configFile)
		if err != nil {
			return tenantvault.Inputf("read config file: %v", err)
		}
		if err := yaml.Unmarshal(data, &file); err != nil {
			return tenantvault.Inputf("config file %s: %v", a.configFile, err)
		}
	}
	section, _ := file[cmd.Name()].(map[string]any)
	var errs []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "help" || f.Name == "config" {
			return
		}
		env := "TENANTVAULT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := setFlag(f, v, true); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", env, err))
			}
			return
		}
		v, ok := section[f.Name]
		if !ok {
			v, ok = file[f.Name]
		}
		if ok {
			if err := setFlagValue(f, v); err != nil {
				errs = append(errs, fmt.Sprintf("config file %s: %s: %v", a.configFile, f.Name, err))
			}
		}
	})
	if len(errs) > 0 {
		return tenantvault.Inputf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// setFlag sets a flag from text; list flags take one value per line.
func setFlag(f *pflag.Flag, v string, fromEnv bool) error {
	if sv, ok := f.Value.(pflag.SliceValue); ok && fromEnv {
		var items []string
		for _, line := range strings.Split(v, "\n") {
			if line = strings.TrimRight(line, "\r"); line != "" {
				items = append(items, line)
			}
		}
		return sv.Replace(items)
	}
	if err := f.Value.Set(v); err != nil {
		return err
	}
	f.Changed = true
	return nil
}

func setFlagValue(f *pflag.Flag, v any) error {
	switch x := v.(type) {
	case []any:
		sv, ok := f.Value.(pflag.SliceValue)
		if !ok {
			return fmt.Errorf("takes one value, not a list")
		}
		items := make([]string, len(x))
		for i, e := range x {
			items[i] = fmt.Sprint(e)
		}
		return sv.Replace(items)
	case map[string]any:
		return fmt.Errorf("takes a value, not a mapping")
	case nil:
		return nil
	case bool:
		return setFlag(f, strconv.FormatBool(x), false)
	default:
		return setFlag(f, fmt.Sprint(x), false)
	}
}

func (a *app) setupLogging() error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(a.logLevel)); err != nil {
		return tenantvault.Inputf("--log-level %q: use debug, info, warn or error", a.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch a.logFormat {
	case "text":
		a.log = slog.New(slog.NewTextHandler(a.logs, opts))
	case "json":
		a.log = slog.New(slog.NewJSONHandler(a.logs, opts))
	default:
		return tenantvault.Inputf("--log-format %q: use text or json", a.logFormat)
	}
	return nil
}

// terminal reports whether w is an interactive terminal.
func terminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// printJSON writes v as indented JSON to stdout.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// repoFlags are the flags of every command that opens a repository.
type repoFlags struct {
	url  string
	init bool
	keys keyFlags
}

// keyFlags are the encryption flags (docs/SECURITY.md). Keys come from
// files only: a secret on the command line would be visible to every user
// of the machine, so the flags name files, and recipients are public keys.
type keyFlags struct {
	identity       string
	recipients     []string
	recipientsFile string
	signingKey     string
}

// addReader adds --identity, for commands that decrypt.
func (k *keyFlags) addReader(fs *pflag.FlagSet) {
	fs.StringVar(&k.identity, "identity", "", "identity file that decrypts an encrypted repository (written by tenantvault keygen; it also names the trusted signers)")
}

// addWriter adds the flags of commands that write encrypted sets.
func (k *keyFlags) addWriter(fs *pflag.FlagSet) {
	fs.StringArrayVar(&k.recipients, "recipient", nil, "encrypt to this age public key, age1... (repeatable); --init with it creates an encrypted repository")
	fs.StringVar(&k.recipientsFile, "recipients-file", "", "file of recipients (age1...), one per line")
	fs.StringVar(&k.signingKey, "signing-key", "", "signing key file that signs the manifests of encrypted sets (tenantvault keygen --signing-output)")
}

// load reads the keys the flags name; nil when none is given.
func (k *keyFlags) load(log *slog.Logger) (*vault.Keys, error) {
	if k.identity == "" && len(k.recipients) == 0 && k.recipientsFile == "" && k.signingKey == "" {
		return nil, nil
	}
	keys := &vault.Keys{}
	bad := func(flag string, err error) error {
		return &tenantvault.InputError{Msg: fmt.Sprintf("%s: %v", flag, err)}
	}
	var warns []vault.KeyFileWarning
	if k.identity != "" {
		w, err := keys.LoadKeyFile(k.identity)
		if err != nil {
			return nil, bad("--identity", err)
		}
		if len(keys.Identities) == 0 {
			return nil, bad("--identity", fmt.Errorf("%s holds no age identity (AGE-SECRET-KEY-1...)", k.identity))
		}
		warns = append(warns, w...)
	}
	if k.signingKey != "" {
		w, err := keys.LoadSigningKeyFile(k.signingKey)
		if err != nil {
			return nil, bad("--signing-key", err)
		}
		warns = append(warns, w...)
	}
	for _, r := range k.recipients {
		if err := keys.AddRecipient(r); err != nil {
			return nil, bad("--recipient", err)
		}
	}
	if k.recipientsFile != "" {
		if err := keys.LoadRecipientsFile(k.recipientsFile); err != nil {
			return nil, bad("--recipients-file", err)
		}
	}
	for _, w := range warns {
		log.Warn(string(w))
	}
	return keys, nil
}

func (r *repoFlags) add(fs *pflag.FlagSet, withInit bool) {
	fs.StringVar(&r.url, "repo", "", "repository URL: file:///path or s3://bucket/prefix[?endpoint=URL&region=R] (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
	if withInit {
		fs.BoolVar(&r.init, "init", false, "create the repository directory or bucket when it does not exist")
	}
}

// open opens the repository with retries; initialise makes an empty
// repository a tenantvault one (snapshot does, readers do not).
func (a *app) openVault(ctx context.Context, r *repoFlags, initialise bool) (*vault.Vault, func(), error) {
	if r.url == "" {
		return nil, nil, &usageError{"--repo is required (or TENANTVAULT_REPO)"}
	}
	keys, err := r.keys.load(a.log)
	if err != nil {
		return nil, nil, err
	}
	b, err := repo.Open(ctx, r.url, repo.Options{Create: r.init})
	if err != nil {
		if isNetwork(err) {
			return nil, nil, err // may work later: operational
		}
		// A repository that cannot be used as configured (missing
		// directory or bucket, no permission, bad credentials) is bad
		// input: retrying will not help.
		return nil, nil, &tenantvault.InputError{Err: err}
	}
	b = repo.Retry(b, repo.RetryOptions{Logger: a.log})
	v, err := vault.Open(ctx, b, vault.Options{Init: initialise, Logger: a.log, Keys: keys})
	if err != nil {
		b.Close()
		return nil, nil, err
	}
	return v, func() { b.Close() }, nil
}

// isNetwork reports whether err comes from failing to reach a server.
func isNetwork(err error) bool {
	var op *net.OpError
	var ue *url.Error
	var dns *net.DNSError
	return errors.As(err, &op) || errors.As(err, &ue) || errors.As(err, &dns) ||
		errors.Is(err, context.DeadlineExceeded)
}

// notYet registers a command of DESIGN.md that this build does not have.
func notYet(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:                use,
		Short:              short + " (not built yet)",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return &usageError{fmt.Sprintf("'%s' is not available in this version of tenantvault yet", cmd.CommandPath())}
		},
	}
}

// humanBytes renders a byte count for people.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (a *app) startProfile() error {
	if a.cpuProfile == "" {
		return nil
	}
	f, err := os.Create(a.cpuProfile)
	if err != nil {
		return tenantvault.Inputf("--cpu-profile: %v", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err
	}
	a.profFile = f
	return nil
}

func (a *app) stopProfile() {
	if a.profFile != nil {
		pprof.StopCPUProfile()
		a.profFile.Close()
	}
}
