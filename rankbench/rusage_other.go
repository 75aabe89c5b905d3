//go:build !unix

package rankbench

import (
	"errors"
	"time"
)

// processCPU needs getrusage, which this platform lacks.
func processCPU() (time.Duration, error) {
	return 0, errors.New("process CPU time is not available on this platform")
}
