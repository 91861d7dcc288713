package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// pushResult is one timed git push, every time relative to the moment just before git
// push was started.
type pushResult struct {
	Exit  time.Duration            // git push exited
	Live  time.Duration            // current first named the pushed release (readlink every 1 ms); 0 if never
	Marks map[string]time.Duration // when the client printed each marker line (see markers)
	// Server is the server's own time for the deploy: the hook's runtime for the baselines,
	// Deploy's "took_ms" from slipway's log; 0 if unknown.
	Server time.Duration
	Stderr string
}

// markers are the client's view of the deploy's phases. slipway prints them itself; the
// baseline hook prints the same words so both are parsed alike.
var markers = []struct {
	key string
	re  *regexp.Regexp
}{
	{"deploying", regexp.MustCompile(`^remote: -----> deploying`)},
	{"checkout", regexp.MustCompile(`^remote: +([0-9]+ files, .* written|-----> checkout written)`)},
	{"live", regexp.MustCompile(`^remote: -----> live:`)},
}

var hookTook = regexp.MustCompile(`remote: -----> hook took ([0-9]+) us`)

// timedPush pushes sha to url's refs/heads/main from the workload repository and times it
// (see pushResult). currentLink is the deploy's current symlink, watched for
// "releases/<sha>".
func timedPush(ctx context.Context, env []string, repo, url, sha string, force bool, currentLink string) (pushResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	args := []string{"push", "--no-verify"}
	if force {
		args = append(args, "--force")
	}
	args = append(args, url, sha+":refs/heads/main")
	cmd := command(ctx, env, repo, "git", args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return pushResult{}, err
	}
	var res pushResult
	res.Marks = map[string]time.Duration{}
	want := "releases/" + sha

	// The watcher polls current from just before the push starts until the push has exited
	// and current names the release (or a short grace passed).
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	var live time.Duration
	start := time.Now()
	go func() {
		defer close(watchDone)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		stop := stopWatch
		var deadline <-chan time.Time
		for {
			if l, err := os.Readlink(currentLink); err == nil && l == want {
				live = time.Since(start)
				return
			}
			select {
			case <-stop:
				deadline = time.After(50 * time.Millisecond)
				stop = nil
			case <-deadline:
				return
			case <-tick.C:
			}
		}
	}()

	if err := cmd.Start(); err != nil {
		close(stopWatch)
		<-watchDone
		return pushResult{}, err
	}
	var all bytes.Buffer
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	sc.Split(scanLinesCR)
	for sc.Scan() {
		now := time.Since(start)
		line := sc.Text()
		all.WriteString(line)
		all.WriteByte('\n')
		for _, m := range markers {
			if _, seen := res.Marks[m.key]; !seen && m.re.MatchString(line) {
				res.Marks[m.key] = now
			}
		}
	}
	err = cmd.Wait()
	res.Exit = time.Since(start)
	close(stopWatch)
	<-watchDone
	res.Live = live
	res.Stderr = all.String()
	if m := hookTook.FindStringSubmatch(res.Stderr); m != nil {
		us, _ := strconv.ParseInt(m[1], 10, 64)
		res.Server = time.Duration(us) * time.Microsecond
	}
	if err != nil {
		return res, fmt.Errorf("git push %s %s: %w\n%s", url, sha[:12], err, tail(res.Stderr, 3000))
	}
	if live == 0 {
		got, _ := os.Readlink(currentLink)
		return res, fmt.Errorf("git push %s %s succeeded but current is %q, not %q", url, sha[:12], got, want)
	}
	return res, nil
}

// scanLinesCR splits on \n and on \r (git's progress lines end with \r).
func scanLinesCR(data []byte, atEOF bool) (advance int, token []byte, err error) {
	for i, c := range data {
		if c == '\n' || c == '\r' {
			return i + 1, data[:i], nil
		}
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// gitEnv is the hermetic environment of every git and ssh the harness runs as the pusher.
func gitEnv(home, key string) []string {
	sshCmd := strings.Join([]string{"ssh", "-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"}, " ")
	env := []string{
		"HOME=" + home,
		"PATH=" + os.Getenv("PATH"),
		"LANG=C",
		"LC_ALL=C",
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_SSH_COMMAND=" + sshCmd,
	}
	if v := os.Getenv("TMPDIR"); v != "" {
		env = append(env, "TMPDIR="+v)
	}
	return env
}
