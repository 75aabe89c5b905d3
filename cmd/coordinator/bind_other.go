//go:build !linux

package main

import (
	"errors"
	"runtime"
)

// allowedCPUs is every CPU: affinity is not read off Linux.
func allowedCPUs() ([]int, error) {
	cpus := make([]int, runtime.NumCPU())
	for i := range cpus {
		cpus[i] = i
	}
	return cpus, nil
}

// bindProcess is implemented on Linux only.
func bindProcess(cpu int) error { return errors.New("binding ranks to CPUs needs Linux") }
