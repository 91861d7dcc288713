package gitserver

import (
	"bufio"
	"bytes"
	"cmp"
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

	"github.com/slipway/slipway/gitserver/internal/pack"
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
//
// Its phases, in order: advertise, readRequest, awaitEnvironment, storePack, runCommands
// (checkCommands, deploy, moveBranch), report; then, with the pusher answered, consolidate.
func (s *Server) receivePack(sess ssh.Session, repo string, who Identity, rec *record) int {
	ctx, cancel := s.sessionContext(sess)
	defer cancel()
	r := &receiveSession{s: s, sess: sess, repo: repo, who: who, rec: rec}
	defer r.close()

	if code, done := r.advertise(ctx); done {
		return code
	}
	if code, done := r.readRequest(); done {
		return code
	}
	r.w = newWire(sess, sess.Stderr(), r.req.Capabilities.Supports(capability.Sideband64k), pinger(sess), cancel)
	// Keepalives run from the start of a wait for the environment, or else from the end of
	// the pack (indexing can take a while), to the report.
	r.ka = keepalives{w: r.w, every: s.cfg.Keepalive}
	if code, done := r.awaitEnvironment(ctx); done {
		return code
	}
	unpackStatus, refused := r.storePack()
	r.ka.start()
	statuses := r.runCommands(ctx, unpackStatus == "ok", refused)
	code := r.report(unpackStatus, statuses)
	if needsPack(r.req.Commands) && unpackStatus == "ok" {
		// After the report, as git's auto gc: the pusher has its answer, and the
		// environment is still held, so no deploy reads the packs meanwhile.
		s.consolidate(r.env.dir, repo)
	}
	return code
}

// limits are the push limits of this session, taken once, when it first asks.
func (r *receiveSession) limits() pushLimits {
	if r.pushLimits == nil {
		r.pushLimits = r.s.push.Load()
	}
	return *r.pushLimits
}

// receiveSession is one receive-pack session as its phases go: what each one learnt, and
// what the session holds until close.
type receiveSession struct {
	s          *Server
	pushLimits *pushLimits // see limits
	sess       ssh.Session
	repo       string
	who        Identity
	rec        *record

	// Held until close.
	reserved reservation // the environment, once Reserve gave it
	env      *pushEnv    // its repository, under its lock; nil until then
	ka       keepalives  // from the start of a wait, or the end of the pack, to the report

	// busy is why Reserve refused before the advertisement (it wraps ErrBusy); nil if the
	// environment was free then.
	busy error
	// refs are the refs as advertised.
	refs    map[plumbing.ReferenceName]plumbing.Hash
	br      *bufio.Reader                 // the client's stream after the advertisement
	req     *packp.ReferenceUpdateRequest // the commands
	options []string                      // the push options, in order
	w       *wire                         // the session's output once the request is read
	waited  *waitInfo                     // set if the push waited for its environment
}

// close lets go of what the session holds, in order: the keepalives stop, the repository
// is closed and its lock released, and then the environment is released.
func (r *receiveSession) close() {
	r.ka.stop()
	if r.env != nil {
		r.env.close()
	}
	r.reserved.release()
}

// advertise reserves the environment if it is free, opening its repository, and sends the
// ref advertisement. If another push holds the environment, its refs are read without its
// lock, so that this push's options (wait=) can still be read; r.busy says why. done means
// the session is over, with exit status code.
func (r *receiveSession) advertise(ctx context.Context) (code int, done bool) {
	target, release, busy := r.s.deployer.Reserve(ctx, r.repo, r.who.Name, 0)
	if busy != nil && !errors.Is(busy, ErrBusy) {
		r.rec.refused(zerolog.InfoLevel, busy)
		if errors.Is(busy, ErrFrozen) {
			r.rec.outcome = "frozen"
		}
		sendERR(r.sess, busy.Error())
		return 1, true
	}
	r.busy = busy
	var err error
	if busy == nil {
		if why := r.hold(ctx, target, release); why != nil {
			why.record(r.rec)
			if why.msg != "" {
				sendERR(r.sess, why.msg)
			}
			return 1, true
		}
		r.refs, err = listRefs(r.env.st)
	} else {
		// Someone else's push holds the repository: read its refs without changing anything.
		r.refs, err = r.s.peekRefs(r.repo)
	}
	if err != nil {
		r.rec.level, r.rec.outcome, r.rec.err = zerolog.ErrorLevel, "error", fmt.Errorf("read refs: %w", err)
		sendERR(r.sess, "cannot read the repository's refs (see the server log)")
		return 1, true
	}
	ar, err := receiveAdvertisement(r.refs)
	if err != nil {
		r.rec.level, r.rec.outcome, r.rec.err = zerolog.ErrorLevel, "error", err
		sendERR(r.sess, "internal error")
		return 1, true
	}
	if err := writeAdvertisement(r.sess, ar); err != nil {
		r.rec.outcome, r.rec.err = "disconnected", err
		return 1, true
	}
	return 0, false
}

// hold keeps the environment Reserve gave (release is called when the session ends) and
// opens its repository under its lock (openForPush).
func (r *receiveSession) hold(ctx context.Context, target Target, release func()) *refusal {
	r.reserved.hold(release)
	env, why := r.s.openForPush(ctx, r.repo, target)
	r.env = env
	return why
}

// readRequest reads the update request: the commands, then the push options if the client
// sends them. A bare flush answers the advertisement when there is nothing to push, and a
// client that only wanted the refs (push --dry-run) just leaves: done, with status 0.
func (r *receiveSession) readRequest() (code int, done bool) {
	r.br = bufio.NewReaderSize(r.sess, 64*1024)
	first, err := r.br.Peek(4)
	if err != nil {
		r.rec.outcome = "no-request"
		return 0, true
	}
	if string(first) == "0000" {
		r.rec.outcome = "up-to-date"
		return 0, true
	}
	lim := &limitedReader{r: r.br, n: maxRequestBytes, err: errRequestTooLarge}
	if r.req, err = decodeUpdateRequest(lim); err != nil {
		return r.badRequest("decode update request", "bad push request", err), true
	}
	if r.req.Capabilities.Supports(capability.PushOptions) {
		if r.options, err = readPushOptions(lim); err != nil {
			return r.badRequest("read push options", "bad push options", err), true
		}
	}
	return 0, false
}

// badRequest ends a session whose request breaks the protocol: the log says what was being
// read, the pusher's stderr gets msg and the cause. It returns the exit status.
func (r *receiveSession) badRequest(what, msg string, err error) int {
	r.rec.level, r.rec.outcome, r.rec.err = zerolog.WarnLevel, "bad-request", fmt.Errorf("%s: %w", what, err)
	// The session ends with status 1 whether or not the pusher gets the line.
	_, _ = fmt.Fprintf(r.sess.Stderr(), "slipway: %s: %s\n", msg, oneLine(err.Error(), maxReasonLen))
	return 1
}

// awaitEnvironment makes sure the push holds its environment. If another push held it at
// the advertisement, the push waits for it as long as its wait= option says, with
// keepalives, or is refused. done means the session is over, with exit status code.
func (r *receiveSession) awaitEnvironment(ctx context.Context) (code int, done bool) {
	wait, err := waitOption(r.options)
	if err != nil {
		r.rec.refused(zerolog.InfoLevel, fmt.Errorf("push option wait: %w", err))
		return r.refusePush(r.rec.err.Error()), true
	}
	if r.busy == nil {
		return 0, false
	}
	if wait <= 0 {
		r.rec.level, r.rec.outcome, r.rec.err = zerolog.InfoLevel, "busy", r.busy
		r.w.notef("hint: git push -o wait=5m waits up to 5 minutes for the running deploy\n")
		return r.refusePush(r.busy.Error()), true
	}
	r.w.notef("-----> waiting up to %s: %s\n", wait, oneLine(r.busy.Error(), maxReasonLen))
	r.ka.start()
	t0 := time.Now()
	target, release, err := r.s.deployer.Reserve(ctx, r.repo, r.who.Name, wait)
	r.rec.waited = max(time.Since(t0), time.Nanosecond)
	if err != nil {
		return r.waitFailed(ctx, err), true
	}
	if why := r.hold(ctx, target, release); why != nil {
		why.record(r.rec)
		if why.msg == "" {
			return 1, true
		}
		return r.refusePush(why.msg), true
	}
	r.waited = &waitInfo{advertised: r.refs[r.env.branchRef]}
	return 0, false
}

// waitFailed ends a push whose wait for its environment failed with err: the pusher went
// away, the wait ran out, or Reserve refused. It returns the exit status.
func (r *receiveSession) waitFailed(ctx context.Context, err error) int {
	if ctx.Err() != nil {
		r.rec.outcome, r.rec.err = "disconnected", err
		return 1
	}
	r.rec.level, r.rec.outcome, r.rec.err = zerolog.InfoLevel, "refused", err
	if errors.Is(err, ErrBusy) {
		r.rec.outcome = "busy"
	}
	return r.refusePush(err.Error())
}

// storePack stores the pack that follows the commands and returns the unpack status for the
// report: "ok", or why the pack was not stored; and the reason to refuse every command with
// when it is the pusher's to read ("" for git's "unpacker error"): a pack over
// MaxPushSize, a tree git's fsck refuses. A push of deletions only has no pack, and its
// client does not close its side: nothing is read. Keepalives start once the pack has
// arrived, while its deltas are resolved.
func (r *receiveSession) storePack() (unpackStatus, refused string) {
	if !needsPack(r.req.Commands) {
		return "ok", ""
	}
	_, err := pack.Store(r.env.dir, r.packReader(), r.limits().maxObject, r.ka.start)
	// The storage may have looked at objects before; make it see the new pack.
	r.env.st.Reindex()
	var tree *pack.TreeError
	var big *pack.TooLargeError
	switch {
	case err == nil:
		return "ok", ""
	case errors.Is(err, errPushTooLarge):
		r.rec.outcome, r.rec.err = "too-large", err
		msg := r.tooLarge()
		return msg, msg
	case errors.As(err, &big):
		r.rec.outcome, r.rec.err = "too-large", err
		msg := fmt.Sprintf("push refused: it holds an object of %s, over max_release_size (%s)", formatSize(big.Size), formatSize(big.Max))
		return msg, msg
	case errors.As(err, &tree):
		r.rec.outcome, r.rec.err = "bad-tree", err
		msg := packStatus(err)
		return msg, msg
	case errors.Is(err, pack.ErrBad):
		r.rec.outcome, r.rec.err = "unpack-failed", err
		return packStatus(err), ""
	}
	r.rec.level, r.rec.outcome, r.rec.err = zerolog.ErrorLevel, "unpack-failed", fmt.Errorf("store pack: %w", err)
	return "cannot store the pack (see the server log)", ""
}

// errPushTooLarge is what reading a pack fails with past Config.MaxPushSize.
var errPushTooLarge = errors.New("the pack exceeds max_push_size")

// packReader is the pack as it arrives, read no further than Config.MaxPushSize bytes: a
// read past it fails with errPushTooLarge, so the pack stops streaming there.
func (r *receiveSession) packReader() *bufio.Reader {
	return bufio.NewReaderSize(&limitedReader{r: r.br, n: r.limits().maxPush, err: errPushTooLarge}, 64*1024)
}

// tooLarge is the reason a pack over Config.MaxPushSize is refused with.
func (r *receiveSession) tooLarge() string {
	return fmt.Sprintf("push refused: the pack exceeds max_push_size (%s)", formatSize(r.limits().maxPush))
}

// formatSize writes a size in bytes the way a configuration gives it: "2.0 GiB".
func formatSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	v, suffix := float64(n)/unit, "KiB"
	for _, s := range []string{"MiB", "GiB", "TiB"} {
		if v < unit {
			break
		}
		v, suffix = v/unit, s
	}
	return fmt.Sprintf("%.1f %s", v, suffix)
}

