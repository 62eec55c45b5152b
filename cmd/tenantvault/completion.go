package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"

	"github.com/tenantvault/tenantvault"
)

// Shell completion comes from cobra's own `completion bash|zsh|fish|powershell`
// command, which every build has; this file adds what cobra cannot guess
// (the values of the flags that take one of a few words, and which flags
// name files) and the man pages, generated from the same command
// definitions so that they never drift from --help.

// flagChoices are the fixed values of flags, offered by shell completion.
var flagChoices = map[string][]string{
	"log-level":  {"debug", "info", "warn", "error"},
	"log-format": {"text", "json"},
	"tenancy":    {"column", "schema", "database"},
	"if-exists":  {"fail", "replace"},
}

// fileFlags name files; completion offers files (with these extensions,
// when any are given) instead of nothing.
var fileFlags = map[string][]string{
	"config":          {"yaml", "yml"},
	"tenants-file":    nil,
	"identity":        nil,
	"recipients-file": nil,
	"signing-key":     nil,
	"report":          {"xml", "json"},
	"output":          nil,
	"signing-output":  nil,
	"temp-dir":        nil,
	"pg-dump":         nil,
	"pg-restore":      nil,
}

// addCompletions adds cobra's completion command now (cobra would add it
// when executing) and registers the value completions of every command's
// flags.
func addCompletions(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			// A command without Run prints its help for any argument and
			// exits 0; "completion tcsh" is bad input (exit 2).
			c.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
		}
	}
	var walk func(c *cobra.Command, persistent bool)
	walk = func(c *cobra.Command, persistent bool) {
		fs := c.Flags()
		if persistent {
			fs = c.PersistentFlags()
		}
		for name, values := range flagChoices {
			if fs.Lookup(name) != nil {
				c.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
			}
		}
		for name, exts := range fileFlags {
			f := fs.Lookup(name)
			if f == nil {
				continue
			}
			if name == "temp-dir" {
				c.MarkFlagDirname(name)
			} else {
				c.MarkFlagFilename(name, exts...)
			}
		}
		if persistent {
			return
		}
		for _, sub := range c.Commands() {
			walk(sub, false)
		}
	}
	walk(root, true)
	for _, sub := range root.Commands() {
		walk(sub, false)
	}
}

// manCmd writes one man page per command. It is hidden: packagers run it
// at build time (tenantvault man --dir /usr/share/man/man1); people read
// the pages with man(1). SOURCE_DATE_EPOCH fixes the pages' date, for
// reproducible packages.
func (a *app) manCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:    "man --dir DIR",
		Short:  "Write the man pages of every command into DIR",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return &usageError{"--dir is required"}
			}
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return tenantvault.Inputf("--dir %s: not a directory", dir)
			}
			escapeForMan(a.root)
			header := &doc.GenManHeader{Title: "TENANTVAULT", Section: "1", Source: "tenantvault " + version, Manual: "tenantvault manual"}
			if err := doc.GenManTree(a.root, header, dir); err != nil {
				return fmt.Errorf("write man pages: %w", err)
			}
			n, _ := filepath.Glob(filepath.Join(dir, "tenantvault*.1"))
			fmt.Fprintf(a.stdout, "wrote %d man page(s) to %s\n", len(n), strings.TrimSuffix(dir, "/"))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory to write the pages into (it must exist)")
	cmd.MarkFlagDirname("dir")
	return cmd
}

// escapeForMan escapes the help texts for the markdown that cobra renders
// man pages from: "tenantvault_drill_<time>" must not turn into italics
// and a dropped HTML tag. It changes the commands in place, which only the
// man command, a process of its own, does.
func escapeForMan(c *cobra.Command) {
	md := strings.NewReplacer(`\`, `\\`, "_", `\_`, "*", `\*`, "<", `\<`, ">", `\>`, "`", "\\`", "[", `\[`, "]", `\]`)
	c.Long, c.Short = md.Replace(c.Long), md.Replace(c.Short)
	c.Flags().VisitAll(func(f *pflag.Flag) { f.Usage = md.Replace(f.Usage) })
	c.PersistentFlags().VisitAll(func(f *pflag.Flag) { f.Usage = md.Replace(f.Usage) })
	for _, sub := range c.Commands() {
		escapeForMan(sub)
	}
}
