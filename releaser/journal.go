package releaser

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/slipway/slipway/internal/atomicfile"
)

// ErrNotFound is matched (errors.Is) by the errors of Entry, Finish and Previous when
// what they were asked for does not exist.
var ErrNotFound = errors.New("not found")

// Entry is one deploy attempt of the environment, as the journal records it.
type Entry struct {
	ID             int64     `json:"id"`   // 1, 2, 3... per environment, in start order
	Kind           string    `json:"kind"` // "push", "rollback", "redeploy"
	Repo           string    `json:"repo"`
	SHA            string    `json:"sha"`
	PreviousSHA    string    `json:"previous_sha"` // live when it started; "" if none
	Pusher         string    `json:"pusher"`
	KeyFingerprint string    `json:"key_fp"`
	Message        string    `json:"message,omitempty"`
	Start          time.Time `json:"start"`
	End            time.Time `json:"end,omitzero"` // zero while running, and if it was cut short by a crash
	Steps          []Step    `json:"steps,omitempty"`
	Outcome        string    `json:"outcome"`          // one of the Outcome constants
	Reason         string    `json:"reason,omitempty"` // why it failed, as the pusher saw it
	Log            string    `json:"log,omitempty"`    // absolute path of its log file; "" once the log was pruned
}

// MarshalJSON adds to Entry's fields "duration_ms": End-Start in whole milliseconds, left
// out while End is zero. It is computed, never read back.
func (e Entry) MarshalJSON() ([]byte, error) {
	type fields Entry // Entry's fields, without this method
	var ms *int64
	if !e.End.IsZero() {
		d := e.End.Sub(e.Start).Milliseconds()
		ms = &d
	}
	return json.Marshal(struct {
		fields
		DurationMS *int64 `json:"duration_ms,omitempty"`
	}{fields(e), ms})
}

// Step is one step of a deploy. Its JSON, in the journal and wherever it is marshaled, is
// {"name": "build 1/2", "took_ms": 1500, "exit": 0}: Took in whole milliseconds.
type Step struct {
	Name string        // "checkout", "build 1/2", "test 1/1", "activate", "after_activate 1/1"
	Took time.Duration // in JSON: took_ms, truncated to the millisecond
	Exit int           // 0 ok; the exit status; -1 killed / not run to the end
}

// stepJSON is a Step as JSON. TookNS is "took", in nanoseconds, as journals written before
// took_ms have it: read, never written.
type stepJSON struct {
	Name   string `json:"name"`
	TookMS *int64 `json:"took_ms,omitempty"`
	TookNS *int64 `json:"took,omitempty"`
	Exit   int    `json:"exit"`
}

// MarshalJSON writes took_ms, never took.
func (s Step) MarshalJSON() ([]byte, error) {
	ms := s.Took.Milliseconds()
	return json.Marshal(stepJSON{Name: s.Name, TookMS: &ms, Exit: s.Exit})
}

// UnmarshalJSON reads took_ms and, from an older journal, took (nanoseconds); took_ms
// wins if both are there.
func (s *Step) UnmarshalJSON(b []byte) error {
	var v stepJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*s = Step{Name: v.Name, Exit: v.Exit}
	switch {
	case v.TookMS != nil:
		s.Took = time.Duration(*v.TookMS) * time.Millisecond
	case v.TookNS != nil:
		s.Took = time.Duration(*v.TookNS)
	}
	return nil
}

