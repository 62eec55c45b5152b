package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tenantvault/tenantvault/internal/testenv"
)

// shellWith runs a script in a shell whose PATH starts with the built
// tenantvault, as a person's shell with it installed would.
func shellWith(t *testing.T, shell string, args ...string) string {
	t.Helper()
	bin := cliBinary(t)
	cmd := exec.Command(requireTool(t, shell), args...)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", shell, strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String()
}

func TestCompletionScripts(t *testing.T) {
	marks := map[string]string{
		"bash": "complete -o default -F __start_tenantvault tenantvault",
		"zsh":  "#compdef tenantvault",
		"fish": "complete -c tenantvault",
	}
	scripts := map[string]string{}
	for shell, mark := range marks {
		out := expect(t, 0, "", "completion", shell)
		if !strings.Contains(out, mark) {
			t.Fatalf("completion %s: no %q in:\n%.500s", shell, mark, out)
		}
		f := filepath.Join(t.TempDir(), "tenantvault."+shell)
		os.WriteFile(f, []byte(out), 0o644)
		scripts[shell] = f
	}
	// Each shell parses its script.
	shellWith(t, "bash", "-n", scripts["bash"])
	shellWith(t, "zsh", "-n", scripts["zsh"])
	shellWith(t, "fish", "--no-execute", scripts["fish"])
	expect(t, 2, `unknown command "tcsh" for "tenantvault completion"`, "completion", "tcsh")

	// And completes: commands, and the values cobra cannot guess.
	t.Run("bash", func(t *testing.T) {
		complete := func(line string) string {
			words := strings.Fields(line)
			if strings.HasSuffix(line, " ") {
				words = append(words, "")
			}
			quoted := make([]string, len(words))
			for i, w := range words {
				quoted[i] = "'" + w + "'"
			}
			return shellWith(t, "bash", "-c", `source /usr/share/bash-completion/bash_completion
source `+scripts["bash"]+`
COMP_WORDS=(`+strings.Join(quoted, " ")+`); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_LINE='`+line+`'; COMP_POINT=${#COMP_LINE}
__start_tenantvault 2>/dev/null
printf '%s\n' "${COMPREPLY[@]}"`)
		}
		requireFile(t, "/usr/share/bash-completion/bash_completion", "bash-completion")
		if got := complete("tenantvault res"); strings.TrimSpace(got) != "restore" {
			t.Fatalf("tenantvault res<TAB>: %q", got)
		}
		if got := complete("tenantvault restore --if-exists "); got != "fail\nreplace\n" {
			t.Fatalf("--if-exists <TAB>: %q", got)
		}
		if got := complete("tenantvault snapshot --tenancy "); got != "column\nschema\ndatabase\n" {
			t.Fatalf("--tenancy <TAB>: %q", got)
		}
		if got := complete("tenantvault list --log-level "); got != "debug\ninfo\nwarn\nerror\n" {
			t.Fatalf("--log-level <TAB>: %q", got)
		}
	})
	t.Run("fish", func(t *testing.T) {
		got := shellWith(t, "fish", "-c", "source "+scripts["fish"]+`; complete -C "tenantvault restore --if-exists "; complete -C "tenantvault dri"`)
		want := regexp.MustCompile(`(?s)^fail\nreplace\ndrill\tRestore sample tenants`)
		if !want.MatchString(got) {
			t.Fatalf("fish completions: %q", got)
		}
	})
}

// requireFile is requireTool for a file a package installs.
func requireFile(t *testing.T, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		msg := fmt.Sprintf("%s is missing (apt-get install %s; .ci/run does)", path, pkg)
		if testenv.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// TestManPages generates the pages and checks that every command has one,
// with its synopsis and every flag, and that help text survives the
// markdown the pages are rendered from.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("SOURCE_DATE_EPOCH", "1764547200") // 2025-12-01
	var stdout, stderr bytes.Buffer
	a := newApp(strings.NewReader(""), &stdout, &stderr)
	if err := a.execute(t.Context(), []string{"man", "--dir", dir}); err != nil {
		t.Fatalf("man: %v\n%s", err, stderr.String())
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		if !c.IsAvailableCommand() && c != a.root {
			if _, err := os.Stat(filepath.Join(dir, strings.ReplaceAll(c.CommandPath(), " ", "-")+".1")); err == nil {
				t.Errorf("%s is hidden but has a man page", c.CommandPath())
			}
			return
		}
		n++
		name := strings.ReplaceAll(c.CommandPath(), " ", "-")
		b, err := os.ReadFile(filepath.Join(dir, name+".1"))
		if err != nil {
			t.Errorf("no man page for %s: %v", c.CommandPath(), err)
			return
		}
		page := string(b)
		for _, want := range []string{`.TH "TENANTVAULT" "1" "Dec 2025" "tenantvault ` + version + `" "tenantvault manual"`, ".SH NAME\n" + name + " - ", ".SH SYNOPSIS", ".SH DESCRIPTION"} {
			if !strings.Contains(page, want) {
				t.Errorf("%s.1 lacks %q", name, want)
			}
		}
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if !f.Hidden && !strings.Contains(page, `\fB--`+f.Name+`\fP`) {
				t.Errorf("%s.1 does not document --%s", name, f.Name)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(a.root)
	if n < 14 || len(files) != n {
		t.Fatalf("%d commands, %d pages: %v", n, len(files), files)
	}
	drill, _ := os.ReadFile(filepath.Join(dir, "tenantvault-drill.1"))
	if !strings.Contains(string(drill), "tenantvault_drill_<time>_<random>") {
		t.Fatalf("drill page mangles the database name:\n%s", drill)
	}
	if !strings.Contains(stdout.String(), fmt.Sprintf("wrote %d man page(s)", n)) {
		t.Fatalf("stdout: %q", stdout.String())
	}
	expect(t, 2, "--dir is required", "man")
	expect(t, 2, "not a directory", "man", "--dir", filepath.Join(dir, "missing"))
}
