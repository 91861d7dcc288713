package gitserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/gliderlabs/ssh"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/plumbing/revlist"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/rs/zerolog"

	"github.com/slipway/slipway/gitserver/internal/pack"
)

// uploadPack serves one git-upload-pack session for repo: clone, fetch and ls-remote. It
// advertises the refs with HEAD naming the deploy branch, negotiates the common commits the
// way git's upload-pack does without multi_ack (go-git v5's own upload-pack never reads the
// client's haves, go-git#647), and sends a pack of what the client wants and does not have.
// It never creates a repository, and changes one only to move the deploy branch to the
// live release. It returns the session's exit status.
//
// Its phases, in order: fetchTarget, openForFetch, the advertisement, readWants, negotiate,
// sendFetchPack.
func (s *Server) uploadPack(sess ssh.Session, repo string, who Identity, rec *record) int {
	target, branchRef, ok := s.fetchTarget(sess, repo, who, rec)
	if !ok {
		return 1
	}
	// Held for the whole session: no pack the session may open is removed under it.
	packs := s.locks.packs(repo)
	packs.RLock()
	defer packs.RUnlock()
	st, refs, ok := s.openForFetch(sess, repo, branchRef, target.Live, rec)
	if !ok {
		return 1
	}
	defer st.Close() // read only: it only closes the pack files kept open
	ar, err := uploadAdvertisement(refs, branchRef)
	if err != nil {
		rec.level, rec.outcome, rec.err = zerolog.ErrorLevel, "error", err
		sendERR(sess, "internal error")
		return 1
	}
	if err := writeAdvertisement(sess, ar); err != nil {
		rec.outcome, rec.err = "disconnected", err
		return 1
	}

	br := bufio.NewReaderSize(sess, 64*1024)
	req, code, done := readWants(sess, br, refs, rec)
	if done {
		return code
	}
	commons, err := negotiate(br, bufio.NewWriter(sess), st)
	if err != nil {
		var perr *protocolError
		if errors.As(err, &perr) {
			rec.level, rec.outcome, rec.err = zerolog.WarnLevel, "bad-request", err
			sendERR(sess, err.Error())
		} else {
			rec.outcome, rec.err = "disconnected", err
		}
		return 1
	}
	return s.sendFetchPack(sess, st, s.repoDir(repo), req, commons, rec)
}

// fetchTarget asks the Deployer whether who may fetch repo, and returns the environment's
// Target and its deploy branch. If not, the client is told why and ok is false.
func (s *Server) fetchTarget(sess ssh.Session, repo string, who Identity, rec *record) (Target, plumbing.ReferenceName, bool) {
	target, err := s.deployer.Inspect(repo, who.Name)
	if err != nil {
		rec.refused(zerolog.InfoLevel, err)
		sendERR(sess, err.Error())
		return target, "", false
	}
	branchRef := plumbing.NewBranchReferenceName(target.Branch)
	if err := validateRef(branchRef); err != nil {
		rec.level, rec.outcome, rec.err = zerolog.ErrorLevel, "error", fmt.Errorf("deployer returned branch %q: %w", target.Branch, err)
		sendERR(sess, "this environment's deploy branch is misconfigured on the server")
		return target, "", false
	}
	return target, branchRef, true
}

// openForFetch opens repo's repository for a fetch, with the deploy branch moved to the live
// release if need be (alignForFetch), and reads its refs. A repository that does not exist,
// or has no refs yet (the first push was rejected), has nothing to fetch. If it cannot be
// fetched from, the client is told why and ok is false. The caller holds repo's packs lock.
func (s *Server) openForFetch(sess ssh.Session, repo string, branchRef plumbing.ReferenceName, live string, rec *record) (
	st *filesystem.Storage, refs map[plumbing.ReferenceName]plumbing.Hash, ok bool) {
	nothingYet := fmt.Sprintf("nothing has been pushed to %s yet", repo)
	st, err := s.repos.Objects(repo)
	if errors.Is(err, ErrNoRepo) {
		rec.refused(zerolog.InfoLevel, errors.New(nothingYet))
		sendERR(sess, nothingYet)
		return nil, nil, false
	}
	if err != nil {
		rec.level, rec.outcome, rec.err = zerolog.ErrorLevel, "error", err
		sendERR(sess, "cannot open the repository (see the server log)")
		return nil, nil, false
	}
	fail := func(level zerolog.Level, outcome string, err error, msg string) (*filesystem.Storage, map[plumbing.ReferenceName]plumbing.Hash, bool) {
		_ = st.Close() // refusing already; it only closes pack files kept open for reading
		rec.level, rec.outcome, rec.err = level, outcome, err
		sendERR(sess, msg)
		return nil, nil, false
	}
	if err := s.alignForFetch(repo, branchRef, live); err != nil {
		return fail(zerolog.ErrorLevel, "error", err, "the deploy branch does not name the live release and cannot be moved (see the server log)")
	}
	if refs, err = s.readRefs(repo, st); err != nil {
		return fail(zerolog.ErrorLevel, "error", fmt.Errorf("read refs: %w", err), "cannot read the repository's refs (see the server log)")
	}
	if len(refs) == 0 {
		return fail(zerolog.InfoLevel, "refused", errors.New(nothingYet), nothingYet)
	}
	return st, refs, true
}

