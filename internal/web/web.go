// Package web is slipway's dashboard (SPEC 12: web_listen): server-rendered pages of every
// environment a key may use, its history, its releases and each deploy's log (followed live
// while it runs), and the actions rollback, redeploy, freeze and unfreeze. It owns nothing
// but its logins: every page and every action is an operator command run for the logged-in
// key, exactly as over SSH (Backend.RunCommand), so the dashboard sees and does what that
// key may, and what it does lands in the history under that key's name.
//
// Login is without passwords: `ssh git@HOST web-login` asks Login for a one-time URL
// (2 minutes, single use) whose page sets a session cookie (HttpOnly, SameSite=Strict,
// Secure over TLS or with SecureCookies). A session lasts SessionTTL, ends with logout, and
// ends at its next request once its key is no longer authorized. Every POST carries the
// session's CSRF token. Logins and sessions live in memory: a restart logs everyone out.
package web

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Identity is an authorized key: its name and its SHA256 fingerprint.
type Identity struct {
	Name           string
	KeyFingerprint string
}

// Backend is what the dashboard needs of the rest of slipway.
type Backend interface {
	// RunCommand runs an operator command (args[0]) for who, as over SSH, and returns its
	// exit status; ctx ends it.
	RunCommand(ctx context.Context, who Identity, args []string, stdin io.Reader, stdout, stderr io.Writer) int
	// Identify is the authorized key whose fingerprint is fp, as the keys are now; false
	// once it was removed.
	Identify(fp string) (Identity, bool)
}

// Config is the dashboard's configuration.
type Config struct {
	URL           string        // what login URLs begin with: "https://deploy.example.com"
	SessionTTL    time.Duration // how long a login lasts
	SecureCookies bool          // Secure cookies even when the request did not come over TLS
}

// Bounds on what the dashboard keeps and serves.
const (
	loginTTL    = 2 * time.Minute // a login URL's life
	maxLogins   = 100             // login URLs not used yet
	maxSessions = 1000            // sessions; beyond, the oldest ends
	maxStreams  = 64              // live logs followed at once
	maxForm     = 16 << 10        // a POST's body
	cookieName  = "slipway_session"
)

// Server is the dashboard.
type Server struct {
	cfg     Config
	b       Backend
	log     zerolog.Logger
	ctx     context.Context // the actions' lifetime: they outlive the request, not the server
	cancel  context.CancelFunc
	actions sync.WaitGroup // rollbacks and redeploys started here, still running
	now     func() time.Time

	mu       sync.Mutex
	logins   map[string]login    // by sha256 of the token
	sessions map[string]*session // by sha256 of the cookie
	streams  int                 // live logs being followed
}

type login struct {
	fp      string
	expires time.Time
}

type session struct {
	fp      string
	csrf    string
	created time.Time
	expires time.Time
	flash   string // one message for the next page (an action's refusal)
}

// New returns the dashboard. Actions it starts (a rollback) run until done or ctx ends.
func New(ctx context.Context, cfg Config, b Backend, log zerolog.Logger) *Server {
	s := &Server{cfg: cfg, b: b, log: log, now: time.Now, logins: map[string]login{}, sessions: map[string]*session{}}
	s.ctx, s.cancel = context.WithCancel(ctx)
	return s
}

// Shutdown waits for the rollbacks and redeploys started here until ctx ends, then cancels
// those still running (a deploy cancelled before its swap changes nothing) and waits for
// them to return. The caller has stopped serving requests first.
func (s *Server) Shutdown(ctx context.Context) {
	s.log.Info().Msg("dashboard closed: waiting for the deploys it started")
	done := make(chan struct{})
	go func() {
		s.actions.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn().Msg("dashboard actions still running: cancelled")
	}
	s.cancel()
	<-done
}

// SetURL sets what login URLs begin with, once the server knows where it listens.
func (s *Server) SetURL(url string) {
	s.mu.Lock()
	s.cfg.URL = url
	s.mu.Unlock()
}

// ErrTooManyLogins is Login's refusal when too many login URLs wait to be used.
var ErrTooManyLogins = errors.New("too many login URLs are waiting to be used: wait two minutes")

