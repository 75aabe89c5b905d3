package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
)

// gemmCase is one Gemm call's shape, layout and beta. Padding adds to the
// minimal leading dimensions so strided access is exercised.
type gemmCase struct {
	transA, transB bool
	m, n, k        int
	padA, padB     int
	padC           int
	beta           float32
}

func (g gemmCase) String() string {
	return fmt.Sprintf("tA=%v,tB=%v,m=%d,n=%d,k=%d,pad=%d/%d/%d,beta=%g", g.transA, g.transB, g.m, g.n, g.k, g.padA, g.padB, g.padC, g.beta)
}

// operands builds random A, B, C for the case with their leading dimensions.
func (g gemmCase) operands(rng *rand.Rand) (a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	ar, ac := g.m, g.k
	if g.transA {
		ar, ac = g.k, g.m
	}
	br, bc := g.k, g.n
	if g.transB {
		br, bc = g.n, g.k
	}
	lda, ldb, ldc = ac+g.padA, bc+g.padB, g.n+g.padC
	fill := func(rows, ld int) []float32 {
		s := make([]float32, rows*ld)
		for i := range s {
			s[i] = rng.Float32()*2 - 1
		}
		return s
	}
	return fill(ar, lda), lda, fill(br, ldb), ldb, fill(g.m, ldc), ldc
}

// absBound returns, per element of C, Σ_p |op(A)[i][p]|·|op(B)[p][j]| +
// |beta·C[i][j]|: the scale of float32 re-association error.
func (g gemmCase) absBound(a []float32, lda int, b []float32, ldb int, c []float32, ldc int) []float64 {
	out := make([]float64, g.m*g.n)
	for i := 0; i < g.m; i++ {
		for j := 0; j < g.n; j++ {
			var s float64
			for p := 0; p < g.k; p++ {
				var av, bv float32
				if g.transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if g.transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += math.Abs(float64(av) * float64(bv))
			}
			if g.beta != 0 {
				s += math.Abs(float64(g.beta) * float64(c[i*ldc+j]))
			}
			out[i*g.n+j] = s
		}
	}
	return out
}

// forceKernel makes Gemm use the named kernel for the rest of the test, or
// skips the test when this CPU cannot run it.
func forceKernel(t *testing.T, name string) {
	t.Helper()
	if kernelByName(name) == nil {
		t.Skipf("CPU lacks the %s kernel", name)
	}
	prev := gemmForce
	gemmForce = name
	t.Cleanup(func() { gemmForce = prev })
}

var kernelNames = []string{"avx512", "avx2", "go"}

// gemmShapes mixes 1, primes, non-multiples of every tile, and sizes past
// each blocking parameter (k > kc forces several k blocks, m > mc several
// A panels, n > nc several B panels).
var gemmShapes = [][3]int{
	{1, 1, 1}, {1, 7, 3}, {5, 1, 9}, {3, 3, 1}, {2, 2, 2},
	{12, 32, 16}, {6, 16, 8}, {13, 33, 17}, {7, 17, 5}, {11, 31, 29},
	{37, 41, 43}, {64, 64, 64}, {97, 13, 389}, {24, 64, 771},
	{151, 67, 23}, {300, 45, 10}, {5, 2090, 3}, {61, 130, 257},
}

func TestGemmMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, name := range kernelNames {
		t.Run(name, func(t *testing.T) {
			forceKernel(t, name)
			shapes := append([][3]int(nil), gemmShapes...)
			for range 12 {
				shapes = append(shapes, [3]int{1 + rng.IntN(70), 1 + rng.IntN(70), 1 + rng.IntN(70)})
			}
			for _, sh := range shapes {
				for _, tr := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
					for _, beta := range []float32{0, 1, 0.5} {
						pad := rng.IntN(3) * 5
						g := gemmCase{transA: tr[0], transB: tr[1], m: sh[0], n: sh[1], k: sh[2],
							padA: pad, padB: (pad + 3) % 7, padC: pad % 4, beta: beta}
						checkGemmCase(t, rng, g, 1+rng.IntN(3))
					}
				}
			}
		})
	}
}

func TestGemmSmallBlocking(t *testing.T) {
	// Shapes through each kernel with tiny cache blocks, so
	// modest sizes cross every blocking boundary: several k blocks,
	// several A blocks, several B column blocks (and A kept across them).
	rng := rand.New(rand.NewPCG(9, 10))
	for _, name := range kernelNames {
		t.Run(name, func(t *testing.T) {
			base := kernelByName(name)
			if base == nil {
				t.Skipf("CPU lacks the %s kernel", name)
			}
			defer func(v int) { gemmKeepAFloats = v }(gemmKeepAFloats)
			for _, keepA := range []bool{true, false} {
				kern := *base
				kern.mc, kern.kc, kern.nc = 2*kern.mr, 16, 2*kern.nr
				kern.aOuter = keepA // also covers both tile sweep orders
				gemmKeepAFloats = 0
				if keepA {
					gemmKeepAFloats = 4 << 20
				}
				for _, sh := range [][3]int{{1, 1, 1}, {37, 41, 43}, {97, 13, 89}, {61, 130, 57}, {30, 200, 33}} {
					for _, tr := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
						for _, beta := range []float32{0, 1} {
							g := gemmCase{transA: tr[0], transB: tr[1], m: sh[0], n: sh[1], k: sh[2], padA: 1, padB: 2, padC: 3, beta: beta}
							checkGemmCaseWith(t, rng, &kern, g, 1+rng.IntN(3))
						}
					}
				}
			}
		})
	}
}

