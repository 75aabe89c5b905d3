package tensor

import (
	"math"
	"testing"
)

func TestElementwise(t *testing.T) {
	r := newRNG(1)
	for _, n := range []int{0, 1, 7, 4099, 3*elemGrain + 5} {
		a, b := randVec(r, n, 2), randVec(r, n, 2)
		dst := make([]float32, n)
		Add(dst, a, b)
		for i := range dst {
			if dst[i] != a[i]+b[i] {
				t.Fatalf("Add n=%d: dst[%d]=%v want %v", n, i, dst[i], a[i]+b[i])
			}
		}
		d2 := append([]float32(nil), a...)
		AddInPlace(d2, b)
		checkBitwise(t, "AddInPlace", d2, dst)
		d3 := append([]float32(nil), a...)
		Axpy(d3, -0.5, b)
		for i := range d3 {
			if d3[i] != a[i]+(-0.5)*b[i] {
				t.Fatalf("Axpy n=%d: [%d]=%v want %v", n, i, d3[i], a[i]-0.5*b[i])
			}
		}
		d4 := append([]float32(nil), a...)
		Scale(d4, 3)
		for i := range d4 {
			if d4[i] != 3*a[i] {
				t.Fatalf("Scale n=%d: [%d]=%v want %v", n, i, d4[i], 3*a[i])
			}
		}
	}
}

func TestSumSquares(t *testing.T) {
	r := newRNG(2)
	for _, n := range []int{0, 1, 3, sumSqBlock - 1, sumSqBlock, 5*sumSqBlock + 17} {
		x := randVec(r, n, 3)
		var want float64
		for _, v := range x {
			want += float64(v) * float64(v)
		}
		var first float64
		withThreads(t, []int{1, 2, 3}, func(th int) {
			got := SumSquares(x)
			if math.Abs(got-want) > 1e-12*math.Max(1, want) {
				t.Errorf("n=%d threads=%d: SumSquares=%v want %v", n, th, got, want)
			}
			if th == 1 {
				first = got
			} else if math.Float64bits(got) != math.Float64bits(first) {
				t.Errorf("n=%d: threads=%d gives %v, threads=1 gave %v", n, th, got, first)
			}
		})
	}
}

func TestGatherScatterRows(t *testing.T) {
	r := newRNG(3)
	for _, rows := range []int{1, 5, 67} {
		for _, c := range []int{1, 3, 64, 130} {
			n := 2*rows + 3
			idx := make([]int32, n)
			for i := range idx {
				idx[i] = int32(r.IntN(rows)) // repeats guaranteed
			}
			src := randVec(r, rows*c, 1)
			g := make([]float32, n*c)
			GatherRows(g, src, idx, c)
			for i, id := range idx {
				checkBitwise(t, "GatherRows", g[i*c:(i+1)*c], src[int(id)*c:(int(id)+1)*c])
			}
			upd := randVec(r, n*c, 1)
			scale := randVec(r, n, 2)
			for _, sc := range [][]float32{nil, scale} {
				base := randVec(r, rows*c, 1)
				want := append([]float32(nil), base...)
				for i, id := range idx {
					a := float32(1)
					if sc != nil {
						a = sc[i]
					}
					for j := 0; j < c; j++ {
						if sc == nil {
							want[int(id)*c+j] += upd[i*c+j]
						} else {
							want[int(id)*c+j] += a * upd[i*c+j]
						}
					}
				}
				withThreads(t, []int{1, 2, 3}, func(th int) {
					got := append([]float32(nil), base...)
					ScatterAddRows(got, upd, idx, sc, c)
					checkBitwise(t, "ScatterAddRows "+sizeName(rows, c, th), got, want)
				})
			}
		}
	}
}

func TestRowDot(t *testing.T) {
	r := newRNG(4)
	for _, n := range testSizes {
		for _, c := range []int{1, 3, 64, 67} {
			a, b := randVec(r, n*c, 1), randVec(r, n*c, 1)
			want := make([]float64, n)
			for i := range want {
				for j := 0; j < c; j++ {
					want[i] += float64(a[i*c+j]) * float64(b[i*c+j])
				}
			}
			got := make([]float32, n)
			RowDot(got, a, b, n, c)
			checkClose(t, "RowDot "+sizeName(n, c), got, want, 1e-5, 1e-5)
		}
	}
}

// TestGatherRowsDotScale: against a float64 reference on random shapes
// (repeated source rows), and bitwise GatherRows, RowDot and a row scaling
// in turn, for 1 to 3 threads.
func TestGatherRowsDotScale(t *testing.T) {
	defer SetThreads(0)
	r := newRNG(9)
	for _, n := range testSizes {
		for _, c := range []int{1, 3, 64, 67} {
			rows := max(1, n/2+1)
			src, y := randVec(r, rows*c, 1), randVec(r, n*c, 1)
			idx, scale := make([]int32, n), randVec(r, n, 1)
			for i := range idx {
				idx[i] = int32(r.IntN(rows))
			}
			wantDot, wantDst := make([]float64, n), make([]float64, n*c)
			for i := range idx {
				for j := 0; j < c; j++ {
					v := float64(src[int(idx[i])*c+j])
					wantDot[i] += v * float64(y[i*c+j])
					wantDst[i*c+j] = v * float64(scale[i])
				}
			}
			sepDst, sepDot := make([]float32, n*c), make([]float32, n)
			GatherRows(sepDst, src, idx, c)
			RowDot(sepDot, sepDst, y, n, c)
			for i := range idx {
				for j := 0; j < c; j++ {
					sepDst[i*c+j] *= scale[i]
				}
			}
			for _, th := range []int{1, 2, 3} {
				SetThreads(th)
				dst, dot := make([]float32, n*c), make([]float32, n)
				GatherRowsDotScale(dst, dot, src, y, idx, scale, c)
				name := sizeName(n, c)
				checkClose(t, "GatherRowsDotScale dot "+name, dot, wantDot, 1e-5, 1e-5)
				checkClose(t, "GatherRowsDotScale dst "+name, dst, wantDst, 1e-6, 1e-6)
				checkBitwise(t, "GatherRowsDotScale dot vs RowDot "+name, dot, sepDot)
				checkBitwise(t, "GatherRowsDotScale dst vs GatherRows·scale "+name, dst, sepDst)
			}
		}
	}
}
