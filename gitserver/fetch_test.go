package gitserver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/storage/memory"

	"github.com/slipway/slipway/gitserver/internal/pack"
)

// pushed pushes work's main to production and fails the test if the push fails.
func (h *harness) pushed(work string) string {
	h.t.Helper()
	if stderr, err := h.push(work, "production", "main"); err != nil {
		h.t.Fatalf("push: %v\n%s", err, stderr)
	}
	return h.git(work, "rev-parse", "HEAD")
}

// fetchTotal returns N from the "remote: Total N" line slipway sends after a pack.
func fetchTotal(t *testing.T, stderr string) int {
	t.Helper()
	m := regexp.MustCompile(`remote: Total (\d+) `).FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("no \"remote: Total\" line in\n%s", stderr)
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// sameFiles fails the test unless dirs a and b hold the same files, modes and symlinks
// (.git left out).
func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	list := func(root string) map[string]string {
		m := map[string]string{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			if d.Name() == ".git" {
				return filepath.SkipDir
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			switch {
			case d.Type()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				m[rel] = "link " + target
			case d.Type().IsRegular():
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				m[rel] = fmt.Sprintf("file %v %q", fi.Mode().Perm()&0o100, data)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ma, mb := list(a), list(b)
	if len(ma) == 0 || fmt.Sprint(ma) != fmt.Sprint(mb) {
		t.Errorf("files differ:\n%s: %v\n%s: %v", a, ma, b, mb)
	}
}

func TestCloneAfterPushes(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	h.pushed(work)
	if err := os.MkdirAll(filepath.Join(work, "sub", "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "sub", "dir", "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/dir/run.sh", filepath.Join(work, "link")); err != nil {
		t.Fatal(err)
	}
	h.git(work, "add", ".")
	h.git(work, "commit", "-q", "-m", "tree")
	h.pushed(work)
	h.commit(work, "a.txt", strings.Repeat("edited\n", 500))
	head := h.pushed(work)

	clone := filepath.Join(h.dir, "clone")
	_, stderr, err := h.exec(h.dir, h.alice, "git", "clone", "--progress", h.url("myapp/production"), clone)
	if err != nil {
		t.Fatalf("clone: %v\n%s", err, stderr)
	}
	if got := h.git(clone, "rev-parse", "HEAD"); got != head {
		t.Errorf("clone HEAD = %s, want %s", got, head)
	}
	if got := h.git(clone, "symbolic-ref", "HEAD"); got != "refs/heads/main" {
		t.Errorf("clone checked out %s, want refs/heads/main (HEAD's symref)", got)
	}
	sameFiles(t, work, clone)
	if _, errOut, err := h.exec(clone, h.alice, "git", "fsck", "--full", "--strict"); err != nil {
		t.Errorf("git fsck in the clone: %v\n%s", err, errOut)
	}
	objects := strings.Fields(h.git(work, "rev-list", "--objects", "--all"))
	if n := fetchTotal(t, stderr); n == 0 || n > len(objects) {
		t.Errorf("clone got %d objects; the history has about %d", n, len(objects))
	}
	d.mu.Lock()
	inspects := d.inspects
	d.mu.Unlock()
	if fmt.Sprint(inspects) != "[alice]" {
		t.Errorf("Inspect asked for %v, want [alice]", inspects)
	}
}

func TestIncrementalFetch(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	for i := 0; i < 40; i++ {
		if err := os.WriteFile(filepath.Join(work, fmt.Sprintf("f%02d.txt", i)), []byte(strings.Repeat(fmt.Sprintf("file %d\n", i), 40)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.git(work, "add", ".")
	h.git(work, "commit", "-q", "-m", "many files")
	h.pushed(work)
	clone := filepath.Join(h.dir, "clone")
	if _, stderr, err := h.exec(h.dir, h.alice, "git", "clone", "-q", h.url("myapp/production"), clone); err != nil {
		t.Fatalf("clone: %v\n%s", err, stderr)
	}

	// Two more deploys, and in the clone many commits the server has never seen: their haves
	// come first, in several batches, before the one the server knows.
	h.commit(work, "f01.txt", "changed\n")
	h.commit(work, "new.txt", "new\n")
	head := h.pushed(work)
	for i := 0; i < 70; i++ {
		h.commit(clone, "local.txt", fmt.Sprintf("local %d\n", i))
	}

	_, stderr, err := h.exec(clone, h.alice, "git", "fetch", "--progress", "origin")
	if err != nil {
		t.Fatalf("fetch: %v\n%s", err, stderr)
	}
	// Two commits, two trees, two blobs: not the 40 files again.
	if n := fetchTotal(t, stderr); n > 6 {
		t.Errorf("incremental fetch sent %d objects, want at most 6\n%s", n, stderr)
	}
	if got := h.git(clone, "rev-parse", "origin/main"); got != head {
		t.Errorf("origin/main = %s, want %s", got, head)
	}
	if _, errOut, err := h.exec(clone, h.alice, "git", "fsck", "--full", "--strict"); err != nil {
		t.Errorf("git fsck in the clone: %v\n%s", err, errOut)
	}

	// Up to date: the client asks for nothing.
	_, stderr, err = h.exec(clone, h.alice, "git", "fetch", "--progress", "origin")
	if err != nil || strings.Contains(stderr, "remote: Total") {
		t.Errorf("up-to-date fetch: %v\n%s", err, stderr)
	}

	// git pull of a clone without local commits fast-forwards.
	clone2 := filepath.Join(h.dir, "clone2")
	h.git(h.dir, "clone", "-q", h.url("myapp/production"), clone2)
	h.commit(work, "f02.txt", "changed too\n")
	head = h.pushed(work)
	h.git(clone2, "pull", "-q", "--ff-only")
	if got := h.git(clone2, "rev-parse", "HEAD"); got != head {
		t.Errorf("pulled HEAD = %s, want %s", got, head)
	}
	sameFiles(t, work, clone2)
}

func TestLsRemote(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	head := h.pushed(work)
	out, stderr, err := h.exec(h.dir, h.alice, "git", "ls-remote", "--symref", h.url("myapp/production"))
	if err != nil {
		t.Fatalf("ls-remote: %v\n%s", err, stderr)
	}
	want := "ref: refs/heads/main\tHEAD\n" + head + "\tHEAD\n" + head + "\trefs/heads/main\n"
	if out != want {
		t.Errorf("ls-remote =\n%s\nwant\n%s", out, want)
	}
}

func TestFetchRefusals(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{deploy: func(ctx context.Context, p Push, out io.Writer) error {
		return errors.New("build: exit status 1")
	}}
	h := start(t, d, nil)

	// Nothing pushed at all: no repository, and none is created.
	_, stderr, err := h.exec(h.dir, h.alice, "git", "clone", h.url("myapp/staging"), filepath.Join(h.dir, "c1"))
	if err == nil || !strings.Contains(stderr, "fatal: remote error: nothing has been pushed to myapp/staging yet") {
		t.Errorf("clone of an unpushed repo: %v\n%s", err, stderr)
	}
	if _, err := os.Stat(filepath.Join(h.reposDir, "myapp")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a fetch created the repository (stat: %v)", err)
	}

	// A first push that was rejected: a repository with objects, but no branch.
	work := h.work()
	if stderr, err := h.push(work, "production", "main"); err == nil {
		t.Fatalf("push through a failing deploy succeeded\n%s", stderr)
	}
	_, stderr, err = h.exec(h.dir, h.alice, "git", "ls-remote", h.url("myapp/production"))
	if err == nil || !strings.Contains(stderr, "fatal: remote error: nothing has been pushed to myapp/production yet") {
		t.Errorf("ls-remote after a rejected first push: %v\n%s", err, stderr)
	}

	// A key Inspect refuses.
	d.mu.Lock()
	d.inspectErr = errors.New("alice may not read myapp/production")
	d.mu.Unlock()
	_, stderr, err = h.exec(h.dir, h.alice, "git", "clone", h.url("myapp/production"), filepath.Join(h.dir, "c2"))
	if err == nil || !strings.Contains(stderr, "fatal: remote error: alice may not read myapp/production") {
		t.Errorf("clone refused by Inspect: %v\n%s", err, stderr)
	}
}

func TestShallowCloneRefused(t *testing.T) {
	t.Parallel()
	h := start(t, &fakeDeployer{}, nil)
	work := h.work()
	head := h.pushed(work)

	// git itself gives up: shallow is not advertised.
	_, stderr, err := h.exec(h.dir, h.alice, "git", "clone", "--depth", "1", h.url("myapp/production"), filepath.Join(h.dir, "c"))
	if err == nil || !strings.Contains(stderr, "shallow") {
		t.Errorf("shallow clone: %v\n%s", err, stderr)
	}

	// A client that asks all the same gets an ERR.
	for _, lines := range [][]string{
		{"want " + head + " side-band-64k ofs-delta\n", "deepen 1\n"},
		{"want " + head + " side-band-64k\n", "shallow " + head + "\n"},
		{"want " + head + " side-band-64k filter\n", "filter blob:none\n"},
		{"want " + strings.Repeat("1", 40) + " side-band-64k\n"},
	} {
		errLine := uploadRequestERR(t, h, lines)
		wantText := map[bool]string{true: "not our ref", false: "not supported here"}[len(lines) == 1]
		if !strings.HasPrefix(errLine, "ERR ") || !strings.Contains(errLine, wantText) {
			t.Errorf("request %q: answer %q, want ERR with %q", lines, errLine, wantText)
		}
	}
}

// uploadRequestERR sends an upload request of lines and a flush, then "done", and returns
// the server's first answer after the advertisement.
func uploadRequestERR(t *testing.T, h *harness, lines []string) string {
	t.Helper()
	g := h.rawGit("git-upload-pack 'myapp/production'")
	stdin, out := g.stdin, g.out
	// The server may refuse before it has read everything: what it answers is checked.
	e := pktline.NewEncoder(stdin)
	for _, l := range lines {
		_ = e.EncodeString(l)
	}
	_ = e.Flush()
	_ = e.EncodeString("done\n")
	// go-git's scanner turns an ERR line into its error.
	sc := pktline.NewScanner(out)
	if sc.Scan() {
		return string(sc.Bytes())
	}
	var errLine *pktline.ErrorLine
	if !errors.As(sc.Err(), &errLine) {
		t.Fatalf("no answer: %v", sc.Err())
	}
	return "ERR " + errLine.Text
}

// TestFetchDuringDeploy: a fetch does not wait for a running deploy, and sees the branch as
// it was before it.
func TestFetchDuringDeploy(t *testing.T) {
	t.Parallel()
	started, finish := make(chan struct{}), make(chan struct{})
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	first := h.pushed(work)
	d.mu.Lock()
	d.deploy = func(ctx context.Context, p Push, out io.Writer) error {
		close(started)
		<-finish
		return nil
	}
	d.live = first
	d.mu.Unlock()
	second := h.commit(work, "b.txt", "b\n")
	pushed := make(chan error, 1)
	go func() {
		_, err := h.push(work, "production", "main")
		pushed <- err
	}()
	<-started
	// The releaser has swapped current already; the branch moves when Deploy returns.
	d.mu.Lock()
	d.live = second
	d.mu.Unlock()
	out, stderr, err := h.exec(h.dir, h.alice, "git", "ls-remote", h.url("myapp/production"), "refs/heads/main")
	if err != nil || !strings.HasPrefix(out, first) {
		t.Errorf("ls-remote during a deploy: %v, %q, want %s\n%s", err, out, first, stderr)
	}
	close(finish)
	if err := <-pushed; err != nil {
		t.Fatalf("push: %v", err)
	}
	if got := h.serverRef("refs/heads/main"); got != second {
		t.Errorf("main = %s after the deploy, want %s", got, second)
	}
}

// TestFetchFollowsLive: a fetch moves the branch to the live release first, like a push.
func TestFetchFollowsLive(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	first := h.pushed(work)
	h.commit(work, "b.txt", "b\n")
	h.pushed(work)
	d.mu.Lock()
	d.live = first // a crash after swapping back to first, before main moved
	d.mu.Unlock()
	out, stderr, err := h.exec(h.dir, h.alice, "git", "ls-remote", h.url("myapp/production"))
	if err != nil || !strings.Contains(out, first+"\trefs/heads/main") || !strings.Contains(out, first+"\tHEAD") {
		t.Errorf("ls-remote: %v\n%s\n%s", err, out, stderr)
	}
	if got := h.serverRef("refs/heads/main"); got != first {
		t.Errorf("main = %s, want the live %s", got, first)
	}
}

// TestNegotiate drives the negotiation the way git's fetch-pack does without multi_ack: the
// first window of haves unanswered until the next flush, an ACK for the first common commit,
// after which the client says done.
func TestNegotiate(t *testing.T) {
	t.Parallel()
	st := memory.NewStorage()
	obj := st.NewEncodedObject()
	obj.SetType(plumbing.BlobObject)
	w, err := obj.Writer()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("known")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	known, err := st.SetEncodedObject(obj)
	if err != nil {
		t.Fatal(err)
	}
	unknown := func(i int) string { return fmt.Sprintf("%040x", i+1) }

	for _, tc := range []struct {
		name    string
		in      []string // "" is a flush
		answers []string
		commons int
	}{
		{"clone", []string{"done"}, []string{"NAK"}, 0},
		{"nothing common", []string{"have " + unknown(1), "", "have " + unknown(2), "", "done"}, []string{"NAK", "NAK", "NAK"}, 0},
		{"common in the second batch",
			[]string{"have " + unknown(1), "", "have " + unknown(2), "have " + known.String(), "have " + known.String(), "", "have " + unknown(3), "", "done"},
			[]string{"NAK", "ACK " + known.String()}, 1},
	} {
		// Into a bytes.Buffer: encoding does not fail.
		var in bytes.Buffer
		e := pktline.NewEncoder(&in)
		for _, l := range tc.in {
			if l == "" {
				_ = e.Flush()
			} else {
				_ = e.EncodeString(l + "\n")
			}
		}
		var out bytes.Buffer
		commons, err := negotiate(&in, bufio.NewWriter(&out), st)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var answers []string
		sc := pktline.NewScanner(&out)
		for sc.Scan() {
			answers = append(answers, strings.TrimSuffix(string(sc.Bytes()), "\n"))
		}
		if fmt.Sprint(answers) != fmt.Sprint(tc.answers) || len(commons) != tc.commons {
			t.Errorf("%s: answers %q, commons %v; want %q and %d", tc.name, answers, commons, tc.answers, tc.commons)
		}
	}

	for _, bad := range []string{"have xyz", "want " + known.String(), "done now"} {
		var in bytes.Buffer
		_ = pktline.NewEncoder(&in).EncodeString(bad + "\n") // into a bytes.Buffer: no error
		var perr *protocolError
		if _, err := negotiate(&in, bufio.NewWriter(io.Discard), st); !errors.As(err, &perr) {
			t.Errorf("%q: %v, want a protocol error", bad, err)
		}
	}
	if _, err := negotiate(strings.NewReader(""), bufio.NewWriter(io.Discard), st); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("EOF before done: %v", err)
	}
}

// TestFetchWithoutSideband: a client that does not ask for side-band-64k gets the pack as it
// is, right after the NAK.
func TestFetchWithoutSideband(t *testing.T) {
	t.Parallel()
	h := start(t, &fakeDeployer{}, nil)
	work := h.work()
	head := h.pushed(work)
	g := h.rawGit("git upload-pack '/myapp/production.git'")
	sess, stdin, out, ar := g.sess, g.stdin, g.out, g.adv
	if ar.Head == nil || ar.Head.String() != head || !ar.Capabilities.Supports("symref") || ar.Capabilities.Supports("multi_ack") {
		t.Errorf("advertisement: head %v, capabilities %s", ar.Head, ar.Capabilities)
	}
	e := pktline.NewEncoder(stdin)
	for _, err := range []error{e.EncodeString("want " + head + " ofs-delta agent=test\n"), e.Flush(), e.EncodeString("done\n")} {
		if err != nil {
			t.Fatal(err)
		}
	}
	sc := pktline.NewScanner(out)
	if !sc.Scan() || string(sc.Bytes()) != "NAK\n" {
		t.Fatalf("answer %q (%v), want NAK", sc.Bytes(), sc.Err())
	}
	// commit, tree, blob
	if n, err := pack.Discard(out); err != nil || n != 3 {
		t.Errorf("pack: %d objects, %v; want 3 objects", n, err)
	}
	if err := sess.Wait(); err != nil {
		t.Errorf("session: %v", err)
	}
}

func TestDeltaWindow(t *testing.T) {
	t.Parallel()
	st := memory.NewStorage()
	blob := func(size int) plumbing.Hash {
		o := st.NewEncodedObject()
		o.SetType(plumbing.BlobObject)
		w, err := o.Writer()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(bytes.Repeat([]byte{byte(size)}, size)); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		h, err := st.SetEncodedObject(o)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	small := []plumbing.Hash{blob(1000), blob(2000)}
	if w, err := deltaWindow(st, small); w != packWindow || err != nil {
		t.Errorf("small blobs: window %d, %v", w, err)
	}
	if w, err := deltaWindow(st, append(small, blob(deltaBudget))); w != 0 || err != nil {
		t.Errorf("heavy blobs: window %d, %v", w, err)
	}
	if _, err := deltaWindow(st, []plumbing.Hash{plumbing.NewHash(strings.Repeat("ab", 20))}); err == nil {
		t.Error("missing object: no error")
	}
}

// TestManyPushesKeepPacksBounded: every push stores a pack, and once there are more than
// pack.MaxPacks a push merges them; the repository stays whole for git and for a clone.
func TestManyPushesKeepPacksBounded(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	content := ""
	var head string
	for i := 0; i < 2*pack.MaxPacks+3; i++ {
		content += fmt.Sprintf("line %d: %s\n", i, strings.Repeat("text that deltas well ", 20))
		h.commit(work, "a.txt", content)
		h.commit(work, fmt.Sprintf("f%d.txt", i), content)
		head = h.pushed(work)
	}
	clone := filepath.Join(h.dir, "clone")
	if _, stderr, err := h.exec(h.dir, h.alice, "git", "clone", "-q", h.url("myapp/production"), clone); err != nil {
		t.Fatalf("clone: %v\n%s", err, stderr)
	}
	if got := h.git(clone, "rev-parse", "HEAD"); got != head {
		t.Errorf("clone HEAD = %s, want %s", got, head)
	}
	sameFiles(t, work, clone)

	// The last push's session, and its merge, are over.
	if err := h.stop(5 * time.Second); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	repo := filepath.Join(h.reposDir, "myapp", "production.git")
	// Every pack has its index: a merge publishes both, and removes the .pack first.
	packs, err := filepath.Glob(filepath.Join(repo, "objects", "pack", "pack-*.pack"))
	if err != nil || len(packs) > pack.MaxPacks || len(packs) == 0 {
		t.Errorf("%d packs after %d pushes (%v), want 1 to %d", len(packs), 2*pack.MaxPacks+3, err, pack.MaxPacks)
	}
	h.fsckServer("--full", "--strict", "--no-dangling")
	if n := h.git(h.dir, "--git-dir", repo, "rev-list", "--count", "main"); n != fmt.Sprint(1+2*(2*pack.MaxPacks+3)) {
		t.Errorf("server main has %s commits", n)
	}
}

// TestPushRemovesTempPacks: the temporary files of a pack whose push was cut short by a
// crash are removed by the next push, and the stored packs stay.
func TestPushRemovesTempPacks(t *testing.T) {
	t.Parallel()
	h := start(t, &fakeDeployer{}, nil)
	work := h.work()
	h.pushed(work)
	packDir := filepath.Join(h.reposDir, "myapp", "production.git", "objects", "pack")
	for _, name := range []string{"tmp_pack_123", "tmp_idx_456"} {
		if err := os.WriteFile(filepath.Join(packDir, name), []byte("half a pack"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.commit(work, "b.txt", "second\n")
	head := h.pushed(work)
	entries, err := os.ReadDir(packDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		if strings.HasPrefix(e.Name(), "tmp_") {
			t.Errorf("%s left after the next push", e.Name())
		}
	}
	if len(names) != 4 {
		t.Errorf("objects/pack holds %v, want the two pushes' packs and indexes", names)
	}
	if got := h.serverRef("refs/heads/main"); got != head {
		t.Errorf("server main = %s, want %s", got, head)
	}
}

// TestPushHistory: a first push of a history sends most objects as deltas on others in the
// pack; they are resolved, the repository is whole for git, and a clone gets it all back.
func TestPushHistory(t *testing.T) {
	t.Parallel()
	h := start(t, &fakeDeployer{}, nil)
	work := h.work()
	content := strings.Repeat("a line of the file that does not change\n", 300)
	for i := 0; i < 40; i++ {
		content += fmt.Sprintf("line %d\n", i)
		h.commit(work, fmt.Sprintf("f%d.txt", i%4), content)
	}
	h.git(work, "gc", "-q")
	stderr, err := h.push(work, "--progress", "production", "main")
	if err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	m := regexp.MustCompile(`Total (\d+) \(delta (\d+)\)`).FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("no pack totals in\n%s", stderr)
	}
	if total, deltas := atoi(t, m[1]), atoi(t, m[2]); deltas < total/3 {
		t.Fatalf("the push sent %d deltas of %d objects; want a pack of mostly deltas", deltas, total)
	}
	h.fsckServer("--full", "--strict", "--no-dangling")
	clone := filepath.Join(h.dir, "clone")
	if _, stderr, err := h.exec(h.dir, h.alice, "git", "clone", "-q", h.url("myapp/production"), clone); err != nil {
		t.Fatalf("clone: %v\n%s", err, stderr)
	}
	if a, b := h.git(work, "rev-list", "--objects", "--all"), h.git(clone, "rev-list", "--objects", "--all"); a != b {
		t.Error("the clone's objects differ from the pushed history's")
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
