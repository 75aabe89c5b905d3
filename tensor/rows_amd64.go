//go:build amd64 && !purego

package tensor

import "golang.org/x/sys/cpu"

// AVX2+FMA row kernels (rows_amd64.s). Each processes a multiple of 8
// elements; the Go wrappers run tails through the same code on a padded
// copy, so an element's result never depends on its position (which keeps
// results independent of how ParallelFor splits a slice).

//go:noescape
func expScaledRowAVX2(row []float32, scl, sub float32) float32

//go:noescape
func rowMaxAVX2(row []float32) float32

//go:noescape
func geluForwardAVX2(out, in []float32)

//go:noescape
func geluBackwardAVX2(din, dout, in []float32)

// useAVX2Rows selects the vector row kernels; tests switch it off to cover
// the portable path.
var useAVX2Rows = cpu.X86.HasAVX2 && cpu.X86.HasFMA
