package web

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"short": func(sha string) string {
		if len(sha) > 7 {
			return sha[:7]
		}
		return sha
	},
	"stamp": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"ms": func(ms int64) string { return (time.Duration(ms) * time.Millisecond).String() },
	"took": func(start, end time.Time) string {
		if end.IsZero() {
			return "-"
		}
		return end.Sub(start).Round(time.Millisecond).String()
	},
}).ParseFS(templateFS, "templates/*.html"))

// The operator commands' JSON, as far as the pages show it (status, history and releases
// --json: the same data a script gets).
type envStatus struct {
	Repo       string    `json:"repo"`
	Branch     string    `json:"branch"`
	Live       string    `json:"live"`
	Subject    string    `json:"subject"`
	LiveSince  time.Time `json:"live_since"`
	DeployedBy string    `json:"deployed_by"`
	State      string    `json:"state"`
	Holder     string    `json:"holder"`
	HeldSince  time.Time `json:"held_since"`
	Frozen     *byWhom   `json:"frozen"`
	Problem    string    `json:"problem"`
	Targets    []struct {
		Target  string    `json:"target"`
		Live    string    `json:"live"`
		LiveAt  time.Time `json:"live_at"`
		Differs bool      `json:"differs"`
		Paused  *byWhom   `json:"paused"`
	} `json:"targets"`
}

type byWhom struct {
	By      string    `json:"by"`
	Message string    `json:"message"`
	Since   time.Time `json:"since"`
}

type entry struct {
	ID          int64     `json:"id"`
	Kind        string    `json:"kind"`
	SHA         string    `json:"sha"`
	PreviousSHA string    `json:"previous_sha"`
	Pusher      string    `json:"pusher"`
	Message     string    `json:"message"`
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"`
	Steps       []struct {
		Name   string `json:"name"`
		TookMS int64  `json:"took_ms"`
		Exit   int    `json:"exit"`
	} `json:"steps"`
	Outcome string `json:"outcome"`
	Reason  string `json:"reason"`
}

type release struct {
	SHA        string    `json:"sha"`
	Live       bool      `json:"live"`
	Completed  time.Time `json:"completed"`
	LastLive   time.Time `json:"last_live"`
	DeployedBy string    `json:"deployed_by"`
	Deploy     int64     `json:"deploy"`
	LiveOn     []string  `json:"live_on"`
}

// Handler serves the dashboard.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /login/{token}", s.loginPage)
	mux.HandleFunc("POST /login/{token}", s.loginPost)
	mux.HandleFunc("GET /{$}", s.authed(s.envsPage))
	mux.HandleFunc("POST /logout", s.authed(s.logoutPost))
	mux.HandleFunc("GET /env/{app}/{env}", s.authed(s.envPage))
	mux.HandleFunc("GET /env/{app}/{env}/deploys/{id}", s.authed(s.deployPage))
	mux.HandleFunc("GET /env/{app}/{env}/deploys/{id}/live", s.authed(s.liveLog))
	mux.HandleFunc("GET /env/{app}/{env}/rollback", s.authed(s.rollbackPage))
	mux.HandleFunc("POST /env/{app}/{env}/rollback", s.authed(s.rollbackPost))
	mux.HandleFunc("POST /env/{app}/{env}/redeploy", s.authed(s.redeployPost))
	mux.HandleFunc("POST /env/{app}/{env}/freeze", s.authed(s.freezePost))
	mux.HandleFunc("POST /env/{app}/{env}/unfreeze", s.authed(s.unfreezePost))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.message(w, http.StatusNotFound, "Not found", "There is nothing here.")
	})
	return headers(http.NewCrossOriginProtection().Handler(mux))
}

// headers are on every response: nothing but this origin's own scripts and styles, no
// framing, no referrer (a login URL must not leak), nothing cached.
func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// request is what a page handler gets: the session, who it is, and the environment the
// URL names (nil on pages of no environment).
type request struct {
	ss   *session
	who  Identity
	repo string
	env  *envStatus // repo's status; authed checked that who may use it
}

