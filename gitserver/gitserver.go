// Package gitserver is slipway's front door: an SSH server (gliderlabs/ssh) that speaks
// git's receive-pack protocol with go-git's plumbing and hands every accepted push of an
// environment's deploy branch to a Deployer.
//
// Invariants:
//   - Only keys in Config.Keys authenticate; the pusher's name is the name of the key that
//     actually authenticated, never one that was merely offered.
//   - Nothing but git-receive-pack for a strictly valid APP/ENV repo name is served: no shell,
//     PTY, port forwarding, environment passing or any other SSH feature.
//   - A branch ref moves only after the Deployer accepted the push (pre-receive semantics),
//     and only if it still has the value the pusher saw (compare-and-swap).
//   - The pack is read by its own structure (header, object count, trailer), never until end
//     of stream, so clients that keep their side open (libgit2) work.
package gitserver

import (
	"context"
	"io"
	"time"

	"github.com/go-git/go-git/v5/plumbing/storer"
	gossh "golang.org/x/crypto/ssh"
)

// Config is what a Server needs to run. Zero values take the defaults named per field.
type Config struct {
	// HostKeyPath is the ed25519 host key. Generated once (0600) if missing, then reused.
	HostKeyPath string
	// Keys are the authorized public keys; each one's Name is the pusher's name.
	Keys []Key
	// ReposDir holds the bare repositories, one per environment: <ReposDir>/<APP>/<ENV>.git.
	// A repository is created the first time an authorized push reaches it.
	ReposDir string
	// IdleTimeout closes a connection that sent and received nothing for this long.
	// Default 5m. Keepalives during a deploy count as traffic.
	IdleTimeout time.Duration
	// Keepalive is how often an empty sideband packet is sent while a deploy is silent, so
	// that idle timeouts and NAT boxes between the pusher and the server keep the connection.
	// Default 5s (git's own receive.keepAlive).
	Keepalive time.Duration
}

// Key is one authorized public key.
type Key struct {
	Name string // the pusher's name: the key's comment in authorized_keys
	Key  gossh.PublicKey
}

// Push is one accepted update of an environment's deploy branch. Its objects are in
// Objects already; the branch has not moved yet.
type Push struct {
	Repo           string   // environment name, "APP/ENV"
	Branch         string   // deploy branch, e.g. "main"
	OldSHA         string   // the branch's value before the push; "" if it did not exist
	NewSHA         string   // the pushed commit (verified to be a commit in Objects)
	Pusher         string   // name of the key that authenticated
	KeyFingerprint string   // SHA256 fingerprint of that key
	Options        []string // git push -o values, in order
	// Objects is the environment's object store. It is safe to read for the duration of
	// Deploy: no other push to the same environment runs at the same time.
	Objects storer.EncodedObjectStorer
}

// Target is what a Deployer says of an environment when it reserves it for a push.
type Target struct {
	Branch string // the deploy branch, e.g. "main"
	// Live is the commit of the live release, "" if none. The deploy branch always names
	// it: if a crash came between the swap of current and the move of the branch, the server
	// moves the branch to Live before it advertises the refs.
	Live string
}

// Deployer turns accepted pushes into live releases.
type Deployer interface {
	// Reserve is asked before the ref advertisement, before any pack is read: may pusher push
	// to repo now? On success it returns the environment's Target and a release func the
	// server calls once when the push is over. Its error is shown to the pusher as
	// "fatal: remote error: <Error()>", so it must be short and safe (unknown repo, not
	// allowed, busy: who holds it since when).
	Reserve(repo, pusher string) (target Target, release func(), err error)
	// Deploy turns one accepted push into a live release. out reaches the pusher as
	// "remote:" lines, live. A returned error rejects the push and keeps the branch where it
	// was; its Error() (first line) is shown to the pusher as the ref's rejection reason.
	// ctx is cancelled if the pusher disconnects.
	Deploy(ctx context.Context, push Push, out io.Writer) error
}
