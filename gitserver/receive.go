package gitserver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gliderlabs/ssh"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/sideband"
	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/rs/zerolog"

	gossh "golang.org/x/crypto/ssh"

	"github.com/slipway/slipway/internal/atomicfile"
)

// Limits on what a client may send before the pack.
const (
	maxRequestBytes = 4 << 20 // commands and push options together
	maxPushOptions  = 100
	maxReasonLen    = 200 // an ng reason or ERR line, as shown to the pusher
)

// receivePack serves one git-receive-pack session for repo, pre-receive style: the pack is
// stored, the deploy branch's update is checked and handed to the Deployer, and the branch
// moves only if Deploy succeeds. If the environment is busy, the refs are advertised all the
// same, so that the push options can be read, and the push waits for the environment if
// they ask for it (wait=DURATION). It returns the session's exit status.
func (s *Server) receivePack(sess ssh.Session, repo string, who Identity, rec *record) int {
	ctx, cancel := s.sessionContext(sess)
	defer cancel()

	// Deferred first, so that it runs last: the environment is released after the
	// repository's lock.
	var reserved reservation
	defer reserved.release()

	target, release, busy := s.deployer.Reserve(ctx, repo, who.Name, 0)
	if busy != nil && !errors.Is(busy, ErrBusy) {
		rec.refused(zerolog.InfoLevel, busy)
		sendERR(sess, busy.Error())
		return 1
	}
	var (
		env  *pushEnv // nil while the environment is busy
		refs map[plumbing.ReferenceName]plumbing.Hash
		err  error
	)
	if busy == nil {
		reserved.hold(release)
		var why *refusal
		if env, why = s.openForPush(ctx, repo, target); why != nil {
			why.record(rec)
			if why.msg != "" {
				sendERR(sess, why.msg)
			}
			return 1
		}
		defer env.close()
		refs, err = listRefs(env.st)
	} else {
		// Someone else's push holds the repository: read its refs without changing anything.
		refs, err = s.peekRefs(repo)
	}
	if err != nil {
		rec.level, rec.outcome, rec.err = zerolog.ErrorLevel, "error", fmt.Errorf("read refs: %w", err)
		sendERR(sess, "cannot read the repository's refs (see the server log)")
		return 1
	}
	ar, err := receiveAdvertisement(refs)
	if err != nil {
		rec.level, rec.outcome, rec.err = zerolog.ErrorLevel, "error", err
		sendERR(sess, "internal error")
		return 1
	}
	if err := writeAdvertisement(sess, ar); err != nil {
		rec.outcome, rec.err = "disconnected", err
		return 1
	}

	// A bare flush answers the advertisement when there is nothing to push; a client that
	// only wanted the refs (push --dry-run) just leaves.
	br := bufio.NewReaderSize(sess, 64*1024)
	first, err := br.Peek(4)
	if err != nil {
		rec.outcome = "no-request"
		return 0
	}
	if string(first) == "0000" {
		rec.outcome = "up-to-date"
		return 0
	}
	lim := &limitedReader{r: br, n: maxRequestBytes}
	req := packp.NewReferenceUpdateRequest()
	if err := req.Decode(lim); err != nil {
		rec.level, rec.outcome, rec.err = zerolog.WarnLevel, "bad-request", fmt.Errorf("decode update request: %w", err)
		fmt.Fprintf(sess.Stderr(), "slipway: bad push request: %s\n", oneLine(err.Error(), maxReasonLen))
		return 1
	}
	var options []string
	if req.Capabilities.Supports(capability.PushOptions) {
		if options, err = readPushOptions(lim); err != nil {
			rec.level, rec.outcome, rec.err = zerolog.WarnLevel, "bad-request", fmt.Errorf("read push options: %w", err)
			fmt.Fprintf(sess.Stderr(), "slipway: bad push options: %s\n", oneLine(err.Error(), maxReasonLen))
			return 1
		}
	}

	w := newWire(sess, sess.Stderr(), req.Capabilities.Supports(capability.Sideband64k), pinger(sess), cancel)
	// Keepalives run from the start of a wait for the environment, or else from the end of
	// the pack (indexing can take a while), to the report.
	var (
		kaStarted bool
		kaStop    = make(chan struct{})
		kaDone    = make(chan struct{})
	)
	startKeepalive := func() {
		if kaStarted {
			return
		}
		kaStarted = true
		go func() {
			defer close(kaDone)
			w.keepalive(s.cfg.Keepalive, kaStop)
		}()
	}
	stopKeepalive := func() {
		if kaStarted {
			kaStarted = false
			close(kaStop)
			<-kaDone
		}
	}
	defer stopKeepalive()

	wait, err := waitOption(options)
	if err != nil {
		rec.refused(zerolog.InfoLevel, fmt.Errorf("push option wait: %w", err))
		return s.refusePush(w, br, req, rec.err.Error(), rec)
	}
	var waited *waitInfo // set if the push waited for its environment
	if busy != nil {
		if wait <= 0 {
			rec.level, rec.outcome, rec.err = zerolog.InfoLevel, "busy", busy
			w.notef("hint: git push -o wait=5m waits up to 5 minutes for the running deploy\n")
			return s.refusePush(w, br, req, busy.Error(), rec)
		}
		w.notef("-----> waiting up to %s: %s\n", wait, oneLine(busy.Error(), maxReasonLen))
		startKeepalive()
		t0 := time.Now()
		target, release, err = s.deployer.Reserve(ctx, repo, who.Name, wait)
		rec.waited = max(time.Since(t0), time.Nanosecond)
		if err != nil {
			if ctx.Err() != nil {
				rec.outcome, rec.err = "disconnected", err
				return 1
			}
			rec.level, rec.outcome, rec.err = zerolog.InfoLevel, "refused", err
			if errors.Is(err, ErrBusy) {
				rec.outcome = "busy"
			}
			return s.refusePush(w, br, req, err.Error(), rec)
		}
		reserved.hold(release)
		var why *refusal
		if env, why = s.openForPush(ctx, repo, target); why != nil {
			why.record(rec)
			if why.msg == "" {
				return 1
			}
			return s.refusePush(w, br, req, why.msg, rec)
		}
		defer env.close()
		waited = &waitInfo{advertised: refs[env.branchRef]}
	}

	// The pack. A push of deletions only has none, and the client does not close its side.
	unpackStatus := "ok"
	if needsPack(req.Commands) {
		_, err := storePack(env.dir, br, startKeepalive)
		switch {
		case errors.Is(err, errPack):
			unpackStatus = packStatus(err)
			rec.err = err
		case err != nil:
			unpackStatus = "cannot store the pack (see the server log)"
			rec.level, rec.err = zerolog.ErrorLevel, fmt.Errorf("store pack: %w", err)
		}
		// The storage may have looked at objects before; make it see the new pack.
		env.st.Reindex()
	}
	startKeepalive()

	statuses := s.runCommands(ctx, env, req.Commands, unpackStatus == "ok", repo, who, options, waited, w, rec)
	if unpackStatus != "ok" {
		rec.outcome = "unpack-failed"
	}
	stopKeepalive()
	code := s.sendReport(w, req, unpackStatus, statuses, rec)
	if needsPack(req.Commands) && unpackStatus == "ok" {
		// After the report, as git's auto gc: the pusher has its answer, and the
		// environment is still held, so no deploy reads the packs meanwhile.
		s.consolidate(env.dir, repo)
	}
	return code
}