// authed gives h the request's session, or answers with why there is none. A POST must
// carry the session's CSRF token. A URL of an environment the key may not use is not
// found, as one that does not exist: this is the one place that checks, for every page
// and action of an environment.
func (s *Server) authed(h func(http.ResponseWriter, *http.Request, request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ss, who, why, ok := s.sessionOf(r)
		if !ok {
			msg := "Log in with a one-time URL: run ssh -p PORT git@HOST web-login with your key."
			switch why {
			case sessionExpired:
				msg = "Your login has expired or ended. " + msg
			case keyRemoved:
				msg = "Your key is no longer authorized on this server, so your login has ended."
			}
			http.SetCookie(w, s.cookie(r, "", 0))
			s.message(w, http.StatusUnauthorized, "Not logged in", msg)
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, maxForm)
			if !checkCSRF(r, ss) {
				s.message(w, http.StatusForbidden, "Refused", "This form has no valid CSRF token: reload the page and try again.")
				return
			}
		}
		req := request{ss: ss, who: who}
		if app := r.PathValue("app"); app != "" {
			req.repo = app + "/" + r.PathValue("env")
			if req.env, ok = s.env(r.Context(), who, req.repo); !ok {
				s.notFound(w)
				return
			}
		}
		h(w, r, req)
	}
}

// page is what every page's template gets.
type page struct {
	Title string
	Who   string
	CSRF  string
	Flash string
	Data  any
}

