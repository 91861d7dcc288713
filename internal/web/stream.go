package web

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
)

// capped keeps at most max bytes of what is written to it: the first ones, or with
// keepEnd the last ones. total counts everything written. (Its buffer is a field, not
// embedded: io.Copy would use an embedded bytes.Buffer's ReadFrom, past Write.)
type capped struct {
	buf     bytes.Buffer
	max     int
	keepEnd bool
	total   int
}

func (c *capped) Write(p []byte) (int, error) {
	c.total += len(p)
	if !c.keepEnd {
		if room := c.max - c.buf.Len(); room > 0 {
			c.buf.Write(p[:min(len(p), room)])
		}
		return len(p), nil
	}
	c.buf.Write(p)
	if over := c.buf.Len() - c.max; over > 0 {
		c.buf.Next(over)
	}
	return len(p), nil
}

func (c *capped) Bytes() []byte  { return c.buf.Bytes() }
func (c *capped) String() string { return c.buf.String() }

// sseWriter turns a log into server-sent events, one "message" event per line, flushed
// as they come; it drops the first skip bytes.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	skip    int64
	partial []byte
	failed  bool // the client is gone: what follows is dropped
}

// maxLine cuts a line that never ends: an event is one line.
const maxLine = 64 << 10

func (s *sseWriter) Write(p []byte) (int, error) {
	n := len(p)
	if s.skip > 0 {
		k := min(int64(len(p)), s.skip)
		p, s.skip = p[k:], s.skip-k
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.partial = append(s.partial, p...)
			if len(s.partial) >= maxLine {
				s.send(s.partial)
				s.partial = s.partial[:0]
			}
			break
		}
		s.send(append(s.partial, p[:i]...))
		s.partial, p = s.partial[:0], p[i+1:]
	}
	if !s.failed {
		if err := s.rc.Flush(); err != nil {
			s.failed = true
		}
	}
	return n, nil
}

// send writes one line as an event: carriage returns (progress bars) become nothing, the
// line's other bytes go as they are.
func (s *sseWriter) send(line []byte) {
	if s.failed {
		return
	}
	text := strings.ReplaceAll(string(line), "\r", "")
	if _, err := fmt.Fprintf(s.w, "data: %s\n\n", text); err != nil {
		s.failed = true
	}
}

// end sends what is left of a last line, then the "end" event with the command's exit
// status.
func (s *sseWriter) end(code int) {
	if len(s.partial) > 0 {
		s.send(s.partial)
	}
	if !s.failed {
		fmt.Fprintf(s.w, "event: end\ndata: %d\n\n", code)
		s.rc.Flush()
	}
}
