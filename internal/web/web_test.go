package web

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// keys is a Backend with no environments: the tests here are of logins and sessions, and
// the operator commands answer as for a key that may use nothing.
type keys struct {
	mu  sync.Mutex
	fps map[string]string // fingerprint -> name
}

func (k *keys) RunCommand(_ context.Context, _ Identity, args []string, _ io.Reader, stdout, stderr io.Writer) int {
	switch {
	case args[0] == "status":
		fmt.Fprintln(stdout, `[{"repo": "a/b", "state": "deploying"}]`)
		return 0
	case args[0] == "logs" && args[1] == "a/b":
		io.WriteString(stdout, "shown\nfirst line\nsecond line\n")
		return 0
	}
	fmt.Fprintln(stderr, "slipway: unknown environment")
	return 1
}

func (k *keys) Identify(fp string) (Identity, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	name, ok := k.fps[fp]
	return Identity{Name: name, KeyFingerprint: fp}, ok
}

// clock is a time the test moves.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestServer(t *testing.T, cfg Config) (*Server, *keys, *clock, *httptest.Server) {
	t.Helper()
	k := &keys{fps: map[string]string{"SHA256:alice": "alice"}}
	s := New(context.Background(), cfg, k, zerolog.Nop())
	c := &clock{t: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	s.now = c.now
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	s.SetURL(ts.URL)
	return s, k, c, ts
}

// client does not follow redirects: the tests look at each answer.
func client() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// withCookie sends req with the session cookie ck and returns the answer's status.
func withCookie(t *testing.T, req *http.Request, ck *http.Cookie) int {
	t.Helper()
	req.AddCookie(&http.Cookie{Name: ck.Name, Value: ck.Value})
	r, err := client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	return r.StatusCode
}

// postLogin posts a login URL's form and returns the answer.
func postLogin(t *testing.T, u string) *http.Response {
	t.Helper()
	resp, err := client().Post(u, "application/x-www-form-urlencoded", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestLoginOnceAndExpiry(t *testing.T) {
	s, _, c, _ := newTestServer(t, Config{SessionTTL: time.Hour})
	u, err := s.Login(Identity{Name: "alice", KeyFingerprint: "SHA256:alice"})
	if err != nil {
		t.Fatal(err)
	}
	// Looking at the page does not use it; posting its form does, once.
	for range 2 {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET login page = %d", resp.StatusCode)
		}
	}
	if resp := postLogin(t, u); resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 {
		t.Fatalf("first POST = %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	if resp := postLogin(t, u); resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Fatalf("second POST = %d, cookies %v; want 403 and no session", resp.StatusCode, resp.Cookies())
	}

	// A URL is good for 2 minutes.
	u2, _ := s.Login(Identity{Name: "alice", KeyFingerprint: "SHA256:alice"})
	u3, _ := s.Login(Identity{Name: "alice", KeyFingerprint: "SHA256:alice"})
	c.add(loginTTL - time.Second)
	if resp := postLogin(t, u2); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("POST at 1m59s = %d", resp.StatusCode)
	}
	c.add(time.Second)
	if resp := postLogin(t, u3); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST at 2m = %d, want 403", resp.StatusCode)
	}
	if resp := postLogin(t, u3+"x"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST of a wrong token = %d, want 403", resp.StatusCode)
	}
}

