package backend

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that the package's tests leave no goroutine behind. (The
// fake worker of workers_fake_test.go is dispatched earlier, from init.)
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
