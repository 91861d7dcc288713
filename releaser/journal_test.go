package releaser

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// begin journals the start of a deploy of sha and closes its log.
func (e *env) begin(kind, sha string) Entry {
	e.t.Helper()
	en, f, err := e.r.Begin(Entry{Kind: kind, Repo: "app/prod", SHA: sha, Pusher: "alice", KeyFingerprint: "SHA256:abc"})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := fmt.Fprintf(f, "deploy %d\n", en.ID); err != nil {
		e.t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		e.t.Fatal(err)
	}
	return en
}

// deploy journals a whole deploy of sha: live activates it (it must be complete).
func (e *env) deploy(kind, sha, outcome string) Entry {
	e.t.Helper()
	en := e.begin(kind, sha)
	if outcome == OutcomeLive {
		e.activate(sha)
	}
	if err := e.r.Finish(en.ID, outcome, nil, ""); err != nil {
		e.t.Fatal(err)
	}
	return en
}

// outcomes returns the outcomes History gives, in ID order.
func (e *env) outcomes() []string {
	e.t.Helper()
	hist, err := e.r.History(0)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for i := len(hist) - 1; i >= 0; i-- {
		if hist[i].ID != int64(len(hist)-i) {
			e.t.Fatalf("History() IDs are not 1..n newest first: %+v", hist)
		}
		out = append(out, hist[i].Outcome)
	}
	return out
}

