//go:build !unix

package cluster

import (
	"errors"
	"time"
)

// processCPU needs getrusage, which this platform lacks.
func processCPU() (time.Duration, error) {
	return 0, errors.New("process CPU time is not available on this platform")
}

// peakRSSBytes is the process's peak resident set size (0 if unknown).
func peakRSSBytes() int64 { return 0 }
