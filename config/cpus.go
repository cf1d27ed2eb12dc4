package config

import (
	"math"
	"os"
	"runtime"
	"sync"

	"go.uber.org/automaxprocs/maxprocs"
)

// autoWorkers is what workers.count = "auto" means: one worker per CPU
// this process may use. That is the CPUs of its affinity mask
// (runtime.NumCPU), and under a cgroup CPU quota (a container's CPU
// limit, cgroup v1 or v2) the quota rounded down, at least 1. NumCPU
// alone counts the host's CPUs: in a container limited to 2 CPUs on a
// 32-core host it says 32, and as many workers would share 2 CPUs'
// worth of time. Computed once, the first time "auto" is resolved (at
// start, as the config is loaded), and only then: reading the quota marks
// GOMAXPROCS as set by the program (see cpuQuota), which a process that
// never resolves "auto" (the hello worker) need not have.
var autoWorkers = sync.OnceValue(func() int { return workersFor(runtime.NumCPU(), cpuQuota()) })

// workersFor is the worker count for ncpu CPUs and a quota of quota CPUs
// (0: none).
func workersFor(ncpu int, quota float64) int {
	if quota <= 0 {
		return ncpu
	}
	return max(1, min(ncpu, int(math.Floor(quota))))
}

// cpuQuota is the cgroup CPU quota of this process in CPUs, 0 when it has
// none. go.uber.org/automaxprocs reads it (the cgroup mounts and files of
// both versions); its Set is asked for the quota only: the rounding
// callback gives back the current GOMAXPROCS, so nothing changes, though
// the runtime then counts GOMAXPROCS as the program's choice and stops
// following limit changes by itself (the daemon sets it anyway). Set
// honours a GOMAXPROCS variable by reading nothing, so the variable is
// hidden while it reads: the worker count follows the CPU limit, not
// stickyd's own setting. Called as the config is loaded, before any
// worker is started with a copy of the environment.
func cpuQuota() float64 {
	if v, set := os.LookupEnv("GOMAXPROCS"); set {
		os.Unsetenv("GOMAXPROCS")
		defer os.Setenv("GOMAXPROCS", v)
	}
	quota := 0.0
	undo, err := maxprocs.Set(maxprocs.Logger(func(string, ...any) {}),
		maxprocs.RoundQuotaFunc(func(q float64) int { quota = q; return runtime.GOMAXPROCS(0) }))
	undo()
	if err != nil {
		return 0
	}
	return quota
}
