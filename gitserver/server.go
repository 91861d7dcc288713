package gitserver

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"

	gossh "golang.org/x/crypto/ssh"

	"github.com/slipway/slipway/internal/atomicfile"
	"github.com/slipway/slipway/internal/authkeys"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("gitserver: server closed")

// Defaults for the zero values of Config.
const (
	DefaultIdleTimeout        = 5 * time.Minute
	DefaultKeepalive          = 5 * time.Second
	DefaultHandshakeTimeout   = 20 * time.Second
	DefaultMaxUnauthenticated = 64
	DefaultMaxPushSize        = 2 << 30
	DefaultStallTimeout       = 2 * time.Minute
)

// ciphers are the SSH ciphers offered, AES-GCM first: with the CPU's AES instructions, Go's
// AES-GCM moves more data per CPU second than its chacha20-poly1305. But in SSH the client
// picks, the first cipher of its own list that the server offers (RFC 4253 7.1): OpenSSH,
// whose list starts with chacha20-poly1305, uses AES-GCM only if told to (`Ciphers
// aes128-gcm@openssh.com` in its config, or ssh -c). chacha20-poly1305 and AES-CTR stay
// offered for clients without AES-GCM.
var ciphers = []string{
	gossh.CipherAES128GCM,
	gossh.CipherAES256GCM,
	gossh.CipherChaCha20Poly1305,
	gossh.CipherAES128CTR,
	gossh.CipherAES192CTR,
	gossh.CipherAES256CTR,
}

// Server is slipway's SSH git server. Create it with New, run it with Serve, stop it with
// Shutdown.
type Server struct {
	cfg      Config
	deployer Deployer
	log      zerolog.Logger
	signer   gossh.Signer
	ssh      *ssh.Server
	repos    Repositories // at cfg.ReposDir
	locks    repoLocks
	keys     atomic.Pointer[[]authkeys.Key] // the authorized keys: Config.Keys, then each SetKeys
	gate     *gate                          // admits connections until they authenticate
	refusals *refusalLog                    // counts what gate refuses
	push     atomic.Pointer[pushLimits]     // Config's MaxPushSize and MaxObjectSize, then each SetLimits

	// stopping is cancelled, with ErrShuttingDown as its cause, when Shutdown's grace is over:
	// every session's context derives from it, so running deploys are cancelled and can
	// still tell their client why before the connections close.
	stopping context.Context
	stop     context.CancelCauseFunc

	mu        sync.Mutex                // guards closing, listeners, and handlers.Add against Wait
	closing   bool                      // Shutdown was called: no new listeners or sessions
	listeners map[net.Listener]struct{} // listeners passed to Serve, closed by Shutdown
	handlers  sync.WaitGroup            // running session handlers
}