// consolidate merges the packs of repo's repository when pushes have left too many
// (pack.Consolidate). Packs a fetch may be reading are left in place. A failure is the
// operator's to know of, and costs nothing but speed: the packs stay as they were.
func (s *Server) consolidate(dir, repo string) {
	start := time.Now()
	packs := s.locks.packs(repo)
	stats, err := pack.Consolidate(dir, func() (func(), bool) {
		if !packs.TryLock() {
			return nil, false
		}
		return packs.Unlock, true
	})
	switch {
	case err != nil:
		s.log.Error().Err(err).Str("repo", repo).Msg("merge packs")
	case stats.Packs > 0:
		s.log.Info().Str("repo", repo).Int("packs", stats.Packs).Int("objects", stats.Objects).
			Int64("took_ms", time.Since(start).Milliseconds()).Msg("packs merged")
	}
}

// readsReportAfterPipeBreaks reports whether the client is git's own: when the server stops
// reading its pack, git's send-pack still reads the report and shows each ref's reason
// (send-pack.c, after pack_objects fails), so a refused push need not upload its pack
// first. Other clients (go-git, libgit2) may stop at the broken pipe and show that instead:
// their pack is read and dropped.
func (r *receiveSession) readsReportAfterPipeBreaks() bool {
	for _, agent := range r.req.Capabilities.Get(capability.Agent) {
		if strings.HasPrefix(agent, "git/") {
			return true
		}
	}
	return false
}

