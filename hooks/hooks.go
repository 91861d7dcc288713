// Package hooks is slipway's receive hook: the deploy pipeline. It turns an accepted push,
// a rollback or a redeploy into a live release by composing the releaser (the deploy root
// on disk) and the builder (the commands), and it is the one place that knows the order of
// a deploy:
//
//	journal -> recipe (the server's [[env]] over the pushed slipway.toml) -> checkout ->
//	shared links -> build -> test -> before_activate -> prepare targets -> complete -> swap current ->
//	after_activate -> health check -> prune, or, when one of the last two fails, on_failure:
//	revert (current back to the release live before) or keep
//
// A kept release (a push of an older commit, a rollback) skips from the recipe to the
// shared links and the swap. The lifecycle hooks around activation (Hooks.Fire) and the
// operator commands (status, releases, history, logs, rollback, redeploy, lock, unlock,
// destroy; RunCommand), which the CLI and SSH share, live here too.
//
// Invariants:
//   - Every deploy, rollback and redeploy holds its environment's deploy lock from before
//     its journal entry to after its outcome is recorded, and is one journal entry.
//   - Anything that fails before the swap removes the release and leaves current, the
//     branch and shared/ as they were. From the swap on, the requester hanging up changes
//     nothing: the release is live, its hooks run to the end.
//   - What the requester sees is short and safe (no server paths, no environment values);
//     the operator log gets the whole error chain.
//   - In the embedded default, an environment exists once a push of an authorized key made
//     a release live in it; a push that created one and left nothing live removes it.
package hooks

import (
	"context"
	"fmt"
	"io"
)

// Event names a point in a release's life at which hooks run.
type Event string

// The events.
const (
	// BeforeActivate runs in the new release after its tests, before the swap: a release
	// phase (migrations, a backup). Its failure rejects the push; nothing changes.
	BeforeActivate Event = "before_activate"
	// BeforeActivateEach runs on each host a release goes live on (each target, and this
	// one if it is a target), in that host's copy of the release, before any host swaps.
	BeforeActivateEach Event = "before_activate_each"
	// AfterActivate runs right after current names the new release, on every activation
	// (rollbacks and reverts included).
	AfterActivate Event = "after_activate"
)

// Runner runs one hook command. name is what the pusher sees ("after_activate 1/2").
// The deploy pipeline implements it with the same builder as build and test commands.
type Runner interface {
	RunStep(ctx context.Context, name, command string, out io.Writer) error
}

// Hooks is the set of commands to run per event.
type Hooks struct {
	BeforeActivate     []string
	BeforeActivateEach []string
	AfterActivate      []string
}

// Fire runs the commands of ev in order through r and stops at the first failure, which it
// returns wrapped in a *Error.
func (h Hooks) Fire(ctx context.Context, ev Event, r Runner, out io.Writer) error {
	var cmds []string
	switch ev {
	case BeforeActivate:
		cmds = h.BeforeActivate
	case BeforeActivateEach:
		cmds = h.BeforeActivateEach
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
