// Package gitserver is slipway's front door: an SSH server (gliderlabs/ssh) that speaks
// git's wire protocol with go-git's plumbing. It hands every accepted push of an
// environment's deploy branch to a Deployer, serves fetches and clones of an environment
// (upload-pack), and passes every other command to a Commander, if it has one.
//
// Invariants:
//   - Only keys in Config.Keys (or the last Server.SetKeys) authenticate; the session's
//     identity is the key that actually authenticated, never one that was merely offered,
//     and every new session checks that its key is still authorized.
//   - At most Config.MaxUnauthenticated connections wait for their handshake at a time,
//     each for at most Config.HandshakeTimeout; a client that reads nothing for
//     Config.StallTimeout counts as gone.
//   - Only git-receive-pack and git-upload-pack for a strictly valid APP/ENV repo name, and
//     the operator commands of Config.Commands, are served: no shell, PTY, port forwarding,
//     agent forwarding, environment passing or any other SSH feature.
//   - A branch ref moves only after the Deployer accepted the push (pre-receive semantics),
//     and only if it still has the value the push was checked against (compare-and-swap),
//     which is the value the pusher was shown: a push never replaces a commit its pusher
//     did not see.
//   - A pushed pack is at most Config.MaxPushSize bytes, and every tree in it passes git's
//     fsck rules for tree entries.
//     Before its refs are advertised, the deploy branch is moved to the live release if a
//     crash left it elsewhere.
//   - A fetch never creates or changes a repository, except for that alignment, and sends
//     only objects reachable from the refs it advertised.
//   - Pushed packs are read, stored and merged by package gitserver/internal/pack, whose doc
//     states their invariants; a merge never removes a pack a fetch may be reading.
package gitserver

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/go-git/go-git/v5/plumbing/storer"

	"github.com/slipway/slipway/internal/authkeys"
)

// Config is what a Server needs to run. Zero values take the defaults named per field.
type Config struct {
	// HostKeyPath is the ed25519 host key. Generated once (0600) if missing, then reused.
	HostKeyPath string
	// Keys are the authorized public keys; each one's Name is the pusher's name.
	// Server.SetKeys replaces them while the server runs.
	Keys []authkeys.Key
	// ReposDir holds the bare repositories, one per environment: <ReposDir>/<APP>/<ENV>.git
	// (Repositories). A repository is created the first time an authorized push reaches it;
	// a fetch never creates one.
	ReposDir string
	// IdleTimeout closes a connection that sent and received nothing for this long.
	// Default 5m. Keepalives during a deploy count as traffic.
	IdleTimeout time.Duration
	// Keepalive is how often an empty sideband packet is sent while a deploy, a wait for the
	// environment or the preparation of a pack is silent, so that idle timeouts and NAT boxes
	// between the client and the server keep the connection. Default 5s (git's own
	// receive.keepAlive).
	Keepalive time.Duration
	// HandshakeTimeout closes a connection that has not completed the SSH handshake and
	// authenticated this long after it was accepted. Default 20s.
	HandshakeTimeout time.Duration
	// MaxUnauthenticated is how many connections may be open at once that have not
	// authenticated yet; beyond it a new connection is closed at once, before the SSH
	// banner. One source address (an IPv4 address, an IPv6 /64) may hold at most a quarter
	// of them (at least 1), as OpenSSH's MaxStartups and PerSourceMaxStartups do, so that one
	// client alone cannot lock the others out. Default 64.
	MaxUnauthenticated int
	// MaxPushSize is the most bytes a pushed pack may have. It is enforced while the pack
	// streams: reading stops at the limit, nothing is stored and the push is refused.
	// Default 2 GiB.
	MaxPushSize int64
	// MaxObjectSize is the largest object (a file, or a delta's result) a push may hold: one
	// larger could never be in a release (slipway passes max_release_size). It is refused
	// from its header, before it costs the time to inflate or build it. Default: no limit
	// but the pack format's.
	MaxObjectSize int64
	// StallTimeout is how long a write to a client may wait for the client to read before
	// the client counts as gone: its connection is closed and its session's context is
	// cancelled (with ErrStalled as the cause), as when it disconnects. Default 2m.
	StallTimeout time.Duration
	// Commands runs every exec request that is not a git command (`ssh git@HOST status`).
	// Nil: only git is served and any other command is refused.
	Commands Commander
	// Observer, if set, is told of every connection and session (metrics).
	Observer Observer
}

