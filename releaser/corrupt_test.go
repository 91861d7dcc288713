package releaser

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing/filemode"
)

// assertCorrupt checks that err is a *CorruptError naming file, safe to show: it holds
// no path of the server.
func assertCorrupt(t *testing.T, e *env, what string, err error, file, detail string) {
	t.Helper()
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.File != file {
		t.Errorf("%s: %v, want a *CorruptError of %s", what, err, file)
		return
	}
	msg := ce.Error()
	if !strings.HasPrefix(msg, file+" is damaged (") || !strings.Contains(msg, detail) || !strings.Contains(msg, "restore") {
		t.Errorf("%s: message %q, want it to name %s, say it is damaged (%s) and what to do", what, msg, file, detail)
	}
	if strings.Contains(msg, e.base) {
		t.Errorf("%s: message %q shows a server path", what, msg)
	}
	if reason, ok := Reason(err); !ok || reason != msg {
		t.Errorf("%s: Reason() = %q, %v", what, reason, ok)
	}
}

func (e *env) writeMeta(name, content string) {
	e.t.Helper()
	must(e.t, os.WriteFile(filepath.Join(e.r.Path(), ".slipway", name), []byte(content), 0o644))
}

// TestCorruptRecords: a damaged releases.json stops every reader and every step that
// needs the records, Recover included, with a *CorruptError, and nothing changes; moved
// away, the live release is adopted and deploys go on.
func TestCorruptRecords(t *testing.T) {
	for _, tt := range []struct{ name, content, detail string }{
		{"truncated", `{"seq": 2, "releases": {`, "unexpected end of JSON input"},
		{"not a record", `{"releases": {"../../sentinel": {}}}`, `bad record "../../sentinel"`},
		{"control characters", "\x00\x01\x02", `invalid character '\x00'`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			g := newRepo(t)
			live, kept := e.release(g), e.release(g)
			e.activate(kept)
			e.activate(live)
			next := g.commit(g.treeOf(map[string]file{"next": {filemode.Regular, "next"}}))
			e.writeMeta("releases.json", tt.content)
			unlock, err := e.r.Lock("test") // creates deploy.lock, which stays
			must(t, err)
			unlock()
			before := snapshot(t, e.r.Path())

			const file = ".slipway/releases.json"
			check := func(what string, err error) { t.Helper(); assertCorrupt(t, e, what, err, file, tt.detail) }
			_, err = e.r.Releases()
			check("Releases", err)
			_, err = e.r.Previous()
			check("Previous", err)
			_, err = e.r.ActivatedAt(live)
			check("ActivatedAt", err)
			_, err = e.r.Materialize(t.Context(), g.st, next, nil)
			check("Materialize", err)
			check("Complete", e.r.Complete(kept))
			_, err = e.r.Activate(kept)
			check("Activate", err)
			_, err = e.r.Prune()
			check("Prune", err)
			check("Discard", e.r.Discard(kept))
			check("Hold", e.r.Hold(live))
			check("Recover", e.r.Recover())
			assertSnapshot(t, snapshot(t, e.r.Path()), before)

			// Moved away: the live release is adopted, the others forgotten.
			must(t, os.Rename(filepath.Join(e.r.Path(), ".slipway", "releases.json"), filepath.Join(e.base, "releases.json.damaged")))
			must(t, e.r.Recover())
			if got := e.releaseSHAs(); len(got) != 1 || got[0] != live {
				t.Errorf("releases after the records were moved away: %v, want the live one", got)
			}
			if _, err := e.r.Materialize(t.Context(), g.st, next, nil); err != nil {
				t.Errorf("Materialize after the records were moved away: %v", err)
			}
		})
	}
}

