//go:build !amd64 || purego

package tensor

var useAVX2Rows = false

// Never called: useAVX2Rows is false. They exist so the dispatching code
// compiles everywhere.

func expScaledRowAVX2(row []float32, scl, sub float32) float32 { panic("tensor: no AVX2 row kernels") }

func rowMaxAVX2(row []float32) float32 { panic("tensor: no AVX2 row kernels") }

func geluForwardAVX2(out, in []float32) { panic("tensor: no AVX2 row kernels") }

func geluBackwardAVX2(din, dout, in []float32) { panic("tensor: no AVX2 row kernels") }
