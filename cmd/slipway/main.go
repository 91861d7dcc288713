// Command slipway is a git push-to-deploy server: an embedded SSH git server that turns
// `git push production main` into an atomic release. main only wires signals and the exit
// code; everything else is run, so that tests drive the real commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/slipway/slipway/builder"
)

func main() {
	builder.BoxMain() // slipway re-executed as a command's helper: it runs that, and exits
	os.Exit(runMain())
}

func runMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return exitCode(run(ctx, os.Args[1:], os.Stdout, os.Stderr), os.Stderr)
}