// Observer is told what the server does, as it happens. Its methods must return at once.
type Observer interface {
	// Connection is a connection that authenticated ("authenticated"), or one refused
	// before that, with why: "too_many_unauthenticated", "too_many_from_source",
	// "handshake_timeout", "unknown_key", "handshake_failed".
	Connection(state string)
	// Session is a session that ended: its service ("receive-pack", "upload-pack",
	// "command"; "" if refused before one) and its outcome, as the log line has them.
	Session(service, outcome string)
}

// Identity is who a session authenticated as.
type Identity struct {
	Name           string // the authorized key's Name
	KeyFingerprint string // its SHA256 fingerprint, "SHA256:..."
}

// Push is one accepted update of an environment's deploy branch. Its objects are in
// Objects already; the branch has not moved yet.
type Push struct {
	Repo   string // environment name, "APP/ENV"
	Branch string // deploy branch, e.g. "main"
	// OldSHA is the branch's value the push replaces, "" if it did not exist: always the
	// value the pusher was shown. A push that waited for the environment while the branch
	// moved is refused as stale ("fetch first"), as git's receive-pack does.
	OldSHA         string
	NewSHA         string   // the pushed commit (verified to be a commit in Objects)
	Pusher         string   // name of the key that authenticated
	KeyFingerprint string   // SHA256 fingerprint of that key
	Options        []string // git push -o values, in order (wait=... included)
	// Objects is the environment's object store. It is safe to read for the duration of
	// Deploy: no other push to the same environment runs at the same time.
	Objects storer.EncodedObjectStorer
}

// Target is what a Deployer says of an environment when it reserves or inspects it.
type Target struct {
	Branch string // the deploy branch, e.g. "main"
	// Live is the commit of the live release, "" if none. The deploy branch always names
	// it: if a crash came between the swap of current and the move of the branch, the server
	// moves the branch to Live before it advertises the refs.
	Live string
}

// Deployer turns accepted pushes into live releases and says who may push and fetch.
type Deployer interface {
	// Reserve is asked before the ref advertisement, before any pack is read: may pusher push
	// to repo now? It waits up to wait for a deploy already running in repo (0: no wait),
	// returning an error that errors.Is(err, ErrBusy) if it is still running then. On
	// success it returns the environment's Target and a release func the server calls once.
	// Its error is shown to the pusher, so it must be short and safe.
	Reserve(ctx context.Context, repo, pusher string, wait time.Duration) (Target, func(), error)
	// Inspect is asked before a fetch or clone: may who read repo? It returns the Target
	// without reserving anything. Its error is shown to the client.
	Inspect(repo, who string) (Target, error)
	// Deploy turns one accepted push into a live release. out reaches the pusher as
	// "remote:" lines, live. A returned error rejects the push and keeps the branch where it
	// was; its Error() (first line) is shown to the pusher as the ref's rejection reason.
	// ctx is cancelled if the pusher disconnects.
	Deploy(ctx context.Context, push Push, out io.Writer) error
}

// ErrBusy is what Reserve's error wraps when another deploy of the environment is running.
var ErrBusy = errors.New("busy")

// ErrFrozen is what Reserve's error matches (errors.Is) when the environment is frozen: the
// push is refused, and its session's outcome is "frozen".
var ErrFrozen = errors.New("frozen")

// Commander runs the operator commands offered over SSH: `ssh -p PORT git@HOST status`.
type Commander interface {
	// RunCommand runs args (args[0] is the command) for who and returns its exit status.
	// stdin, stdout and stderr are the session's. ctx is cancelled when the client goes away.
	RunCommand(ctx context.Context, who Identity, args []string, stdin io.Reader, stdout, stderr io.Writer) int
}