// TestCorruptJournal: a damaged line in the middle of history.jsonl stops its readers and
// writers with a *CorruptError naming the line; a garbled last line is what a crash during
// an append leaves, and is ignored, then cut off by the next append; a line of an event
// unknown to this version is skipped.
func TestCorruptJournal(t *testing.T) {
	const file = ".slipway/history.jsonl"
	good := func(e *env) []string {
		e.t.Helper()
		e.deploy("push", fakeSHA("aa"), OutcomeFailed)
		e.deploy("push", fakeSHA("bb"), OutcomeFailed)
		return e.journalLines()
	}
	rewrite := func(e *env, lines []string) {
		e.t.Helper()
		e.writeMeta("history.jsonl", strings.Join(lines, "\n")+"\n")
	}

	t.Run("damaged line in the middle", func(t *testing.T) {
		for _, bad := range []string{`{"event":"begin","id":`, `{"event":"finish","id":1,"outcome":"exploded"}`, "\x00\x00\x00"} {
			e := newEnv(t, Config{})
			lines := good(e)
			lines[1] = bad
			rewrite(e, lines)
			unlock, err := e.r.Lock("test") // creates deploy.lock, which stays
			must(t, err)
			unlock()
			before := snapshot(t, e.r.Path())
			check := func(what string, err error) { t.Helper(); assertCorrupt(t, e, what, err, file, "line 2") }
			_, err = e.r.History(0)
			check("History", err)
			_, err = e.r.Entry("1")
			check("Entry", err)
			_, err = e.r.ActivatedAt(fakeSHA("aa"))
			check("ActivatedAt", err)
			_, _, err = e.r.Begin(Entry{Kind: "push", SHA: fakeSHA("cc")})
			check("Begin", err)
			check("Finish", e.r.Finish(1, OutcomeFailed, nil, ""))
			check("Recover", e.r.Recover())
			assertSnapshot(t, snapshot(t, e.r.Path()), before)
		}
	})

	t.Run("garbled last line", func(t *testing.T) {
		e := newEnv(t, Config{})
		lines := good(e)
		rewrite(e, append(lines, `{"event":"begin","id":3,"kind":"push","sh`+"\x00\x00\x00"))
		hist, err := e.r.History(0)
		if err != nil || len(hist) != 2 {
			t.Fatalf("History() with a garbled last line: %d entries, %v", len(hist), err)
		}
		if en := e.begin("push", fakeSHA("cc")); en.ID != 3 {
			t.Errorf("ID after a garbled last line: %d, want 3", en.ID)
		}
		got := e.journalLines()
		if len(got) != 5 {
			t.Errorf("journal after the append: %q, want the garbled line cut off", got)
		}
		for _, l := range got {
			if !json.Valid([]byte(l)) {
				t.Errorf("line %q left in the journal", l)
			}
		}
	})

	t.Run("unknown event", func(t *testing.T) {
		e := newEnv(t, Config{})
		lines := good(e)
		lines = append(lines[:2], append([]string{`{"event":"audit","by":"carol"}`}, lines[2:]...)...)
		rewrite(e, lines)
		if hist, err := e.r.History(0); err != nil || len(hist) != 2 {
			t.Errorf("History() with an unknown event: %d entries, %v", len(hist), err)
		}
	})
}

// TestCorruptFreeze: a damaged freeze.json is a *CorruptError, never "not frozen": deploys
// stay refused. Unfreeze removes it, and Freeze replaces it.
func TestCorruptFreeze(t *testing.T) {
	e := newEnv(t, Config{})
	for _, fix := range []func() error{
		e.r.Unfreeze,
		func() error { return e.r.Freeze("alice", "incident") },
	} {
		e.writeMeta("freeze.json", `{"by": "alice", "since": "yesterday"}`)
		f, err := e.r.Frozen()
		assertCorrupt(t, e, "Frozen", err, ".slipway/freeze.json", "yesterday")
		if f != nil {
			t.Errorf("Frozen() = %+v with a damaged file", f)
		}
		must(t, fix())
		if _, err := e.r.Frozen(); err != nil {
			t.Errorf("Frozen() after the damaged file was dealt with: %v", err)
		}
	}
}

// TestCorruptHolder: deploy.holder is only a note beside the lock, whose flock is the
// truth. Damaged, it reads as "holder unknown" while the lock is held and as nobody while
// it is not, and the next Lock replaces it: nothing fails.
func TestCorruptHolder(t *testing.T) {
	e := newEnv(t, Config{})
	e.r.now = time.Now
	holder := filepath.Join(e.r.Path(), ".slipway", "deploy.holder")
	e.writeMeta("deploy.holder", "\x00garbage{")
	if h, err := e.r.Holder(); h != nil || err != nil {
		t.Errorf("Holder() with a damaged file, lock free: %+v, %v; want nil, nil", h, err)
	}
	unlock, err := e.r.Lock("alice")
	if err != nil {
		t.Fatalf("Lock over a damaged holder file: %v", err)
	}
	defer unlock()
	if h, err := e.r.Holder(); err != nil || h == nil || h.Holder != "alice" {
		t.Errorf("Holder() = %+v, %v; want alice", h, err)
	}
	// Damaged while held: the same inode, which the holder keeps its flock on.
	must(t, os.WriteFile(holder, []byte("{"), 0o644))
	h, err := e.r.Holder()
	if err != nil || h == nil || h.Holder != "" {
		t.Errorf("Holder() of a damaged file while held: %+v, %v; want holder unknown", h, err)
	}
	if _, err := e.r.Lock("bob"); !errors.Is(err, ErrLocked) || err.Error() != "deploy in progress (holder unknown)" {
		t.Errorf("Lock while held, file damaged: %v", err)
	}
}