// refusePush refuses a whole push once its commands have been read. git sends the pack
// without waiting for an answer, and at this point it shows an ERR packet only as
// "protocol error: bad band #69": so every command is answered "ng <ref> <reason>", which
// git shows as "! [remote rejected] <ref> (<reason>)". git's own client gets that answer at
// once, and the session ends without reading its pack (a busy environment does not cost
// the upload); another client's pack is read and dropped first. It returns the exit status.
func (r *receiveSession) refusePush(reason string) int {
	unpackStatus := "ok"
	if needsPack(r.req.Commands) && !r.readsReportAfterPipeBreaks() {
		_, err := pack.Discard(r.packReader())
		switch {
		case err == nil:
		case errors.Is(err, errPushTooLarge):
			unpackStatus = r.tooLarge()
		case errors.Is(err, pack.ErrBad):
			unpackStatus = packStatus(err)
		default:
			r.rec.err = errors.Join(r.rec.err, fmt.Errorf("drop the pack: %w", err))
			return 1
		}
	}
	reason = oneLine(reason, maxReasonLen)
	statuses := make([]string, len(r.req.Commands))
	for i := range statuses {
		statuses[i] = reason
	}
	return r.report(unpackStatus, statuses)
}

// report stops the keepalives and ends the push with its report (sendReport). It returns
// the exit status.
func (r *receiveSession) report(unpackStatus string, statuses []string) int {
	r.ka.stop()
	return sendReport(r.w, r.req, unpackStatus, statuses, r.rec)
}