func (s *Server) render(w http.ResponseWriter, r request, status int, name, title string, data any) {
	var b bytes.Buffer
	p := page{Title: title, Data: data}
	if r.ss != nil {
		p.Who, p.CSRF, p.Flash = r.who.Name, r.ss.csrf, s.takeFlash(r.ss)
	}
	if err := pages.ExecuteTemplate(&b, name, p); err != nil {
		s.log.Error().Err(err).Str("template", name).Msg("render a page")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

// message is a page that only says something.
func (s *Server) message(w http.ResponseWriter, status int, title, text string) {
	s.render(w, request{}, status, "message.html", title, text)
}

func (s *Server) notFound(w http.ResponseWriter) {
	s.message(w, http.StatusNotFound, "Not found", "There is nothing here, or your key may not use it.")
}

// run runs an operator command for who: its stdout (at most max bytes), and, if it
// failed, its first line of stderr.
func (s *Server) run(ctx context.Context, who Identity, max int, args ...string) ([]byte, error) {
	out := &capped{max: max}
	errb := capped{max: 4096}
	if code := s.b.RunCommand(ctx, who, args, nil, out, &errb); code != 0 {
		line, _, _ := strings.Cut(strings.TrimSpace(errb.String()), "\n")
		return out.Bytes(), errors.New(strings.TrimPrefix(line, "slipway: "))
	}
	return out.Bytes(), nil
}

// runJSON runs a command with --json and decodes what it prints into v.
func (s *Server) runJSON(ctx context.Context, who Identity, v any, args ...string) error {
	out, err := s.run(ctx, who, 16<<20, append(args, "--json")...)
	if err != nil {
		return err
	}
	return json.Unmarshal(out, v)
}

// env is the status of the environment repo names, if who may use it.
func (s *Server) env(ctx context.Context, who Identity, repo string) (*envStatus, bool) {
	var list []envStatus
	if err := s.runJSON(ctx, who, &list, "status"); err != nil {
		return nil, false
	}
	for i := range list {
		if list[i].Repo == repo {
			return &list[i], true
		}
	}
	return nil, false
}

func (s *Server) envsPage(w http.ResponseWriter, r *http.Request, req request) {
	var list []envStatus
	if err := s.runJSON(r.Context(), req.who, &list, "status"); err != nil {
		s.render(w, req, http.StatusInternalServerError, "message.html", "Error", err.Error())
		return
	}
	s.render(w, req, http.StatusOK, "envs.html", "Environments", list)
}

func (s *Server) envPage(w http.ResponseWriter, r *http.Request, req request) {
	e := req.env
	data := struct {
		Env      *envStatus
		History  []entry
		Releases []release
		Problem  string
	}{Env: e}
	if e.Problem == "" {
		if err := s.runJSON(r.Context(), req.who, &data.History, "history", req.repo, "-n", "50"); err != nil {
			data.Problem = err.Error()
		}
		if err := s.runJSON(r.Context(), req.who, &data.Releases, "releases", req.repo); err != nil {
			data.Problem = err.Error()
		}
	}
	s.render(w, req, http.StatusOK, "env.html", req.repo, data)
}

// maxLog is how much of a deploy's log a page shows: its end, if it is longer.
const maxLog = 8 << 20

// entry is deploy id of repo, as history has it.
func (s *Server) entry(ctx context.Context, who Identity, repo string, id int64) (*entry, bool) {
	var newest []entry
	if err := s.runJSON(ctx, who, &newest, "history", repo, "-n", "1"); err != nil || len(newest) == 0 {
		return nil, false
	}
	n := newest[0].ID - id + 1
	if id < 1 || n < 1 || n > 100000 {
		return nil, false
	}
	var hist []entry
	if err := s.runJSON(ctx, who, &hist, "history", repo, "-n", strconv.FormatInt(n, 10)); err != nil {
		return nil, false
	}
	for i := range hist {
		if hist[i].ID == id {
			return &hist[i], true
		}
	}
	return nil, false
}

func (s *Server) deployPage(w http.ResponseWriter, r *http.Request, req request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		s.notFound(w)
		return
	}
	e, ok := s.entry(r.Context(), req.who, req.repo, id)
	if !ok {
		s.notFound(w)
		return
	}
	data := struct {
		Repo    string
		Entry   *entry
		Log     string
		LogNote string
		Running bool
		From    int
	}{Repo: req.repo, Entry: e, Running: e.Outcome == "running"}
	out := &capped{max: maxLog, keepEnd: true}
	errb := capped{max: 4096}
	if code := s.b.RunCommand(r.Context(), req.who, []string{"logs", req.repo, strconv.FormatInt(id, 10)}, nil, out, &errb); code != 0 {
		data.LogNote = strings.TrimPrefix(strings.TrimSpace(errb.String()), "slipway: ")
	}
	data.Log, data.From = out.String(), out.total
	if out.total > out.max {
		data.LogNote = fmt.Sprintf("The log is %d bytes: this is its last %d.", out.total, out.max)
	}
	s.render(w, req, http.StatusOK, "deploy.html", fmt.Sprintf("%s deploy #%d", req.repo, id), data)
}

// liveLog follows a running deploy's log as server-sent events: each line one "message"
// event (from byte ?from= on: what the page already shows is not sent again), then an
// "end" event when the deploy has finished.
func (s *Server) liveLog(w http.ResponseWriter, r *http.Request, req request) {
	id := r.PathValue("id")
	if _, err := strconv.ParseInt(id, 10, 64); err != nil {
		s.notFound(w)
		return
	}
	from, _ := strconv.ParseInt(r.URL.Query().Get("from"), 10, 64)
	if last, err := strconv.ParseInt(r.Header.Get("Last-Event-ID"), 10, 64); err == nil {
		from = last // a reconnection: what follows the last line it got
	}
	if !s.acquireStream() {
		http.Error(w, "too many live logs are being followed: try again later", http.StatusServiceUnavailable)
		return
	}
	defer s.releaseStream()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no") // a proxy in front must not hold the lines back
	w.WriteHeader(http.StatusOK)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	sw := &sseWriter{w: w, rc: http.NewResponseController(w), skip: max(from, 0), gone: cancel}
	sw.rc.Flush()
	errb := capped{max: 4096}
	code := s.b.RunCommand(ctx, req.who, []string{"logs", req.repo, id, "-f"}, nil, sw, &errb)
	sw.end(code)
}

var shaRE = regexp.MustCompile(`^[0-9a-f]{40}$`)

// kept is release sha of repo, if repo keeps it.
func (s *Server) kept(ctx context.Context, who Identity, repo, sha string) (*release, bool) {
	if !shaRE.MatchString(sha) {
		return nil, false
	}
	var rels []release
	if err := s.runJSON(ctx, who, &rels, "releases", repo); err != nil {
		return nil, false
	}
	i := slices.IndexFunc(rels, func(r release) bool { return r.SHA == sha })
	if i < 0 {
		return nil, false
	}
	return &rels[i], true
}

// rollbackPage asks to confirm a rollback, naming the release and who is live now.
func (s *Server) rollbackPage(w http.ResponseWriter, r *http.Request, req request) {
	rel, ok := s.kept(r.Context(), req.who, req.repo, r.URL.Query().Get("sha"))
	if !ok {
		s.notFound(w)
		return
	}
	s.render(w, req, http.StatusOK, "rollback.html", "Roll back "+req.repo, struct {
		Env     *envStatus
		Release *release
	}{req.env, rel})
}

func (s *Server) rollbackPost(w http.ResponseWriter, r *http.Request, req request) {
	sha := r.PostFormValue("sha")
	if _, ok := s.kept(r.Context(), req.who, req.repo, sha); !ok {
		s.notFound(w)
		return
	}
	s.startDeploy(w, r, req, "rollback", []string{"rollback", req.repo, sha})
}

func (s *Server) redeployPost(w http.ResponseWriter, r *http.Request, req request) {
	s.startDeploy(w, r, req, "redeploy", []string{"redeploy", req.repo})
}

// startDeploy runs a rollback or redeploy in the background (it runs to its end, whether
// the browser waits or not) and sends the browser to its log as soon as its history entry
// exists; a refusal (frozen, busy, not kept) comes back to the environment's page.
func (s *Server) startDeploy(w http.ResponseWriter, r *http.Request, req request, kind string, args []string) {
	before := s.newest(r.Context(), req.who, req.repo, kind, 0)
	done := make(chan error, 1)
	s.actions.Add(1)
	go func() {
		defer s.actions.Done()
		_, err := s.run(s.ctx, req.who, 64<<10, args...)
		done <- err
	}()
	envURL := "/env/" + req.repo
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-done:
			// One that ran (and perhaps failed: its log says why) has its page; one refused
			// before it began (frozen, busy) comes back with why.
			if id := s.newest(r.Context(), req.who, req.repo, kind, before); id > 0 {
				http.Redirect(w, r, fmt.Sprintf("%s/deploys/%d", envURL, id), http.StatusSeeOther)
				return
			}
			if err != nil {
				s.setFlash(req.ss, fmt.Sprintf("%s refused: %v", kind, err))
			}
			http.Redirect(w, r, envURL, http.StatusSeeOther)
			return
		case <-tick.C:
			if id := s.newest(r.Context(), req.who, req.repo, kind, before); id > 0 {
				http.Redirect(w, r, fmt.Sprintf("%s/deploys/%d", envURL, id), http.StatusSeeOther)
				return
			}
		case <-deadline:
			s.setFlash(req.ss, kind+" started; it is still waiting for the environment")
			http.Redirect(w, r, envURL, http.StatusSeeOther)
			return
		case <-r.Context().Done():
			return
		}
	}
}

