package cycle

import (
	"errors"
	"fmt"
)

// invalid is a problem the user must fix (a missing PVC or Secret, a class
// that does not exist): retrying soon does not help, a condition and an
// event say what to change.
type invalid struct{ err error }

func (e *invalid) Error() string { return e.err.Error() }
func (e *invalid) Unwrap() error { return e.err }

// Invalid marks err as the user's to fix.
func Invalid(err error) error { return &invalid{err: err} }

// Invalidf is Invalid of a formatted error.
func Invalidf(format string, args ...any) error { return Invalid(fmt.Errorf(format, args...)) }

// IsInvalid says whether err is the user's to fix.
func IsInvalid(err error) bool {
	var i *invalid
	return errors.As(err, &i)
}

// InvalidIf marks err Invalid when it is (wraps) target: a package's own
// sentinel for input the user must fix.
func InvalidIf(err, target error) error {
	if errors.Is(err, target) {
		return Invalid(err)
	}
	return err
}
