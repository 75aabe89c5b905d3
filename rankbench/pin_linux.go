//go:build linux

package rankbench

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// AllowedCPUs lists the CPUs this process may run on, in order.
func AllowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("reading the CPU affinity: %w", err)
	}
	var cpus []int
	for c := 0; c < len(set)*64; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// BindProcess pins every thread of this process to cpu. Threads started
// later inherit the affinity of the thread that starts them, which is
// pinned by then, so the whole process stays on cpu.
func BindProcess(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("bind to CPU %d: %w", cpu, err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
			return fmt.Errorf("bind thread %d to CPU %d: %w", tid, cpu, err)
		}
	}
	return nil
}
