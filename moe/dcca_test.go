package moe

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// dccaCase is an epCase whose layer has the DCCA projections: R = r, the
// experts [E, H, R] and [E, R, H].
func newDCCACase(seed uint64, ep, n, r int, dm Dims) *epCase {
	c := newEPCase(seed, ep, n, dm)
	g := rand.New(rand.NewPCG(seed, 8))
	rnd := func(m int, s float64) []float32 { return normals(g, m, s) }
	c.w.W1, c.w.W2 = rnd(dm.E*dm.H*r, 0.4), rnd(dm.E*r*dm.H, 0.4)
	c.w.Down, c.w.Up = rnd(r*dm.D, 0.5), rnd(dm.D*r, 0.5)
	return c
}

// TestDCCAGradCheck checks the DCCA layer's backward (the projections
// included) against central finite differences, as TestLayerGradCheck.
func TestDCCAGradCheck(t *testing.T) {
	for _, k := range []int{1, 2} {
		dm := Dims{D: 8, H: 10, E: 4, K: k}
		const n, r, coef = 9, 3, 0.7
		c := newDCCACase(uint64(k), 1, n, r, dm)
		checkLayerGrads(t, fmt.Sprintf("dcca k=%d", k), dm, n, coef, c.x[0], c.w, c.dout[0], nil)
	}
}

// A DCCA layer under expert parallelism (unpipelined, pipelined, fp8)
// equals the serial layer: each member's outputs, input gradients and
// projection/router gradients are the serial layer's on its tokens, and
// each member's expert gradients are the serial ones summed over every
// member's tokens.
func TestDCCAEPEqualsSerial(t *testing.T) {
	dm := Dims{D: 16, H: 12, E: 4, K: 2}
	const ep, n, r = 2, 11, 4
	c := newDCCACase(5, ep, n, r, dm)
	serial := make([]epRun, ep)
	for m := range ep {
		one := &epCase{dm: dm, ep: 1, n: n, x: [][]float32{c.x[m]}, dout: [][]float32{c.dout[m]}, w: c.w}
		serial[m] = one.run(t, Spec{}, ExchangeOptions{}, 1, 0)
	}
	el, hr := dm.E/ep, dm.H*r
	for _, opt := range []ExchangeOptions{{}, {Chunks: 3}, {Chunks: AutoChunks}} {
		got := c.run(t, Spec{}, opt, 1, 0)
		worst := 0.0
		for m := range ep {
			s := serial[m]
			for _, p := range [][2][]float32{{got.out[m], s.out[0]}, {got.dx[m], s.dx[0]}, {got.dw[m].Router, s.dw[0].Router},
				{got.dw[m].Down, s.dw[0].Down}, {got.dw[m].Up, s.dw[0].Up}} {
				worst = max(worst, relErr(p[0], p[1]))
			}
			w1 := make([]float32, el*hr)
			w2 := make([]float32, el*hr)
			for q := range ep {
				for i := range w1 {
					w1[i] += serial[q].dw[0].W1[m*el*hr+i]
					w2[i] += serial[q].dw[0].W2[m*el*hr+i]
				}
			}
			worst = max(worst, relErr(got.dw[m].W1, w1), relErr(got.dw[m].W2, w2))
		}
		t.Logf("%+v: largest relative error vs serial %.3g", opt, worst)
		if worst > 1e-5 {
			t.Errorf("%+v: DCCA under EP differs from serial by %.3g", opt, worst)
		}
	}
}
