package hooks

import (
	"os"
	"testing"

	"github.com/slipway/slipway/builder"
)

// The test binary is also the commands' helper: the builder re-executes it as "slipway-box".
func TestMain(m *testing.M) {
	builder.BoxMain()
	os.Exit(m.Run())
}