// consolidate merges the packs of repo's repository when pushes have left too many
// (consolidatePacks). Packs a fetch may be reading are left in place. A failure is the
// operator's to know of, and costs nothing but speed: the packs stay as they were.
func (s *Server) consolidate(dir, repo string) {
	start := time.Now()
	packs := s.locks.packs(repo)
	stats, err := consolidatePacks(dir, func() (func(), bool) {
		if !packs.TryLock() {
			return nil, false
		}
		return packs.Unlock, true
	})
	switch {
	case err != nil:
		s.log.Error().Err(err).Str("repo", repo).Msg("merge packs")
	case stats.packs > 0:
		s.log.Info().Str("repo", repo).Int("packs", stats.packs).Int("objects", stats.objects).
			Dur("took", time.Since(start)).Msg("packs merged")
	}
}

// refusePush refuses a whole push once its commands have been read. git sends the pack
// without waiting for an answer, and at this point it shows an ERR packet only as
// "protocol error: bad band #69": so the pack is read and dropped, and every command is
// answered "ng <ref> <reason>", which git shows as "! [remote rejected] <ref> (<reason>)".
func (s *Server) refusePush(w *wire, br *bufio.Reader, req *packp.ReferenceUpdateRequest, reason string, rec *record) int {
	unpackStatus := "ok"
	if needsPack(req.Commands) {
		if _, err := copyPack(io.Discard, br); err != nil {
			if !errors.Is(err, errPack) {
				rec.err = errors.Join(rec.err, fmt.Errorf("drop the pack: %w", err))
				return 1
			}
			unpackStatus = packStatus(err)
		}
	}
	reason = oneLine(reason, maxReasonLen)
	statuses := make([]string, len(req.Commands))
	for i := range statuses {
		statuses[i] = reason
	}
	return s.sendReport(w, req, unpackStatus, statuses, rec)
}