// New returns a Server for cfg that hands accepted pushes to d and asks d who may push and
// fetch. It loads the host key from cfg.HostKeyPath, or creates it there (ed25519, 0600) if
// the file does not exist, so that the server keeps its identity across restarts.
func New(cfg Config, d Deployer, log zerolog.Logger) (*Server, error) {
	if cfg.HostKeyPath == "" {
		return nil, errors.New("gitserver: no host key path")
	}
	if cfg.ReposDir == "" {
		return nil, errors.New("gitserver: no repos dir")
	}
	if d == nil {
		return nil, errors.New("gitserver: no deployer")
	}
	for i, k := range cfg.Keys {
		if k.Key == nil {
			return nil, fmt.Errorf("gitserver: key %d (%q) has no public key", i, k.Name)
		}
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = DefaultKeepalive
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	signer, created, err := loadHostKey(cfg.HostKeyPath)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		deployer:  d,
		log:       log,
		signer:    signer,
		repos:     Repositories{Dir: cfg.ReposDir},
		listeners: make(map[net.Listener]struct{}),
		refusals:  newRefusalLog(log, cfg.Observer),
	}
	s.gate = newGate(s.refusals)
	s.SetLimits(Limits{
		HandshakeTimeout:   cfg.HandshakeTimeout,
		MaxUnauthenticated: cfg.MaxUnauthenticated,
		MaxPushSize:        cfg.MaxPushSize,
		MaxObjectSize:      cfg.MaxObjectSize,
	})
	s.stopping, s.stop = context.WithCancelCause(context.Background())
	if created {
		log.Info().Str("path", cfg.HostKeyPath).Str("host_key_fp", s.HostKeyFingerprint()).Msg("host key created")
	}
	s.SetKeys(cfg.Keys)
	s.cfg.Keys = nil // s.keys holds them
	s.ssh = &ssh.Server{
		Version:          "slipway",
		Handler:          s.handle,
		PublicKeyHandler: s.authorize,
		PtyCallback:      func(ssh.Context, ssh.Pty) bool { return false },
		IdleTimeout:      cfg.IdleTimeout,
		// Only "session" channels, without agent forwarding; nil forwarding callbacks deny
		// port forwarding; no subsystems; no global request handlers.
		ChannelHandlers:   map[string]ssh.ChannelHandler{"session": sessionWithoutAgent},
		RequestHandlers:   map[string]ssh.RequestHandler{},
		SubsystemHandlers: map[string]ssh.SubsystemHandler{},
		// Every connection passes the gate before the SSH banner, and leaves it when it
		// authenticates. Refused and failed handshakes are counted there, not logged one by
		// one.
		ConnCallback: s.gate.admit,
		ServerConfigCallback: func(ctx ssh.Context) *gossh.ServerConfig {
			gc := gatedOf(ctx)
			return &gossh.ServerConfig{
				Config: gossh.Config{Ciphers: ciphers},
				// Called with a nil error once the client has proved it holds an authorized
				// key: offers of keys without a signature do not get here.
				AuthLogCallback: func(_ gossh.ConnMetadata, _ string, err error) {
					if err == nil && gc != nil {
						gc.authenticated()
					}
				},
			}
		},
	}
	s.ssh.AddHostKey(signer)
	return s, nil
}

// SetKeys replaces the authorized keys. It is safe to call while the server runs: every
// authentication and every new session after it uses the new keys, and a session whose
// connection authenticated with a key no longer among them is refused. Keys without a
// public key are left out.
func (s *Server) SetKeys(keys []authkeys.Key) {
	own := make([]authkeys.Key, 0, len(keys))
	for _, k := range keys {
		if k.Key == nil {
			s.log.Warn().Str("name", k.Name).Msg("authorized key without a public key left out")
			continue
		}
		own = append(own, k)
	}
	s.keys.Store(&own)
	if len(own) == 0 {
		s.log.Warn().Msg("no authorized keys: every connection will be refused")
	}
}

// Limits are what SetLimits changes while the server runs: Config's fields of the same
// names, with the same defaults for zero values.
type Limits struct {
	HandshakeTimeout   time.Duration
	MaxUnauthenticated int
	MaxPushSize        int64
	MaxObjectSize      int64
}

// pushLimits bound one push; a push reads them once, when it starts to read its pack.
type pushLimits struct{ maxPush, maxObject int64 }

// SetLimits changes the limits for the connections and pushes that start from now on; the
// ones running keep theirs. Safe for concurrent use.
func (s *Server) SetLimits(l Limits) {
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if l.MaxUnauthenticated <= 0 {
		l.MaxUnauthenticated = DefaultMaxUnauthenticated
	}
	if l.MaxPushSize <= 0 {
		l.MaxPushSize = DefaultMaxPushSize
	}
	s.gate.setLimits(l.MaxUnauthenticated, l.HandshakeTimeout)
	s.push.Store(&pushLimits{maxPush: l.MaxPushSize, maxObject: l.MaxObjectSize})
}

// HostKeyFingerprint returns the SHA256 fingerprint of the host key ("SHA256:..."), the one
// ssh shows when it first connects.
func (s *Server) HostKeyFingerprint() string {
	return gossh.FingerprintSHA256(s.signer.PublicKey())
}