// Login makes a one-time login URL for who: valid two minutes, once.
func (s *Server) Login(who Identity) (string, error) {
	token := randomToken()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for h, l := range s.logins {
		if !now.Before(l.expires) {
			delete(s.logins, h)
		}
	}
	if len(s.logins) >= maxLogins {
		return "", ErrTooManyLogins
	}
	s.logins[hash(token)] = login{fp: who.KeyFingerprint, expires: now.Add(loginTTL)}
	return strings.TrimSuffix(s.cfg.URL, "/") + "/login/" + token, nil
}

// peekLogin reports whether token is a login URL still valid, and for whom.
func (s *Server) peekLogin(token string) (Identity, bool) {
	s.mu.Lock()
	l, ok := s.logins[hash(token)]
	s.mu.Unlock()
	if !ok || !s.now().Before(l.expires) {
		return Identity{}, false
	}
	return s.b.Identify(l.fp)
}

// useLogin consumes token and opens a session: its cookie value, and the session.
func (s *Server) useLogin(token string) (string, *session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := hash(token)
	l, ok := s.logins[h]
	delete(s.logins, h) // used or expired: never again
	now := s.now()
	if !ok || !now.Before(l.expires) {
		return "", nil, false
	}
	if _, ok := s.b.Identify(l.fp); !ok {
		return "", nil, false
	}
	if len(s.sessions) >= maxSessions {
		var oldest string
		for k, ss := range s.sessions {
			if oldest == "" || ss.created.Before(s.sessions[oldest].created) {
				oldest = k
			}
		}
		delete(s.sessions, oldest)
	}
	cookie := randomToken()
	ss := &session{fp: l.fp, csrf: randomToken(), created: now, expires: now.Add(s.cfg.SessionTTL)}
	s.sessions[hash(cookie)] = ss
	return cookie, ss, true
}

// whyNoSession says why a request has no session: no cookie, an unknown or expired one,
// or a key no longer authorized.
type whyNoSession int

const (
	noCookie whyNoSession = iota
	sessionExpired
	keyRemoved
)

// sessionOf is the request's session and who it is now (the key's current name).
func (s *Server) sessionOf(r *http.Request) (*session, Identity, whyNoSession, bool) {
	c, err := r.Cookie(cookieName)
	if err != nil || c.Value == "" {
		return nil, Identity{}, noCookie, false
	}
	h := hash(c.Value)
	s.mu.Lock()
	ss, ok := s.sessions[h]
	if ok && !s.now().Before(ss.expires) {
		delete(s.sessions, h)
		ok = false
	}
	s.mu.Unlock()
	if !ok {
		return nil, Identity{}, sessionExpired, false
	}
	who, ok := s.b.Identify(ss.fp)
	if !ok {
		s.endSession(c.Value)
		return nil, Identity{}, keyRemoved, false
	}
	return ss, who, 0, true
}

func (s *Server) endSession(cookie string) {
	s.mu.Lock()
	delete(s.sessions, hash(cookie))
	s.mu.Unlock()
}

// setFlash and takeFlash pass one message to the session's next page.
func (s *Server) setFlash(ss *session, msg string) {
	s.mu.Lock()
	ss.flash = msg
	s.mu.Unlock()
}

func (s *Server) takeFlash(ss *session) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := ss.flash
	ss.flash = ""
	return f
}

// checkCSRF reports whether a POST carries the session's token.
func checkCSRF(r *http.Request, ss *session) bool {
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(ss.csrf)) == 1
}

// cookie is the session cookie with value v (max age: ttl; 0 deletes it).
func (s *Server) cookie(r *http.Request, v string, ttl time.Duration) *http.Cookie {
	c := &http.Cookie{Name: cookieName, Value: v, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil || s.cfg.SecureCookies, MaxAge: int(ttl / time.Second)}
	if ttl <= 0 {
		c.MaxAge = -1
	}
	return c
}

// acquireStream takes one of the live logs that may be followed at once.
func (s *Server) acquireStream() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams >= maxStreams {
		return false
	}
	s.streams++
	return true
}

func (s *Server) releaseStream() {
	s.mu.Lock()
	s.streams--
	s.mu.Unlock()
}

func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // the kernel's randomness: never fails on Linux
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return string(h[:])
}