// newest is the id of the newest deploy of kind by who after deploy after; 0 if none.
// With after 0, the newest deploy's id of any kind (what there was before).
func (s *Server) newest(ctx context.Context, who Identity, repo, kind string, after int64) int64 {
	var hist []entry
	if err := s.runJSON(ctx, who, &hist, "history", repo, "-n", "5"); err != nil || len(hist) == 0 {
		return 0
	}
	if after == 0 {
		return hist[0].ID
	}
	for _, e := range hist {
		if e.ID > after && e.Kind == kind && e.Pusher == who.Name {
			return e.ID
		}
	}
	return 0
}

func (s *Server) freezePost(w http.ResponseWriter, r *http.Request, req request) {
	msg := strings.Join(strings.Fields(r.PostFormValue("message")), " ")
	if len(msg) > 500 {
		msg = msg[:500]
	}
	if msg == "" {
		s.setFlash(req.ss, "freeze needs a message: say why, pushers will read it")
		http.Redirect(w, r, "/env/"+req.repo, http.StatusSeeOther)
		return
	}
	s.simpleAction(w, r, req, "lock", req.repo, "-m", msg)
}

func (s *Server) unfreezePost(w http.ResponseWriter, r *http.Request, req request) {
	s.simpleAction(w, r, req, "unlock", req.repo)
}

// simpleAction runs a command that ends at once and shows its answer on the
// environment's page.
func (s *Server) simpleAction(w http.ResponseWriter, r *http.Request, req request, args ...string) {
	out, err := s.run(r.Context(), req.who, 4096, args...)
	if err != nil {
		s.setFlash(req.ss, err.Error())
	} else {
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		s.setFlash(req.ss, line)
	}
	http.Redirect(w, r, "/env/"+req.repo, http.StatusSeeOther)
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	who, ok := s.peekLogin(r.PathValue("token"))
	if !ok {
		s.message(w, http.StatusForbidden, "Login refused", "This login URL was used already, has expired (after 2 minutes), or is wrong. Run ssh -p PORT git@HOST web-login for a new one.")
		return
	}
	s.render(w, request{}, http.StatusOK, "login.html", "Log in", struct{ Name, Token string }{who.Name, r.PathValue("token")})
}

func (s *Server) loginPost(w http.ResponseWriter, r *http.Request) {
	cookie, _, ok := s.useLogin(r.PathValue("token"))
	if !ok {
		s.message(w, http.StatusForbidden, "Login refused", "This login URL was used already, has expired (after 2 minutes), or is wrong. Run ssh -p PORT git@HOST web-login for a new one.")
		return
	}
	http.SetCookie(w, s.cookie(r, cookie, s.cfg.SessionTTL))
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) logoutPost(w http.ResponseWriter, r *http.Request, req request) {
	if c, err := r.Cookie(cookieName); err == nil {
		s.endSession(c.Value)
	}
	http.SetCookie(w, s.cookie(r, "", 0))
	s.message(w, http.StatusOK, "Logged out", "You are logged out.")
}