func (e *env) journalLines() []string {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.r.Path(), ".slipway", "history.jsonl"))
	if err != nil {
		e.t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// note journals a configuration change.
func (e *env) note() Entry {
	e.t.Helper()
	en, err := e.r.Note(Entry{Kind: KindConfig, Repo: "app/prod", Pusher: "bob", Message: "env set X"})
	if err != nil {
		e.t.Fatal(err)
	}
	return en
}

// fakeSHA is a well-formed commit id that names no object: the journal does not need one.
func fakeSHA(prefix string) string { return prefix + strings.Repeat("0", 40-len(prefix)) }

func TestBeginFinish(t *testing.T) {
	e := newEnv(t, Config{})
	a, b := fakeSHA("aa"), fakeSHA("bb")
	var begun []Entry
	for i, sha := range []string{a, b, a} {
		e.tick(time.Second)
		en, f, err := e.r.Begin(Entry{Kind: "push", Repo: "app/prod", SHA: sha, PreviousSHA: a, Pusher: "alice",
			KeyFingerprint: "SHA256:abc", Message: "fix the header",
			// Not the caller's to set:
			End: e.clock, Steps: []Step{{Name: "x"}}, Outcome: OutcomeLive, Reason: "no"})
		if err != nil {
			t.Fatal(err)
		}
		wantLog := filepath.Join(e.r.Path(), ".slipway", "logs", fmt.Sprintf("%06d.log", i+1))
		if en.ID != int64(i+1) || !en.Start.Equal(e.clock) || en.Outcome != OutcomeRunning || en.Log != wantLog ||
			!en.End.IsZero() || en.Steps != nil || en.Reason != "" || en.Message != "fix the header" {
			t.Errorf("Begin = %+v", en)
		}
		if f.Name() != wantLog {
			t.Errorf("log file %s, want %s", f.Name(), wantLog)
		}
		if _, err := fmt.Fprintf(f, "output of %d\n", en.ID); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		begun = append(begun, en)
	}
	e.tick(time.Minute)
	steps := []Step{{Name: "checkout", Took: time.Second}, {Name: "build 1/1", Took: 2 * time.Second, Exit: 2}}
	if err := e.r.Finish(2, OutcomeFailed, steps, "build 1/1 exited with status 2"); err != nil {
		t.Fatal(err)
	}
	if err := e.r.Finish(3, OutcomeCancelled, steps[:1], "cancelled"); err != nil {
		t.Fatal(err)
	}

	// A second Releaser on the same root is what the slipway CLI sees.
	other, err := New(Config{Path: e.r.Path()}, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Releaser{e.r, other} {
		hist, err := r.History(0)
		if err != nil {
			t.Fatal(err)
		}
		if len(hist) != 3 || hist[0].ID != 3 || hist[1].ID != 2 || hist[2].ID != 1 {
			t.Fatalf("History(0) = %+v", hist)
		}
		want2 := begun[1]
		want2.End, want2.Steps, want2.Outcome, want2.Reason = e.clock, steps, OutcomeFailed, "build 1/1 exited with status 2"
		if got := hist[1]; !entriesEqual(got, want2) {
			t.Errorf("entry 2 = %+v\nwant      %+v", got, want2)
		}
		if hist[0].Outcome != OutcomeCancelled || hist[2].Outcome != OutcomeCancelled || !hist[2].End.IsZero() {
			t.Errorf("outcomes: %q, %q (end %v)", hist[0].Outcome, hist[2].Outcome, hist[2].End)
		}
		if b, err := os.ReadFile(hist[1].Log); err != nil || string(b) != "output of 2\n" {
			t.Errorf("log of 2: %q, %v", b, err)
		}
		if two, err := r.History(2); err != nil || len(two) != 2 || two[0].ID != 3 {
			t.Errorf("History(2) = %+v, %v", two, err)
		}
	}

	// One JSON object per line, in the order of events.
	lines := e.journalLines()
	var events []string
	for _, l := range lines {
		var v struct{ Event string }
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		events = append(events, v.Event)
	}
	if want := []string{"begin", "begin", "begin", "finish", "finish"}; !slices.Equal(events, want) {
		t.Errorf("events %v, want %v", events, want)
	}

	errTests := []struct {
		name string
		fn   func() error
		is   error
	}{
		{"finish unknown id", func() error { return e.r.Finish(9, OutcomeLive, nil, "") }, ErrNotFound},
		{"finish twice", func() error { return e.r.Finish(2, OutcomeLive, nil, "") }, nil},
		{"finish derived outcome", func() error { return e.r.Finish(1, OutcomeSuperseded, nil, "") }, nil},
		{"begin unknown kind", func() error { _, _, err := e.r.Begin(Entry{Kind: "deploy", SHA: a}); return err }, nil},
		{"begin bad sha", func() error { _, _, err := e.r.Begin(Entry{Kind: "push", SHA: "../../x"}); return err }, nil},
		{"begin bad previous", func() error {
			_, _, err := e.r.Begin(Entry{Kind: "push", SHA: a, PreviousSHA: "HEAD"})
			return err
		}, nil},
	}
	for _, tt := range errTests {
		err := tt.fn()
		if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	if got := len(e.journalLines()); got != len(lines) {
		t.Errorf("refusals wrote to the journal: %d lines, want %d", got, len(lines))
	}
	if logs, err := os.ReadDir(filepath.Join(e.r.Path(), ".slipway", "logs")); err != nil || len(logs) != 3 {
		t.Errorf("logs/ has %d files (%v), want 3", len(logs), err)
	}
}

func entriesEqual(a, b Entry) bool {
	ja, erra := json.Marshal(a)
	jb, errb := json.Marshal(b)
	return erra == nil && errb == nil && string(ja) == string(jb)
}

// TestJournalTornLine: a crash in the middle of an append leaves a line without its
// newline. Readers ignore it; the next append cuts it off rather than gluing onto it.
func TestJournalTornLine(t *testing.T) {
	e := newEnv(t, Config{})
	e.begin("push", fakeSHA("aa"))
	journal := filepath.Join(e.r.Path(), ".slipway", "history.jsonl")
	f, err := os.OpenFile(journal, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"event":"begin","id":2,"kind":"push","sha":"bb`); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	if got := e.outcomes(); !slices.Equal(got, []string{OutcomeCancelled}) {
		t.Errorf("outcomes with a torn line: %v", got)
	}
	en := e.begin("push", fakeSHA("cc"))
	if en.ID != 2 {
		t.Errorf("ID after a torn line: %d, want 2", en.ID)
	}
	lines := e.journalLines()
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Errorf("bad line %q", l)
		}
	}
	if len(lines) != 2 {
		t.Errorf("%d lines, want 2", len(lines))
	}
	if hist, err := e.r.History(0); err != nil || len(hist) != 2 || hist[0].SHA != fakeSHA("cc") {
		t.Errorf("History() = %+v, %v", hist, err)
	}
}

// TestJournalLineInProgress: a reader that comes while a line is half written sees the
// entries before it, and the whole line once it is.
func TestJournalLineInProgress(t *testing.T) {
	e := newEnv(t, Config{})
	e.begin("push", fakeSHA("aa"))
	b, err := json.Marshal(beginLine{Event: eventBegin, Entry: Entry{ID: 2, Kind: "push", SHA: fakeSHA("bb"), Start: e.clock, Outcome: OutcomeRunning}})
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, '\n')
	f, err := os.OpenFile(filepath.Join(e.r.Path(), ".slipway", "history.jsonl"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // every write is checked; closing loses nothing
	for i, part := range [][]byte{b[:len(b)/2], b[len(b)/2 : len(b)-1], b[len(b)-1:]} {
		if _, err := f.Write(part); err != nil {
			t.Fatal(err)
		}
		hist, err := e.r.History(0)
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		want := 1
		if i == 2 {
			want = 2
		}
		if len(hist) != want {
			t.Errorf("after part %d: %d entries, want %d", i, len(hist), want)
		}
	}
}

// TestJournalConcurrentReader reads the history from a second Releaser (another process's
// view) while deploys are journaled: every read is a consistent prefix of the journal.
func TestJournalConcurrentReader(t *testing.T) {
	e := newEnv(t, Config{})
	reader, err := New(Config{Path: e.r.Path()}, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	sha := fakeSHA("ab")
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(done)
		for i := range n {
			en, f, err := e.r.Begin(Entry{Kind: "push", SHA: sha, Pusher: "alice", Message: strings.Repeat("m", 100*i)})
			if err != nil {
				t.Error(err)
				return
			}
			f.Close() // nothing written to it: closing loses nothing
			if err := e.r.Finish(en.ID, OutcomeFailed, []Step{{Name: "build 1/1", Exit: 1}}, "build failed"); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	reads, last := 0, 0
	check := func() {
		hist, err := reader.History(0)
		if err != nil {
			t.Fatal(err)
		}
		if len(hist) < last {
			t.Fatalf("history shrank: %d entries after %d", len(hist), last)
		}
		last = len(hist)
		for i, en := range hist {
			if en.ID != int64(len(hist)-i) || en.SHA != sha || en.Pusher != "alice" || len(en.Message) != 100*int(en.ID-1) {
				t.Fatalf("torn or misordered entry at %d: %+v", i, en)
			}
			if en.Outcome != OutcomeFailed && !(i == 0 && en.Outcome == OutcomeCancelled) {
				t.Fatalf("entry %d: outcome %q", en.ID, en.Outcome)
			}
		}
		reads++
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		check()
	}
	wg.Wait()
	check()
	if last != n {
		t.Errorf("%d entries at the end, want %d", last, n)
	}
	t.Logf("%d reads during %d appends", reads, 2*n)
}

func TestHistoryOutcomes(t *testing.T) {
	const (
		run  = OutcomeRunning
		live = OutcomeLive
		fail = OutcomeFailed
		canc = OutcomeCancelled
		sup  = OutcomeSuperseded
		back = OutcomeRolledBack
	)
	tests := []struct {
		name string
		// run gets three complete releases, none live; it returns the outcomes History
		// must give, in ID order.
		run func(e *env, a, b, c string) []string
		// noRecover: Recover cannot run (the lock is held); otherwise it runs after the
		// check and the outcomes must stay the same.
		noRecover bool
	}{{
		name: "a push supersedes the live one",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			e.deploy("push", b, live)
			return []string{sup, live}
		},
	}, {
		name: "a rollback rolls back the live one",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			e.deploy("push", b, live)
			e.deploy("rollback", a, live)
			e.deploy("push", c, live)
			return []string{sup, back, sup, live}
		},
	}, {
		name: "a note between deploys",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			e.note()
			e.deploy("push", b, live)
			return []string{sup, OutcomeChanged, live}
		},
	}, {
		name: "a note while a deploy runs changes nothing of it",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			unlock, err := e.r.Lock("push")
			if err != nil {
				e.t.Fatal(err)
			}
			defer unlock()
			running := e.begin("push", b)
			e.note()
			e.activate(b)
			if got := e.outcomes(); !slices.Equal(got, []string{sup, run, OutcomeChanged}) {
				e.t.Errorf("while it runs: %q", got)
			}
			if err := e.r.Finish(running.ID, live, nil, ""); err != nil {
				e.t.Fatal(err)
			}
			return []string{sup, live, OutcomeChanged}
		},
	}, {
		name: "a failed push changes nothing",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			e.deploy("push", b, fail)
			return []string{live, fail}
		},
	}, {
		name: "never finished, lock free: cancelled",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			e.begin("push", b)
			return []string{live, canc}
		},
	}, {
		name: "never finished, its deploy holds the lock: running",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			unlock, err := e.r.Lock("alice")
			if err != nil {
				e.t.Fatal(err)
			}
			e.t.Cleanup(unlock)
			e.begin("push", b)
			return []string{live, run}
		},
		noRecover: true,
	}, {
		name: "never finished, the lock held by a later deploy: cancelled",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			unlock, err := e.r.Lock("alice")
			if err != nil {
				e.t.Fatal(err)
			}
			e.begin("push", b)
			unlock() // as a kill would
			e.tick(time.Second)
			unlock, err = e.r.Lock("bob")
			if err != nil {
				e.t.Fatal(err)
			}
			e.t.Cleanup(unlock)
			return []string{live, canc}
		},
		noRecover: true,
	}, {
		name: "never finished after its swap: live",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			e.begin("push", b)
			e.activate(b)
			return []string{sup, live}
		},
	}, {
		name: "crash between the swap and its journal line: live",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			e.begin("push", b)
			if err := e.r.swapCurrent(b); err != nil {
				e.t.Fatal(err)
			}
			return []string{sup, live}
		},
	}, {
		name: "finished failed after its swap (a hook failed): live",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			en := e.begin("push", b)
			e.activate(b)
			if err := e.r.Finish(en.ID, fail, nil, "after_activate 1/1 exited 1"); err != nil {
				e.t.Fatal(err)
			}
			return []string{sup, live}
		},
	}, {
		name: "a redeploy of the live sha with no swap supersedes",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			en := e.begin("redeploy", a)
			if err := e.r.Finish(en.ID, live, nil, ""); err != nil {
				e.t.Fatal(err)
			}
			return []string{sup, live}
		},
	}, {
		name: "Recover repoints current: the entry that made it live is live again",
		run: func(e *env, a, b, c string) []string {
			e.deploy("push", a, live)
			e.deploy("push", b, live)
			e.mustRemove("releases/" + b)
			if err := e.r.Recover(); err != nil {
				e.t.Fatal(err)
			}
			return []string{live, sup}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each has its own deploy root
			e := newEnv(t, Config{})
			g := newRepo(t)
			a, b, c := e.release(g), e.release(g), e.release(g)
			want := tt.run(e, a, b, c)
			if got := e.outcomes(); !slices.Equal(got, want) {
				t.Errorf("outcomes %q, want %q", got, want)
			}
			if tt.noRecover {
				return
			}
			if err := e.r.Recover(); err != nil {
				t.Fatal(err)
			}
			if got := e.outcomes(); !slices.Equal(got, want) {
				t.Errorf("after Recover: outcomes %q, want %q", got, want)
			}
			// Recover journaled the end of every entry.
			finished := map[int64]bool{}
			for _, l := range e.journalLines() {
				var jl journalLine
				if err := json.Unmarshal([]byte(l), &jl); err != nil {
					t.Fatalf("journal line %q: %v", l, err)
				}
				if jl.Event == eventFinish || jl.Event == eventNote { // a note is finished as it is written
					finished[jl.ID] = true
				}
			}
			if len(finished) != len(want) {
				t.Errorf("after Recover, %d of %d entries finished", len(finished), len(want))
			}
			// And a second Recover has nothing to add.
			before := len(e.journalLines())
			if err := e.r.Recover(); err != nil {
				t.Fatal(err)
			}
			if after := len(e.journalLines()); after != before {
				t.Errorf("second Recover appended %d lines", after-before)
			}
		})
	}
}

