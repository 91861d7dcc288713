package hooks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/slipway/slipway/releaser"
)

// rollback makes the previous (or the named) kept release live again, with no rebuild.
func (p *Pipeline) rollback(ctx context.Context, e *environment, c Caller, sha string, stdout io.Writer) error {
	unlock, err := p.lock(ctx, e, c.label(), 0)
	if err != nil {
		return err
	}
	defer unlock()
	if sha == "" {
		if sha, err = e.rel.Previous(); errors.Is(err, releaser.ErrNotFound) {
			return fmt.Errorf("%s has no previous release to roll back to", e.cfg.Repo)
		} else if err != nil {
			return fmt.Errorf("%s: find the previous release: %w", e.cfg.Repo, err)
		}
	} else if sha, err = resolveSHA(e, sha); err != nil {
		return err
	}
	if live, _ := e.rel.Current(); live == sha { // unreadable: Activate below reports it
		return fmt.Errorf("%s is already live", short(sha))
	}
	if !e.rel.IsComplete(sha) {
		return notKept(e, sha)
	}
	objects, err := p.objects(e)
	if err != nil {
		return err
	}
	defer objects.Close() // read only: closing loses nothing
	d := &deploy{p: p, e: e, objects: objects, entry: releaser.Entry{Kind: kindRollback, SHA: sha, Pusher: c.label(), KeyFingerprint: c.KeyFingerprint}}
	return d.run(context.WithoutCancel(ctx), stdout) // a rollback is short and must not stop halfway
}

// redeploy builds and tests the live (or the named) commit again and makes it live.
func (p *Pipeline) redeploy(ctx context.Context, e *environment, c Caller, sha string, stdout io.Writer) error {
	if err := frozen(e); err != nil {
		return err
	}
	if err := linkAsRoot(e.cfg); err != nil {
		return err
	}
	unlock, err := p.lock(ctx, e, c.label(), 0)
	if err != nil {
		return err
	}
	defer unlock()
	if sha == "" {
		if sha, err = e.rel.Current(); err != nil {
			return fmt.Errorf("%s: read current: %w", e.cfg.Repo, err)
		}
		if sha == "" {
			return fmt.Errorf("%s has no live release to redeploy: push one", e.cfg.Repo)
		}
	} else if sha, err = resolveSHA(e, sha); err != nil {
		return err
	}
	objects, err := p.objects(e)
	if err != nil {
		return err
	}
	defer objects.Close() // read only: closing loses nothing
	if _, err := object.GetCommit(objects, plumbing.NewHash(sha)); err != nil {
		return fmt.Errorf("commit %s is not in %s's repository", short(sha), e.cfg.Repo)
	}
	d := &deploy{p: p, e: e, objects: objects, entry: releaser.Entry{Kind: kindRedeploy, SHA: sha, Pusher: c.label(), KeyFingerprint: c.KeyFingerprint}}
	return d.run(ctx, stdout)
}

// resolveSHA expands a sha or a unique prefix of one to a full sha, from the kept releases
// and the journal.
func resolveSHA(e *environment, s string) (string, error) {
	if len(s) < 7 || strings.Trim(s, "0123456789abcdef") != "" {
		return "", fmt.Errorf("%q is not a commit id (7 to 40 lowercase hex digits)", s)
	}
	if len(s) == 40 {
		return s, nil
	}
	found := map[string]bool{}
	rels, err := e.rel.Releases()
	if err != nil {
		return "", fmt.Errorf("%s: list releases: %w", e.cfg.Repo, err)
	}
	for _, r := range rels {
		if strings.HasPrefix(r.SHA, s) {
			found[r.SHA] = true
		}
	}
	if len(found) == 0 {
		if en, err := e.rel.Entry(s); err == nil {
			found[en.SHA] = true
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%s: no release or deploy matches %s", e.cfg.Repo, s)
	case 1:
		for sha := range found {
			return sha, nil
		}
	}
	return "", fmt.Errorf("%s: %s is ambiguous: give more digits", e.cfg.Repo, s)
}

// lockCmd freezes e: pushes and redeploys are refused with message until unlockCmd.
func (p *Pipeline) lockCmd(e *environment, c Caller, message string, stdout io.Writer) error {
	if strings.TrimSpace(message) == "" {
		return errors.New("lock needs -m MESSAGE: say why, pushers will read it")
	}
	if err := e.rel.Freeze(c.label(), message); err != nil {
		return fmt.Errorf("freeze %s: %w", e.cfg.Repo, err)
	}
	p.noteChange(e, c, "froze: "+message)
	fmt.Fprintf(stdout, "%s is frozen: pushes are refused with %q\n", e.cfg.Repo, message)
	return nil
}

// unlockCmd ends e's freeze.
func (p *Pipeline) unlockCmd(e *environment, c Caller, stdout io.Writer) error {
	if err := e.rel.Unfreeze(); errors.Is(err, releaser.ErrNotFrozen) {
		return fmt.Errorf("%s is not frozen", e.cfg.Repo)
	} else if err != nil {
		return fmt.Errorf("unfreeze %s: %w", e.cfg.Repo, err)
	}
	p.noteChange(e, c, "unfroze")
	fmt.Fprintf(stdout, "%s is no longer frozen\n", e.cfg.Repo)
	return nil
}