func TestSessionCookieAndTTL(t *testing.T) {
	s, k, c, ts := newTestServer(t, Config{SessionTTL: time.Hour})
	u, _ := s.Login(Identity{Name: "alice", KeyFingerprint: "SHA256:alice"})
	resp := postLogin(t, u)
	ck := resp.Cookies()[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure || ck.MaxAge != 3600 || ck.Path != "/" {
		t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict, not Secure over plain HTTP, an hour", ck)
	}
	get := func() int {
		req, _ := http.NewRequest("GET", ts.URL+"/", nil)
		return withCookie(t, req, ck)
	}
	if code := get(); code != http.StatusOK {
		t.Fatalf("GET / with the session = %d", code)
	}
	c.add(time.Hour)
	if code := get(); code != http.StatusUnauthorized {
		t.Fatalf("GET / after the TTL = %d, want 401", code)
	}

	// A removed key ends its sessions.
	u, _ = s.Login(Identity{Name: "alice", KeyFingerprint: "SHA256:alice"})
	ck = postLogin(t, u).Cookies()[0]
	k.mu.Lock()
	delete(k.fps, "SHA256:alice")
	k.mu.Unlock()
	if code := get(); code != http.StatusUnauthorized {
		t.Fatalf("GET / once the key is removed = %d, want 401", code)
	}
	k.mu.Lock()
	k.fps["SHA256:alice"] = "alice"
	k.mu.Unlock()
	if code := get(); code != http.StatusUnauthorized {
		t.Fatalf("GET / once the key is back = %d: a session that ended stays ended", code)
	}
}

// Cookies are Secure when the request came over TLS, or with SecureCookies.
func TestSecureCookies(t *testing.T) {
	s, _, _, _ := newTestServer(t, Config{SessionTTL: time.Hour, SecureCookies: true})
	r := httptest.NewRequest("GET", "/", nil)
	if !s.cookie(r, "v", time.Hour).Secure {
		t.Error("SecureCookies: cookie not Secure")
	}
	s.cfg.SecureCookies = false
	if s.cookie(r, "v", time.Hour).Secure {
		t.Error("plain HTTP: cookie Secure")
	}
	r.TLS = &tls.ConnectionState{}
	if !s.cookie(r, "v", time.Hour).Secure {
		t.Error("TLS: cookie not Secure")
	}
}

// A POST needs the session's CSRF token; one from another origin is refused before that.
func TestCSRF(t *testing.T) {
	s, _, _, ts := newTestServer(t, Config{SessionTTL: time.Hour})
	u, _ := s.Login(Identity{Name: "alice", KeyFingerprint: "SHA256:alice"})
	ck := postLogin(t, u).Cookies()[0]
	var ss *session
	for _, v := range s.sessions {
		ss = v
	}
	post := func(form url.Values, origin string) int {
		req, _ := http.NewRequest("POST", ts.URL+"/logout", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		return withCookie(t, req, ck)
	}
	if code := post(url.Values{}, ""); code != http.StatusForbidden {
		t.Errorf("POST without a token = %d", code)
	}
	if code := post(url.Values{"csrf": {"wrong"}}, ""); code != http.StatusForbidden {
		t.Errorf("POST with a wrong token = %d", code)
	}
	if code := post(url.Values{"csrf": {ss.csrf}}, "http://evil.example"); code != http.StatusForbidden {
		t.Errorf("POST from another origin = %d", code)
	}
	if code := post(url.Values{"csrf": {ss.csrf}}, ""); code != http.StatusOK {
		t.Errorf("POST with the token = %d", code)
	}
}

func TestTooManyLogins(t *testing.T) {
	s, _, c, _ := newTestServer(t, Config{SessionTTL: time.Hour})
	who := Identity{Name: "alice", KeyFingerprint: "SHA256:alice"}
	for range maxLogins {
		if _, err := s.Login(who); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Login(who); err != ErrTooManyLogins {
		t.Fatalf("login %d = %v", maxLogins+1, err)
	}
	c.add(loginTTL)
	if _, err := s.Login(who); err != nil {
		t.Fatalf("once the others expired: %v", err)
	}
}

// The live log: what the page shows already is skipped; each line is one event, its id
// the log's offset after it; a line cut across writes is whole; carriage returns go.
func TestSSEWriter(t *testing.T) {
	rec := httptest.NewRecorder()
	w := &sseWriter{w: rec, rc: http.NewResponseController(rec), skip: 6}
	io.WriteString(w, "shown\nfirst li")
	io.WriteString(w, "ne\nprogress 50%\rprogress 100%\nlast")
	w.end(0)
	want := "id: 17\ndata: first line\n\nid: 44\ndata: progress 50%progress 100%\n\nid: 48\ndata: last\n\nevent: end\ndata: 0\n\n"
	if got := rec.Body.String(); got != want {
		t.Errorf("events:\n%q\nwant\n%q", got, want)
	}
}

func TestCapped(t *testing.T) {
	head := &capped{max: 4}
	io.Copy(head, strings.NewReader("abcdefgh")) // io.Copy: no ReadFrom past Write
	if head.String() != "abcd" || head.total != 8 {
		t.Errorf("head: %q, %d", head.String(), head.total)
	}
	tail := &capped{max: 4, keepEnd: true}
	io.Copy(tail, strings.NewReader("abcdefgh"))
	if tail.String() != "efgh" || tail.total != 8 {
		t.Errorf("tail: %q, %d", tail.String(), tail.total)
	}
}

// A browser that reconnects to a live log (EventSource does, by itself, after a proxy
// closed an idle stream) says where it was with Last-Event-ID, and gets what follows.
func TestLiveLogResumes(t *testing.T) {
	s, _, _, ts := newTestServer(t, Config{SessionTTL: time.Hour})
	u, _ := s.Login(Identity{Name: "alice", KeyFingerprint: "SHA256:alice"})
	ck := postLogin(t, u).Cookies()[0]
	get := func(query, lastID string) string {
		req, _ := http.NewRequest("GET", ts.URL+"/env/a/b/deploys/1/live"+query, nil)
		req.AddCookie(&http.Cookie{Name: ck.Name, Value: ck.Value})
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("GET live = %s, %s", resp.Status, resp.Header.Get("Content-Type"))
		}
		return string(b)
	}
	first := "id: 17\ndata: first line\n\nid: 29\ndata: second line\n\nevent: end\ndata: 0\n\n"
	if got := get("?from=6", ""); got != first {
		t.Errorf("from=6:\n%q\nwant\n%q", got, first)
	}
	resumed := "id: 29\ndata: second line\n\nevent: end\ndata: 0\n\n"
	if got := get("?from=6", "17"); got != resumed {
		t.Errorf("Last-Event-ID 17:\n%q\nwant\n%q", got, resumed)
	}
}