// sendReport ends a push: the report, in the commands' order, in band 1 with sideband, then
// the final flush. It returns the session's exit status.
func (s *Server) sendReport(w *wire, req *packp.ReferenceUpdateRequest, unpackStatus string, statuses []string, rec *record) int {
	var report bytes.Buffer
	if req.Capabilities.Supports(capability.ReportStatus) {
		rs := packp.NewReportStatus()
		rs.UnpackStatus = unpackStatus
		for i, cmd := range req.Commands {
			rs.CommandStatuses = append(rs.CommandStatuses, &packp.CommandStatus{ReferenceName: cmd.Name, Status: statuses[i]})
		}
		if err := rs.Encode(&report); err != nil {
			rec.level, rec.err = zerolog.ErrorLevel, fmt.Errorf("encode report: %w", err)
			return 1
		}
	}
	w.mu.Lock()
	if w.mux != nil {
		if report.Len() > 0 {
			w.band(sideband.PackData, report.Bytes())
		}
		w.raw(pktline.FlushPkt)
	} else if report.Len() > 0 {
		w.raw(report.Bytes())
	}
	werr := w.err
	w.mu.Unlock()
	if werr != nil && rec.err == nil {
		rec.err = fmt.Errorf("send report: %w", werr)
	}
	return 0
}

// packStatus is the unpack status for a bad pack (errPack).
func packStatus(err error) string {
	return oneLine(strings.Replace(err.Error(), errPack.Error()+": ", "", 1), maxReasonLen)
}

// pinger returns a keepalive for clients without sideband: an SSH-level request.
func pinger(sess ssh.Session) func() {
	return func() {
		if c, ok := sess.Context().Value(ssh.ContextKeyConn).(gossh.Conn); ok {
			c.SendRequest("keepalive@openssh.com", false, nil)
		}
	}
}

// reservation is the environment a push holds; released at most once.
type reservation struct{ fn func() }

func (r *reservation) hold(release func()) { r.fn = release }

func (r *reservation) release() {
	if r.fn != nil {
		r.fn()
		r.fn = nil
	}
}

// maxWait caps a push's wait=DURATION option.
const maxWait = time.Hour

// waitOption returns the duration of the last wait=DURATION push option, capped at maxWait;
// 0 if there is none. Its error is meant for the pusher.
func waitOption(options []string) (time.Duration, error) {
	var wait time.Duration
	for _, o := range options {
		v, ok := strings.CutPrefix(o, "wait=")
		if !ok {
			if o == "wait" {
				return 0, errors.New("give a duration, e.g. -o wait=5m")
			}
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration like 90s or 5m", clip(v, 40))
		}
		if d < 0 {
			return 0, fmt.Errorf("%q is negative", clip(v, 40))
		}
		wait = min(d, maxWait)
	}
	return wait, nil
}