// Outcomes. Begin records OutcomeRunning; Finish records live, failed or cancelled.
// History derives the rest from the order of activations, which the journal records too:
//
//   - an entry whose release went live (Activate during it, or Finish live) is "live" while
//     that activation is the last one, even if its Finish said failed (say, a hook after the
//     swap failed: the release is live all the same); once another release goes live it is
//     "superseded", or "rolled back" if the entry that replaced it is a rollback;
//   - an entry never finished is "running" while it is the newest and the deploy lock is held
//     by the deploy that began it, and "cancelled" otherwise (the process running it died;
//     Recover then journals it as cancelled, or as live if it had swapped current).
const (
	OutcomeRunning    = "running"
	OutcomeLive       = "live"
	OutcomeFailed     = "failed"
	OutcomeCancelled  = "cancelled"
	OutcomeSuperseded = "superseded"
	OutcomeRolledBack = "rolled back"
	// OutcomeReverted: the release went live, its after_activate or health check failed, and
	// current went back to the release live before (or, on a first deploy, was removed). It
	// stays reverted whatever goes live later.
	OutcomeReverted = "reverted"
	// OutcomeUnhealthy: as live, but its after_activate or health check failed and
	// on_failure = "keep" left it live; superseded or rolled back like live once replaced.
	OutcomeUnhealthy = "live (unhealthy)"
	// OutcomeChanged: a change of the environment's configuration (Note), not a deploy.
	OutcomeChanged = "changed"
)

// KindConfig is the kind of a Note: a change of the environment's configuration.
const KindConfig = "config"

// keepFailedLogs is how many logs of failed or cancelled deploys Prune keeps.
const keepFailedLogs = 20

// The events of the journal, one per line.
const (
	eventBegin    = "begin"    // the whole entry, outcome running
	eventFinish   = "finish"   // id, outcome, end, steps, reason
	eventActivate = "activate" // sha, time: current was swapped to sha ("" : removed)
	eventNote     = "note"     // the whole entry of a change that is not a deploy, finished
)

// journalLine is one line of history.jsonl as read; each event sets some of the fields.
// It is never marshaled: Entry's MarshalJSON, promoted, would drop Event and Time.
type journalLine struct {
	Event string    `json:"event"`
	Time  time.Time `json:"time,omitzero"`
	Entry
}

type beginLine struct {
	Event string `json:"event"`
	Entry
}

// MarshalJSON writes the event and the entry's fields: Entry's own MarshalJSON, promoted,
// would write the bare entry, without its event.
func (l beginLine) MarshalJSON() ([]byte, error) {
	type fields Entry // Entry's fields, without its methods
	return json.Marshal(struct {
		Event string `json:"event"`
		fields
	}{l.Event, fields(l.Entry)})
}

type finishLine struct {
	Event   string    `json:"event"`
	ID      int64     `json:"id"`
	Outcome string    `json:"outcome"`
	End     time.Time `json:"end,omitzero"`
	Steps   []Step    `json:"steps,omitempty"`
	Reason  string    `json:"reason,omitempty"`
}

type activateLine struct {
	Event string    `json:"event"`
	SHA   string    `json:"sha"`
	Time  time.Time `json:"time"`
}

// known reports whether l is of an event this version journals.
func (l *journalLine) known() bool {
	switch l.Event {
	case eventBegin, eventFinish, eventActivate, eventNote:
		return true
	}
	return false
}

// valid reports whether l, of a known event, has what that event needs.
func (l *journalLine) valid() bool {
	switch l.Event {
	case eventBegin:
		return l.ID > 0 && validSHA(l.SHA)
	case eventNote:
		return l.ID > 0 && l.Kind == KindConfig && l.SHA == ""
	case eventFinish:
		return l.ID > 0 && finishOutcome(l.Outcome)
	case eventActivate:
		return l.SHA == "" || validSHA(l.SHA)
	}
	return false
}

func (r *Releaser) journalPath() string { return filepath.Join(r.path, journalFile) }

func (r *Releaser) logPath(id int64) string {
	return filepath.Join(r.logsDir(), fmt.Sprintf("%06d.log", id))
}

// logID is the entry id of a log file's name, if it is one.
func logID(name string) (int64, bool) {
	s, ok := strings.CutSuffix(name, ".log")
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseInt(s, 10, 64)
	return id, err == nil && id > 0 && fmt.Sprintf("%06d.log", id) == name
}

