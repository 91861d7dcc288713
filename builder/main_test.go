package builder

import (
	"os"
	"testing"
)

// The test binary is also the commands' helper: Run re-executes it as "slipway-box".
func TestMain(m *testing.M) {
	BoxMain()
	os.Exit(m.Run())
}
