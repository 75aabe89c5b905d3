package gpu

import (
	"math"
	"testing"

	"github.com/moetrain/moetrain/optim"
)

// TestTrainStepEqualsSeparateUpdate: TrainStep, whose optimizer runs group
// by group beside the backward, leaves the parameters and moments bitwise
// as ForwardBackward followed by Update, in fp32 and in bf16 (where the
// bf16 weights it writes feed the next step: equal losses show them
// equal), with Σg² equal up to float64 rounding.
func TestTrainStepEqualsSeparateUpdate(t *testing.T) {
	dev := device(t)
	cfg := smallConfig()
	ocfg := optim.DefaultConfig()
	for _, bf16 := range []bool{false, true} {
		newRun := func() (*Model, *AdamW) {
			cpu := hostModel(t, cfg, 7)
			g, err := NewFromHost(dev, cpu)
			if err != nil {
				t.Fatal(err)
			}
			if err := g.SetPrecision(bf16); err != nil {
				t.Fatal(err)
			}
			opt, err := NewAdamW(dev, ocfg, cpu.Layout.Total)
			if err != nil {
				t.Fatal(err)
			}
			return g, opt
		}
		a, aopt := newRun()
		b, bopt := newRun()
		for step := 1; step <= 4; step++ {
			in := batch(cfg, 2, 64, step%2 == 0, uint64(step))
			ra, err := a.ForwardBackward(in)
			if err != nil {
				t.Fatal(err)
			}
			sa, err := a.Update(aopt, step, 1e-3, 1)
			if err != nil {
				t.Fatal(err)
			}
			rb, sb, err := b.TrainStep(in, bopt, step, 1e-3)
			if err != nil {
				t.Fatal(err)
			}
			if ra.Loss != rb.Loss || ra.Aux != rb.Aux {
				t.Fatalf("bf16=%v step %d: loss %v aux %v, separate update %v %v", bf16, step, rb.Loss, rb.Aux, ra.Loss, ra.Aux)
			}
			if math.Abs(sa-sb) > 1e-12*sa {
				t.Fatalf("bf16=%v step %d: Σg² %v, separate update %v", bf16, step, sb, sa)
			}
		}
		n := a.Layout.Total
		get := func(g *Model, o *AdamW) (p, m, v []float32) {
			p, m, v = make([]float32, n), make([]float32, n), make([]float32, n)
			if err := g.Params(p); err != nil {
				t.Fatal(err)
			}
			if err := o.Moments(m, v); err != nil {
				t.Fatal(err)
			}
			return p, m, v
		}
		pa, ma, va := get(a, aopt)
		pb, mb, vb := get(b, bopt)
		for i := 0; i < n; i++ {
			if math.Float32bits(pa[i]) != math.Float32bits(pb[i]) || math.Float32bits(ma[i]) != math.Float32bits(mb[i]) ||
				math.Float32bits(va[i]) != math.Float32bits(vb[i]) {
				t.Fatalf("bf16=%v: element %d: params %v/%v, m %v/%v, v %v/%v", bf16, i, pa[i], pb[i], ma[i], mb[i], va[i], vb[i])
			}
		}
		aopt.Close()
		bopt.Close()
		a.Close()
		b.Close()
	}
}