// readWants reads what the client wants, which must be tips of the advertised refs. A bare
// flush (or the end of the stream) answers the advertisement when the client wants nothing:
// ls-remote, or a fetch that is up to date. done means the session is over, with exit
// status code.
func readWants(sess ssh.Session, br *bufio.Reader, refs map[plumbing.ReferenceName]plumbing.Hash, rec *record) (
	req *uploadRequest, code int, done bool) {
	if first, err := br.Peek(4); err != nil || string(first) == "0000" {
		rec.outcome = "listed"
		return nil, 0, true
	}
	req, err := readUploadRequest(&limitedReader{r: br, n: maxRequestBytes})
	if err == nil {
		err = checkWants(req.wants, refs)
	}
	if err != nil {
		rec.level, rec.outcome, rec.err = zerolog.WarnLevel, "bad-request", err
		sendERR(sess, err.Error())
		return nil, 1, true
	}
	return req, 0, false
}

// sendFetchPack sends the pack of what req wants and the client lacks (commons are the
// commits it has) from the repository st at dir, with keepalives while the pack is being
// prepared, and ends the session's output. It returns the exit status.
func (s *Server) sendFetchPack(sess ssh.Session, st *filesystem.Storage, dir string, req *uploadRequest, commons []plumbing.Hash, rec *record) int {
	ctx, cancel := s.sessionContext(sess)
	defer cancel()
	sideBand := req.caps.Supports(capability.Sideband64k)
	progress := sideBand && !req.caps.Supports(capability.NoProgress)
	w := newWire(sess, sess.Stderr(), sideBand, pinger(sess), cancel)
	ka := keepalives{w: w, every: s.cfg.Keepalive}
	ka.start()
	stats, err := sendPack(ctx, w, st, dir, req, commons, progress)
	ka.stop()
	if err != nil {
		if w.err != nil {
			rec.outcome, rec.err = "disconnected", err
			return 1
		}
		rec.level, rec.outcome, rec.err = zerolog.ErrorLevel, "error", err
		w.fatal("slipway: cannot send the pack (see the server log)")
		_ = w.flush() // the session fails either way; a write error changes nothing
		return 1
	}
	if progress {
		w.notef("Total %d (delta %d, thin %d, sent whole from deltas %d), from %d common commits\n",
			stats.Objects, stats.Deltas, stats.Thin, stats.Inflated, len(commons))
	}
	if err := w.flush(); err != nil {
		rec.outcome, rec.err = "disconnected", err
		return 1
	}
	rec.outcome, rec.objects = "fetched", stats.Objects
	return 0
}