// sendReport ends a push: the report, in the commands' order, in band 1 with sideband, then
// the final flush. It returns the session's exit status.
func sendReport(w *wire, req *packp.ReferenceUpdateRequest, unpackStatus string, statuses []string, rec *record) int {
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
	// A write error is kept in w.err, read below.
	if w.mux != nil {
		if report.Len() > 0 {
			_, _ = w.band(sideband.PackData, report.Bytes())
		}
		_ = w.raw(pktline.FlushPkt)
	} else if report.Len() > 0 {
		_ = w.raw(report.Bytes())
	}
	werr := w.err
	w.mu.Unlock()
	if werr != nil && rec.err == nil {
		rec.err = fmt.Errorf("send report: %w", werr)
	}
	return 0
}

// packStatus is the unpack status for a bad pack (pack.ErrBad).
func packStatus(err error) string {
	return oneLine(strings.Replace(err.Error(), pack.ErrBad.Error()+": ", "", 1), maxReasonLen)
}

// pinger returns a keepalive for clients without sideband: an SSH-level request.
func pinger(sess ssh.Session) func() {
	return func() {
		if c, ok := sess.Context().Value(ssh.ContextKeyConn).(gossh.Conn); ok {
			// A failed request means the connection is gone, which the session finds out
			// on its own next read or write.
			_, _, _ = c.SendRequest("keepalive@openssh.com", false, nil)
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
	_ = e.st.Close() // it only closes the pack files kept open for reading
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
	if err := pack.RemoveTemp(dir); err != nil {
		s.log.Warn().Err(err).Str("repo", repo).Msg("remove temporary pack files")
	}
	if err := s.alignBranch(st, repo, branchRef, target.Live); err != nil {
		_ = st.Close() // already refusing; it only closes pack files kept open for reading
		unlock()
		return nil, &refusal{"the deploy branch does not name the live release and cannot be moved (see the server log)",
			zerolog.ErrorLevel, "error", err}
	}
	return &pushEnv{st: st, dir: dir, branchRef: branchRef, unlock: unlock}, nil
}

// peekRefs reads repo's refs for the advertisement to a push whose environment is busy:
// without its lock, without creating or changing anything. No repository: no refs.
func (s *Server) peekRefs(repo string) (map[plumbing.ReferenceName]plumbing.Hash, error) {
	st, err := s.repos.Objects(repo)
	if errors.Is(err, ErrNoRepo) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer st.Close() // read only: it only closes pack files kept open
	return s.readRefs(repo, st)
}

// runCommands applies slipway's policy to every command of the push and deploys the one
// update of the deploy branch that passes it. It returns each command's status for the
// report, in order: "ok" or the reason for ng. If the pack was not unpacked, every command
// is refused, with refused, or else git's "unpacker error".
func (r *receiveSession) runCommands(ctx context.Context, unpacked bool, refused string) []string {
	cmds := r.req.Commands
	statuses := make([]string, len(cmds))
	deploy := -1
	var current plumbing.Hash
	if unpacked {
		deploy, current = r.checkCommands(statuses)
	} else {
		for i := range statuses {
			statuses[i] = cmp.Or(refused, "unpacker error")
		}
	}
	if deploy < 0 {
		r.recordRejected(statuses)
		return statuses
	}
	statuses[deploy] = r.deploy(ctx, cmds[deploy], current)
	return statuses
}

// checkCommands applies slipway's policy to the push's commands and writes each one's
// status: only the deploy branch may be updated, once, from the value the pusher was shown,
// to a commit whose tree is here, and it may not be deleted. The update that passes keeps
// status "": checkCommands returns its index (-1 if none) and the branch's current value.
func (r *receiveSession) checkCommands(statuses []string) (deploy int, current plumbing.Hash) {
	branchRef := r.env.branchRef
	deploy = -1
	for i, cmd := range r.req.Commands {
		switch {
		case validateRef(cmd.Name) != nil:
			statuses[i] = "invalid ref name"
		case cmd.Name != branchRef:
			statuses[i] = wrongBranch(r.repo, cmd, branchRef)
		case deploy >= 0:
			statuses[i] = fmt.Sprintf("more than one update of %s", branchRef)
		case cmd.New.IsZero():
			statuses[i] = "deleting the deploy branch is not allowed"
		default:
			var h plumbing.Hash
			if statuses[i], h = r.checkUpdate(cmd); statuses[i] == "" {
				deploy, current = i, h
			}
		}
	}
	return deploy, current
}

// checkUpdate checks an update of the deploy branch: its old value must be the one the
// pusher was shown, and the branch must still have it; its new one must be a commit whose
// tree is here. It returns "" if the update may be deployed, else the reason for ng, and
// the branch's current value.
func (r *receiveSession) checkUpdate(cmd *packp.Command) (string, plumbing.Hash) {
	branchRef := r.env.branchRef
	current, err := refHash(r.env.st, branchRef)
	if err != nil {
		r.rec.level, r.rec.err = zerolog.ErrorLevel, fmt.Errorf("read %s: %w", branchRef, err)
		return "cannot read the branch (see the server log)", current
	}
	// The pusher's old value is the one advertised: before the wait, for a push that waited
	// for its environment.
	advertised := current
	if r.waited != nil {
		advertised = r.waited.advertised
	}
	if cmd.Old != advertised {
		return fmt.Sprintf("stale info: %s changed since you fetched", branchRef.Short()), current
	}
	// A deploy that ran while this push waited moved the branch: deploying over it would
	// undo a commit this pusher never saw. git's receive-pack refuses the same way.
	if current != advertised {
		r.rec.outcome = "stale"
		return fmt.Sprintf("fetch first: %s moved to %s while this push waited", branchRef.Short(), shortSHA(current)), current
	}
	return checkCommit(r.env.st, cmd.New), current
}

// wrongBranch is the ng reason for an update of a ref other than the deploy branch. For a
// branch pushed (not deleted) it adds the push that deploys it, with the environment's name
// for the remote, as in `git remote add production ssh://git@HOST/myapp/production`: when
// the names can be pasted into a shell as they are, and the reason stays within maxReasonLen.
func wrongBranch(repo string, cmd *packp.Command, branchRef plumbing.ReferenceName) string {
	reason := fmt.Sprintf("only %s deploys here", branchRef)
	branch, deploys := cmd.Name.Short(), branchRef.Short()
	if !cmd.Name.IsBranch() || cmd.New.IsZero() || !shellWord(branch) || !shellWord(deploys) {
		return reason
	}
	_, env, _ := strings.Cut(repo, "/")
	hint := fmt.Sprintf("%s; to deploy it: git push %s %s:%s", reason, env, branch, deploys)
	if len(hint) > maxReasonLen {
		return reason
	}
	return hint
}

// shellWord says whether s reads the same to a shell unquoted.
func shellWord(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("._-/+@,=", c) >= 0) {
			return false
		}
	}
	return true
}

