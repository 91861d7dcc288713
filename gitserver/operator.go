package gitserver

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"
)

// runCommand hands an operator command (anything but git's services) to Config.Commands
// and returns its exit status. The caller has checked the command line (not empty, not too
// long, no control characters).
func (s *Server) runCommand(sess ssh.Session, who Identity, rec *record) int {
	if problem := shellWordsProblem(sess.RawCommand()); problem != "" {
		rec.refused(zerolog.WarnLevel, errors.New(problem))
		_, _ = fmt.Fprintf(sess.Stderr(), "slipway: %s\n", problem) // the session ends with status 1 either way
		return 1
	}
	args := sess.Command()
	if len(args) == 0 {
		rec.refused(zerolog.WarnLevel, errors.New("empty command"))
		_, _ = fmt.Fprintln(sess.Stderr(), "slipway: empty command") // the session ends with status 1 either way
		return 1
	}
	rec.command = clip(args[0], 40)

	ctx, cancel := s.sessionContext(sess)
	defer cancel()
	stdout := &sessionOutput{w: sess}
	stderr := &sessionOutput{w: sess.Stderr()}
	code := s.cfg.Commands.RunCommand(ctx, who, args, sess, stdout, stderr)
	// The session's writes are synchronous: everything written is on its way to the client
	// before the exit status. A Commander that kept the writers gets errors from now on.
	stdout.close()
	stderr.close()
	rec.outcome, rec.exit = "command", code
	return code
}

var errCommandOver = errors.New("command output closed: the command is over")

// sessionOutput is a session stream that a command may write to until it returns.
type sessionOutput struct {
	mu     sync.Mutex // guards closed, and orders writes
	w      io.Writer
	closed bool
}

func (o *sessionOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return 0, errCommandOver
	}
	return o.w.Write(p)
}

func (o *sessionOutput) close() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
}
