//go:build !unix

package worker

// peakRSSBytes is the process's peak resident set size (0 if unknown).
func peakRSSBytes() int64 { return 0 }