// checkGemmCase runs Gemm with the given thread budget and compares every
// element of C with GemmRef, and checks the padding of C was not touched.
func checkGemmCase(t *testing.T, rng *rand.Rand, g gemmCase, threads int) {
	t.Helper()
	checkGemmCaseWith(t, rng, activeKernel(), g, threads)
}

func checkGemmCaseWith(t *testing.T, rng *rand.Rand, kern *gemmKernel, g gemmCase, threads int) {
	t.Helper()
	a, lda, b, ldb, c, ldc := g.operands(rng)
	want := append([]float32(nil), c...)
	got := append([]float32(nil), c...)
	if g.beta == 0 {
		// beta == 0 must never read C: poison the output rows.
		for i := 0; i < g.m; i++ {
			for j := 0; j < g.n; j++ {
				got[i*ldc+j] = float32(math.NaN())
			}
		}
	}
	bound := g.absBound(a, lda, b, ldb, c, ldc)
	GemmRef(g.transA, g.transB, g.m, g.n, g.k, a, lda, b, ldb, g.beta, want, ldc)
	gemmWith(kern, threads, g.transA, g.transB, g.m, g.n, g.k, a, lda, b, ldb, g.beta, got, ldc)
	// Both sums carry at most γ_(k+2)·bound rounding error each.
	const u = 1.0 / (1 << 24)
	tol := 2 * float64(g.k+2) * u
	for i := 0; i < g.m; i++ {
		for j := 0; j < ldc; j++ {
			gv, wv := got[i*ldc+j], want[i*ldc+j]
			if j >= g.n {
				if math.Float32bits(gv) != math.Float32bits(c[i*ldc+j]) {
					t.Fatalf("%v: padding C[%d][%d] changed to %g", g, i, j, gv)
				}
				continue
			}
			if d := math.Abs(float64(gv) - float64(wv)); !(d <= tol*bound[i*g.n+j]+1e-30) {
				t.Fatalf("%v (threads %d): C[%d][%d] = %g, reference %g (|diff| %g > %g)",
					g, threads, i, j, gv, wv, d, tol*bound[i*g.n+j])
			}
		}
	}
}

func TestGemmZeroSizes(t *testing.T) {
	for _, name := range kernelNames {
		t.Run(name, func(t *testing.T) {
			forceKernel(t, name)
			// k == 0: C = beta·C, and beta == 0 clears C even if it held NaN.
			c := []float32{float32(math.NaN()), 2, 3, 4}
			Gemm(false, false, 2, 2, 0, nil, 1, nil, 2, 0, c, 2)
			for i, v := range c {
				if v != 0 {
					t.Fatalf("k=0 beta=0: C[%d] = %g, want 0", i, v)
				}
			}
			c = []float32{1, 2, 3, 4}
			Gemm(true, true, 2, 2, 0, nil, 2, nil, 1, 0.5, c, 2)
			for i, v := range c {
				if want := float32(i+1) * 0.5; v != want {
					t.Fatalf("k=0 beta=0.5: C[%d] = %g, want %g", i, v, want)
				}
			}
			// m == 0 or n == 0 touches nothing, whatever the slices.
			Gemm(false, false, 0, 5, 5, nil, 5, nil, 5, 0, nil, 5)
			Gemm(false, false, 5, 0, 5, nil, 5, nil, 5, 0, nil, 5)
		})
	}
}

func TestGemmDeterministicAcrossThreads(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	shapes := []gemmCase{
		{m: 301, n: 67, k: 77, beta: 0},                               // row split
		{m: 19, n: 333, k: 401, transB: true, beta: 1},                // column split
		{m: 130, n: 129, k: 513, transA: true, transB: true, beta: 1}, // two k blocks
		{m: 257, n: 96, k: 64, transA: true, padA: 3, padC: 5, beta: 0.5},
	}
	for _, name := range kernelNames {
		t.Run(name, func(t *testing.T) {
			forceKernel(t, name)
			kern := activeKernel()
			for _, g := range shapes {
				a, lda, b, ldb, c0, ldc := g.operands(rng)
				var first []float32
				for threads := 1; threads <= 4; threads++ {
					c := append([]float32(nil), c0...)
					gemmWith(kern, threads, g.transA, g.transB, g.m, g.n, g.k, a, lda, b, ldb, g.beta, c, ldc)
					if first == nil {
						first = c
						continue
					}
					for i := range c {
						if math.Float32bits(c[i]) != math.Float32bits(first[i]) {
							t.Fatalf("%v: %d threads differ from 1 thread at %d: %g vs %g", g, threads, i, c[i], first[i])
						}
					}
				}
			}
		})
	}
}

