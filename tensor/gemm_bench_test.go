package tensor

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// gemmBenchShape is one benchmarked Gemm: the sizes of op(A) (m×k) and
// op(B) (k×n) and which operands are stored transposed.
type gemmBenchShape struct {
	m, n, k        int
	transA, transB bool
}

func (s gemmBenchShape) name() string {
	t := [2]byte{'N', 'N'}
	if s.transA {
		t[0] = 'T'
	}
	if s.transB {
		t[1] = 'T'
	}
	return fmt.Sprintf("%s_m%d_n%d_k%d", t[:], s.m, s.n, s.k)
}

// gemmBenchShapes are the square anchors plus the model's GEMMs (2048
// tokens, d_model 256, experts of ~512 tokens, 256-token attention blocks
// with head size 64), in the forms forward and backward use. The same list
// is in scripts/bench/sgemm_numpy.py.
var gemmBenchShapes = []gemmBenchShape{
	{1024, 1024, 1024, false, false},
	{2048, 2048, 2048, false, false},
	{2048, 768, 256, false, false}, // x·W (QKV)
	{2048, 768, 256, false, true},  // x·Wᵀ
	{2048, 256, 256, false, false},
	{2048, 256, 256, false, true},
	{2048, 256, 768, false, true}, // dY·Wᵀ back through QKV
	{256, 768, 2048, true, false}, // dW = xᵀ·dY
	{256, 256, 2048, true, false},
	{512, 512, 256, false, false}, // expert up
	{512, 256, 512, false, false}, // expert down
	{512, 256, 512, false, true},  // expert up, dX
	{512, 512, 256, false, true},  // expert down, dX
	{256, 512, 512, true, false},  // expert up, dW
	{512, 256, 512, true, false},  // expert down, dW
	{256, 256, 64, false, true},   // attention Q·Kᵀ
	{256, 64, 256, false, false},  // attention P·V
}

func BenchmarkGemm(b *testing.B) {
	for _, s := range gemmBenchShapes {
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/t%d", s.name(), threads), func(b *testing.B) {
				benchGemm(b, activeKernel(), threads, s)
			})
		}
	}
}

// BenchmarkGemmKernels compares every kernel this CPU runs on one thread.
func BenchmarkGemmKernels(b *testing.B) {
	for _, s := range []gemmBenchShape{{1024, 1024, 1024, false, false}, {2048, 768, 256, false, true}} {
		for _, kern := range gemmKernels {
			b.Run(fmt.Sprintf("%s/%s", s.name(), kern.name), func(b *testing.B) {
				benchGemm(b, kern, 1, s)
			})
		}
	}
}

func benchGemm(b *testing.B, kern *gemmKernel, threads int, s gemmBenchShape) {
	rng := rand.New(rand.NewPCG(1, 1))
	fill := func(n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = rng.Float32()*2 - 1
		}
		return x
	}
	a, bm, c := fill(s.m*s.k), fill(s.k*s.n), fill(s.m*s.n)
	lda, ldb := s.k, s.n
	if s.transA {
		lda = s.m
	}
	if s.transB {
		ldb = s.k
	}
	defer lockThread()()
	cpu0, cpuOK := threadCPUTime()
	b.ResetTimer()
	for b.Loop() {
		gemmWith(kern, threads, s.transA, s.transB, s.m, s.n, s.k, a, lda, bm, ldb, 0, c, s.n)
	}
	flops := 2 * float64(s.m) * float64(s.n) * float64(s.k) * float64(b.N)
	b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	// On one thread, also rate by the thread's CPU time: on a shared
	// machine that excludes time slices taken by other processes.
	if cpu1, ok := threadCPUTime(); ok && cpuOK && threads == 1 && cpu1 > cpu0 {
		b.ReportMetric(flops/(cpu1-cpu0).Seconds()/1e9, "cpuGFLOP/s")
	}
}
