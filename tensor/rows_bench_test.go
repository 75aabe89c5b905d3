package tensor

import (
	"fmt"
	"testing"
)

// Benchmarks of the row kernels at the model's sizes (2048 tokens, d_model
// 256, vocab 256, expert hidden activations 2048×1024), one and two threads.
// The anchor is AddInPlace over the same element count (memory bound).
func BenchmarkRowKernels(b *testing.B) {
	const n, c, v, hid = 2048, 256, 256, 2048 * 1024
	r := newRNG(90)
	x, w, g := randVec(r, n*c, 2), randVec(r, c, 1), randVec(r, n*c, 1)
	out, din, dw, rstd := make([]float32, n*c), make([]float32, n*c), make([]float32, c), make([]float32, n)
	logits, dl, losses := randVec(r, n*v, 4), make([]float32, n*v), make([]float32, n)
	targets := make([]int32, n)
	for i := range targets {
		targets[i] = int32(r.IntN(v))
	}
	hx, hy, hd := randVec(r, hid, 3), make([]float32, hid), make([]float32, hid)
	cases := []struct {
		name string
		fn   func()
	}{
		{"AddInPlace_2048x256", func() { AddInPlace(out, x) }},
		{"RMSNormForward_2048x256", func() { RMSNormForward(out, rstd, x, w, n, c, 1e-5) }},
		{"RMSNormBackward_2048x256", func() { RMSNormBackward(din, dw, g, x, w, rstd, n, c) }},
		{"CrossEntropy_2048x256", func() { CrossEntropy(losses, dl, logits, targets, n, v, 1.0/n) }},
		{"SoftmaxForward_2048x256", func() { SoftmaxForward(dl, logits, n, v) }},
		{"AddInPlace_2M", func() { AddInPlace(hy, hx) }},
		{"GELUForward_2M", func() { GELUForward(hy, hx) }},
		{"GELUBackward_2M", func() { GELUBackward(hd, hy, hx) }},
	}
	for _, cs := range cases {
		for _, th := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/t%d", cs.name, th), func(b *testing.B) {
				withThreads(b, []int{th}, func(int) {
					for b.Loop() {
						cs.fn()
					}
				})
			})
		}
	}
}