// recordRejected records a push that deploys nothing: its first command and that one's
// status, unless an earlier phase recorded more.
func (r *receiveSession) recordRejected(statuses []string) {
	rec := r.rec
	if rec.outcome == "" {
		rec.outcome = "rejected"
	}
	if rec.level < zerolog.WarnLevel {
		rec.level = zerolog.WarnLevel
	}
	if cmds := r.req.Commands; len(cmds) > 0 && rec.ref == "" {
		rec.ref, rec.oldSHA, rec.sha = cmds[0].Name.String(), shaOrEmpty(cmds[0].Old), shaOrEmpty(cmds[0].New)
		if rec.err == nil {
			rec.err = errors.New(statuses[0])
		}
	}
}

// deploy hands cmd, the accepted update of the deploy branch, which names current now (its
// old value), to the Deployer, and moves the branch once the deploy succeeded. It returns
// the update's status: "ok" or the reason for ng.
func (r *receiveSession) deploy(ctx context.Context, cmd *packp.Command, current plumbing.Hash) string {
	branchRef, rec := r.env.branchRef, r.rec
	rec.ref, rec.oldSHA, rec.sha = branchRef.String(), shaOrEmpty(current), cmd.New.String()
	push := Push{
		Repo:           r.repo,
		Branch:         branchRef.Short(),
		OldSHA:         shaOrEmpty(current),
		NewSHA:         cmd.New.String(),
		Pusher:         r.who.Name,
		KeyFingerprint: r.who.KeyFingerprint,
		Options:        r.options,
		Objects:        r.env.st,
	}
	if ctx.Err() != nil {
		rec.outcome, rec.err = "disconnected", ctx.Err()
		return "the pusher disconnected"
	}
	err := r.s.deployer.Deploy(ctx, push, r.w)
	r.w.closeOutput()
	if err != nil {
		return r.deployFailed(ctx, err)
	}
	return r.moveBranch(cmd.New, current)
}