// Serve accepts connections on l until Shutdown. It returns ErrServerClosed after Shutdown,
// any other error from l otherwise.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = l.Close() // refused either way: ErrServerClosed says why
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()

	err := s.ssh.Serve(l)

	s.mu.Lock()
	delete(s.listeners, l)
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return ErrServerClosed
	}
	return err
}

// Shutdown stops accepting connections and refuses new sessions, then waits for running
// sessions to end until ctx is done. Sessions still running then are cut off, which cancels
// their deploys, and Shutdown waits until every session handler has returned. It returns
// ctx's error if it had to cut sessions off.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		_ = l.Close() // its Serve returns ErrServerClosed whatever Close says
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.handlers.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
		// Let the clients of sessions that just ended hang up themselves: closing a
		// connection while its client's last packets are in flight makes the kernel reset
		// it, and the client may lose the report it has not read yet.
		linger, cancel := context.WithTimeout(ctx, shutdownLinger)
		_ = s.ssh.Shutdown(linger) // a courtesy: Close below ends the connections left
		cancel()
	case <-ctx.Done():
		err = ctx.Err()
		// Cancel the sessions still running, and give them a moment to end cleanly and tell
		// their clients (a cancelled deploy ends its processes and removes its release).
		s.stop(ErrShuttingDown)
		select {
		case <-done:
		case <-time.After(cancelGrace):
		}
	}
	// Close every connection left: idle ones, half-open handshakes (gliderlabs only knows
	// of connections that authenticated), and sessions that did not end within
	// cancelGrace.
	s.stop(ErrShuttingDown)
	s.gate.close()
	_ = s.ssh.Close() // the server is going: its connections' errors tell nobody anything
	<-done
	s.refusals.stop()
	return err
}

// ErrShuttingDown is the cause of a session context cancelled by Shutdown.
var ErrShuttingDown = errors.New("the server is shutting down")

// cancelGrace bounds how long cancelled sessions get to end and report before Shutdown
// closes their connections: enough for a build's SIGTERM, SIGKILL and cleanup.
const cancelGrace = 15 * time.Second

// sessionContext is the context of one session's work: cancelled when the client goes
// away (with ErrStalled when it stopped reading), or with ErrShuttingDown when the server
// stops.
func (s *Server) sessionContext(sess ssh.Session) (context.Context, context.CancelFunc) {
	var parent context.Context = sess.Context()
	if g, ok := sess.(*guardedSession); ok {
		parent = g.ctx
	}
	ctx, cancel := context.WithCancelCause(parent)
	stop := context.AfterFunc(s.stopping, func() { cancel(context.Cause(s.stopping)) })
	return ctx, func() {
		stop()
		cancel(context.Canceled)
	}
}

// shutdownLinger bounds how long Shutdown waits for clients to close their connections once
// every session has ended; only idle connections (ssh ControlMaster) make it wait that long.
const shutdownLinger = 2 * time.Second

// authorize accepts exactly the authorized keys (Config.Keys, or the last SetKeys). An
// unknown key is not logged here: the connection is counted as refused if it closes
// without authenticating (refusalLog).
func (s *Server) authorize(ctx ssh.Context, key ssh.PublicKey) bool {
	if _, ok := s.lookupKey(key); ok {
		return true
	}
	if gc := gatedOf(ctx); gc != nil {
		gc.keyRefused()
	}
	return false
}

// lookupKey finds key among the authorized keys as they are now.
func (s *Server) lookupKey(key ssh.PublicKey) (authkeys.Key, bool) {
	if key == nil {
		return authkeys.Key{}, false
	}
	for _, k := range *s.keys.Load() {
		if ssh.KeysEqual(k.Key, key) {
			return k, true
		}
	}
	return authkeys.Key{}, false
}

// Identify is the identity of the authorized key whose SHA256 fingerprint is fp, as the
// keys are now: false once the key is removed (the dashboard ends its sessions then).
func (s *Server) Identify(fp string) (Identity, bool) {
	for _, k := range *s.keys.Load() {
		if gossh.FingerprintSHA256(k.Key) == fp {
			return Identity{Name: k.Name, KeyFingerprint: fp}, true
		}
	}
	return Identity{}, false
}

