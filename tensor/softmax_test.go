package tensor

import (
	"math"
	"testing"
)

func softmax64(x []float64, n, c int) []float64 {
	out := make([]float64, n*c)
	for i := 0; i < n; i++ {
		mx := math.Inf(-1)
		for j := 0; j < c; j++ {
			mx = math.Max(mx, x[i*c+j])
		}
		var s float64
		for j := 0; j < c; j++ {
			out[i*c+j] = math.Exp(x[i*c+j] - mx)
			s += out[i*c+j]
		}
		for j := 0; j < c; j++ {
			out[i*c+j] /= s
		}
	}
	return out
}

func TestExpf(t *testing.T) {
	for x := -87.0; x <= 88; x += 0.0137 {
		got, want := float64(expf(float32(x))), math.Exp(float64(float32(x)))
		if math.Abs(got-want) > 4e-7*want {
			t.Fatalf("expf(%v) = %v, want %v (rel err %g)", x, got, want, math.Abs(got-want)/want)
		}
	}
	for _, c := range []struct{ x, want float32 }{
		{0, 1}, {float32(math.Inf(-1)), 0}, {-1000, 0}, {float32(math.Inf(1)), float32(math.Inf(1))}, {100, float32(math.Inf(1))},
	} {
		if got := expf(c.x); got != c.want {
			t.Errorf("expf(%v) = %v, want %v", c.x, got, c.want)
		}
	}
	if got := expf(float32(math.NaN())); !math.IsNaN(float64(got)) {
		t.Errorf("expf(NaN) = %v, want NaN", got)
	}
}

func TestSoftmaxForward(t *testing.T) { forEachRowPath(t, testSoftmaxForward) }

func testSoftmaxForward(t *testing.T) {
	r := newRNG(20)
	for _, n := range testSizes {
		for _, c := range []int{1, 2, 7, 64, 67} {
			x := randVec(r, n*c, 5)
			out := make([]float32, n*c)
			SoftmaxForward(out, x, n, c)
			checkClose(t, "softmax "+sizeName(n, c), out, softmax64(to64(x), n, c), 1e-7, 1e-5)
		}
	}
	// Stability: huge logits must not overflow; -Inf entries get 0.
	x := []float32{1e4, 1e4 - 1, -1e4, float32(math.Inf(-1))}
	out := make([]float32, 4)
	SoftmaxForward(out, x, 1, 4)
	checkClose(t, "stable", out, softmax64(to64(x), 1, 4), 1e-7, 1e-5)
}

func TestSoftmaxGradient(t *testing.T) {
	r := newRNG(21)
	for _, sz := range [][2]int{{1, 1}, {1, 6}, {3, 7}, {2, 16}} {
		n, c := sz[0], sz[1]
		x, g := randVec(r, n*c, 3), randVec(r, n*c, 1)
		want := numGrad(func(v []float64) float64 {
			s := 0.0
			for i, y := range softmax64(v, n, c) {
				s += float64(g[i]) * y
			}
			return s
		}, to64(x), 1e-6)
		out := make([]float32, n*c)
		SoftmaxForward(out, x, n, c)
		din0 := randVec(r, n*c, 1)
		din := append([]float32(nil), din0...)
		SoftmaxBackward(din, g, out, n, c)
		checkClose(t, "din "+sizeName(n, c), sub(din, din0), want, 1e-5, 1e-3)
	}
}

func TestExpScaledRow(t *testing.T) { forEachRowPath(t, testExpScaledRow) }

func testExpScaledRow(t *testing.T) {
	r := newRNG(22)
	ninf := float32(math.Inf(-1))
	for n := 1; n <= 40; n++ {
		x := randVec(r, n, 30)
		x[r.IntN(n)] = ninf
		const scl, sub = 0.7, 3
		row := append([]float32(nil), x...)
		sum := expScaledRow(row, scl, sub)
		var want float64
		for i, z := range x {
			// The product may be rounded (scalar) or not (FMA): allow an
			// ulp of the argument on top of expf's own error.
			arg := float64(z)*scl - sub
			w := math.Exp(arg)
			want += w
			if z == ninf {
				if row[i] != 0 {
					t.Fatalf("n=%d: exp(-Inf) entry %d = %v, want 0", n, i, row[i])
				}
				continue
			}
			if math.Abs(float64(row[i])-w) > (4e-7+1.2e-7*math.Abs(arg))*w {
				t.Fatalf("n=%d: row[%d] = %v, want %v", n, i, row[i], w)
			}
			// Position independence: alone in a row of one, same bits.
			one := []float32{z}
			expScaledRow(one, scl, sub)
			if math.Float32bits(one[0]) != math.Float32bits(row[i]) {
				t.Fatalf("n=%d: element %d is %v in the row but %v alone", n, i, row[i], one[0])
			}
		}
		if math.Abs(float64(sum)-want) > 1e-5*want {
			t.Errorf("n=%d: sum %v, want %v", n, sum, want)
		}
		mx := float32(math.Inf(-1))
		for _, z := range x {
			mx = max(mx, z)
		}
		if got := rowMax(x); got != mx {
			t.Errorf("n=%d: rowMax = %v, want %v", n, got, mx)
		}
	}
}

func TestSoftmaxRowDotThreadsBitwise(t *testing.T) {
	forEachRowPath(t, func(t *testing.T) {
		r := newRNG(23)
		n, c := 257, 131
		x, g := randVec(r, n*c, 4), randVec(r, n*c, 1)
		checkThreadsBitwise(t, []string{"softmax", "dsoftmax", "rowdot"}, func() [][]float32 {
			o, d, rd := make([]float32, n*c), make([]float32, n*c), make([]float32, n)
			SoftmaxForward(o, x, n, c)
			SoftmaxBackward(d, g, o, n, c)
			RowDot(rd, x, g, n, c)
			return [][]float32{o, d, rd}
		})
	})
}

func TestRowKernelsPropagateNaN(t *testing.T) {
	forEachRowPath(t, func(t *testing.T) {
		nan := float32(math.NaN())
		for _, n := range []int{1, 8, 13} {
			x := randVec(newRNG(24), n, 1)
			x[n/2] = nan
			row := append([]float32(nil), x...)
			if s := expScaledRow(row, 1, 0); !math.IsNaN(float64(s)) || !math.IsNaN(float64(row[n/2])) {
				t.Errorf("n=%d: exp of NaN gave %v (sum %v)", n, row[n/2], s)
			}
			out := make([]float32, n)
			SoftmaxForward(out, x, 1, n)
			if !math.IsNaN(float64(out[0])) {
				t.Errorf("n=%d: softmax of a row with NaN gave %v", n, out[0])
			}
			GELUForward(out, x)
			if !math.IsNaN(float64(out[n/2])) {
				t.Errorf("n=%d: GELU(NaN) = %v", n, out[n/2])
			}
		}
	})
}
