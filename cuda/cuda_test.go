package cuda

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/internal/gputest"
)

// testGPU is the context and cuBLASLt handle the tests share.
type testGPU struct {
	c *Context
	b *BlasLt
}

var sharedGPU = gputest.Once(func() (testGPU, error) {
	c, err := Open(0)
	if err != nil {
		return testGPU{}, err
	}
	b, err := c.NewBlasLt()
	return testGPU{c, b}, err
})

// gpu returns the shared test context and cuBLASLt handle, skipping where
// no driver or GPU is present (MOETRAIN_REQUIRE_GPU=1 makes that a failure).
func gpu(t *testing.T) (*Context, *BlasLt) {
	t.Helper()
	g := sharedGPU(t)
	return g.c, g.b
}

// Without a driver (or without a GPU behind it), the error is one line that
// names what is missing: the library, or the driver call that found no GPU.
func TestMissingDriverNamed(t *testing.T) {
	_, err := DeviceCount()
	if err == nil {
		t.Skip("a CUDA driver is present")
	}
	msg := err.Error()
	if !(strings.Contains(msg, "libcuda.so.1") || strings.Contains(msg, "cuInit")) || strings.Contains(msg, "\n") {
		t.Fatalf("error %q: want one line naming libcuda.so.1 or the failing cuInit", msg)
	}
	if _, err := Open(0); err == nil || err.Error() != msg {
		t.Fatalf("Open: %v, want the same error", err)
	}
}

func TestDeviceInfo(t *testing.T) {
	c, b := gpu(t)
	in := c.Info()
	t.Logf("GPU %d: %s, sm_%d%d, %d SMs, %.1f GiB, driver %d (%s); cuBLASLt %d (%s)", in.Ordinal, in.Name, in.Major, in.Minor, in.SMs,
		float64(in.TotalMem)/(1<<30), in.Driver, in.Library, b.Version(), b.Library)
	if in.SMs < 1 || in.TotalMem <= 0 || in.Major < 1 {
		t.Fatalf("implausible device info %+v", in)
	}
}

func TestCopyRoundTrip(t *testing.T) {
	c, _ := gpu(t)
	rng := rand.New(rand.NewPCG(3, 4))
	src := make([]float32, 100003)
	for i := range src {
		src[i] = rng.Float32()
	}
	p, err := c.Alloc(len(src) * 4)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free(p)
	if err := CopyIn(c, p, src); err != nil {
		t.Fatal(err)
	}
	q, err := c.Alloc(len(src) * 4)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free(q)
	if err := c.Fill32(c.Stream(), q, len(src), 0x7fc00000); err != nil {
		t.Fatal(err)
	}
	if err := c.CopyDevice(c.Stream(), q.Add(4), p.Add(4), (len(src)-1)*4); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, len(src))
	if err := CopyOut(c, got, q); err != nil {
		t.Fatal(err)
	}
	if !math.IsNaN(float64(got[0])) {
		t.Fatalf("element 0 = %g, want the NaN poison", got[0])
	}
	for i := 1; i < len(src); i++ {
		if got[i] != src[i] {
			t.Fatalf("element %d = %g, want %g", i, got[i], src[i])
		}
	}
}

