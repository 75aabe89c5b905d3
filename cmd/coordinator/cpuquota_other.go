//go:build !linux

package main

import (
	"fmt"
	"runtime"
)

// cpuQuota would limit a group of processes to a number of CPUs; only Linux
// (cgroup CFS bandwidth control) can, so here every constructor fails.
type cpuQuota struct{}

// cgroupUnavailableError marks errors that mean this host cannot give a
// process a CPU quota at all; tests skip on it.
type cgroupUnavailableError struct{ err error }

func (e *cgroupUnavailableError) Error() string { return e.err.Error() }
func (e *cgroupUnavailableError) Unwrap() error { return e.err }

// cpuQuotaStat is the group's CFS bandwidth accounting so far.
type cpuQuotaStat struct {
	Periods   int64
	Throttled int64
}

// newCPUQuota fails: --rank-cpu needs Linux cgroups.
func newCPUQuota(name string, cores float64) (*cpuQuota, error) {
	return nil, &cgroupUnavailableError{fmt.Errorf("cpu quota %q: --rank-cpu needs Linux cgroups (CFS bandwidth control), not available on %s", name, runtime.GOOS)}
}

func (q *cpuQuota) Add(pid int) error {
	return fmt.Errorf("adding pid %d to a cpu quota: needs Linux cgroups", pid)
}

func (q *cpuQuota) Dir() string    { return "" }
func (q *cpuQuota) Cores() float64 { return 0 }
func (q *cpuQuota) Stat() (cpuQuotaStat, error) {
	return cpuQuotaStat{}, fmt.Errorf("cpu quota: needs Linux cgroups")
}
func (q *cpuQuota) Close() error { return nil }
