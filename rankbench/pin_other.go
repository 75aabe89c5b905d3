//go:build !linux

package rankbench

import (
	"errors"
	"runtime"
)

// AllowedCPUs is every CPU: affinity is not read off Linux.
func AllowedCPUs() ([]int, error) {
	cpus := make([]int, runtime.NumCPU())
	for i := range cpus {
		cpus[i] = i
	}
	return cpus, nil
}

// BindProcess is implemented on Linux only.
func BindProcess(cpu int) error { return errors.New("binding ranks to CPUs needs Linux") }
