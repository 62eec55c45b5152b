// Package tenantvault holds the error classes shared by every part of the tool; they decide the command's exit code.
package tenantvault

import (
	"errors"
	"fmt"
)

// ErrIntegrity is wrapped by every error that means stored or restored data is
// not what was snapshotted: a checksum or digest mismatch, a missing or
// truncated object. Commands exit with code 3 for it.
var ErrIntegrity = errors.New("integrity check failed")

// InputError is bad input from the user: an unknown tenant, a bad time, a bad
// URL, a refused operation. Commands exit with code 2 for it.
type InputError struct {
	Msg  string
	Hint string // optional advice for people, printed on its own line
	Err  error  // optional cause
}

func (e *InputError) Error() string {
	if e.Err != nil && e.Msg == "" {
		return e.Err.Error()
	}
	return e.Msg
}

func (e *InputError) Unwrap() error { return e.Err }

// Inputf returns an *InputError with a formatted message.
func Inputf(format string, args ...any) error {
	return &InputError{Msg: fmt.Sprintf(format, args...)}
}

// WithHint returns an *InputError with a message and a hint.
func WithHint(msg, hint string) error {
	return &InputError{Msg: msg, Hint: hint}
}

// Integrityf returns an error wrapping ErrIntegrity with a formatted message.
func Integrityf(format string, args ...any) error {
	return &integrityError{msg: fmt.Sprintf(format, args...)}
}

type integrityError struct{ msg string }

func (e *integrityError) Error() string { return e.msg }
func (e *integrityError) Unwrap() error { return ErrIntegrity }
