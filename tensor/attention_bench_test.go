package tensor

import (
	"fmt"
	"testing"
	"time"
)

// Attention benchmarks at the model's size (batch 8 × 256 tokens, 4 heads of
// 64, causal, packed QKV) and one long-context sequence (4096 tokens).
// GFLOP/s counts the useful (unmasked, causal-halved) matmul work: forward
// 2 products, backward 5, of 2·Tq·Tk·D/2 flops each per (batch, head), not
// counting what segments save (so the seg4 case reads as causal-equivalent
// throughput); the
// Gemm anchor is BenchmarkGemm's NT_m256_n256_k64 shape. One-thread runs also
// report cpuGFLOP/s, rated by the thread's CPU time (robust to other
// processes on a shared machine).
var attnBenchSpecs = []attnSpec{
	{B: 8, Tq: 256, Tk: 256, H: 4, D: 64, packed: true, causal: true},
	{B: 8, Tq: 256, Tk: 256, H: 4, D: 64, packed: true, causal: true, seg: 4}, // packed documents
	{B: 1, Tq: 4096, Tk: 4096, H: 4, D: 64, packed: true, causal: true},
}

func attnFlops(s AttnShape, products int) float64 {
	f := 2 * float64(s.Tq) * float64(s.Tk) * float64(s.HeadDim) * float64(s.Batch*s.Heads) * float64(products)
	if s.Causal {
		f /= 2
	}
	return f
}

func BenchmarkAttention(b *testing.B) {
	for _, p := range attnBenchSpecs {
		c := newAttnCase(newRNG(80), p)
		s := c.s
		nl := s.Batch * s.Heads * s.Tq
		o, lse, d := outBuf(s, 0), make([]float32, nl), make([]float32, nl)
		dq := make([]float32, len(c.q))
		C := s.Heads * s.HeadDim
		dk, dv := dq[C:], dq[2*C:]
		for _, th := range []int{1, 2} {
			name := fmt.Sprintf("B%d_T%d_H%d_D%d_seg%d/t%d", p.B, p.Tq, p.H, p.D, p.seg, th)
			for _, pass := range []struct {
				name     string
				products int // matmuls, for attnFlops
				run      func()
			}{
				{"fwd", 2, func() { AttentionForward(o, lse, c.q, c.k, c.v, s) }},
				{"fwdbwd", 7, func() {
					AttentionForward(o, lse, c.q, c.k, c.v, s)
					AttentionRowDot(d, c.do, o, s)
					AttentionBackward(dq, dk, dv, c.do, c.q, c.k, c.v, lse, d, s)
				}},
			} {
				b.Run(pass.name+"/"+name, func(b *testing.B) {
					withThreads(b, []int{th}, func(int) {
						defer lockThread()()
						cpu0, cpuOK := threadCPUTime()
						for b.Loop() {
							pass.run()
						}
						reportAttn(b, attnFlops(s, pass.products), th, cpu0, cpuOK)
					})
				})
			}
		}
	}
}

func reportAttn(b *testing.B, flops float64, threads int, cpu0 time.Duration, cpuOK bool) {
	total := flops * float64(b.N)
	b.ReportMetric(total/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	if cpu1, ok := threadCPUTime(); ok && cpuOK && threads == 1 && cpu1 > cpu0 {
		b.ReportMetric(total/(cpu1-cpu0).Seconds()/1e9, "cpuGFLOP/s")
	}
}
