package builder

import (
	"fmt"
	"os"
	"testing"
)

// The test binary is also the commands' helper: Run re-executes it as "slipway-box". Run with
// SLIPWAY_TEST_FIND_CGROUP=1, it prints what findCgroup finds and exits (TestFindCgroup).
func TestMain(m *testing.M) {
	BoxMain()
	if os.Getenv("SLIPWAY_TEST_FIND_CGROUP") == "1" {
		tree, why := findCgroup()
		if tree != nil {
			fmt.Println(tree)
		} else {
			fmt.Println("none:", why)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
