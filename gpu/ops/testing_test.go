package ops

import (
	"math/rand/v2"
	"testing"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/internal/gputest"
)

// testOps returns the Ops the tests share (one context and kernel set per
// process), skipping the test where no CUDA driver or GPU is present
// (MOETRAIN_REQUIRE_GPU=1 turns the skip into a failure, for runs on GPU
// machines).
var testOps = gputest.Once(func() (*Ops, error) {
	c, err := cuda.Open(0)
	if err != nil {
		return nil, err
	}
	return New(c)
})

// dev is a device buffer freed at the end of the test.
func devAlloc(t testing.TB, o *Ops, bytes int) cuda.DevicePtr {
	t.Helper()
	p, err := o.C.Alloc(bytes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.C.Free(p) })
	return p
}

// upload copies s to a new device buffer.
func upload[T any](t testing.TB, o *Ops, s []T) cuda.DevicePtr {
	t.Helper()
	var z T
	p := devAlloc(t, o, max(1, len(s))*sizeOf(z))
	if err := cuda.CopyIn(o.C, p, s); err != nil {
		t.Fatal(err)
	}
	return p
}

// download copies n elements at p back after the stream's work.
func download[T any](t testing.TB, o *Ops, p cuda.DevicePtr, n int) []T {
	t.Helper()
	out := make([]T, n)
	if err := cuda.CopyOut(o.C, out, p); err != nil {
		t.Fatal(err)
	}
	return out
}

// poisoned allocates n floats filled with NaN, so unwritten outputs show.
func poisoned(t testing.TB, o *Ops, n int) cuda.DevicePtr {
	t.Helper()
	p := devAlloc(t, o, max(1, n)*4)
	if err := o.C.Fill32(o.S, p, max(1, n), 0x7fc00000); err != nil {
		t.Fatal(err)
	}
	return p
}

// uploadAt copies s into a new device buffer at element offset off (off
// odd: not 16-byte aligned, so float4 and 4×bf16 chunks are misaligned and
// the kernels take their element paths) and returns the address of s[0].
func uploadAt[T any](t testing.TB, o *Ops, s []T, off int) cuda.DevicePtr {
	t.Helper()
	var z T
	sz := sizeOf(z)
	p := devAlloc(t, o, (len(s)+off+1)*sz).Add(off * sz)
	if err := cuda.CopyIn(o.C, p, s); err != nil {
		t.Fatal(err)
	}
	return p
}

// poisonedAt is poisoned (n NaN floats) at float offset off.
func poisonedAt(t testing.TB, o *Ops, n, off int) cuda.DevicePtr {
	t.Helper()
	return poisoned(t, o, n+off).Add(4 * off)
}

// poisonedBF16At is n bf16 NaNs at element offset off (the buffer has room
// for one more element past them).
func poisonedBF16At(t testing.TB, o *Ops, n, off int) cuda.DevicePtr {
	t.Helper()
	words := (n + off + 2) / 2
	p := devAlloc(t, o, 4*words)
	if err := o.C.Fill32(o.S, p, words, 0x7fc07fc0); err != nil { // NaN in both bf16 halves
		t.Fatal(err)
	}
	return p.Add(2 * off)
}

// wantErrors fails t for each named result that is nil: calls with bad
// arguments must be rejected (before any launch, so these need no GPU).
func wantErrors(t *testing.T, results map[string]error) {
	t.Helper()
	for name, err := range results {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// wantNoErrors fails t for each named result that is an error.
func wantNoErrors(t *testing.T, results map[string]error) {
	t.Helper()
	for name, err := range results {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func sizeOf[T any](v T) int {
	switch any(v).(type) {
	case float32, int32, uint32:
		return 4
	case float64, int64, uint64:
		return 8
	case uint16, int16:
		return 2
	case uint8, int8, bool:
		return 1
	}
	panic("sizeOf: unsupported type")
}

// randn returns n normal floats with standard deviation std.
func randn(rng *rand.Rand, n int, std float64) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64() * std)
	}
	return s
}

// relErr is gputest.RelNorm.
func relErr(got, want []float32) float64 { return gputest.RelNorm(got, want) }

// sync waits for the stream.
func syncOps(t testing.TB, o *Ops) {
	t.Helper()
	if err := o.C.SyncStream(o.S); err != nil {
		t.Fatal(err)
	}
}

func TestFillAxpy(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 31, 1000, 123457} {
		x := randn(rng, n, 1)
		y := randn(rng, n, 1)
		dx, dy := upload(t, o, x), upload(t, o, y)
		if err := o.Axpy(dy, dx, 0.5, n); err != nil {
			t.Fatal(err)
		}
		got := download[float32](t, o, dy, n)
		for i := range y {
			y[i] += 0.5 * x[i]
		}
		if e := relErr(got, y); e > 1e-6 {
			t.Fatalf("n=%d axpy rel err %g", n, e)
		}
		if err := o.Fill(dx, 3, n); err != nil {
			t.Fatal(err)
		}
		for i, v := range download[float32](t, o, dx, n) {
			if v != 3 {
				t.Fatalf("n=%d fill[%d] = %g", n, i, v)
			}
		}
	}
}