// waitInfo is what a push that waited for its environment needs to know.
type waitInfo struct {
	advertised plumbing.Hash // the deploy branch's value in the advertisement, before the wait
}

// pushEnv is the repository of an environment a push holds: its lock is taken, its branch
// names the live release.
type pushEnv struct {
	st        *filesystem.Storage
	dir       string
	branchRef plumbing.ReferenceName
	unlock    func()
}

func (e *pushEnv) close() {
	e.st.Close()
	e.unlock()
}

// refusal is why a session cannot go on: msg for the client ("" if it is gone), the rest
// for the log.
type refusal struct {
	msg     string
	level   zerolog.Level
	outcome string
	err     error
}

func (r *refusal) record(rec *record) {
	rec.level, rec.outcome, rec.err = r.level, r.outcome, r.err
}

// openForPush takes repo's lock and opens its repository (creating it on the first push),
// with the deploy branch moved to the live release if it names anything else.
func (s *Server) openForPush(ctx context.Context, repo string, target Target) (*pushEnv, *refusal) {
	branchRef := plumbing.NewBranchReferenceName(target.Branch)
	if err := validateRef(branchRef); err != nil {
		return nil, &refusal{"this environment's deploy branch is misconfigured on the server",
			zerolog.ErrorLevel, "error", fmt.Errorf("deployer returned branch %q: %w", target.Branch, err)}
	}
	unlock, err := s.locks.lock(ctx, repo)
	if err != nil {
		return nil, &refusal{"", zerolog.InfoLevel, "disconnected", err}
	}
	st, dir, err := s.openRepo(repo, branchRef)
	if err != nil {
		unlock()
		return nil, &refusal{"cannot open the repository (see the server log)", zerolog.ErrorLevel, "error", err}
	}
	if err := removeTempPacks(dir); err != nil {
		s.log.Warn().Err(err).Str("repo", repo).Msg("remove temporary pack files")
	}
	if err := s.alignBranch(st, repo, branchRef, target.Live); err != nil {
		st.Close()
		unlock()
		return nil, &refusal{"the deploy branch does not name the live release and cannot be moved (see the server log)",
			zerolog.ErrorLevel, "error", err}
	}
	return &pushEnv{st: st, dir: dir, branchRef: branchRef, unlock: unlock}, nil
}

// peekRefs reads repo's refs for the advertisement to a push whose environment is busy:
// without its lock, without creating or changing anything. No repository: no refs.
func (s *Server) peekRefs(repo string) (map[plumbing.ReferenceName]plumbing.Hash, error) {
	st, err := s.openExisting(repo)
	if errors.Is(err, ErrNoRepo) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer st.Close()
	return s.readRefs(repo, st)
}

