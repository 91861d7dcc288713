package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/slipway/slipway/gitserver"
)

// slipwayServer is one slipway process started from the binary under test, with a generated
// configuration, listening on 127.0.0.1:0.
type slipwayServer struct {
	dir     string
	addr    string // host:port, read from <data_dir>/ssh.addr
	proc    *bgProc
	logPath string
}

// slipwayEnv is one [[env]] of the generated configuration.
type slipwayEnv struct {
	repo string // APP/ENV
	path string // deploy root
	link bool   // release_files = "link"
	// config is the environment's own TOML lines: build, test and the rest (figure 9);
	// empty: build = [buildCommand] with the shared .env and storage/ (figures 1-8).
	config string
}

const slipwayConfig = `listen = "127.0.0.1:0"
data_dir = %q
authorized_keys = %q
`

const slipwayEnvConfig = `
[[env]]
repo = %q
path = %q
keep_releases = %d
`

const slipwayEnvDefault = `shared_files = [".env"]
shared_dirs = ["storage"]
build = [%q]
`

// startSlipway writes the configuration of envs into dir and starts bin serve on it.
func startSlipway(ctx context.Context, p *procs, bin, dir, authorizedKeys string, envs []slipwayEnv) (*slipwayServer, error) {
	s := &slipwayServer{dir: dir, logPath: filepath.Join(dir, "slipway.log")}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	var b strings.Builder
	fmt.Fprintf(&b, slipwayConfig, data, authorizedKeys)
	for _, e := range envs {
		if err := makeDeployRoot(e.path); err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, slipwayEnvConfig, e.repo, e.path, keepReleases)
		if e.config != "" {
			b.WriteString(e.config)
		} else {
			fmt.Fprintf(&b, slipwayEnvDefault, buildCommand)
		}
		if e.link {
			b.WriteString("release_files = \"link\"\n")
		}
	}
	conf := filepath.Join(dir, "slipway.toml")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	// A restart must not read the address the previous process left.
	addrFile := filepath.Join(data, "ssh.addr")
	if err := os.Remove(addrFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := command(context.WithoutCancel(ctx), nil, dir, bin, "serve", "--config", conf)
	cmd.Stdout, cmd.Stderr = io.Discard, logf
	if os.Geteuid() == 0 {
		// As in production: slipway refuses release_files = "link" to root.
		if err := unprivileged(dir, bin, authorizedKeys); err != nil {
			return nil, err
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: nobody, Gid: nobody}
	}
	s.proc, err = p.start("slipway", cmd)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil && strings.HasSuffix(string(b), "\n") {
			s.addr = strings.TrimSpace(string(b))
			return s, nil
		}
		if s.proc.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			log, _ := os.ReadFile(s.logPath)
			s.stop(p)
			return nil, fmt.Errorf("slipway did not start (%v): %s", s.proc.err, tail(string(log), 2000))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// nobody is the user slipway runs as when the harness runs as root.
const nobody = 65534

// unprivileged gives dir (slipway's configuration, data and deploy roots) to nobody, and
// lets nobody reach dir, bin and keys through their parent directories.
func unprivileged(dir, bin, keys string) error {
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, nobody, nobody)
	})
	if err != nil {
		return err
	}
	for _, p := range []string{dir, bin, keys} {
		for d := filepath.Dir(p); d != "/"; d = filepath.Dir(d) {
			fi, err := os.Stat(d)
			if err != nil {
				return err
			}
			if fi.Mode().Perm()&0o001 == 0 {
				if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (s *slipwayServer) url(repo string) string {
	return fmt.Sprintf("ssh://git@%s/%s", s.addr, repo)
}

func (s *slipwayServer) pid() int { return s.proc.cmd.Process.Pid }

// repoDir is the bare repository slipway keeps for environment repo.
func (s *slipwayServer) repoDir(repo string) string {
	return gitserver.RepoDir(filepath.Join(s.dir, "data", "repos"), repo)
}

// stop shuts slipway down gracefully (SIGINT), killing it if it takes longer than 40 s.
func (s *slipwayServer) stop(p *procs) {
	s.proc.stop(syscall.SIGINT, 40*time.Second)
	p.remove(s.proc)
}

// logSize is the current length of the log, to read only what a later deploy adds.
func (s *slipwayServer) logSize() int64 {
	fi, err := os.Stat(s.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// deployTook returns Deploy's own duration for sha ("took_ms" of its "deploy finished" line)
// from the part of the log after offset; 0 if there is none.
func (s *slipwayServer) deployTook(offset int64, sha string) time.Duration {
	f, err := os.Open(s.logPath)
	if err != nil {
		return 0
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return 0
	}
	var took time.Duration
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var ev struct {
			Message string `json:"message"`
			SHA     string `json:"sha"`
			TookMS  int64  `json:"took_ms"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		if ev.Message == "deploy finished" && ev.SHA == sha && ev.Error == "" {
			took = time.Duration(ev.TookMS) * time.Millisecond
		}
	}
	return took
}