// handle runs one SSH session: an exec of git-receive-pack or git-upload-pack for a valid
// environment, or of an operator command, and nothing else.
func (s *Server) handle(raw ssh.Session) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		refuse(raw, "the server is shutting down; try again in a moment")
		return
	}
	s.handlers.Add(1)
	s.mu.Unlock()
	defer s.handlers.Done()

	// Every write to the client from here on gives up on a client that stopped reading.
	sess := guardSession(raw, s.cfg.StallTimeout)
	start := time.Now()
	rec := &record{level: zerolog.InfoLevel}
	log := s.log.With().Str("remote", sess.RemoteAddr().String()).Logger()
	defer func() {
		if p := recover(); p != nil {
			rec.level, rec.outcome = zerolog.ErrorLevel, "panic"
			rec.err = fmt.Errorf("panic: %v", p)
			log = log.With().Str("stack", string(debug.Stack())).Logger()
			refuse(sess, "internal error")
		}
		sess.end()
		if sess.stalled.Load() {
			rec.outcome, rec.level = "stalled", max(rec.level, zerolog.WarnLevel)
			if rec.err == nil {
				rec.err = ErrStalled
			}
		}
		rec.log(log, time.Since(start))
		if s.cfg.Observer != nil {
			s.cfg.Observer.Session(rec.service, rec.outcome)
		}
	}()

	// Identity comes from the key that actually authenticated this connection: x/crypto
	// (>= 0.31) calls the public key callback again for it, so s.PublicKey() is that key.
	// It is looked up in the keys as they are now: a key removed since the connection
	// authenticated gets no new session.
	key, ok := s.lookupKey(sess.PublicKey())
	if !ok {
		rec.refused(zerolog.WarnLevel, errors.New("session without an authorized key"))
		refuse(sess, "no authorized key on this connection")
		return
	}
	who := Identity{Name: key.Name, KeyFingerprint: gossh.FingerprintSHA256(key.Key)}
	log = log.With().Str("pusher", who.Name).Str("key_fp", who.KeyFingerprint).Logger()

	service, path, err := parseCommand(sess.RawCommand())
	var unknown *unknownCommandError
	switch {
	case errors.As(err, &unknown) && s.cfg.Commands != nil:
		rec.service = "command"
		_ = sess.Exit(s.runCommand(sess, who, rec)) // fails only if the client is gone
		return
	case err != nil:
		rec.refused(zerolog.WarnLevel, err)
		refuse(sess, err.Error())
		return
	}
	rec.service = strings.TrimPrefix(service, "git-")
	repo, err := repoFromPath(path)
	if err != nil {
		rec.refused(zerolog.WarnLevel, err)
		refuse(sess, err.Error())
		return
	}
	rec.repo = repo
	var code int
	if service == serviceUploadPack {
		code = s.uploadPack(sess, repo, who, rec)
	} else {
		code = s.receivePack(sess, repo, who, rec)
	}
	_ = sess.Exit(code) // fails only if the client is gone
}

// refuse ends a session before any protocol: one line on stderr, exit status 1.
func refuse(sess ssh.Session, msg string) {
	// The session ends here: a client that is gone has nothing more to be told.
	_, _ = fmt.Fprintf(sess.Stderr(), "slipway: %s\n", oneLine(msg, 300))
	_ = sess.Exit(1)
}

// record collects what one session did, for its single log line.
type record struct {
	level   zerolog.Level
	service string // receive-pack, upload-pack or command; "" if refused before
	outcome string // refused, busy, up-to-date, deployed, rejected, fetched, error, panic, ...
	repo    string
	ref     string
	oldSHA  string
	sha     string
	waited  time.Duration // how long a push waited for its environment
	objects int           // objects sent by a fetch
	command string        // an operator command's name (never its arguments: they may be secret)
	exit    int           // an operator command's exit status
	err     error
}

func (r *record) refused(level zerolog.Level, err error) {
	r.level, r.outcome, r.err = level, "refused", err
}