// runCommands applies slipway's policy to every command of a push and deploys the one
// update of the deploy branch that passes it. It returns each command's status for the
// report, in order: "ok" or the reason for ng.
func (s *Server) runCommands(ctx context.Context, env *pushEnv, cmds []*packp.Command, unpacked bool,
	repo string, who Identity, options []string, waited *waitInfo, out *wire, rec *record) []string {
	st, branchRef := env.st, env.branchRef
	statuses := make([]string, len(cmds))
	deploy := -1
	var current plumbing.Hash
	for i, cmd := range cmds {
		if !unpacked {
			statuses[i] = "unpacker error"
			continue
		}
		switch {
		case validateRef(cmd.Name) != nil:
			statuses[i] = "invalid ref name"
		case cmd.Name != branchRef:
			statuses[i] = fmt.Sprintf("only %s deploys here", branchRef)
		case deploy >= 0:
			statuses[i] = fmt.Sprintf("more than one update of %s", branchRef)
		case cmd.New.IsZero():
			statuses[i] = "deleting the deploy branch is not allowed"
		default:
			var err error
			current, err = refHash(st, branchRef)
			if err != nil {
				statuses[i] = "cannot read the branch (see the server log)"
				rec.level, rec.err = zerolog.ErrorLevel, fmt.Errorf("read %s: %w", branchRef, err)
				continue
			}
			// The pusher's old value is the one advertised. A push that waited for its
			// environment replaces what the branch names after the wait.
			advertised := current
			if waited != nil {
				advertised = waited.advertised
			}
			if cmd.Old != advertised {
				statuses[i] = fmt.Sprintf("stale info: %s changed since you fetched", branchRef.Short())
				continue
			}
			statuses[i] = checkCommit(st, cmd.New)
			if statuses[i] == "" {
				deploy = i
			}
		}
	}
	if deploy < 0 {
		// Nothing to deploy: log the first rejected command.
		if rec.outcome == "" {
			rec.outcome = "rejected"
		}
		if rec.level < zerolog.WarnLevel {
			rec.level = zerolog.WarnLevel
		}
		if len(cmds) > 0 && rec.ref == "" {
			rec.ref, rec.oldSHA, rec.sha = cmds[0].Name.String(), shaOrEmpty(cmds[0].Old), shaOrEmpty(cmds[0].New)
			if rec.err == nil {
				rec.err = errors.New(statuses[0])
			}
		}
		return statuses
	}

	cmd := cmds[deploy]
	rec.ref, rec.oldSHA, rec.sha = branchRef.String(), shaOrEmpty(current), cmd.New.String()
	if current != cmd.Old {
		out.notef("%s moved to %s while waiting; deploying %s over it\n", branchRef.Short(), shortSHA(current), shortSHA(cmd.New))
	}
	push := Push{
		Repo:           repo,
		Branch:         branchRef.Short(),
		OldSHA:         shaOrEmpty(current),
		NewSHA:         cmd.New.String(),
		Pusher:         who.Name,
		KeyFingerprint: who.KeyFingerprint,
		Options:        options,
		Objects:        st,
	}
	if ctx.Err() != nil {
		statuses[deploy] = "the pusher disconnected"
		rec.outcome, rec.err = "disconnected", ctx.Err()
		return statuses
	}
	err := s.deployer.Deploy(ctx, push, out)
	out.closeOutput()
	if err != nil {
		reason := oneLine(err.Error(), maxReasonLen)
		if reason == "" {
			reason = "deploy failed"
		}
		statuses[deploy] = reason
		rec.outcome, rec.err = "rejected", err
		if ctx.Err() != nil {
			rec.outcome = "disconnected"
		}
		if rec.level < zerolog.WarnLevel {
			rec.level = zerolog.WarnLevel
		}
		return statuses
	}
	var old *plumbing.Reference
	if !current.IsZero() {
		old = plumbing.NewHashReference(branchRef, current)
	}
	refs := s.locks.refs(repo)
	refs.Lock()
	err = st.CheckAndSetReference(plumbing.NewHashReference(branchRef, cmd.New), old)
	refs.Unlock()
	if err != nil {
		statuses[deploy] = fmt.Sprintf("deployed, but %s could not be moved (see the server log)", branchRef.Short())
		rec.level, rec.outcome, rec.err = zerolog.ErrorLevel, "error", fmt.Errorf("move %s after deploy: %w", branchRef, err)
		return statuses
	}
	syncRef(s.repoDir(repo), branchRef)
	statuses[deploy] = "ok"
	rec.outcome = "deployed"
	return statuses
}

// alignBranch moves branchRef to live if it names anything else, so that the branch names
// the live release again after a crash between the swap of current and the branch's move.
func (s *Server) alignBranch(st *filesystem.Storage, repo string, branchRef plumbing.ReferenceName, live string) error {
	if live == "" {
		return nil
	}
	want := plumbing.NewHash(live)
	current, err := refHash(st, branchRef)
	if err != nil {
		return fmt.Errorf("read %s: %w", branchRef, err)
	}
	if current == want {
		return nil
	}
	if why := checkCommit(st, want); why != "" {
		return fmt.Errorf("align %s with the live release: %s", branchRef, why)
	}
	var old *plumbing.Reference
	if !current.IsZero() {
		old = plumbing.NewHashReference(branchRef, current)
	}
	refs := s.locks.refs(repo)
	refs.Lock()
	err = st.CheckAndSetReference(plumbing.NewHashReference(branchRef, want), old)
	refs.Unlock()
	if err != nil {
		return fmt.Errorf("align %s with the live release: %w", branchRef, err)
	}
	syncRef(s.repoDir(repo), branchRef)
	s.log.Warn().Str("repo", repo).Str("ref", branchRef.String()).Str("old_sha", shaOrEmpty(current)).
		Str("sha", live).Msg("branch moved to the live release")
	return nil
}