func TestEntryLookup(t *testing.T) {
	e := newEnv(t, Config{})
	s1 := fakeSHA("abcdef10")
	s2 := fakeSHA("abcdef11")
	s3 := fakeSHA("1234567890")
	e.begin("push", s1)     // 1
	e.begin("push", s2)     // 2
	e.begin("redeploy", s1) // 3
	e.begin("push", s3)     // 4
	tests := []struct {
		arg    string
		wantID int64
		err    error // nil with wantID 0: an error that is not ErrNotFound
	}{
		{"2", 2, nil},
		{"4", 4, nil},
		{s1, 3, nil},         // the newest entry of the sha
		{"abcdef10", 3, nil}, // a unique prefix
		{"ABCDEF10", 3, nil},
		{"abcdef1", 0, nil}, // the prefix of two commits
		{"1234567", 4, nil}, // all digits, 7 of them: a sha prefix
		{"99", 0, ErrNotFound},
		{"0", 0, ErrNotFound},
		{"fffffff", 0, ErrNotFound},
		{"abcdef", 0, ErrNotFound}, // too short for a prefix
		{"", 0, ErrNotFound},
		{"../1", 0, ErrNotFound},
	}
	for _, tt := range tests {
		en, err := e.r.Entry(tt.arg)
		switch {
		case tt.wantID != 0:
			if err != nil || en.ID != tt.wantID {
				t.Errorf("Entry(%q) = %d, %v; want %d", tt.arg, en.ID, err, tt.wantID)
			}
		case tt.err != nil:
			if !errors.Is(err, tt.err) {
				t.Errorf("Entry(%q): %v, want %v", tt.arg, err, tt.err)
			}
		default:
			if err == nil || errors.Is(err, ErrNotFound) {
				t.Errorf("Entry(%q): %v, want an ambiguity error", tt.arg, err)
			}
		}
	}
}

