//go:build soak

package main

import (
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestSoak runs the long scripts of testdata/soak (make soak): too slow or too big for
// make test, and run through the same binary, git and ssh. They log the figures they
// measure (go test -v shows them).
func TestSoak(t *testing.T) {
	testscript.Run(t, scriptParams(t, "testdata/soak"))
}