// syncRef makes a loose ref written by go-git (which does not fsync) durable.
func syncRef(dir string, name plumbing.ReferenceName) {
	p := filepath.Join(dir, filepath.FromSlash(name.String()))
	if f, err := os.Open(p); err == nil {
		f.Sync()
		f.Close()
	}
	atomicfile.SyncDir(filepath.Dir(p))
}

// checkCommit returns why h cannot be deployed, or "" if it is a commit whose tree is here.
func checkCommit(st *filesystem.Storage, h plumbing.Hash) string {
	obj, err := st.EncodedObject(plumbing.AnyObject, h)
	if err != nil {
		return fmt.Sprintf("object %s is missing", h)
	}
	if obj.Type() != plumbing.CommitObject {
		return fmt.Sprintf("%s is a %s, not a commit", h.String()[:12], obj.Type())
	}
	c, err := object.DecodeCommit(st, obj)
	if err != nil {
		return fmt.Sprintf("commit %s is malformed", h.String()[:12])
	}
	if err := st.HasEncodedObject(c.TreeHash); err != nil {
		return fmt.Sprintf("tree %s of commit %s is missing", c.TreeHash.String()[:12], h.String()[:12])
	}
	return ""
}

// validateRef accepts a well-formed ref name whose short name cannot pass for an option.
func validateRef(name plumbing.ReferenceName) error {
	if err := name.Validate(); err != nil {
		return err
	}
	if strings.HasPrefix(name.Short(), "-") {
		return errors.New("ref name starts with '-'")
	}
	return nil
}

func refHash(st *filesystem.Storage, name plumbing.ReferenceName) (plumbing.Hash, error) {
	ref, err := st.Reference(name)
	if errors.Is(err, plumbing.ErrReferenceNotFound) {
		return plumbing.ZeroHash, nil
	}
	if err != nil {
		return plumbing.ZeroHash, err
	}
	return ref.Hash(), nil
}

// shortSHA abbreviates a commit id the way git shows it by default.
func shortSHA(h plumbing.Hash) string {
	if h.IsZero() {
		return "nothing"
	}
	return h.String()[:7]
}

func shaOrEmpty(h plumbing.Hash) string {
	if h.IsZero() {
		return ""
	}
	return h.String()
}

// needsPack says whether a pack follows the commands: not if every command is a deletion.
func needsPack(cmds []*packp.Command) bool {
	for _, c := range cmds {
		if !c.New.IsZero() {
			return true
		}
	}
	return false
}

// readPushOptions reads the push-option pkt-lines that follow the commands, up to a flush.
func readPushOptions(r io.Reader) ([]string, error) {
	sc := pktline.NewScanner(r)
	var opts []string
	for sc.Scan() {
		b := sc.Bytes()
		if len(b) == 0 {
			return opts, nil
		}
		if len(opts) == maxPushOptions {
			return nil, fmt.Errorf("more than %d push options", maxPushOptions)
		}
		opts = append(opts, strings.TrimSuffix(string(b), "\n"))
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, io.ErrUnexpectedEOF
}

// sendERR refuses a session before the advertisement in the way git reports as
// "fatal: remote error: <msg>".
func sendERR(w io.Writer, msg string) {
	pktline.NewEncoder(w).EncodeString("ERR " + oneLine(msg, maxReasonLen) + "\n")
}

var errRequestTooLarge = errors.New("request too large")

// limitedReader fails once n bytes have been read: the commands and push options of one push
// fit in far less, so more is a hostile or broken client.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errRequestTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}
