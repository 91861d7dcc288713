package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// buildCommand is the build both servers run in every new release (slipway with sh -c).
const buildCommand = "echo built > built.txt"

// keepReleases is what both servers keep after a deploy, the live one included.
const keepReleases = 5

// hookScript is the baseline: the pre-receive hook people write by hand around stock git
// (a pre-receive hook, so that a failing build rejects the push as slipway does). It writes
// the commit with git archive | tar -x (both exit codes checked), links the shared files,
// runs the same build, swaps current with ln -s + mv -T, and keeps the newest releases.
// A kept release is re-activated without a rebuild, like slipway's rollback. It prints the
// same phase markers as slipway so the client's view of both is parsed alike.
const hookScript = `#!/bin/bash
# pre-receive: a hand-made push-to-deploy hook (the baseline slipway is compared with)
set -u
DEPLOY=%q
KEEP=%d
t0=$(date +%%s%%N)
while read -r old new ref; do
  if [ "$ref" != refs/heads/main ]; then echo "only refs/heads/main deploys here"; exit 1; fi
  case "$new" in 0000000000000000000000000000000000000000) echo "deleting main is not allowed"; exit 1;; esac
  rel="$DEPLOY/releases/$new"
  echo "-----> deploying $new"
  if [ -d "$rel" ]; then
    echo "-----> releases/$new is kept: activating it without a rebuild"
  else
    mkdir -p "$rel" || exit 1
    git archive --format=tar "$new" | tar -x -C "$rel"
    st=("${PIPESTATUS[@]}")
    if [ "${st[0]}" != 0 ] || [ "${st[1]}" != 0 ]; then
      echo "checkout failed (git archive ${st[0]}, tar ${st[1]})"; rm -rf "$rel"; exit 1
    fi
    echo "-----> checkout written"
    ln -s ../../shared/.env "$rel/.env" && rm -rf "$rel/storage" && ln -s ../../shared/storage "$rel/storage" \
      || { echo "link shared failed"; rm -rf "$rel"; exit 1; }
    if ! (cd "$rel" && sh -c %q); then echo "build failed"; rm -rf "$rel"; exit 1; fi
  fi
  ln -sfn "releases/$new" "$DEPLOY/current.tmp" && mv -T "$DEPLOY/current.tmp" "$DEPLOY/current" || exit 1
  touch "$rel"
  echo "-----> live: current -> releases/$new"
  ls -1t "$DEPLOY/releases" | tail -n +$((KEEP + 1)) | while read -r name; do
    [ "$name" = "$new" ] || rm -rf "$DEPLOY/releases/$name"
  done
done
echo "-----> hook took $(( ($(date +%%s%%N) - t0) / 1000 )) us"
`

// newBaselineRepo makes a bare repository whose pre-receive hook deploys into deploy, with
// the shared files in place, running build (a shell command) in each new release. An empty
// build makes a plain repository (pack ingest).
func newBaselineRepo(ctx context.Context, env []string, repo, deploy, build string) error {
	if _, err := run(ctx, env, "/", time.Minute, "git", "init", "-q", "--bare", "-b", "main", repo); err != nil {
		return err
	}
	if build == "" {
		return nil
	}
	if err := makeDeployRoot(deploy); err != nil {
		return err
	}
	script := fmt.Sprintf(hookScript, deploy, keepReleases, build)
	return os.WriteFile(filepath.Join(repo, "hooks", "pre-receive"), []byte(script), 0o755)
}

// makeDeployRoot creates a deploy root with releases/ and the shared .env and storage/ that
// both servers link into every release.
func makeDeployRoot(deploy string) error {
	for _, d := range []string{"releases", "shared/storage"} {
		if err := os.MkdirAll(filepath.Join(deploy, d), 0o755); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(deploy, "shared", ".env"), []byte("APP_ENV=bench\n"), 0o644)
}

// sshd is the baseline's private OpenSSH server on 127.0.0.1.
type sshd struct {
	port    int
	user    string
	proc    *bgProc
	madeRun bool // the harness created /run/sshd (privilege separation dir) and removes it
}

// startSSHD runs /usr/sbin/sshd -D with its own host key and config in dir, authorizing
// only authorizedKeys, for the current user.
func startSSHD(ctx context.Context, p *procs, dir, authorizedKeys string) (*sshd, error) {
	bin, err := lookSSHD()
	if err != nil {
		return nil, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, err
	}
	s := &sshd{user: u.Username}
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	if _, err := run(ctx, nil, dir, time.Minute, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench-sshd", "-f", hostKey); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if _, err := os.Stat("/run/sshd"); errors.Is(err, fs.ErrNotExist) {
			if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
				return nil, err
			}
			s.madeRun = true
		}
	}
	s.port, err = freePort()
	if err != nil {
		return nil, err
	}
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "sshd_config")
	cfg := strings.Join([]string{
		"Port " + strconv.Itoa(s.port),
		"ListenAddress 127.0.0.1",
		"AddressFamily inet",
		"HostKey " + hostKey,
		"AuthorizedKeysFile " + authorizedKeys,
		"PidFile " + filepath.Join(dir, "sshd.pid"),
		"UsePAM no",
		"StrictModes no",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"AllowUsers " + s.user,
		"AllowTcpForwarding no",
		"AllowAgentForwarding no",
		"X11Forwarding no",
		"PermitTTY no",
		"PrintMotd no",
		"PrintLastLog no",
		"UseDNS no",
		"MaxStartups 100:30:200",
		"LogLevel ERROR",
		"SetEnv HOME=" + home + " GIT_CONFIG_NOSYSTEM=1 LANG=C",
		"",
	}, "\n")
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	if _, err := run(ctx, nil, dir, time.Minute, bin, "-t", "-f", conf); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "sshd.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := command(context.WithoutCancel(ctx), nil, dir, bin, "-D", "-e", "-f", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	s.proc, err = p.start("sshd", cmd)
	if err != nil {
		return nil, err
	}
	if err := waitPort(ctx, s.port, s.proc, 15*time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
		return nil, fmt.Errorf("sshd: %w: %s", err, tail(string(log), 1000))
	}
	return s, nil
}

func (s *sshd) url(repo string) string {
	return fmt.Sprintf("ssh://%s@127.0.0.1:%d%s", s.user, s.port, repo)
}

func (s *sshd) stop(p *procs) {
	if s.proc != nil {
		s.proc.stop(syscall.SIGTERM, 3*time.Second)
		p.remove(s.proc)
	}
	if s.madeRun {
		os.Remove("/run/sshd")
	}
}

func lookSSHD() (string, error) {
	for _, p := range []string{"/usr/sbin/sshd", "/usr/local/sbin/sshd"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("sshd not found (apt-get install openssh-server)")
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitPort waits until 127.0.0.1:port accepts connections, or bp exits, or timeout.
func waitPort(ctx context.Context, port int, bp *bgProc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if bp != nil && bp.exited() {
			return fmt.Errorf("exited before listening: %v", bp.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("port %d not listening after %s", port, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
