package ops

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/tensor"
)

// BenchmarkAttentionBF16 times the bf16 attention at the gpu-small model's
// shape (batch 8, sequence 2048, 16 heads of 64, causal, q, k, v packed in
// one [N, 3C] bf16 buffer with stride 3C and the gradients overwritten in
// one bf16 [N, 3C] buffer, as package gpu's mixed precision lays them out) and at head size 128
// (batch 4). Each phase runs b.N times back to back between two CUDA events
// after a warm-up. Metrics per call: fwd-ms (AttentionForwardBF16), bwd-ms
// (AttentionRowDotBF16 + AttentionBackwardBF16Out), rowdot-ms (its share), and
// TFLOP/s counting the forward as 2·B·H·T²·D (the causal half of QKᵀ and
// PV) and the backward as 2.5 times that.
//
//	go test ./gpu/ops -run '^$' -bench AttentionBF16 -benchtime 20x
func BenchmarkAttentionBF16(b *testing.B) {
	for _, c := range []struct{ B, T, H, D int }{{8, 2048, 16, 64}, {4, 2048, 16, 128}} {
		b.Run(fmt.Sprintf("B%d_T%d_H%d_D%d_causal", c.B, c.T, c.H, c.D), func(b *testing.B) {
			o := testOps(b)
			C, N := c.H*c.D, c.B*c.T
			rng := rand.New(rand.NewPCG(1, 2))
			qkv := upload(b, o, bf16Encode(randn(rng, N*3*C, 1)))
			q, k, v := qkv, qkv.Add(2*C), qkv.Add(4*C)
			dout := upload(b, o, bf16Encode(randn(rng, N*C, 1)))
			out := devAlloc(b, o, 2*N*C)
			lse := devAlloc(b, o, 4*c.B*c.H*c.T)
			d := devAlloc(b, o, 4*c.B*c.H*c.T)
			// bf16 gradients, overwritten: what mixed-precision training runs.
			dqkv := devAlloc(b, o, 2*N*3*C)
			dq, dk, dv := dqkv, dqkv.Add(2*C), dqkv.Add(4*C)
			s := tensor.AttnShape{Batch: c.B, Tq: c.T, Tk: c.T, Heads: c.H, HeadDim: c.D,
				QStride: 3 * C, KStride: 3 * C, VStride: 3 * C, OStride: C, Causal: true}

			fwd := func() {
				if err := o.AttentionForwardBF16(out, lse, q, k, v, s, 0, 0); err != nil {
					b.Fatal(err)
				}
			}
			rowdot := func() {
				if err := o.AttentionRowDotBF16(d, dout, out, s); err != nil {
					b.Fatal(err)
				}
			}
			bwd := func() {
				rowdot()
				if err := o.AttentionBackwardBF16Out(dq, dk, dv, dout, q, k, v, lse, d, s, 0, 0); err != nil {
					b.Fatal(err)
				}
			}
			start, end := attnEvent(b, o), attnEvent(b, o)
			timed := func(f func()) float64 { // milliseconds per call over b.N calls
				if err := o.C.Record(start, o.S); err != nil {
					b.Fatal(err)
				}
				for i := 0; i < b.N; i++ {
					f()
				}
				if err := o.C.Record(end, o.S); err != nil {
					b.Fatal(err)
				}
				ms, err := o.C.Elapsed(start, end)
				if err != nil {
					b.Fatal(err)
				}
				return float64(ms) / float64(b.N)
			}

			for i := 0; i < 3; i++ { // warm-up: module loads, shared-memory opt-in, clocks
				fwd()
				bwd()
			}
			syncOps(b, o)
			b.ResetTimer()
			fwdMS := timed(fwd)
			bwdMS := timed(bwd)
			rowdotMS := timed(rowdot)
			b.StopTimer()

			flop := 2 * float64(c.B) * float64(c.H) * float64(c.T) * float64(c.T) * float64(c.D)
			tflops := func(f, ms float64) float64 { return f / (ms * 1e-3) / 1e12 }
			b.ReportMetric(fwdMS, "fwd-ms")
			b.ReportMetric(bwdMS, "bwd-ms")
			b.ReportMetric(rowdotMS, "rowdot-ms")
			b.ReportMetric(tflops(flop, fwdMS), "fwd-TFLOP/s")
			b.ReportMetric(tflops(2.5*flop, bwdMS), "bwd-TFLOP/s")
			b.ReportMetric(tflops(3.5*flop, fwdMS+bwdMS), "TFLOP/s")
		})
	}
}

// attnEvent creates a CUDA timing event destroyed at the end of b.
func attnEvent(b *testing.B, o *Ops) cuda.Event {
	b.Helper()
	e, err := o.C.NewEvent()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { o.C.DestroyEvent(e) })
	return e
}