// deployFailed records a deploy that returned err and returns the update's ng reason: the
// first line of err, which the Deployer meant for the pusher.
func (r *receiveSession) deployFailed(ctx context.Context, err error) string {
	reason := oneLine(err.Error(), maxReasonLen)
	if reason == "" {
		reason = "deploy failed"
	}
	r.rec.outcome, r.rec.err = "rejected", err
	if ctx.Err() != nil {
		r.rec.outcome = "disconnected"
	}
	if r.rec.level < zerolog.WarnLevel {
		r.rec.level = zerolog.WarnLevel
	}
	return reason
}

// moveBranch moves the deploy branch from current to the deployed commit sha, if it still
// names current (compare-and-swap). It returns the update's status.
func (r *receiveSession) moveBranch(sha, current plumbing.Hash) string {
	branchRef := r.env.branchRef
	if err := r.s.setRef(r.env.st, r.repo, branchRef, sha, current); err != nil {
		r.rec.level, r.rec.outcome, r.rec.err = zerolog.ErrorLevel, "error", fmt.Errorf("move %s after deploy: %w", branchRef, err)
		return fmt.Sprintf("deployed, but %s could not be moved (see the server log)", branchRef.Short())
	}
	r.rec.outcome = "deployed"
	return "ok"
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
	if err := s.setRef(st, repo, branchRef, want, current); err != nil {
		return fmt.Errorf("align %s with the live release: %w", branchRef, err)
	}
	s.log.Warn().Str("repo", repo).Str("ref", branchRef.String()).Str("old_sha", shaOrEmpty(current)).
		Str("sha", live).Msg("branch moved to the live release")
	return nil
}

