package builder

import (
	"io"
	"os/exec"
	"testing"

	"github.com/rs/zerolog"
)

// BenchmarkRun measures what the box costs a command: `sh -c true` started with os/exec (the
// baseline: a hook script's cost) against Run in each mode, confined or not. Run:
//
//	go test ./builder -run '^$' -bench Run -benchmem
func BenchmarkRun(b *testing.B) {
	dir := b.TempDir()
	b.Run("baseline/os-exec", func(b *testing.B) {
		for b.Loop() {
			cmd := exec.Command(shell, "-c", "true")
			cmd.Dir, cmd.Env = dir, testEnv
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	cases := []struct {
		name         string
		confined     bool
		noNamespaces bool
	}{
		{"unconfined (after_activate)", false, false},
		{"confined/subreaper", true, true},
	}
	if New(Config{}, zerolog.Nop()).Sandbox().Namespaces {
		cases = append(cases, struct {
			name         string
			confined     bool
			noNamespaces bool
		}{"confined/namespace (builds)", true, false})
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			bb := New(Config{}, zerolog.Nop())
			bb.noNamespaces = tc.noNamespaces
			c := Command{Name: "bench", Run: "true", Dir: dir, Env: testEnv, Confined: tc.confined, Writable: []string{dir}}
			for b.Loop() {
				if err := bb.Run(b.Context(), c, io.Discard); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