// toBF16 rounds to the nearest bfloat16 (ties to even), as bits.
func toBF16(f float32) uint16 {
	b := math.Float32bits(f)
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

func fromBF16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// gemmRef is the float64 row-major reference of GemmSpec.
func gemmRef(g GemmSpec, alpha float64, a, b []float32, beta float64, c []float64) {
	for i := 0; i < g.M; i++ {
		for j := 0; j < g.N; j++ {
			var s float64
			for p := 0; p < g.K; p++ {
				s += float64(opAt(a, g.LDA, g.TransA, i, p)) * float64(opAt(b, g.LDB, g.TransB, p, j))
			}
			c[i*g.LDC+j] = alpha*s + beta*c[i*g.LDC+j]
		}
	}
}

// opAt is op(X)[r][c] for X stored row-major with leading dimension ld:
// X[r][c], or X[c][r] when trans.
func opAt(x []float32, ld int, trans bool, r, c int) float32 {
	if trans {
		return x[c*ld+r]
	}
	return x[r*ld+c]
}

func TestGemmAgainstReference(t *testing.T) {
	c, b := gpu(t)
	rng := rand.New(rand.NewPCG(5, 6))
	sizes := []int{1, 3, 17, 64, 129, 300}
	for trial := 0; trial < 60; trial++ {
		g := GemmSpec{TransA: rng.IntN(2) == 1, TransB: rng.IntN(2) == 1,
			M: sizes[rng.IntN(len(sizes))], N: sizes[rng.IntN(len(sizes))], K: sizes[rng.IntN(len(sizes))],
			AB: F32, CD: F32}
		if trial%3 == 1 {
			g.AB = BF16
		}
		if trial%6 == 4 {
			g.AB, g.CD = BF16, BF16
		}
		alpha := float32(1)
		if trial%5 == 0 {
			alpha = 0.5
		}
		checkGemm(t, c, b, c.Stream(), g, rng.IntN(3), alpha, float32(rng.IntN(2)), rng)
	}
}

// Shapes of one bucket share the first one's algorithm (expert products
// change their row count every step), on any stream: each is still right,
// and the heuristic ran once per bucket, not once per shape.
func TestGemmBorrowedAlgorithms(t *testing.T) {
	c, b := gpu(t)
	rng := rand.New(rand.NewPCG(7, 8))
	s2, err := c.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	before := b.PlansMade
	shapes := 0
	for _, tr := range []struct{ a, b bool }{{false, true}, {true, false}, {false, false}} {
		for _, mk := range [][2]int{{200, 96}, {129, 100}, {256, 128}, {131, 97}, {250, 120}} {
			g := GemmSpec{TransA: tr.a, TransB: tr.b, M: mk[0], N: 72, K: mk[1], AB: BF16, CD: F32}
			stream := c.Stream()
			if shapes%2 == 1 {
				stream = s2
			}
			checkGemm(t, c, b, stream, g, 0, 1, float32(shapes%2), rng)
			shapes++
		}
	}
	if searched := b.PlansMade - before; searched >= shapes {
		t.Fatalf("%d algorithm searches for %d shapes in 6 buckets: nothing borrowed", searched, shapes)
	}
}

// checkGemm runs g (leading dimensions padded by pad) on random operands on
// stream s and compares it with the float64 reference.
func checkGemm(t *testing.T, c *Context, b *BlasLt, s Stream, g GemmSpec, pad int, alpha, beta float32, rng *rand.Rand) {
	t.Helper()
	ar, ac, br, bc := g.stored()
	g.LDA, g.LDB, g.LDC = ac+pad, bc+pad, g.N+pad
	a := make([]float32, ar*g.LDA)
	bm := make([]float32, br*g.LDB)
	cm := make([]float32, g.M*g.LDC)
	for _, s := range [][]float32{a, bm, cm} {
		for i := range s {
			s[i] = float32(rng.NormFloat64())
			if g.AB == BF16 {
				s[i] = fromBF16(toBF16(s[i]))
			}
		}
	}
	if g.CD == BF16 {
		for i := range cm {
			cm[i] = fromBF16(toBF16(cm[i]))
		}
	}
	want := make([]float64, len(cm))
	for i, v := range cm {
		want[i] = float64(v)
	}
	gemmRef(g, float64(alpha), a, bm, float64(beta), want)
	up := func(s []float32, t16 DType) DevicePtr {
		p, err := c.Alloc(len(s) * t16.Size())
		if err != nil {
			t.Fatal(err)
		}
		if t16 == BF16 {
			h := make([]uint16, len(s))
			for i, v := range s {
				h[i] = toBF16(v)
			}
			err = CopyIn(c, p, h)
		} else {
			err = CopyIn(c, p, s)
		}
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	da, db, dc := up(a, g.AB), up(bm, g.AB), up(cm, g.CD)
	defer func() {
		c.Free(da)
		c.Free(db)
		c.Free(dc)
	}()
	if err := b.Gemm(s, g, alpha, da, db, beta, dc); err != nil {
		t.Fatal(err)
	}
	if err := c.SyncStream(s); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, len(cm))
	if g.CD == BF16 {
		h := make([]uint16, len(cm))
		if err := CopyOut(c, h, dc); err != nil {
			t.Fatal(err)
		}
		for i, v := range h {
			got[i] = fromBF16(v)
		}
	} else if err := CopyOut(c, got, dc); err != nil {
		t.Fatal(err)
	}
	var num, den float64
	for i := 0; i < g.M; i++ {
		for j := 0; j < g.N; j++ {
			d := float64(got[i*g.LDC+j]) - want[i*g.LDC+j]
			num += d * d
			den += want[i*g.LDC+j] * want[i*g.LDC+j]
		}
	}
	rel := math.Sqrt(num / math.Max(den, 1e-30))
	tol := 1e-5
	if g.CD == BF16 {
		tol = 1e-2
	}
	if !(rel <= tol) {
		t.Fatalf("%+v alpha=%g beta=%g: relative error %g > %g", g, alpha, beta, rel, tol)
	}
}

// GemmTo writes D = A·B + C and leaves C as it was.
func TestGemmToSeparateOutput(t *testing.T) {
	c, b := gpu(t)
	rng := rand.New(rand.NewPCG(9, 10))
	g := GemmSpec{TransB: true, M: 37, N: 72, K: 40, LDA: 40, LDB: 40, LDC: 72, AB: BF16, CD: F32}
	a, bm, cm := make([]float32, g.M*g.K), make([]float32, g.N*g.K), make([]float32, g.M*g.N)
	for _, s := range [][]float32{a, bm, cm} {
		for i := range s {
			s[i] = fromBF16(toBF16(float32(rng.NormFloat64())))
		}
	}
	want := make([]float64, len(cm))
	for i, v := range cm {
		want[i] = float64(v)
	}
	gemmRef(g, 1, a, bm, 1, want)
	bf := func(s []float32) DevicePtr {
		h := make([]uint16, len(s))
		for i, v := range s {
			h[i] = toBF16(v)
		}
		p, err := c.Alloc(2 * len(h))
		if err == nil {
			err = CopyIn(c, p, h)
		}
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	da, db := bf(a), bf(bm)
	dc, err := c.Alloc(4 * len(cm))
	if err != nil {
		t.Fatal(err)
	}
	dd, err := c.Alloc(4 * len(cm))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, p := range []DevicePtr{da, db, dc, dd} {
			c.Free(p)
		}
	}()
	if err := CopyIn(c, dc, cm); err != nil {
		t.Fatal(err)
	}
	if err := b.GemmTo(c.Stream(), g, 1, da, db, 1, dc, dd); err != nil {
		t.Fatal(err)
	}
	got, keep := make([]float32, len(cm)), make([]float32, len(cm))
	if err := CopyOut(c, got, dd); err != nil {
		t.Fatal(err)
	}
	if err := CopyOut(c, keep, dc); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if math.Abs(float64(got[i])-want[i]) > 1e-4*(1+math.Abs(want[i])) {
			t.Fatalf("D[%d] = %v, want %v", i, got[i], want[i])
		}
		if keep[i] != cm[i] {
			t.Fatalf("C[%d] changed: %v, was %v", i, keep[i], cm[i])
		}
	}
}

