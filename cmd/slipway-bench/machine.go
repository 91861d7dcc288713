package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// machineInfo is what BENCHMARKS.md says about where and with what it ran.
type machineInfo struct {
	command, date                  string
	os, nproc, cpu, mem, kernel    string
	fstype, workdir                string
	goVersion, gitVersion, openssh string
	nginx, wrk, slipwayVersion     string
}

func collectMachine(ctx context.Context, workdir, bin string) machineInfo {
	out := func(name string, args ...string) string {
		c := exec.CommandContext(ctx, name, args...)
		b, _ := c.CombinedOutput()
		return strings.TrimSpace(string(b))
	}
	m := machineInfo{
		command: commandLine(),
		date:    time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		nproc:   out("nproc"),
		kernel:  out("uname", "-sr"),
		fstype:  out("findmnt", "-n", "-o", "FSTYPE", "-T", workdir),
		workdir: workdir,
	}
	if m.fstype == "" {
		m.fstype = out("stat", "-f", "-c", "%T", workdir)
	}
	if m.nproc == "" {
		m.nproc = fmt.Sprint(runtime.NumCPU())
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.os = strings.Trim(v, `"`)
			}
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				var kb int64
				fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
				m.mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	m.goVersion = out("go", "version")
	if m.goVersion == "" {
		m.goVersion = "go " + runtime.Version()
	}
	m.gitVersion = out("git", "--version")
	m.openssh = firstLine(out("ssh", "-V"))
	if v := out("dpkg-query", "-W", "-f", "${Version}", "openssh-server"); v != "" && !strings.Contains(v, "no packages") {
		m.openssh += " (sshd: openssh-server " + v + ")"
	}
	m.nginx = "nginx: not installed"
	if _, err := lookPath("nginx"); err == nil {
		m.nginx = firstLine(out("nginx", "-v"))
	}
	m.wrk = "wrk: not installed"
	if _, err := lookPath("wrk"); err == nil {
		m.wrk = firstLine(out("wrk", "-v"))
	}
	m.slipwayVersion = out(bin, "version")
	return m
}

// lookPath finds a command on PATH or in the sbin directories (sshd, nginx).
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := d + "/" + name
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found", name)
}

// installPackages installs with apt what the figures need and is missing: openssh-server
// (always), nginx and wrk (figure 8, not with -smoke), and git and the OpenSSH client if
// absent. Services are not started: a temporary policy-rc.d refuses it, so installing never
// opens a port beyond loopback. Anything that cannot be installed is a note, and the
// figures that need it are skipped.
func (b *bench) installPackages(ctx context.Context) {
	want := []struct{ bin, pkg string }{
		{"git", "git"}, {"ssh", "openssh-client"}, {"ssh-keygen", "openssh-client"}, {"sshd", "openssh-server"},
	}
	if b.opts.zeroDown {
		want = append(want, struct{ bin, pkg string }{"nginx", "nginx"}, struct{ bin, pkg string }{"wrk", "wrk"})
	}
	if slices.ContainsFunc(b.opts.apps, func(a string) bool { return strings.HasPrefix(a, "node") }) {
		want = append(want, struct{ bin, pkg string }{"npm", "npm"})
	}
	var pkgs []string
	seen := map[string]bool{}
	for _, w := range want {
		if _, err := lookPath(w.bin); err != nil && !seen[w.pkg] {
			pkgs = append(pkgs, w.pkg)
			seen[w.pkg] = true
		}
	}
	if len(pkgs) == 0 {
		return
	}
	if os.Geteuid() != 0 {
		b.note("Not root: could not install %s.", strings.Join(pkgs, ", "))
		return
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		b.note("No apt-get: could not install %s.", strings.Join(pkgs, ", "))
		return
	}
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); errors.Is(err, fs.ErrNotExist) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\n# slipway bench: no service starts while it installs packages\nexit 101\n"), 0o755); err == nil {
			defer os.Remove(policy)
		}
	}
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	b.logf("installing %s (apt-get)", strings.Join(pkgs, " "))
	if _, err := run(ctx, env, "/", 10*time.Minute, "apt-get", "update", "-q"); err != nil {
		b.note("apt-get update failed: %v", firstLine(err.Error()))
		return
	}
	args := append([]string{"install", "-y", "-q", "--no-install-recommends"}, pkgs...)
	if _, err := run(ctx, env, "/", 15*time.Minute, "apt-get", args...); err != nil {
		b.note("apt-get install %s failed: %v", strings.Join(pkgs, " "), firstLine(err.Error()))
	}
}
