// Command tenantvault takes per-tenant snapshots of multi-tenant PostgreSQL databases and restores chosen tenants, as of a chosen time, with proof.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file"
	_ "github.com/tenantvault/tenantvault/repo/s3"
)

// Exit codes of DESIGN.md.
const (
	exitOK        = 0
	exitFailure   = 1
	exitUsage     = 2
	exitIntegrity = 3
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command line and returns the exit code; tests call it
// directly.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp(stdin, stdout, stderr)
	err := app.execute(ctx, args)
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	if !errors.Is(err, errSilent) {
		fmt.Fprintf(stderr, "tenantvault: %s\n", err)
		var ie *tenantvault.InputError
		if errors.As(err, &ie) && ie.Hint != "" {
			fmt.Fprintf(stderr, "hint: %s\n", ie.Hint)
		}
	}
	return code
}

// errSilent marks an error whose message the command already printed.
var errSilent = errors.New("reported")

type silentError struct {
	code int
}

func (e *silentError) Error() string   { return "reported" }
func (e *silentError) Is(t error) bool { return t == errSilent }

// exitCode classifies an error: integrity failures win over bad input,
// which wins over operational failures.
func exitCode(err error) int {
	var se *silentError
	var ie *tenantvault.InputError
	var ue *repo.URLError
	switch {
	case errors.As(err, &se):
		return se.code
	case errors.Is(err, tenantvault.ErrIntegrity):
		return exitIntegrity
	case errors.As(err, &ie), errors.As(err, &ue), errors.Is(err, repo.ErrBucketNotFound), errors.As(err, new(*usageError)):
		return exitUsage
	}
	return exitFailure
}

// usageError is a command line the parser refused.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }
