package hooks

import (
	"slices"
	"sync"
	"time"
)

// Spares of copy_dirs (see releaser.PrepareSpare): once a deploy has ended and released the
// environment, its copy_dirs are copied from the live release, in the background, so that
// the next deploy takes them with a rename instead of copying while its pusher waits.

// spares is what an environment has to make ready: the copy_dirs of its last deploy.
type spares struct {
	mu      sync.Mutex
	dirs    []string // to make for the live release once the environment is free
	running bool
}

// want records the copy_dirs paths of a deploy that is ending; makeSpares acts on them.
func (s *spares) want(dirs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dirs = slices.Clone(dirs)
}

// makeSpares starts making e's spares, if a deploy asked for them and none are being made.
// It takes no lock: a deploy that starts meanwhile copies the usual way (or takes a spare
// made before), and asks for new spares when it ends.
func (p *Pipeline) makeSpares(e *environment) {
	s := &e.spares
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running || len(s.dirs) == 0 || e.rel == nil || p.bgCtx.Err() != nil {
		return
	}
	p.bgMu.Lock()
	defer p.bgMu.Unlock()
	if p.bgCtx.Err() != nil { // closed
		return
	}
	dirs := s.dirs
	s.dirs, s.running = nil, true
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		p.prepareSpares(e, dirs)
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
	}()
}

// prepareSpares makes a spare of each of dirs for e's live release.
func (p *Pipeline) prepareSpares(e *environment, dirs []string) {
	log := p.log.With().Str("repo", e.cfg.Repo).Logger()
	live, err := e.rel.Current()
	if err != nil || live == "" {
		return
	}
	for _, dir := range dirs {
		start := time.Now()
		made, err := e.rel.PrepareSpare(p.bgCtx, live, dir)
		switch {
		case err != nil && p.bgCtx.Err() != nil:
			return // shutting down: the next start clears what was half made
		case err != nil:
			// The next deploy copies, as it would have without spares.
			log.Warn().Err(err).Str("dir", dir).Str("sha", live).Msg("copy_dirs: make a spare for the next deploy")
		case made:
			log.Debug().Str("dir", dir).Str("sha", live).Dur("took", time.Since(start)).Msg("copy_dirs: spare made for the next deploy")
		}
	}
}

// Close ends the pipeline's background work and waits for it. Deploys are the git server's
// to end (its Shutdown), before this.
func (p *Pipeline) Close() {
	p.bgMu.Lock()
	p.bgCancel()
	p.bgMu.Unlock()
	p.bg.Wait()
}
