package configs

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// writeKeys writes an authorized_keys file with one fresh ed25519 key per name.
func writeKeys(t *testing.T, dir string, names ...string) string {
	t.Helper()
	var all []byte
	for _, n := range names {
		key := filepath.Join(dir, "id_"+n)
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", n, "-f", key).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
		pub, err := os.ReadFile(key + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, pub...)
	}
	path := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(path, all, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestExampleConfigs decodes every example in configs/ strictly, so the docs cannot drift
// from the code. Only the authorized_keys path is pointed at a real file.
func TestExampleConfigs(t *testing.T) {
	dir := t.TempDir()
	keys := writeKeys(t, dir, "alice", "ci")
	server, err := os.ReadFile("slipway.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	text := regexp.MustCompile(`(?m)^authorized_keys = "[^"]*"`).ReplaceAllString(string(server), `authorized_keys = "`+keys+`"`)
	if err := os.WriteFile(filepath.Join(dir, "notify.secret"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "slipway.toml")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(file)
	if err != nil {
		t.Fatalf("configs/slipway.example.toml: %v", err)
	}
	if len(cfg.Envs) != 2 || cfg.Listen != "0.0.0.0:2222" || cfg.DataDir != "/var/lib/slipway" || cfg.ShutdownTimeout != 30*time.Second {
		t.Fatalf("decoded %+v", cfg)
	}
	if cfg.Limits != DefaultLimits {
		t.Errorf("the example's limits %+v are not the defaults %+v", cfg.Limits, DefaultLimits)
	}
	prod := cfg.Envs[0]
	if prod.Repo != "myapp/production" || prod.KeepReleases != 5 || prod.PruneGrace != time.Minute ||
		prod.CommandTimeout != 30*time.Minute || strings.Join(prod.Vars, ",") != "APP_ENV=production" ||
		strings.Join(prod.Allow, ",") != "alice,ci" || strings.Join(prod.Recipe.Build, ",") != "composer install --no-dev" ||
		strings.Join(prod.Writable, ",") != "/var/cache/myapp" || prod.Box != (Box{MemoryMax: 2 << 30, PidsMax: 1024, CPUWeight: 100}) {
		t.Errorf("env[0] decoded as %+v", prod)
	}
	if prod.OnFailure != OnFailureRevert || strings.Join(prod.Recipe.BeforeActivate, ",") != "php artisan migrate --force" ||
		prod.HealthCheck == nil || *prod.HealthCheck != (HealthCheck{URL: "http://127.0.0.1:8080/up", ExpectStatus: 200, ExpectBody: "ok", Interval: time.Second, Timeout: 30 * time.Second}) {
		t.Errorf("env[0]'s activation decoded as on_failure %q, before_activate %q, health check %+v", prod.OnFailure, prod.Recipe.BeforeActivate, prod.HealthCheck)
	}
	if strings.Join(prod.Secrets, ",") != "DB_PASSWORD=change-me" || strings.Join(prod.MaskFiles, ",") != ".env" || prod.EnvFile != ".env.slipway" ||
		len(prod.Recipe.CopyDirs) != 1 || prod.Recipe.CopyDirs[0].Path != "vendor" || strings.Join(prod.Recipe.CopyDirs[0].Key, ",") != "composer.lock" ||
		prod.CacheMaxSize != 5<<30 {
		t.Errorf("env[0]'s secrets decoded as %q, mask_files %q", prod.Secrets, prod.MaskFiles)
	}
	if cfg.Envs[1].OnFailure != OnFailureRevert || cfg.Envs[1].HealthCheck != nil {
		t.Errorf("env[1]'s activation defaults decoded as %q, %+v", cfg.Envs[1].OnFailure, cfg.Envs[1].HealthCheck)
	}
	if len(cfg.Notify) != 1 || cfg.Notify[0].URL != "https://hooks.example.com/deploys" || string(cfg.Notify[0].Secret) != "s3cret" ||
		strings.Join(cfg.Notify[0].Events, ",") != "live,failed,reverted,rolled_back,cancelled" || cfg.Notify[0].Slack {
		t.Errorf("notify decoded as %+v", cfg.Notify)
	}
	if cfg.Sandbox != SandboxAuto {
		t.Errorf("sandbox = %q, want auto", cfg.Sandbox)
	}
	if cfg.Envs[1].Branch != "develop" || cfg.Envs[1].KeepReleases != defaultKeepReleases {
		t.Errorf("env[1] decoded as %+v", cfg.Envs[1])
	}

	repo, err := os.ReadFile("slipway.repo.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ParseRecipe(string(repo))
	if err != nil {
		t.Fatalf("configs/slipway.repo.example.toml: %v", err)
	}
	if len(rc.Build) != 2 || len(rc.SharedDirs) != 2 || !rc.set["after_activate"] {
		t.Errorf("repo recipe decoded as %+v", rc)
	}
}

// TestConfigProblems checks that every problem of a file is reported at once, each on its line.
func TestConfigProblems(t *testing.T) {
	dir := t.TempDir()
	writeKeys(t, dir, "alice")
	tests := []struct {
		name string
		toml string
		want []string // each a "slipway.toml:LINE: ..." line, in order
	}{
		{
			name: "valid minimal",
			toml: "data_dir = \"data\"\nauthorized_keys = \"authorized_keys\"\n[[env]]\nrepo = \"a/b\"\npath = \"deploy\"\n",
		},
		{
			name: "everything wrong at once",
			toml: `listen = "nope"
data_dir = "data"
authorized_keys = "authorized_keys"
colour = "blue"

[[env]]
repo = "a/../b"
path = "deploy"
keep_releases = 0
prune_grace = "5 minutes"
command_timeout = 30
buidl = ["make"]
allow = ["bob"]
build = "make"

[[env]]
path = "deploy/sub"
branch = "-x"
[env.vars]
SLIPWAY_SHA = "x"
"1BAD" = "y"
`,
			want: []string{
				`slipway.toml:1: listen: "nope" is not host:port`,
				`slipway.toml:4: unknown key "colour"`,
				`slipway.toml:7: env[0].repo:`,
				`slipway.toml:9: env[0].keep_releases must be at least 1`,
				`slipway.toml:10: env[0].prune_grace: "5 minutes" is not a duration`,
				`slipway.toml:11: env[0].command_timeout must be a duration string`,
				`slipway.toml:12: unknown key "env[0].buidl"`,
				`slipway.toml:13: env[0].allow: no authorized key is named "bob"`,
				`slipway.toml:14: env[0].build must be a list of strings`,
				`slipway.toml:16: env[1]: repo is required`,
				`slipway.toml:17: env[1].path:`,
				`slipway.toml:18: env[1].branch: "-x" is not a valid branch name`,
				`slipway.toml:20: env[1].vars.SLIPWAY_SHA: SLIPWAY_* variables are set by slipway`,
				`slipway.toml:21: env[1].vars.1BAD: not a valid environment variable name`,
			},
		},
		{
			name: "dangerous layouts",
			toml: `listen = "127.0.0.1:99999"
data_dir = "data"
authorized_keys = "authorized_keys"
max_push_size = "lots"
max_release_files = 0

[[env]]
repo = "a/one"
path = "/srv/app/"
branch = "refs/heads/main"

[[env]]
repo = "a/two"
path = "/srv/x/../app"

[[env]]
repo = "a/three"
path = "/"

[[env]]
repo = "a/four"
path = "data/repos/a/four.git"
`,
			want: []string{
				`slipway.toml:1: listen: "127.0.0.1:99999" has no valid port (0 to 65535)`,
				`slipway.toml:4: max_push_size: "lots" is not a size`,
				`slipway.toml:5: max_release_files must be more than 0`,
				`slipway.toml:10: env[0].branch: give the branch's name ("main"), not its ref`,
				`slipway.toml:14: env[1].path: /srv/app overlaps the path of env[0]`,
				`slipway.toml:18: env[2].path: the deploy root cannot be /`,
				`slipway.toml:22: env[3].path: …/data/repos/a/four.git overlaps data_dir …/data (slipway's repositories and state)`,
			},
		},
		{
			name: "sandbox and its limits",
			toml: `data_dir = "/var/lib/slipway-test"
authorized_keys = "authorized_keys"
sandbox = "on"

[[env]]
repo = "a/one"
path = "/srv/one"
writable = ["", "/", "/srv/one/releases", "/srv", "/var/lib/slipway-test/repos", "/var/cache/two"]
memory_max = "1MiB"
pids_max = 2
cpu_weight = 0

[[env]]
repo = "a/two"
path = "/srv/two"
writable = ["/var/cache/two", "/var/cache/two/"]
memory_max = "lots"
cpu_weight = 10001
`,
			want: []string{
				`slipway.toml:3: sandbox: "on" is not "auto", "required" or "off"`,
				`slipway.toml:8: env[0].writable: an empty path`,
				`slipway.toml:8: env[0].writable: / cannot be writable`,
				`slipway.toml:8: env[0].writable: /srv/one/releases overlaps the deploy root /srv/one (of a/one)`,
				`slipway.toml:8: env[0].writable: /srv overlaps the deploy root /srv/one (of a/one)`,
				`slipway.toml:8: env[0].writable: /var/lib/slipway-test/repos overlaps data_dir /var/lib/slipway-test (slipway's repositories and state)`,
				`slipway.toml:9: env[0].memory_max must be at least 16MiB`,
				`slipway.toml:10: env[0].pids_max must be at least 16`,
				`slipway.toml:11: env[0].cpu_weight must be from 1 to 10000`,
				`slipway.toml:17: env[1].memory_max: "lots" is not a size`,
				`slipway.toml:18: env[1].cpu_weight must be from 1 to 10000`,
			},
		},
		{
			name: "activation",
			toml: `data_dir = "data"
authorized_keys = "authorized_keys"

[[env]]
repo = "a/one"
path = "/srv/one"
on_failure = "retry"
[env.health_check]
url = "ftp://x/up"
expect_status = 99
interval = "0s"
wait = "1s"

[[env]]
repo = "a/two"
path = "/srv/two"
[env.health_check]
command = "true"
expect_body = "ok"

[[env]]
repo = "a/three"
path = "/srv/three"
[env.health_check]
timeout = "5s"

[[env]]
repo = "a/four"
path = "/srv/four"
mask_files = ["../.env"]
[env.vars]
TOKEN = "x"
[env.secrets]
TOKEN = "long-enough"
PIN = "123"
`,
			want: []string{
				`slipway.toml:7: env[0].on_failure: "retry" is neither "revert" nor "keep"`,
				`slipway.toml:9: env[0].health_check.url: "ftp://x/up" is not an http:// or https:// URL`,
				`slipway.toml:10: env[0].health_check.expect_status must be an HTTP status (100 to 599)`,
				`slipway.toml:11: env[0].health_check.interval must be more than 0`,
				`slipway.toml:12: unknown key "env[0].health_check.wait"`,
				`slipway.toml:17: env[1].health_check: expect_status and expect_body go with url, not command`,
				`slipway.toml:24: env[2].health_check: set exactly one of url and command`,
				`slipway.toml:30: env[3].mask_files: "../.env" must be a path inside the release`,
				`slipway.toml:33: env[3].secrets.TOKEN is in [env.vars] too`,
				`slipway.toml:35: env[3].secrets.PIN: a secret must be at least 4 characters long, to be masked`,
			},
		},
		{
			name: "notify",
			toml: `data_dir = "data"
authorized_keys = "authorized_keys"

[[env]]
repo = "a/one"
path = "/srv/one"

[[notify]]
url = "hooks.example.com"
events = ["live", "deployed"]
repos = ["a/two"]
secret_file = "missing.secret"
format = "xml"

[[notify]]
url = "https://hooks.example.com/x"
`,
			want: []string{
				`slipway.toml:9: notify[0]: url must be an http:// or https:// URL`,
				`slipway.toml:10: notify[0].events: "deployed" is not an event`,
				`slipway.toml:11: notify[0].repos: no [[env]] has repo "a/two"`,
				`slipway.toml:12: notify[0].secret_file: open `,
				`slipway.toml:13: notify[0].format: "xml" is neither "json" nor "slack"`,
			},
		},
		{
			name: "targets",
			toml: `data_dir = "data"
authorized_keys = "authorized_keys"
[[env]]
repo = "a/one"
path = "one"
targets = ["deploy@web1", "local", "deploy@web2:2200", "web3", "deploy@web1:22"]
target_identity = "authorized_keys"
target_known_hosts = "nope"
target_parallel = 0
after_activate = ["systemctl restart app"]
[[env]]
repo = "a/two"
path = "two"
targets = ["deploy@web1"]
[[env]]
repo = "a/three"
path = "three"
target_identity = "id"
before_activate_each = ["php artisan config:cache"]
`,
			want: []string{
				`slipway.toml:6: env[0].targets: "web3": want user@host or user@host:port`,
				`slipway.toml:6: env[0].targets: deploy@web1 is listed twice`,
				`slipway.toml:6: env[0].targets: target_identity …: ssh: no key found`,
				`slipway.toml:9: env[0].target_parallel must be 1 to 100`,
				`slipway.toml:14: env[1].targets: target_identity is required with targets`,
				`slipway.toml:18: env[2].target_identity is set, but targets names no host`,
				`slipway.toml:19: env[2].before_activate_each is set, but targets names no host`,
			},
		},
		{
			name: "web and metrics",
			toml: `data_dir = "data"
authorized_keys = "authorized_keys"
web_listen = "localhost"
web_url = "ftp://deploy.example.com"
web_session_ttl = "10s"
metrics_listen = "127.0.0.1:99999"
`,
			want: []string{
				`slipway.toml: no [[env]] configured`,
				`slipway.toml:3: web_listen: "localhost" is not host:port`,
				`slipway.toml:4: web_url: "ftp://deploy.example.com" is not an http:// or https:// URL`,
				`slipway.toml:5: web_session_ttl must be 1m to 720h`,
				`slipway.toml:6: metrics_listen: "127.0.0.1:99999" has no valid port (0 to 65535)`,
			},
		},
		{
			name: "web keys without web_listen",
			toml: `data_dir = "data"
authorized_keys = "authorized_keys"
web_session_ttl = "1h"
web_secure_cookies = true
`,
			want: []string{
				`slipway.toml: no [[env]] configured`,
				`slipway.toml:3: web_session_ttl is set, but web_listen is not: the dashboard is off`,
				`slipway.toml:4: web_secure_cookies is set, but web_listen is not: the dashboard is off`,
			},
		},
		{
			name: "syntax error",
			toml: "data_dir = \"data\"\nlisten = = 1\n",
			want: []string{`slipway.toml:2:`},
		},
		{
			name: "missing keys file",
			toml: "data_dir = \"data\"\nauthorized_keys = \"nope\"\n[[env]]\nrepo = \"a/b\"\npath = \"deploy\"\n",
			want: []string{`slipway.toml:2: authorized_keys:`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(dir, "slipway.toml")
			if err := os.WriteFile(file, []byte(tt.toml), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Chdir(dir)
			_, err := Load("slipway.toml")
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Load succeeded")
			}
			got := strings.Split(err.Error(), "\n")
			if len(got) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n%s", len(got), len(tt.want), err)
			}
			for i := range got {
				// A want holding "…" must match whole, "…" standing for a temp path.
				if strings.Contains(tt.want[i], "…") {
					re := "^" + strings.ReplaceAll(regexp.QuoteMeta(tt.want[i]), "…", ".*") + "$"
					if !regexp.MustCompile(re).MatchString(got[i]) {
						t.Errorf("problem %d = %q, want %q", i, got[i], tt.want[i])
					}
					continue
				}
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("problem %d = %q, want prefix %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestRecipeServerWins(t *testing.T) {
	own, err := ParseRecipe("build = [\"make\"]\ntest = [\"make test\"]\nshared_dirs = [\"storage\"]\n")
	if err != nil {
		t.Fatal(err)
	}
	server := Recipe{Test: []string{}, set: map[string]bool{"test": true}}
	got := own.Over(server)
	if strings.Join(got.Build, ",") != "make" || len(got.Test) != 0 || strings.Join(got.SharedDirs, ",") != "storage" {
		t.Fatalf("merged recipe %+v", got)
	}
	if _, err := ParseRecipe("build = [\"make\"]\nlisten = \"x\"\n"); err == nil || !strings.Contains(err.Error(), `slipway.toml:2: unknown key "listen"`) {
		t.Fatalf("pushed slipway.toml with a server key: %v", err)
	}
	if _, err := ParseRecipe("shared_files = [\"../etc/passwd\"]\n"); err == nil {
		t.Fatal("a shared path escaping the release was accepted")
	}
}

func TestLimits(t *testing.T) {
	dir := t.TempDir()
	writeKeys(t, dir, "alice")
	file := filepath.Join(dir, "slipway.toml")
	text := "data_dir = \"data\"\nauthorized_keys = \"authorized_keys\"\nmax_push_size = \"500MB\"\n" +
		"max_release_size = 1048576\nhandshake_timeout = \"5s\"\n[[env]]\nrepo = \"a/b\"\npath = \"deploy\"\n"
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultLimits
	want.MaxPushSize, want.MaxReleaseSize, want.HandshakeTimeout = 500e6, 1<<20, 5*time.Second
	if cfg.Limits != want {
		t.Errorf("limits = %+v, want %+v", cfg.Limits, want)
	}
	if d, err := Default(); err != nil || d.Limits != DefaultLimits {
		t.Errorf("the embedded default's limits = %+v, %v", d.Limits, err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"2GiB": 2 << 30, "10GiB": 10 << 30, "500MB": 500e6, "1.5 GB": 1.5e9, "0B": 0, "64KiB": 64 << 10, "7B": 7,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "2", "2 GB GB", "-1MB", "1e300TB", "NaNGB", "2gib"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
}
