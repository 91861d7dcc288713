package hooks

import (
	"fmt"
	"io"
	"time"
)

// What a deploy tells its requester, and keeps in its log.

func say(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "-----> "+format+"\n", args...)
}

func indent(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "       "+format+"\n", args...)
}

func since(t time.Time) string {
	d := time.Since(t)
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// tee writes everything to the requester and to the deploy's log. A requester that hung
// up does not stop the log.
type tee struct {
	pusher io.Writer
	log    io.Writer
}

func (t *tee) Write(b []byte) (int, error) {
	t.log.Write(b)    //nolint:errcheck // the log is best effort
	t.pusher.Write(b) //nolint:errcheck // a gone requester cancels the deploy through ctx
	return len(b), nil
}

// capped writes at most left bytes, then one truncation marker, then nothing.
type capped struct {
	w    io.Writer
	left int64
}

func (c *capped) Write(b []byte) (int, error) {
	if c.left <= 0 {
		return len(b), nil
	}
	if int64(len(b)) > c.left {
		c.w.Write(b[:c.left])                                  //nolint:errcheck // the log is best effort
		c.w.Write([]byte("\n[slipway: log truncated here]\n")) //nolint:errcheck // the log is best effort
		c.left = 0
		return len(b), nil
	}
	c.left -= int64(len(b))
	return c.w.Write(b)
}