// setRef sets ref name of repo's repository st to h if it still names old (zero: if it does
// not exist), under repo's refs lock, and makes the change durable.
func (s *Server) setRef(st *filesystem.Storage, repo string, name plumbing.ReferenceName, h, old plumbing.Hash) error {
	var oldRef *plumbing.Reference
	if !old.IsZero() {
		oldRef = plumbing.NewHashReference(name, old)
	}
	refs := s.locks.refs(repo)
	refs.Lock()
	err := st.CheckAndSetReference(plumbing.NewHashReference(name, h), oldRef)
	refs.Unlock()
	if err != nil {
		return err
	}
	syncRef(s.repoDir(repo), name)
	return nil
}

// syncRef makes a loose ref written by go-git (which does not fsync) durable.
func syncRef(dir string, name plumbing.ReferenceName) {
	p := filepath.Join(dir, filepath.FromSlash(name.String()))
	// Best effort: the ref is in place already, and a failed sync, which only weakens its
	// durability over a power loss, leaves the push nothing to do about it.
	if f, err := os.Open(p); err == nil {
		_ = f.Sync()
		_ = f.Close()
	}
	_ = atomicfile.SyncDir(filepath.Dir(p))
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

// readPushOptions reads the push-option pkt-lines that follow the commands, up to a flush:
// one option per line, one trailing LF dropped. An option may not hold a newline (git's
// send-pack refuses to send one) or a NUL (git's receive-pack could not read one).
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
		o := strings.TrimSuffix(string(b), "\n")
		if strings.ContainsAny(o, "\n\x00") {
			return nil, fmt.Errorf("push option %d holds a newline or a NUL", len(opts)+1)
		}
		opts = append(opts, o)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, io.ErrUnexpectedEOF
}

// sendERR refuses a session before the advertisement in the way git reports as
// "fatal: remote error: <msg>".
func sendERR(w io.Writer, msg string) {
	// The session ends after it whether or not the client gets it.
	_ = pktline.NewEncoder(w).EncodeString("ERR " + oneLine(msg, maxReasonLen) + "\n")
}

var errRequestTooLarge = errors.New("request too large")

// limitedReader fails with err once n bytes have been read. The commands and push options
// of one push fit in maxRequestBytes, so more is a hostile or broken client; a pack fits in
// Config.MaxPushSize.
type limitedReader struct {
	r   io.Reader
	n   int64
	err error
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, l.err
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}