// Begin journals the start of a deploy: it fills e's ID (the next one), Start (now),
// Outcome (running) and Log, creates that log file, .slipway/logs/<id>.log, and returns the
// entry and the log open for writing. Kind, Repo, SHA, PreviousSHA, Pusher, KeyFingerprint
// and Message are the caller's; End, Steps and Reason are cleared. The caller holds the
// deploy lock.
//
// The journal, .slipway/history.jsonl, is only ever appended to, one whole JSON line per
// event (begin, finish, activate) in a single write, fsynced before Begin, Finish or
// Activate return. Writers serialize on an flock(2) of the journal itself; readers take no
// lock and ignore a last line without its newline (being written, or torn by a crash) or
// that does not parse (garbled by a crash), and the next writer cuts such a torn line off
// before it appends. A line that does not parse anywhere else is damage no crash makes:
// Begin, Finish and every reader of the journal return a *CorruptError then, so that no
// entry id is handed out twice.
func (r *Releaser) Begin(e Entry) (Entry, *os.File, error) {
	switch e.Kind {
	case "push", "rollback", "redeploy":
	default:
		return Entry{}, nil, fmt.Errorf("begin: unknown kind %q", e.Kind)
	}
	if err := checkSHA(e.SHA); err != nil {
		return Entry{}, nil, fmt.Errorf("begin: %w", err)
	}
	if e.PreviousSHA != "" && !validSHA(e.PreviousSHA) {
		return Entry{}, nil, fmt.Errorf("begin: previous sha: %q: %w", e.PreviousSHA, errBadSHA)
	}
	if err := os.MkdirAll(r.logsDir(), 0o755); err != nil {
		return Entry{}, nil, fmt.Errorf("begin: %w", err)
	}
	var f *os.File
	err := r.appendJournal(func(lines []journalLine) ([]any, error) {
		e.ID = nextID(lines)
		e.Start = r.now().UTC()
		e.End, e.Steps, e.Reason, e.Outcome = time.Time{}, nil, "", OutcomeRunning
		e.Log = r.logPath(e.ID)
		// O_TRUNC, not O_EXCL: a file of this name is one whose entry a crash kept out of
		// the journal; nothing refers to it.
		var err error
		f, err = os.OpenFile(e.Log, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
		if err != nil {
			return nil, err
		}
		return []any{beginLine{Event: eventBegin, Entry: e}}, nil
	})
	if err != nil {
		if f != nil {
			// Nothing refers to the log; one left behind is truncated by the next Begin.
			f.Close()        // empty: closing it loses nothing
			os.Remove(e.Log) // see above
		}
		return Entry{}, nil, fmt.Errorf("begin: %w", err)
	}
	return e, f, nil
}

// finishOutcome reports whether a deploy may finish with outcome.
func finishOutcome(outcome string) bool {
	switch outcome {
	case OutcomeLive, OutcomeFailed, OutcomeCancelled, OutcomeReverted, OutcomeUnhealthy:
		return true
	}
	return false
}

// nextID is the id the next entry of the journal lines takes.
func nextID(lines []journalLine) int64 {
	var last int64
	for _, l := range lines {
		if l.Event == eventBegin || l.Event == eventNote {
			last = max(last, l.ID)
		}
	}
	return last + 1
}

// Note journals a change of the environment that is not a deploy (Kind KindConfig: who
// changed which settings, in Message; never their values), as one finished entry with the
// outcome OutcomeChanged. It fills e's ID, Start and End (now) and Outcome; SHA stays empty,
// so that looking up a release's entries never finds a Note. It takes no deploy lock: it
// never touches a release.
func (r *Releaser) Note(e Entry) (Entry, error) {
	if e.Kind != KindConfig {
		return Entry{}, fmt.Errorf("note: unknown kind %q", e.Kind)
	}
	e.SHA, e.PreviousSHA = "", ""
	err := r.appendJournal(func(lines []journalLine) ([]any, error) {
		e.ID = nextID(lines)
		e.Start = r.now().UTC()
		e.End, e.Outcome, e.Steps, e.Reason, e.Log = e.Start, OutcomeChanged, nil, "", ""
		return []any{beginLine{Event: eventNote, Entry: e}}, nil
	})
	if err != nil {
		return Entry{}, fmt.Errorf("note: %w", err)
	}
	return e, nil
}

// Finish journals the end of entry id: its outcome (OutcomeLive, OutcomeFailed,
// OutcomeCancelled, OutcomeReverted or OutcomeUnhealthy), its steps and, for a failure, the
// reason the pusher was given. End is now. An id never begun is an error wrapping
// ErrNotFound; an entry finishes only once.
func (r *Releaser) Finish(id int64, outcome string, steps []Step, reason string) error {
	if !finishOutcome(outcome) {
		return fmt.Errorf("finish %d: outcome %q is not live, failed, cancelled, reverted or unhealthy", id, outcome)
	}
	err := r.appendJournal(func(lines []journalLine) ([]any, error) {
		begun, finished := false, false
		for _, l := range lines {
			if l.ID == id {
				begun = begun || l.Event == eventBegin
				finished = finished || l.Event == eventFinish
			}
		}
		if !begun {
			return nil, ErrNotFound
		}
		if finished {
			return nil, errors.New("already finished")
		}
		return []any{finishLine{Event: eventFinish, ID: id, Outcome: outcome, End: r.now().UTC(), Steps: steps, Reason: reason}}, nil
	})
	if err != nil {
		return fmt.Errorf("finish %d: %w", id, err)
	}
	return nil
}

// journalActivation journals that current now names sha ("" : no current). Errors are
// logged: current is the truth, and Recover journals what the journal missed.
func (r *Releaser) journalActivation(sha string) {
	err := r.appendJournal(func([]journalLine) ([]any, error) {
		return []any{activateLine{Event: eventActivate, SHA: sha, Time: r.now().UTC()}}, nil
	})
	if err != nil {
		r.log.Error().Err(err).Str("sha", sha).Msg("journal activation")
	}
}

// History returns the journal's entries, newest first, at most n of them (n <= 0: all),
// with their outcomes derived as the Outcome constants say. Log is "" for an entry whose
// log file is gone (pruned). It may be called at any time, from any process.
func (r *Releaser) History(n int) ([]Entry, error) {
	entries, err := r.entries()
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	slices.Reverse(entries)
	if n > 0 && len(entries) > n {
		entries = entries[:n]
	}
	return entries, nil
}

// Entry returns one entry, as History has it: by ID ("12"), or by commit: the newest entry
// for a full sha, or for a unique prefix of at least 7 hex digits. An all-decimal string
// of 7 digits or more is tried as a sha prefix first. Nothing found: an error wrapping
// ErrNotFound; a prefix of several commits: an error saying so.
func (r *Releaser) Entry(idOrSHA string) (Entry, error) {
	entries, err := r.entries()
	if err != nil {
		return Entry{}, fmt.Errorf("entry %s: %w", idOrSHA, err)
	}
	s := strings.ToLower(idOrSHA)
	isHex := s != "" && strings.Trim(s, "0123456789abcdef") == ""
	if isHex && len(s) >= 7 && len(s) <= 40 {
		var found *Entry
		for i := len(entries) - 1; i >= 0; i-- {
			en := &entries[i]
			if !strings.HasPrefix(en.SHA, s) {
				continue
			}
			if found == nil {
				found = en
			} else if found.SHA != en.SHA {
				return Entry{}, fmt.Errorf("entry %s: prefix of more than one commit (%s, %s)", idOrSHA, found.SHA, en.SHA)
			}
		}
		if found != nil {
			return *found, nil
		}
	}
	if id, err := strconv.ParseInt(s, 10, 64); err == nil && strings.Trim(s, "0123456789") == "" {
		for _, en := range entries {
			if en.ID == id {
				return en, nil
			}
		}
	}
	return Entry{}, fmt.Errorf("entry %s: %w", idOrSHA, ErrNotFound)
}

// entries reads the journal and returns its entries in ID order, outcomes derived and
// logs checked.
func (r *Releaser) entries() ([]Entry, error) {
	lines, err := r.readJournal()
	if err != nil {
		return nil, err
	}
	h := foldJournal(lines)
	// current is the truth about what is live; if it cannot be read, the journal's own
	// last activation stands.
	live, err := r.Current()
	if err != nil {
		live = h.liveSHA
	}
	h.settle(live)
	entries := h.outcomes(r.readHolder)
	logs := map[string]bool{}
	if des, err := os.ReadDir(r.logsDir()); err == nil {
		for _, d := range des {
			logs[d.Name()] = true
		}
	}
	for i := range entries {
		entries[i].Log = ""
		if p := r.logPath(entries[i].ID); logs[filepath.Base(p)] {
			entries[i].Log = p
		}
	}
	return entries, nil
}

// readJournal returns the journal's complete lines; a missing journal is empty.
func (r *Releaser) readJournal() ([]journalLine, error) {
	f, err := os.Open(r.journalPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close() // read only: closing it loses nothing
	lines, _, err := r.parseJournal(f)
	return lines, err
}

// parseJournal reads journal lines from rd. keep is the length of what is sound: every
// line up to the last one that ends in a newline and parses. What follows is a line being
// written, or one torn by a crash (without its newline, or, if the disk lost part of it,
// with its newline but garbled), and is ignored. A line that does not parse followed by
// another line cannot be either: that is a *CorruptError naming the line. A line of an
// event this version does not know is skipped, with a warning.
func (r *Releaser) parseJournal(rd io.Reader) (lines []journalLine, keep int64, err error) {
	br := bufio.NewReaderSize(rd, 64<<10)
	var (
		offset  int64 // where the next line starts
		bad     error // the last non-blank line, if it does not parse
		badLine int
	)
	for n := 1; ; n++ {
		b, err := br.ReadBytes('\n')
		if err == io.EOF {
			if bad != nil {
				r.log.Warn().Str("file", r.journalPath()).Int("line", badLine).AnErr("problem", bad).
					Msg("ignoring a garbled last journal line: a crash while it was written")
			}
			return lines, keep, nil
		}
		if err != nil {
			return nil, 0, err
		}
		offset += int64(len(b))
		if len(strings.TrimSpace(string(b))) == 0 {
			if bad == nil {
				keep = offset
			}
			continue
		}
		if bad != nil {
			return nil, 0, &CorruptError{File: journalFile, Err: fmt.Errorf("line %d: %w", badLine, bad)}
		}
		var l journalLine
		if err := json.Unmarshal(b, &l); err != nil {
			bad, badLine = err, n
			continue
		}
		switch {
		case !l.known():
			r.log.Warn().Str("file", r.journalPath()).Int("line", n).Str("event", l.Event).Msg("skipping a journal line of an unknown event")
		case !l.valid():
			bad, badLine = errors.New("not a journal entry"), n
			continue
		default:
			lines = append(lines, l)
		}
		keep = offset
	}
}

// appendJournal appends the lines that add returns, given the lines already there, to the
// journal, as one write, and fsyncs it. It holds the journal's flock from the read to
// the sync, so that add sees every line appended before its own.
func (r *Releaser) appendJournal(add func(lines []journalLine) ([]any, error)) error {
	f, err := os.OpenFile(r.journalPath(), os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close() // drops the flock; what was written is synced, or an error returned already
	if err := flock(f, unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", r.journalPath(), err)
	}
	lines, complete, err := r.parseJournal(f)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() > complete {
		// A line torn by a crash: no writer is at work, we hold the flock. Appending after
		// it would glue the next line to it, or make it a damaged line in the middle.
		r.log.Warn().Str("file", r.journalPath()).Int64("bytes", fi.Size()-complete).Msg("cutting off a torn journal line")
		if err := f.Truncate(complete); err != nil {
			return err
		}
	}
	add0, err := add(lines)
	if err != nil || len(add0) == 0 {
		return err
	}
	var buf []byte
	for _, v := range add0 {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		buf = append(append(buf, b...), '\n')
	}
	if _, err := f.Write(buf); err != nil {
		// No half line left behind, if we can help it; if not, the next writer cuts it off.
		f.Truncate(complete)
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if complete == 0 {
		return atomicfile.SyncDir(r.metaDir()) // the journal may be new
	}
	return nil
}

// journal is the journal folded into entries: who went live when, and what replaced it.
type journal struct {
	list    []*tracked
	cur     *tracked // the entry whose activation is the last, if any
	liveSHA string   // the sha of the last activation
}

type tracked struct {
	e          Entry
	finished   bool
	wentLive   bool
	replacedBy string // Kind of the entry that replaced it as live; "" if none, or no entry
}

func foldJournal(lines []journalLine) *journal {
	h := &journal{}
	byID := map[int64]*tracked{}
	for _, l := range lines {
		switch l.Event {
		case eventBegin:
			if byID[l.ID] != nil {
				continue
			}
			t := &tracked{e: l.Entry}
			t.e.Outcome, t.e.End, t.e.Steps, t.e.Reason = OutcomeRunning, time.Time{}, nil, ""
			h.list = append(h.list, t)
			byID[l.ID] = t
		case eventFinish:
			t := byID[l.ID]
			if t == nil || t.finished {
				continue
			}
			t.finished = true
			t.e.Outcome, t.e.End, t.e.Steps, t.e.Reason = l.Outcome, l.End, l.Steps, l.Reason
			if l.Outcome == OutcomeLive && !t.wentLive {
				h.activate(t.e.SHA, t) // no activation journaled: a no-op deploy of the live sha
			}
		case eventActivate:
			h.activate(l.SHA, h.running(l.SHA))
		case eventNote:
			if byID[l.ID] != nil {
				continue
			}
			t := &tracked{e: l.Entry, finished: true}
			h.list = append(h.list, t)
			byID[l.ID] = t
		}
	}
	return h
}

// running returns the newest entry if it is unfinished and deploys sha: the entry an
// activation of sha belongs to. Deploys run one at a time, so an activation journaled
// between the begin of the newest entry and its finish is that entry's.
func (h *journal) running(sha string) *tracked {
	if t := h.newestDeploy(); t != nil && !t.finished && t.e.SHA == sha {
		return t
	}
	return nil
}

// newestDeploy is the newest entry that is a deploy, not a Note; nil if none.
func (h *journal) newestDeploy() *tracked {
	for i := len(h.list) - 1; i >= 0; i-- {
		if h.list[i].e.Kind != KindConfig {
			return h.list[i]
		}
	}
	return nil
}

// activate records that sha went live, by owner's deploy; for nil, by no deploy (Recover
// repointing current, an activation with no entry): the newest entry that made sha live
// before counts as live again.
func (h *journal) activate(sha string, owner *tracked) {
	if owner == nil {
		for i := len(h.list) - 1; i >= 0; i-- {
			if t := h.list[i]; t.wentLive && t.e.SHA == sha && sha != "" {
				owner = t
				break
			}
		}
	}
	if h.cur != nil && h.cur != owner {
		h.cur.replacedBy = ""
		if owner != nil {
			h.cur.replacedBy = owner.e.Kind
		}
	}
	if owner != nil {
		owner.wentLive = true
	}
	h.cur, h.liveSHA = owner, sha
}

// settle adds what the journal missed: current names live, so if the journal's last
// activation is of another sha, a crash came between a swap and its journal line.
func (h *journal) settle(live string) {
	if live != h.liveSHA {
		h.activate(live, h.running(live))
	}
}

// outcomes returns the entries in ID order with their derived outcomes. holder returns
// the deploy lock's holder; it is asked only if the newest entry is unfinished.
func (h *journal) outcomes(holder func() (*LockedError, error)) []Entry {
	out := make([]Entry, len(h.list))
	newest := h.newestDeploy()
	for i, t := range h.list {
		e := t.e
		switch {
		case !t.finished && t == newest && startedUnder(holder, e.Start):
			e.Outcome = OutcomeRunning
		case t.finished && e.Outcome == OutcomeReverted:
		case t.wentLive && t == h.cur && t.finished && e.Outcome == OutcomeUnhealthy:
		case t.wentLive && t == h.cur:
			e.Outcome = OutcomeLive
		case t.wentLive && t.replacedBy == "rollback":
			e.Outcome = OutcomeRolledBack
		case t.wentLive:
			e.Outcome = OutcomeSuperseded
		case !t.finished:
			e.Outcome = OutcomeCancelled
		}
		out[i] = e
	}
	return out
}

// startedUnder reports whether the deploy lock is held, and was taken no later than start:
// then the deploy that began at start holds it still.
func startedUnder(holder func() (*LockedError, error), start time.Time) bool {
	h, err := holder()
	if err != nil || h == nil {
		return false
	}
	return h.Since.IsZero() || !h.Since.After(start)
}

// settleJournal brings the journal in line with current after a crash; Recover runs it,
// holding the deploy lock, so no deploy is running. It journals the activation of live
// if the journal's last one is of another sha, then finishes every unfinished entry:
// live if its release went live, cancelled otherwise, with no end time (unknown).
func (r *Releaser) settleJournal(live string) error {
	settled := func(lines []journalLine) bool {
		h := foldJournal(lines)
		return live == h.liveSHA && !slices.ContainsFunc(h.list, func(t *tracked) bool { return !t.finished })
	}
	if lines, err := r.readJournal(); err != nil {
		return err
	} else if settled(lines) {
		return nil // nothing to write: not even an empty journal
	}
	return r.appendJournal(func(lines []journalLine) ([]any, error) {
		h := foldJournal(lines)
		var add []any
		if live != h.liveSHA {
			add = append(add, activateLine{Event: eventActivate, SHA: live, Time: r.now().UTC()})
			h.settle(live)
		}
		for _, t := range h.list {
			if t.finished {
				continue
			}
			fl := finishLine{Event: eventFinish, ID: t.e.ID, Outcome: OutcomeCancelled,
				Reason: "interrupted: slipway stopped before the deploy ended"}
			if t.wentLive {
				fl.Outcome = OutcomeLive
			}
			r.log.Warn().Int64("id", t.e.ID).Str("sha", t.e.SHA).Str("outcome", fl.Outcome).
				Msg("journaling the end of a deploy interrupted by a stop")
			add = append(add, fl)
		}
		return add, nil
	})
}

// pruneLogs deletes the log files that retention lets go: it keeps the logs of the
// newest keepFailedLogs entries that failed or were cancelled, of every entry whose
// release went live and is still kept (kept: the shas in keep), and of a running entry.
// Files in logs/ that are not named like an entry's log are left alone, and so are logs
// of ids newer than the journal (an entry being begun).
func (r *Releaser) pruneLogs(keep map[string]bool) error {
	lines, err := r.readJournal()
	if err != nil {
		return err
	}
	h := foldJournal(lines)
	live, err := r.Current()
	if err != nil {
		return err
	}
	h.settle(live)
	entries := h.outcomes(r.readHolder)
	keepID := map[int64]bool{}
	var newest int64
	failed := 0
	for i := len(entries) - 1; i >= 0; i-- {
		en := entries[i]
		newest = max(newest, en.ID)
		switch en.Outcome {
		case OutcomeRunning:
			keepID[en.ID] = true
		case OutcomeFailed, OutcomeCancelled:
			if failed < keepFailedLogs {
				keepID[en.ID] = true
				failed++
			}
		default:
			keepID[en.ID] = keep[en.SHA]
		}
	}
	des, err := os.ReadDir(r.logsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range des {
		id, ok := logID(d.Name())
		if !ok || id > newest || keepID[id] || d.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(r.logsDir(), d.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
