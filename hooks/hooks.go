// Package hooks runs the lifecycle hooks around activation (after_activate) and reports
// their outcome. A hook runs after current has been swapped, so its failure is reported to
// the pusher but cannot undo the activation: the release stays live.
package hooks

import (
	"context"
	"fmt"
	"io"
)

// Event names a point in a release's life at which hooks run.
type Event string

// AfterActivate runs right after current names the new release, on every activation
// (rollbacks included).
const AfterActivate Event = "after_activate"

// Runner runs one hook command. name is what the pusher sees ("after_activate 1/2").
// The deploy pipeline implements it with the same builder as build and test commands.
type Runner interface {
	RunStep(ctx context.Context, name, command string, out io.Writer) error
}

// Hooks is the set of commands to run per event.
type Hooks struct {
	AfterActivate []string
}

// Fire runs the commands of ev in order through r and stops at the first failure, which it
// returns wrapped in a *Error.
func (h Hooks) Fire(ctx context.Context, ev Event, r Runner, out io.Writer) error {
	var cmds []string
	switch ev {
	case AfterActivate:
		cmds = h.AfterActivate
	default:
		return fmt.Errorf("unknown hook event %q", ev)
	}
	for i, c := range cmds {
		name := fmt.Sprintf("%s %d/%d", ev, i+1, len(cmds))
		if err := r.RunStep(ctx, name, c, out); err != nil {
			return &Error{Event: ev, Err: err}
		}
	}
	return nil
}

// Error is a hook that failed. Its message is the failing command's, which names the step.
type Error struct {
	Event Event
	Err   error
}

func (e *Error) Error() string { return e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }
