package config

import "testing"

func TestWorkersFor(t *testing.T) {
	for _, tc := range []struct {
		ncpu  int
		quota float64
		want  int
	}{
		{16, 0, 16},   // no quota: every CPU
		{16, 2, 2},    // a container limited to 2 CPUs on a 16-core host
		{16, 2.9, 2},  // rounded down
		{16, 0.25, 1}, // at least one
		{4, 12, 4},    // at most the CPUs
	} {
		if got := workersFor(tc.ncpu, tc.quota); got != tc.want {
			t.Errorf("workersFor(%d, %v) = %d, want %d", tc.ncpu, tc.quota, got, tc.want)
		}
	}
}