// TestGemmSerialBlocksMatchGemm: GemmSerial over random row blocks and
// column strips of C (cut anywhere, not only on tile edges) reproduces one
// whole Gemm bitwise, for every kernel: what experts and attention rely on
// when they split work themselves.
func TestGemmSerialBlocksMatchGemm(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, name := range kernelNames {
		t.Run(name, func(t *testing.T) {
			forceKernel(t, name)
			for trial := 0; trial < 20; trial++ {
				g := gemmCase{transA: rng.IntN(2) == 0, transB: rng.IntN(2) == 0,
					m: 1 + rng.IntN(90), n: 1 + rng.IntN(90), k: 1 + rng.IntN(600),
					padA: rng.IntN(3), padB: rng.IntN(3), padC: rng.IntN(3), beta: float32(rng.IntN(2))}
				a, lda, b, ldb, c0, ldc := g.operands(rng)
				whole := append([]float32(nil), c0...)
				Gemm(g.transA, g.transB, g.m, g.n, g.k, a, lda, b, ldb, g.beta, whole, ldc)
				c := append([]float32(nil), c0...)
				if rng.IntN(2) == 0 { // row blocks
					for i0 := 0; i0 < g.m; {
						i1 := min(g.m, i0+1+rng.IntN(g.m))
						aOff := i0 * lda
						if g.transA {
							aOff = i0
						}
						GemmSerial(g.transA, g.transB, i1-i0, g.n, g.k, a[aOff:], lda, b, ldb, g.beta, c[i0*ldc:], ldc)
						i0 = i1
					}
				} else { // column strips
					for j0 := 0; j0 < g.n; {
						j1 := min(g.n, j0+1+rng.IntN(g.n))
						bOff := j0
						if g.transB {
							bOff = j0 * ldb
						}
						GemmSerial(g.transA, g.transB, g.m, j1-j0, g.k, a, lda, b[bOff:], ldb, g.beta, c[j0:], ldc)
						j0 = j1
					}
				}
				for i := range c {
					if math.Float32bits(c[i]) != math.Float32bits(whole[i]) {
						t.Fatalf("%v: blocks differ from one Gemm at %d: %g vs %g", g, i, c[i], whole[i])
					}
				}
			}
		})
	}
}

func TestGemmThreadsBudget(t *testing.T) {
	// Through the public entry point: the budget changes nothing but speed.
	rng := rand.New(rand.NewPCG(5, 6))
	g := gemmCase{m: 200, n: 150, k: 90, transB: true}
	a, lda, b, ldb, c0, ldc := g.operands(rng)
	defer SetThreads(0)
	var first []float32
	for threads := 1; threads <= 3; threads++ {
		SetThreads(threads)
		c := append([]float32(nil), c0...)
		Gemm(g.transA, g.transB, g.m, g.n, g.k, a, lda, b, ldb, 0, c, ldc)
		if first == nil {
			first = c
			continue
		}
		for i := range c {
			if math.Float32bits(c[i]) != math.Float32bits(first[i]) {
				t.Fatalf("SetThreads(%d) changed C[%d]: %g vs %g", threads, i, c[i], first[i])
			}
		}
	}
}

func TestGemmConcurrentCalls(t *testing.T) {
	// Pack buffers come from a shared pool; concurrent calls must not
	// see each other's panels.
	rng := rand.New(rand.NewPCG(7, 8))
	g := gemmCase{m: 70, n: 90, k: 130}
	a, lda, b, ldb, _, ldc := g.operands(rng)
	want := make([]float32, g.m*ldc)
	GemmRef(false, false, g.m, g.n, g.k, a, lda, b, ldb, 0, want, ldc)
	bound := g.absBound(a, lda, b, ldb, want, ldc)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for w := 0; w < 8; w++ {
		wg.Go(func() {
			c := make([]float32, g.m*ldc)
			for rep := 0; rep < 5; rep++ {
				Gemm(false, false, g.m, g.n, g.k, a, lda, b, ldb, 0, c, ldc)
				for i := range c {
					if math.Abs(float64(c[i]-want[i])) > 1e-5*bound[i]+1e-30 {
						errs <- fmt.Sprintf("C[%d] = %g, want %g", i, c[i], want[i])
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
}

func TestGemmShortSlicePanics(t *testing.T) {
	cases := []struct {
		name string
		call func()
	}{
		{"short C", func() {
			Gemm(false, false, 2, 2, 2, make([]float32, 4), 2, make([]float32, 4), 2, 0, make([]float32, 3), 2)
		}},
		{"short A", func() {
			Gemm(true, false, 2, 2, 2, make([]float32, 3), 2, make([]float32, 4), 2, 0, make([]float32, 4), 2)
		}},
		{"short B", func() {
			Gemm(false, true, 2, 2, 2, make([]float32, 4), 2, make([]float32, 3), 2, 0, make([]float32, 4), 2)
		}},
		{"stride below row", func() {
			Gemm(false, false, 2, 2, 2, make([]float32, 4), 1, make([]float32, 4), 2, 0, make([]float32, 4), 2)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			tc.call()
		})
	}
}