func TestSizeBucket(t *testing.T) {
	for _, c := range [][2]int{{1, 128}, {128, 128}, {129, 192}, {192, 192}, {193, 256}, {257, 384}, {385, 512},
		{2048, 2048}, {2049, 3072}, {3073, 4096}, {12000, 12288}, {16384, 16384}} {
		if got := sizeBucket(c[0]); got != c[1] {
			t.Errorf("sizeBucket(%d) = %d, want %d", c[0], got, c[1])
		}
	}
}

// TestGemmStored: A and B as stored are op's operands, transposed where
// the spec says so (m=2, n=3, k=5: every dimension distinct).
func TestGemmStored(t *testing.T) {
	for _, c := range []struct {
		ta, tb         bool
		ar, ac, br, bc int
	}{{false, false, 2, 5, 5, 3}, {true, false, 5, 2, 5, 3}, {false, true, 2, 5, 3, 5}, {true, true, 5, 2, 3, 5}} {
		g := GemmSpec{TransA: c.ta, TransB: c.tb, M: 2, N: 3, K: 5}
		if ar, ac, br, bc := g.stored(); ar != c.ar || ac != c.ac || br != c.br || bc != c.bc {
			t.Errorf("transA=%v transB=%v: stored A %d×%d, B %d×%d; want %d×%d, %d×%d", c.ta, c.tb, ar, ac, br, bc, c.ar, c.ac, c.br, c.bc)
		}
	}
}
