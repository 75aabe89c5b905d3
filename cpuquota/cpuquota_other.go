//go:build !linux

package cpuquota

import (
	"fmt"
	"runtime"
)

// Quota would limit a group of processes to a number of CPUs; only Linux
// (cgroup CFS bandwidth control) can, so here every constructor fails.
type Quota struct{}

// UnavailableError marks errors that mean this host cannot give a
// process a CPU quota at all; tests skip on it.
type UnavailableError struct{ err error }

func (e *UnavailableError) Error() string { return e.err.Error() }
func (e *UnavailableError) Unwrap() error { return e.err }

// Stat is the group's CFS bandwidth accounting so far.
type Stat struct {
	Periods   int64
	Throttled int64
}

// New fails: --rank-cpu needs Linux cgroups.
func New(name string, cores float64) (*Quota, error) {
	return nil, &UnavailableError{fmt.Errorf("cpu quota %q: --rank-cpu needs Linux cgroups (CFS bandwidth control), not available on %s", name, runtime.GOOS)}
}

// Add fails: it needs Linux cgroups.
func (q *Quota) Add(pid int) error {
	return fmt.Errorf("adding pid %d to a cpu quota: needs Linux cgroups", pid)
}

// Dir is empty: there is no group.
func (q *Quota) Dir() string { return "" }

// Cores is 0: nothing is limited.
func (q *Quota) Cores() float64 { return 0 }

// Stat fails: it needs Linux cgroups.
func (q *Quota) Stat() (Stat, error) {
	return Stat{}, fmt.Errorf("cpu quota: needs Linux cgroups")
}

// Close does nothing.
func (q *Quota) Close() error { return nil }
