package moe

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkSelect times each router's selection on 4096 tokens over 64
// experts with k = 8; TopK (no bias) is the anchor.
func BenchmarkSelect(b *testing.B) {
	const n, e, k = 4096, 64, 8
	for _, c := range []struct {
		name string
		spec Spec
		bias bool
	}{
		{"topk", Spec{Kind: "topk"}, false},
		{"topk_bias", Spec{Kind: "topk"}, true},
		{"moge_m8", Spec{Kind: "moge", Groups: 8}, false},
		{"group_limited_8_4", Spec{Kind: "group_limited", Groups: 8, TopKGroups: 4}, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			r := rand.New(rand.NewPCG(1, 1))
			rt := randRouting(r, n, e, k, Softmax, 1)
			if c.bias {
				rt.Bias = randBias(r, e)
			}
			router, err := New(c.spec, e, k)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				router.Select(rt)
			}
		})
	}
}

// BenchmarkLayerRouters times one MoE layer's Forward+Backward (N = 1024,
// D = 256, H = 512, E = 8, K = 2: the reference layer) per router; plain
// top-k is the anchor.
func BenchmarkLayerRouters(b *testing.B) {
	const n = 1024
	dm := Dims{D: 256, H: 512, E: 8, K: 2}
	for _, c := range []struct {
		name string
		spec Spec
	}{
		{"topk", Spec{}},
		{"topk_z_sigmoid", Spec{Opts: Options{Score: Sigmoid, ZLossCoef: 1e-3}}},
		{"moge_m2", Spec{Kind: "moge", Groups: 2}},
		{"group_limited_4_2", Spec{Kind: "group_limited", Groups: 4, TopKGroups: 2}},
		{"topk_cap1.0", Spec{Opts: Options{CapacityFactor: 1}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			r := rand.New(rand.NewPCG(2, 2))
			rnd := func(m int, s float64) []float32 { return normals(r, m, s) }
			router, err := New(c.spec, dm.E, dm.K)
			if err != nil {
				b.Fatal(err)
			}
			x, dout := rnd(n*dm.D, 1), rnd(n*dm.D, 1)
			w := Weights{Router: rnd(dm.E*dm.D, 0.02), W1: rnd(dm.E*dm.H*dm.D, 0.02), W2: rnd(dm.E*dm.D*dm.H, 0.02)}
			dw := zeroWeights(w)
			out, dx := make([]float32, n*dm.D), make([]float32, n*dm.D)
			var st State
			var sc Scratch
			st.Resize(dm, n)
			sc.Resize(dm, n)
			for b.Loop() {
				Forward(out, x, w, dm, router, nil, &st)
				Backward(dx, dw, dout, x, w, dm, router, nil, 0.01, &st, &sc)
			}
		})
	}
}