func (r *record) log(log zerolog.Logger, took time.Duration) {
	ev := log.WithLevel(r.level)
	if r.service != "" {
		ev = ev.Str("service", r.service)
	}
	if r.command != "" {
		ev = ev.Str("command", r.command).Int("exit", r.exit)
	}
	if r.repo != "" {
		ev = ev.Str("repo", r.repo)
	}
	if r.ref != "" {
		ev = ev.Str("ref", r.ref).Str("old_sha", r.oldSHA).Str("sha", r.sha)
	}
	if r.waited > 0 {
		ev = ev.Int64("waited_ms", r.waited.Milliseconds())
	}
	if r.outcome == "fetched" {
		ev = ev.Int("objects", r.objects)
	}
	if r.err != nil {
		ev = ev.Err(r.err)
	}
	ev.Str("outcome", r.outcome).Int64("took_ms", took.Milliseconds()).Msg("session finished")
}

// loadHostKey reads the host key at path, or creates one there if the file does not exist.
func loadHostKey(path string) (signer gossh.Signer, created bool, err error) {
	data, err := os.ReadFile(path)
	if err == nil {
		signer, err := gossh.ParsePrivateKey(data)
		if err != nil {
			return nil, false, fmt.Errorf("host key %s: %w", path, err)
		}
		return signer, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("host key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("generate host key: %w", err)
	}
	blk, err := gossh.MarshalPrivateKey(priv, "slipway host key")
	if err != nil {
		return nil, false, fmt.Errorf("encode host key: %w", err)
	}
	switch err := writeNewFile(path, pem.EncodeToMemory(blk), 0o600); {
	case errors.Is(err, fs.ErrExist):
		return loadHostKey(path) // another process created it meanwhile: use that one
	case err != nil:
		return nil, false, fmt.Errorf("write host key: %w", err)
	}
	signer, err = gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, false, err
	}
	return signer, true, nil
}

// writeNewFile durably creates path with data: a temporary file in the same directory is
// written, synced and then linked to path, so path never holds a partial file and an
// existing path is never replaced (fs.ErrExist).
func writeNewFile(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	// The temporary name goes in any case: once linked, path holds the file; a failure to
	// remove it leaves a hidden name that nothing reads.
	defer os.Remove(f.Name())
	// On the errors below the file is abandoned: its Close has nothing to add.
	if err := f.Chmod(perm); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Link(f.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		// A filesystem without hard links: rename, which would replace a file created
		// since our ReadFile; that race only matters for two servers starting at once.
		if err := os.Rename(f.Name(), path); err != nil {
			return err
		}
	}
	return atomicfile.SyncDir(dir)
}

// sessionWithoutAgent is gliderlabs' session channel handler, except that a request for
// agent forwarding (auth-agent-req@openssh.com), which gliderlabs grants, is refused.
func sessionWithoutAgent(srv *ssh.Server, conn *gossh.ServerConn, ch gossh.NewChannel, ctx ssh.Context) {
	ssh.DefaultSessionHandler(srv, conn, noAgentChannel{ch}, ctx)
}

// agentRequest is the channel request by which a client asks for its agent to be
// forwarded.
const agentRequest = "auth-agent-req@openssh.com"

// noAgentChannel is a session channel whose requests for agent forwarding are refused
// before gliderlabs sees them.
type noAgentChannel struct{ gossh.NewChannel }

// Accept accepts the channel and passes its requests on, except agentRequest, which it
// answers no. Its goroutine ends when the channel's requests end, as the channel closes.
func (c noAgentChannel) Accept() (gossh.Channel, <-chan *gossh.Request, error) {
	ch, reqs, err := c.NewChannel.Accept()
	if err != nil {
		return ch, reqs, err
	}
	out := make(chan *gossh.Request)
	go func() {
		defer close(out)
		for req := range reqs {
			if req.Type == agentRequest {
				_ = req.Reply(false, nil) // fails only if the channel is gone
				continue
			}
			out <- req
		}
	}()
	return ch, out, nil
}
