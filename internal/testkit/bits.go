package testkit

import "math"

// FirstBitDiff is the first index where a and b differ bitwise (0 when
// their lengths differ), or -1 when they are bit for bit equal.
func FirstBitDiff(a, b []float32) int {
	if len(a) != len(b) {
		return 0
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}
