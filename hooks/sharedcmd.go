package hooks

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strconv"
	"text/tabwriter"

	"github.com/slipway/slipway/releaser"
)

// sharedCmd is `shared ls|get|put|rm REPO [PATH]`: the environment's shared files without a
// shell. Every change is a journal entry with the size and sha256 of what was written.
func (p *Pipeline) sharedCmd(_ context.Context, c Caller, inv *invocation) error {
	e := inv.env
	if e.rel == nil {
		return unavailable(e.cfg.Repo, e.broken)
	}
	sub, path := inv.arg(0), inv.arg(2)
	need := map[string]int{"ls": 2, "get": 3, "put": 3, "rm": 3}[sub]
	if need == 0 || len(inv.args) != need || (inv.asJSON && sub != "ls") || (inv.mode != "" && sub != "put") {
		return usageErrorf("shared ls REPO [--json] | shared get REPO PATH | shared put REPO PATH [--mode 0600] | shared rm REPO PATH")
	}
	switch sub {
	case "ls":
		files, err := e.rel.SharedList()
		if err != nil {
			return err
		}
		if inv.asJSON {
			if files == nil {
				files = []releaser.SharedFile{}
			}
			return writeJSON(inv.stdout, files)
		}
		tw := tabwriter.NewWriter(inv.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "MODE\tSIZE\tPATH")
		for _, f := range files {
			size := strconv.FormatInt(f.Size, 10)
			if f.Type == "dir" {
				size = "-"
			}
			name := f.Path
			if f.Type == "dir" {
				name += "/"
			}
			fmt.Fprintf(tw, "%04o\t%s\t%s\n", uint32(f.Mode), size, name)
		}
		return tw.Flush()
	case "get":
		f, err := e.rel.SharedOpen(path)
		if err != nil {
			return err
		}
		defer f.Close() // read only: closing it loses nothing
		_, err = io.Copy(inv.stdout, f)
		return err
	case "put":
		mode := fs.FileMode(0o600)
		if inv.mode != "" {
			m, err := strconv.ParseUint(inv.mode, 8, 32)
			if err != nil || m > 0o777 {
				return usageErrorf("shared put REPO PATH --mode: %q is not an octal mode such as 0640", inv.mode)
			}
			mode = fs.FileMode(m)
		}
		size, sum, err := e.rel.SharedPut(path, inv.stdin, mode)
		if err != nil {
			return err
		}
		what := fmt.Sprintf("shared put %s (%d bytes, sha256 %s)", path, size, sum[:16])
		p.noteChange(e, c, what)
		fmt.Fprintf(inv.stdout, "%s: %s\n", e.cfg.Repo, what)
		return nil
	default: // rm
		if err := e.rel.SharedRemove(path); err != nil {
			return err
		}
		what := "shared rm " + path
		p.noteChange(e, c, what)
		fmt.Fprintf(inv.stdout, "%s: %s\n", e.cfg.Repo, what)
		return nil
	}
}

// noteChange journals a change of e's configuration by c.
func (p *Pipeline) noteChange(e *environment, c Caller, what string) {
	if e.rel != nil {
		_, err := e.rel.Note(releaser.Entry{Kind: releaser.KindConfig, Repo: e.cfg.Repo, Pusher: c.label(),
			KeyFingerprint: c.KeyFingerprint, Message: what})
		if err != nil {
			p.log.Error().Err(err).Str("repo", e.cfg.Repo).Msg("journal a configuration change")
		}
	}
	p.log.Info().Str("repo", e.cfg.Repo).Str("by", c.label()).Str("change", what).Msg("configuration changed")
}

// sharedPutHint is the command that creates a missing shared file, for the pusher.
func (p *Pipeline) sharedPutHint(repo, name string) string {
	port := "2222"
	if _, pt, err := net.SplitHostPort(p.server().Listen); err == nil && pt != "0" {
		port = pt
	}
	return fmt.Sprintf("cat %s | ssh -p %s git@HOST shared put %s %s", name, port, repo, name)
}
