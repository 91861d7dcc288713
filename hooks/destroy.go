package hooks

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// destroyCmd removes an environment the embedded default created: its deploy root, its
// repository and its name. It is refused while the environment deploys or is frozen, and
// for an environment of the configuration file, whose deploy root may hold what no command
// should delete (the operator removes its [[env]] and then its files).
func (p *Pipeline) destroyCmd(ctx context.Context, e *environment, c Caller, confirm string, stdout io.Writer) error {
	repo := e.cfg.Repo
	if confirm != repo {
		return fmt.Errorf("destroy deletes %s's releases, shared files, history and repository: "+
			"confirm with --confirm %s", repo, repo)
	}
	if p.auto == nil {
		return fmt.Errorf("%s is configured in %s: remove its [[env]] there, then its deploy root %s",
			repo, p.server().File, e.cfg.Path)
	}
	if err := frozen(e); err != nil {
		return fmt.Errorf("%w: unlock it before you destroy it", err)
	}
	unlock, err := p.lock(ctx, e, c.label(), 0)
	if err != nil {
		return err
	}
	defer unlock()
	if err := p.destroy(e); err != nil {
		p.log.Error().Err(err).Str("repo", repo).Str("by", c.label()).Msg("destroy environment")
		return fmt.Errorf("%s could not be destroyed completely: see the server log", repo)
	}
	p.log.Info().Str("repo", repo).Str("by", c.label()).Msg("environment destroyed")
	fmt.Fprintf(stdout, "%s is destroyed: its releases, shared files, history and repository are gone\n", repo)
	return nil
}

// dropIfNeverLive destroys e, which the push that is releasing it created, unless that push
// made a release live: a mistyped remote, or a first deploy that failed, leaves no
// environment behind. The caller holds e's deploy lock.
func (p *Pipeline) dropIfNeverLive(e *environment) {
	live, err := e.rel.Current()
	if err != nil || live != "" {
		return // it went live, or we cannot tell: keep it
	}
	if err := p.destroy(e); err != nil {
		p.log.Error().Err(err).Str("repo", e.cfg.Repo).Msg("remove environment whose first push made nothing live")
		return
	}
	p.log.Info().Str("repo", e.cfg.Repo).Msg("environment removed: its first push made nothing live")
}

// destroy removes e for good: the deploy root first, then the repository, then its name.
// Each removal is a rename out of sight first, so a crash halfway leaves an environment
// that is empty (or gone), never one that looks whole but is not. The caller holds e's
// deploy lock.
func (p *Pipeline) destroy(e *environment) error {
	repo := e.cfg.Repo
	if err := e.rel.Destroy(); err != nil {
		return fmt.Errorf("remove the deploy root of %s: %w", repo, err)
	}
	// The embedded default deploys to <deploy>/APP/ENV: an APP left empty goes too. Any
	// other entry there (another environment) makes Remove fail, which is what we want.
	_ = os.Remove(filepath.Dir(e.cfg.Path)) // best effort: an APP still in use stays
	if err := p.cfg.Repos.Remove(repo); err != nil {
		return fmt.Errorf("remove the repository of %s: %w", repo, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.auto.remove(repo); err != nil {
		return err
	}
	delete(p.envs, repo)
	return nil
}