// TestPruneLogs: failed and cancelled deploys keep their logs 20 deep; the logs of
// releases still kept stay, those of pruned releases go, and so does History's Log.
func TestPruneLogs(t *testing.T) {
	e := newEnv(t, Config{KeepReleases: 2})
	g := newRepo(t)
	a, b, c, d := e.release(g), e.release(g), e.release(g), e.release(g)
	broken := fakeSHA("bad")
	e.deploy("push", a, OutcomeLive) // 1: pruned below
	e.deploy("push", b, OutcomeLive) // 2: pruned below
	for range 25 {                   // 3..27: the first 6 go
		e.deploy("push", broken, OutcomeFailed)
	}
	e.deploy("push", c, OutcomeLive) // 28: previous, kept
	e.deploy("push", d, OutcomeLive) // 29: live, kept
	e.begin("push", broken)          // 30: never finished: cancelled, counts with the failed
	unlock, err := e.r.Lock("alice")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	e.begin("push", broken) // 31: running: Prune runs inside this deploy
	logs := filepath.Join(e.r.Path(), ".slipway", "logs")
	for _, name := range []string{"notes.txt", "000099.log"} { // not an entry's log (yet)
		if err := os.WriteFile(filepath.Join(logs, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	removed, err := e.r.Prune()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{a, b}; !slices.Equal(removed, slices.Sorted(slices.Values(want))) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	gone := map[int64]bool{1: true, 2: true, 3: true, 4: true, 5: true, 6: true, 7: true, 8: true}
	hist, err := e.r.History(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range hist {
		_, statErr := os.Stat(e.r.logPath(en.ID))
		if gone[en.ID] {
			if en.Log != "" || statErr == nil {
				t.Errorf("entry %d (%s): log %q (%v), want it pruned", en.ID, en.Outcome, en.Log, statErr)
			}
		} else if en.Log != e.r.logPath(en.ID) || statErr != nil {
			t.Errorf("entry %d (%s): log %q (%v), want it kept", en.ID, en.Outcome, en.Log, statErr)
		}
	}
	if hist[0].Outcome != OutcomeRunning || hist[1].Outcome != OutcomeCancelled {
		t.Errorf("outcomes of 31, 30: %q, %q", hist[0].Outcome, hist[1].Outcome)
	}
	for _, name := range []string{"notes.txt", "000099.log"} {
		if _, err := os.Stat(filepath.Join(logs, name)); err != nil {
			t.Errorf("%s: %v, want it left alone", name, err)
		}
	}
}

// TestJournalFormat pins what an operator reading history.jsonl with jq sees.
func TestJournalFormat(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	a := e.release(g)
	en := e.begin("push", a)
	e.activate(a)
	if err := e.r.Finish(en.ID, OutcomeLive, []Step{{Name: "activate", Took: 1500 * time.Microsecond}}, ""); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(strings.Join(e.journalLines(), "\n")))
	var got []map[string]any
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	if len(got) != 3 || got[0]["event"] != "begin" || got[0]["sha"] != a || got[0]["outcome"] != "running" ||
		got[0]["key_fp"] != "SHA256:abc" || got[0]["log"] != e.r.logPath(1) ||
		got[1]["event"] != "activate" || got[1]["sha"] != a ||
		got[2]["event"] != "finish" || got[2]["id"] != 1.0 || got[2]["outcome"] != "live" {
		t.Errorf("journal: %v", got)
	}
	if _, ok := got[0]["end"]; ok {
		t.Errorf("begin line has an end: %v", got[0])
	}
	// Durations are whole milliseconds, named so.
	steps, _ := got[2]["steps"].([]any) // not a list: the check below reports it
	if step, _ := firstOf(steps).(map[string]any); step["took_ms"] != 1.0 || step["took"] != nil {
		t.Errorf("finish line's step: %v, want took_ms 1 and no took", got[2]["steps"])
	}
	for i, m := range got {
		if _, ok := m["duration_ms"]; ok {
			t.Errorf("line %d has a duration_ms, which only Entry's JSON has: %v", i, m)
		}
	}
}

// firstOf returns the first element of l, nil if l is empty.
func firstOf(l []any) any {
	if len(l) == 0 {
		return nil
	}
	return l[0]
}

// TestStepJSON: a Step is {"name", "took_ms", "exit"}, and reads "took" (nanoseconds) from
// journals written before took_ms.
func TestStepJSON(t *testing.T) {
	b, err := json.Marshal(Step{Name: "build 1/2", Took: 1500*time.Millisecond + 700*time.Microsecond, Exit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"name":"build 1/2","took_ms":1500,"exit":2}`; string(b) != want {
		t.Errorf("Step as JSON: %s, want %s", b, want)
	}
	tests := []struct {
		in   string
		want Step
	}{
		{`{"name":"build 1/2","took_ms":1500,"exit":2}`, Step{Name: "build 1/2", Took: 1500 * time.Millisecond, Exit: 2}},
		{`{"name":"checkout","took":2500000123,"exit":0}`, Step{Name: "checkout", Took: 2500000123}},
		{`{"name":"test 1/1","took_ms":3,"took":9,"exit":-1}`, Step{Name: "test 1/1", Took: 3 * time.Millisecond, Exit: -1}},
		{`{"name":"activate","exit":0}`, Step{Name: "activate"}},
	}
	for _, tt := range tests {
		var got Step
		if err := json.Unmarshal([]byte(tt.in), &got); err != nil || got != tt.want {
			t.Errorf("Unmarshal(%s) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

// TestEntryJSON: an Entry's JSON has duration_ms, End-Start in milliseconds, once it has
// an End; its steps have took_ms.
func TestEntryJSON(t *testing.T) {
	start := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	en := Entry{ID: 7, Kind: "push", SHA: fakeSHA("aa"), Start: start, Outcome: OutcomeRunning}
	m := marshalMap(t, en)
	if _, ok := m["duration_ms"]; ok {
		t.Errorf("running entry has a duration_ms: %v", m)
	}
	en.End = start.Add(90*time.Second + 500*time.Millisecond + 999*time.Microsecond)
	en.Steps = []Step{{Name: "checkout", Took: 40 * time.Millisecond}}
	en.Outcome = OutcomeLive
	m = marshalMap(t, en)
	steps, _ := m["steps"].([]any) // not a list: the check below reports it
	if m["duration_ms"] != 90500.0 || m["id"] != 7.0 || m["outcome"] != "live" || m["end"] == nil {
		t.Errorf("finished entry: %v, want duration_ms 90500 among its fields", m)
	}
	if step, _ := firstOf(steps).(map[string]any); step["took_ms"] != 40.0 {
		t.Errorf("entry's steps: %v, want took_ms 40", m["steps"])
	}
	en.End = start
	if m := marshalMap(t, en); m["duration_ms"] != 0.0 {
		t.Errorf("entry that took no time: duration_ms %v, want 0", m["duration_ms"])
	}
	// It reads back; duration_ms is ignored.
	b, err := json.Marshal(en)
	if err != nil {
		t.Fatal(err)
	}
	var back Entry
	if err := json.Unmarshal(b, &back); err != nil || !entriesEqual(back, en) {
		t.Errorf("round trip: %+v, %v; want %+v", back, err, en)
	}
}

func marshalMap(t *testing.T, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestJournalOldSteps: a journal written before took_ms, with steps' "took" in
// nanoseconds, reads as it did; what is appended to it has took_ms.
func TestJournalOldSteps(t *testing.T) {
	e := newEnv(t, Config{})
	a := fakeSHA("aa")
	old := `{"event":"begin","id":1,"kind":"push","repo":"app/prod","sha":"` + a + `","previous_sha":"","pusher":"alice","key_fp":"SHA256:abc","start":"2026-11-22T10:00:00Z","outcome":"running","log":"x"}
{"event":"finish","id":1,"outcome":"failed","end":"2026-11-22T10:01:00Z","steps":[{"name":"checkout","took":1500000,"exit":0},{"name":"build 1/1","took":2000000000,"exit":2}],"reason":"build 1/1: exit status 2"}
`
	if err := os.WriteFile(e.r.journalPath(), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	en, err := e.r.Entry("1")
	if err != nil {
		t.Fatal(err)
	}
	want := []Step{{Name: "checkout", Took: 1500 * time.Microsecond}, {Name: "build 1/1", Took: 2 * time.Second, Exit: 2}}
	if !slices.Equal(en.Steps, want) || en.Outcome != OutcomeFailed {
		t.Errorf("old entry: %+v, want steps %+v", en, want)
	}
	if m := marshalMap(t, en); m["duration_ms"] != 60000.0 {
		t.Errorf("old entry's duration_ms: %v, want 60000", m["duration_ms"])
	}

	next := e.begin("push", a)
	if err := e.r.Finish(next.ID, OutcomeFailed, []Step{{Name: "build 1/1", Took: 3 * time.Second, Exit: 1}}, "no"); err != nil {
		t.Fatal(err)
	}
	lines := e.journalLines()
	last := lines[len(lines)-1]
	if !strings.Contains(last, `"steps":[{"name":"build 1/1","took_ms":3000,"exit":1}]`) || strings.Contains(last, `"took":`) {
		t.Errorf("new finish line: %s", last)
	}
	hist, err := e.r.History(0)
	if err != nil || len(hist) != 2 || !slices.Equal(hist[1].Steps, want) || hist[0].Steps[0].Took != 3*time.Second {
		t.Errorf("History() = %+v, %v", hist, err)
	}
}

// TestNote: a configuration change is a finished entry of its own, numbered with the
// deploys, never found by a release's sha.
func TestNote(t *testing.T) {
	e := newEnv(t, Config{})
	a := fakeSHA("aa")
	first := e.begin("push", a)
	note, err := e.r.Note(Entry{Kind: KindConfig, Repo: "app/prod", SHA: a, Pusher: "bob", Message: "env set DB_HOST, API_KEY (secret)"})
	if err != nil {
		t.Fatal(err)
	}
	if note.ID != first.ID+1 || note.SHA != "" || note.Outcome != OutcomeChanged || note.End.IsZero() {
		t.Errorf("Note = %+v", note)
	}
	if _, err := e.r.Note(Entry{Kind: "push"}); err == nil {
		t.Error("a Note of kind push was written")
	}
	if en, err := e.r.Entry(a); err != nil || en.ID != first.ID {
		t.Errorf("Entry(a) = %+v, %v: want the deploy, not the note", en, err)
	}
	if next := e.begin("push", a); next.ID != note.ID+1 {
		t.Errorf("the deploy after a note got id %d, want %d", next.ID, note.ID+1)
	}
}
