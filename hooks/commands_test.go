package hooks

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCommandLine checks what every command line gets: its own flags only, usage errors
// with exit status 2 on stderr, unknown commands named as such.
func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, env(dir, repo))
	for _, tt := range []struct {
		args       []string
		code       int
		stdout     string
		stderr     string
		noStdout   bool
		wantFrozen string
	}{
		{args: []string{"frobnicate"}, code: 2, stderr: `slipway: unknown command "frobnicate" (try help)`, noStdout: true},
		{args: []string{"help"}, stdout: "destroy REPO --confirm REPO"},
		{args: []string{"help", "extra"}, code: 2, stderr: "usage: help", noStdout: true},
		{args: []string{"status", "--json"}, stdout: `"repo": "myapp/production"`},
		{args: []string{"status", "-n", "3"}, code: 2, stderr: "flag provided but not defined: -n", noStdout: true},
		{args: []string{"rollback", repo, "--json"}, code: 2, stderr: "flag provided but not defined: -json", noStdout: true},
		{args: []string{"logs", repo, "--json"}, code: 2, stderr: "usage: logs REPO [ID|SHA] [-f]", noStdout: true},
		{args: []string{"history"}, code: 2, stderr: "slipway: usage: history REPO [-n N] [--json]", noStdout: true},
		{args: []string{"history", repo, "extra"}, code: 2, stderr: "usage: history REPO", noStdout: true},
		{args: []string{"history", "myapp/nope"}, code: 1, stderr: "slipway: unknown environment myapp/nope", noStdout: true},
		{args: []string{"lock", repo}, code: 1, stderr: "lock needs -m MESSAGE"},
		{args: []string{"lock", repo, "why"}, code: 2, stderr: "the message comes after -m"},
		// `ssh git@HOST lock REPO -m "release freeze until Monday"` reaches the server as words.
		{args: []string{"lock", repo, "-m", "release", "freeze", "until", "Monday"}, stdout: "is frozen",
			wantFrozen: "release freeze until Monday"},
		{args: []string{"unlock", repo}, stdout: "no longer frozen"},
		{args: []string{"lock", repo, "-m", "one argument"}, stdout: "is frozen", wantFrozen: "one argument"},
		{args: []string{"unlock", repo, "-m", "x"}, code: 2, stderr: "flag provided but not defined: -m"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			stdout, stderr, code := f.command(Caller{}, tt.args...)
			if code != tt.code || !strings.Contains(stdout, tt.stdout) || !strings.Contains(stderr, tt.stderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, stdout ~%q, stderr ~%q", code, stdout, stderr, tt.code, tt.stdout, tt.stderr)
			}
			if tt.noStdout && stdout != "" {
				t.Errorf("a failed command wrote to stdout: %q", stdout)
			}
			if tt.wantFrozen != "" {
				fr, err := f.rel(repo).Frozen()
				if err != nil || fr == nil || fr.Message != tt.wantFrozen {
					t.Errorf("freeze = %+v, %v; want message %q", fr, err, tt.wantFrozen)
				}
			}
		})
	}
}

// TestCommandAccess: over SSH a key sees and steers only the environments it is allowed on.
func TestCommandAccess(t *testing.T) {
	dir := t.TempDir()
	prod := env(dir, repo)
	prod.Allow = []string{"alice"}
	f := newFixture(t, prod, env(dir, "myapp/staging"))
	stdout, _, code := f.command(Caller{Name: "bob"}, "status")
	if code != 0 || strings.Contains(stdout, repo) || !strings.Contains(stdout, "myapp/staging") {
		t.Errorf("bob's status (exit %d):\n%s", code, stdout)
	}
	// Forbidden and unknown get the same answer: a key cannot learn which environments exist.
	_, forbidden, code := f.command(Caller{Name: "bob"}, "lock", repo, "-m", "x")
	if code != 1 || forbidden != "slipway: unknown environment myapp/production, or bob may not use it\n" {
		t.Errorf("bob's lock: exit %d, %q", code, forbidden)
	}
	_, unknown, _ := f.command(Caller{Name: "bob"}, "lock", "myapp/nope", "-m", "x")
	if strings.ReplaceAll(unknown, "myapp/nope", "myapp/production") != forbidden {
		t.Errorf("an unknown environment is answered %q, a forbidden one %q", unknown, forbidden)
	}
}

