package web

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"time"
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
// as they come; it drops the first skip bytes. Each event's id is the log's offset after
// it, so that a browser reconnecting (EventSource does, by itself) asks for what follows
// with Last-Event-ID and sees no line twice. A client that does not take a write within
// writeWait is gone: what follows is dropped, and gone is called.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	skip    int64
	pos     int64 // offset in the log of what was written to s so far
	partial []byte
	failed  bool   // the client is gone: what follows is dropped
	gone    func() // called once when the client is found gone; nil: none
}

// maxLine cuts a line that never ends: an event is one line.
const maxLine = 64 << 10

// writeWait is how long one write to the browser may wait for it to read.
const writeWait = 30 * time.Second

func (s *sseWriter) Write(p []byte) (int, error) {
	n := len(p)
	if s.skip > 0 {
		k := min(int64(len(p)), s.skip)
		p, s.skip, s.pos = p[k:], s.skip-k, s.pos+k
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.partial = append(s.partial, p...)
			s.pos += int64(len(p))
			if len(s.partial) >= maxLine {
				s.send(s.partial)
				s.partial = s.partial[:0]
			}
			break
		}
		s.pos += int64(i + 1)
		s.send(append(s.partial, p[:i]...))
		s.partial, p = s.partial[:0], p[i+1:]
	}
	if !s.failed {
		s.rc.SetWriteDeadline(time.Now().Add(writeWait))
		if err := s.rc.Flush(); err != nil {
			s.fail()
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
	s.rc.SetWriteDeadline(time.Now().Add(writeWait))
	text := strings.ReplaceAll(string(line), "\r", "")
	if _, err := fmt.Fprintf(s.w, "id: %d\ndata: %s\n\n", s.pos, text); err != nil {
		s.fail()
	}
}

func (s *sseWriter) fail() {
	s.failed = true
	if s.gone != nil {
		s.gone()
	}
}

// end sends what is left of a last line, then the "end" event with the command's exit
// status.
func (s *sseWriter) end(code int) {
	if len(s.partial) > 0 {
		s.send(s.partial)
	}
	if !s.failed {
		s.rc.SetWriteDeadline(time.Now().Add(writeWait))
		fmt.Fprintf(s.w, "event: end\ndata: %d\n\n", code)
		s.rc.Flush()
	}
	s.rc.SetWriteDeadline(time.Time{}) // the connection may serve another request
}