// sendPack sends a pack of every object reachable from the request's wants and not from
// commons, on band 1 with sideband, copied from the packs of the repository st at dir as
// they are stored (pack.Packs.WritePack): nothing is re-encoded or held whole in memory. A
// delta on an object the client lacks is sent whole, unless the client asked for a thin
// pack and has its base.
func sendPack(ctx context.Context, w *wire, st *filesystem.Storage, dir string, req *uploadRequest, commons []plumbing.Hash, progress bool) (pack.SendStats, error) {
	objs, err := revlist.Objects(st, req.wants, commons)
	if err != nil {
		return pack.SendStats{}, fmt.Errorf("list objects: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return pack.SendStats{}, err
	}
	if progress {
		w.notef("Enumerating objects: %d, done.\n", len(objs))
	}
	packs, err := pack.OpenPacks(dir)
	if err != nil {
		return pack.SendStats{}, fmt.Errorf("read pack indexes: %w", err)
	}
	defer packs.Close() // opened for reading: Close has nothing to report
	opt := pack.SendOptions{OFSDelta: req.caps.Supports(capability.OFSDelta)}
	if req.caps.Supports(capability.ThinPack) {
		opt.ClientHas = clientHas(st, commons)
	}
	stats, err := packs.WritePack(ctx, packData{w}, objs, opt)
	if err != nil {
		return stats, fmt.Errorf("send pack: %w", err)
	}
	return stats, nil
}

// clientHas reports whether a client that has the commits commons has object h: whether h
// is reachable from them. The objects reachable from commons are listed on first use.
func clientHas(st storer.EncodedObjectStorer, commons []plumbing.Hash) func(plumbing.Hash) (bool, error) {
	var has map[plumbing.Hash]bool
	return func(h plumbing.Hash) (bool, error) {
		if len(commons) == 0 {
			return false, nil
		}
		if has == nil {
			objs, err := revlist.Objects(st, commons, nil)
			if err != nil {
				return false, fmt.Errorf("list the client's objects: %w", err)
			}
			has = make(map[plumbing.Hash]bool, len(objs))
			for _, o := range objs {
				has[o] = true
			}
		}
		return has[h], nil
	}
}

// packData is the wire as the pack's writer.
type packData struct{ w *wire }

func (p packData) Write(b []byte) (int, error) { return p.w.data(b) }

// alignForFetch moves the deploy branch to the live release as a push would, unless a push
// holds the repository: that push moves the branch itself once its deploy is over, and a
// fetch must not move it under its feet. It works on a storage of its own, so that the
// fetch's storage loads the object index only after the refs are read: every pack that a
// ref it reads can need is there by then.
func (s *Server) alignForFetch(repo string, branchRef plumbing.ReferenceName, live string) error {
	if live == "" {
		return nil
	}
	unlock, ok := s.locks.tryLock(repo)
	if !ok {
		return nil
	}
	defer unlock()
	st, err := s.repos.Objects(repo)
	if err != nil {
		return err
	}
	defer st.Close() // it only closes the pack files kept open for reading
	return s.alignBranch(st, repo, branchRef, live)
}

// uploadAdvertisement lists refs with HEAD naming the deploy branch (if it exists) and the
// capabilities slipway's upload-pack implements. Not offered: multi_ack (the negotiation is
// git's plain one), shallow and deepen, filter, include-tag.
func uploadAdvertisement(refs map[plumbing.ReferenceName]plumbing.Hash, branchRef plumbing.ReferenceName) (*packp.AdvRefs, error) {
	ar := packp.NewAdvRefs()
	for name, h := range refs {
		ar.References[name.String()] = h
	}
	for _, c := range []capability.Capability{capability.OFSDelta, capability.ThinPack, capability.Sideband64k, capability.NoProgress} {
		if err := ar.Capabilities.Add(c); err != nil {
			return nil, err
		}
	}
	if h, ok := refs[branchRef]; ok {
		ar.Head = &h
		if err := ar.Capabilities.Add(capability.SymRef, plumbing.HEAD.String()+":"+branchRef.String()); err != nil {
			return nil, err
		}
	}
	if err := ar.Capabilities.Add(capability.Agent, "slipway"); err != nil {
		return nil, err
	}
	return ar, nil
}

// uploadRequest is what a fetching client wants: the want lines up to the first flush.
type uploadRequest struct {
	wants []plumbing.Hash
	caps  *capability.List // from the first want line
}

// protocolError is a client's request that breaks the protocol; its text is meant for the
// client.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return e.msg }

func protocolErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// readUploadRequest reads the want lines, the first one with the client's capabilities, up
// to the flush. Shallow and partial fetches are refused: they are not advertised.
func readUploadRequest(r io.Reader) (*uploadRequest, error) {
	req := &uploadRequest{caps: capability.NewList()}
	sc := pktline.NewScanner(r)
	for sc.Scan() {
		line := bytes.TrimSuffix(sc.Bytes(), []byte("\n"))
		if len(line) == 0 {
			if len(req.wants) == 0 {
				return nil, protocolErrorf("upload-pack: no want before the flush")
			}
			return req, nil
		}
		switch {
		case bytes.HasPrefix(line, []byte("want ")):
			h, rest, ok := parseHash(line[len("want "):])
			if !ok {
				return nil, protocolErrorf("upload-pack: bad want line %q", oneLine(string(line), 60))
			}
			if len(rest) > 0 {
				if len(req.wants) > 0 || rest[0] != ' ' {
					return nil, protocolErrorf("upload-pack: bad want line %q", oneLine(string(line), 60))
				}
				if err := req.caps.Decode(rest[1:]); err != nil {
					return nil, protocolErrorf("upload-pack: bad capabilities: %v", err)
				}
			}
			req.wants = append(req.wants, h)
		case bytes.HasPrefix(line, []byte("shallow ")), bytes.HasPrefix(line, []byte("deepen")):
			return nil, protocolErrorf("shallow clones and fetches are not supported here; clone or fetch without --depth")
		case bytes.HasPrefix(line, []byte("filter ")):
			return nil, protocolErrorf("partial clones are not supported here; clone without --filter")
		default:
			return nil, protocolErrorf("upload-pack: expected a want line, got %q", oneLine(string(line), 60))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, io.ErrUnexpectedEOF
}

// checkWants accepts only the tips of advertised refs, as git's upload-pack does by default:
// objects of rejected pushes, and anything else not reachable from a ref, stay private.
func checkWants(wants []plumbing.Hash, refs map[plumbing.ReferenceName]plumbing.Hash) error {
	tips := make(map[plumbing.Hash]bool, len(refs))
	for _, h := range refs {
		tips[h] = true
	}
	for _, h := range wants {
		if !tips[h] {
			return protocolErrorf("upload-pack: not our ref %s", h)
		}
	}
	return nil
}

// negotiate answers the client's haves the way git's upload-pack does without multi_ack
// (upload-pack.c, get_common_commits): "ACK <id>" for the first have this repository holds,
// then nothing more; "NAK" for every flush and for "done" while there is none. The client
// stops sending haves at that ACK. It returns the haves the repository holds, once the
// client says "done": the pack leaves out everything reachable from them.
func negotiate(r io.Reader, bw *bufio.Writer, st storer.EncodedObjectStorer) ([]plumbing.Hash, error) {
	enc := pktline.NewEncoder(bw)
	send := func(s string) error {
		if err := enc.EncodeString(s); err != nil {
			return err
		}
		return bw.Flush()
	}
	var commons []plumbing.Hash
	seen := make(map[plumbing.Hash]bool) // commons only: a client may send any number of haves
	sc := pktline.NewScanner(r)
	for sc.Scan() {
		line := bytes.TrimSuffix(sc.Bytes(), []byte("\n"))
		switch {
		case len(line) == 0: // a flush ends a batch of haves
			if len(commons) == 0 {
				if err := send("NAK\n"); err != nil {
					return nil, err
				}
			}
		case bytes.HasPrefix(line, []byte("have ")):
			h, rest, ok := parseHash(line[len("have "):])
			if !ok || len(rest) > 0 {
				return nil, protocolErrorf("upload-pack: bad have line %q", oneLine(string(line), 60))
			}
			if seen[h] || st.HasEncodedObject(h) != nil {
				continue
			}
			seen[h] = true
			commons = append(commons, h)
			if len(commons) == 1 {
				if err := send("ACK " + h.String() + "\n"); err != nil {
					return nil, err
				}
			}
		case string(line) == "done":
			if len(commons) == 0 {
				if err := send("NAK\n"); err != nil {
					return nil, err
				}
			}
			return commons, nil
		default:
			return nil, protocolErrorf("upload-pack: expected have or done, got %q", oneLine(string(line), 60))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, io.ErrUnexpectedEOF
}

// parseHash reads a 40-hex object id at the start of b and returns it with the rest of b.
func parseHash(b []byte) (plumbing.Hash, []byte, bool) {
	var h plumbing.Hash
	if len(b) < 2*len(h) {
		return h, nil, false
	}
	if _, err := hex.Decode(h[:], b[:2*len(h)]); err != nil {
		return h, nil, false
	}
	return h, b[2*len(h):], true
}