// TestAutoEnvironmentLifecycle: in the embedded default a push creates its environment; one
// that leaves nothing live (a mistyped remote, a first deploy that fails) removes it again;
// destroy removes one that went live, with its repository and deploy root.
func TestAutoEnvironmentLifecycle(t *testing.T) {
	f := newFixture(t) // the embedded default
	const demo = "demo/production"
	root := filepath.Join(f.dir, "deploy", "demo", "production")
	registered := func() []string {
		repos, err := f.p.auto.load()
		if err != nil {
			t.Fatal(err)
		}
		return repos
	}
	gone := func(why string) {
		t.Helper()
		if _, err := os.Lstat(root); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: deploy root still there (%v)", why, err)
		}
		if _, err := os.Lstat(f.repos.path(demo)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: repository still there (%v)", why, err)
		}
		if slices.Contains(registered(), demo) {
			t.Errorf("%s: still registered", why)
		}
		if stdout, _, _ := f.command(Caller{}, "status"); strings.Contains(stdout, demo) {
			t.Errorf("%s: status lists it:\n%s", why, stdout)
		}
	}

	// A push that deploys nothing (git push --dry-run, a rejected ref) leaves nothing.
	commit(t, f.repos.store(t, demo), map[string]string{"f": "1"})
	_, release, err := f.p.Reserve(t.Context(), demo, "alice", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(registered(), demo) {
		t.Fatal("Reserve did not register the environment it created")
	}
	release()
	gone("a push that deployed nothing")

	// A first deploy that fails leaves nothing either.
	bad := commit(t, f.repos.store(t, demo), map[string]string{"slipway.toml": "build = [\"exit 1\"]\n"})
	if _, err := f.push(t.Context(), demo, bad); err == nil {
		t.Fatal("the failing deploy succeeded")
	}
	gone("a failed first deploy")

	// One that went live stays, also across a restart, and also after a later failure.
	good := commit(t, f.repos.store(t, demo), map[string]string{"index.html": "hi\n"})
	if out, err := f.push(t.Context(), demo, good); err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	f.open()
	if _, err := f.push(t.Context(), demo, bad); err == nil {
		t.Fatal("the failing deploy succeeded")
	}
	if f.live(demo) != good || !slices.Contains(registered(), demo) {
		t.Fatalf("the environment did not survive a restart and a failed deploy: live %q, registered %v", f.live(demo), registered())
	}

	// destroy asks for the name again, is refused while the environment deploys, and then
	// removes everything.
	if _, stderr, code := f.command(Caller{}, "destroy", demo); code != 1 || !strings.Contains(stderr, "--confirm demo/production") {
		t.Errorf("destroy without --confirm: exit %d, %q", code, stderr)
	}
	_, release, err = f.p.Reserve(t.Context(), demo, "bob", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := f.command(Caller{}, "destroy", demo, "--confirm", demo); code != 1 || !strings.Contains(stderr, "busy") {
		t.Errorf("destroy while deploying: exit %d, %q", code, stderr)
	}
	release()
	stdout, stderr, code := f.command(Caller{}, "destroy", demo, "--confirm", demo)
	if code != 0 || !strings.Contains(stdout, "demo/production is destroyed") {
		t.Fatalf("destroy: exit %d, %q %q", code, stdout, stderr)
	}
	gone("destroy")
	if entries, _ := os.ReadDir(filepath.Join(f.dir, "deploy")); len(entries) != 0 {
		t.Errorf("deploy/ still holds %d entries", len(entries))
	}
}

// TestDestroyConfigured: an environment of the configuration file is not destroyed: its
// deploy root may hold what no command should delete.
func TestDestroyConfigured(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, env(dir, repo))
	_, stderr, code := f.command(Caller{}, "destroy", repo, "--confirm", repo)
	if code != 1 || !strings.Contains(stderr, "is configured in") {
		t.Errorf("destroy of a configured environment: exit %d, %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "deploy", "myapp", "production")); err != nil {
		t.Errorf("deploy root: %v", err)
	}
}
