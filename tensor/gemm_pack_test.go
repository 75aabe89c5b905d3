package tensor

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestPackMatchesNaive checks packA and packB element by element against
// the layout contract, for the assembly routines (where the CPU has them)
// and the portable loops, over every panel width the kernels use, partial
// panels, k runs that are and are not multiples of the 16-wide transpose,
// and strides beyond the row length.
func TestPackMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	defer func() { packNoAsm = false }()
	for _, noAsm := range []bool{false, true} {
		packNoAsm = noAsm
		for _, w := range []int{4, 6, 12, 16, 32} {
			for _, sz := range [][2]int{{1, 1}, {w, 16}, {w + 1, 17}, {3*w - 1, 35}, {2 * w, 48}, {5, 100}} {
				n, kc := sz[0], sz[1]
				for _, trans := range []bool{false, true} {
					name := fmt.Sprintf("noAsm=%v/w=%d/n=%d/kc=%d/trans=%v", noAsm, w, n, kc, trans)
					checkPack(t, rng, name, w, n, kc, trans)
				}
			}
		}
	}
}

func checkPack(t *testing.T, rng *rand.Rand, name string, w, n, kc int, trans bool) {
	t.Helper()
	// The packed block sits at an offset (r0, c0) inside a larger source.
	const r0, c0 = 2, 3
	rows, cols := r0+n, c0+kc // A layout: op(A)[i][p] = s[i*ld+p]
	if trans {
		rows, cols = r0+kc, c0+n // op(A)[i][p] = s[p*ld+i]
	}
	ld := cols + 5
	s := make([]float32, rows*ld)
	for i := range s {
		s[i] = rng.Float32()
	}
	panels := (n + w - 1) / w
	dstA := make([]float32, panels*w*kc)
	dstB := make([]float32, panels*w*kc)
	for i := range dstA {
		dstA[i], dstB[i] = -1, -1 // padding must be overwritten with zeros
	}
	if trans {
		packA(true, s, ld, c0, r0, n, kc, w, dstA)  // op(A) rows are s columns
		packB(false, s, ld, r0, c0, kc, n, w, dstB) // op(B) = s
	} else {
		packA(false, s, ld, r0, c0, n, kc, w, dstA)
		packB(true, s, ld, c0, r0, kc, n, w, dstB) // op(B)[p][j] = s[j*ld+p]
	}
	for l0 := 0; l0 < n; l0 += w {
		for p := 0; p < kc; p++ {
			for l := 0; l < w; l++ {
				var want float32
				if l0+l < n {
					if trans {
						want = s[(r0+p)*ld+c0+l0+l]
					} else {
						want = s[(r0+l0+l)*ld+c0+p]
					}
				}
				at := l0*kc + p*w + l
				if dstA[at] != want {
					t.Fatalf("%s: packA panel %d p=%d lane %d = %g, want %g", name, l0/w, p, l, dstA[at], want)
				}
				if dstB[at] != want {
					t.Fatalf("%s: packB panel %d p=%d lane %d = %g, want %g", name, l0/w, p, l, dstB[at], want)
				}
			}
		}
	}
}
