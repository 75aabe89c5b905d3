package gpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/moetrain/moetrain/internal/gputest"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/optim"
	"github.com/moetrain/moetrain/sampling"
)

// device returns the shared test GPU, skipping where no CUDA driver or GPU
// is present (MOETRAIN_REQUIRE_GPU=1 turns the skip into a failure).
var device = gputest.Once(func() (*Device, error) { return Open(0) })

func smallConfig() model.Config {
	c := model.DefaultConfig()
	c.Vocab, c.DModel, c.Layers, c.Heads, c.SeqLen = 256, 64, 2, 4, 96
	c.Experts, c.ExpertHidden, c.TopK = 8, 96, 2
	return c
}

// batch draws B rows of T tokens; with packed, rows hold several documents
// (segments, positions restarting) and some ignored targets.
func batch(cfg model.Config, b, t int, packed bool, seed uint64) model.Input {
	rng := rand.New(rand.NewPCG(seed, 7))
	in := model.Input{B: b, T: t}
	if packed {
		in.Seg = make([]int32, 0, b*t)
	}
	for r := 0; r < b; r++ {
		doc, pos := int32(0), int32(0)
		for j := 0; j < t; j++ {
			if packed && j > 0 && rng.IntN(17) == 0 {
				doc++
				pos = 0
			}
			in.Tokens = append(in.Tokens, int32(rng.IntN(cfg.Vocab)))
			tgt := int32(rng.IntN(cfg.Vocab))
			if packed && rng.IntN(9) == 0 {
				tgt = -1
			}
			in.Targets = append(in.Targets, tgt)
			if packed {
				in.Pos = append(in.Pos, pos)
				in.Seg = append(in.Seg, doc)
			} else {
				in.Pos = append(in.Pos, int32(j))
			}
			pos++
		}
	}
	return in
}

// hostModel is model.New(cfg, seed), the host model a test starts from.
func hostModel(tb testing.TB, cfg model.Config, seed uint64) *model.Model {
	tb.Helper()
	m, err := model.New(cfg, seed)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// corpusSampler is the sampler of the embedded corpus under the default
// sampling config (job seed 1), for one data-parallel rank of one.
func corpusSampler(tb testing.TB) sampling.Sampler {
	tb.Helper()
	data, err := sampling.Open(sampling.DefaultConfig(), 1)
	if err != nil {
		tb.Fatal(err)
	}
	sampler, err := data.Sampler(0, 1)
	if err != nil {
		tb.Fatal(err)
	}
	return sampler
}

// relNorm is gputest.RelNorm.
func relNorm(a, b []float32) float64 { return gputest.RelNorm(a, b) }

// TestStepEqualsCPU: one fp32 forward and backward on the GPU equals the CPU
// serial trainer's: loss within 1e-5 relative, every gradient tensor within
// 1e-4 in relative norm, for every router, score, capacity policy, the
// z-loss, router biases and packed documents.
func TestStepEqualsCPU(t *testing.T) {
	dev := device(t)
	cases := []struct {
		name   string
		edit   func(*model.Config)
		packed bool
		bias   bool
	}{
		{"topk", func(*model.Config) {}, false, false},
		{"topk-packed", func(*model.Config) {}, true, false},
		{"moge-sigmoid", func(c *model.Config) { c.Router, c.Groups, c.Score = "moge", 2, "sigmoid" }, false, false},
		{"group-limited-bias", func(c *model.Config) {
			c.Router, c.Groups, c.TopKGroups, c.BiasUpdateRate = "group_limited", 4, 2, 1e-3
		}, false, true},
		{"zloss-capacity-probability", func(c *model.Config) { c.ZLossCoef, c.CapacityFactor = 1e-3, 0.75 }, false, false},
		{"capacity-position-top3", func(c *model.Config) {
			c.CapacityFactor, c.DropPolicy, c.TopK = 1.0, "position", 3
		}, true, false},
		{"odd-sizes", func(c *model.Config) {
			c.Vocab, c.DModel, c.Heads, c.Experts, c.ExpertHidden = 250, 72, 3, 5, 52
		}, false, false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := smallConfig()
			tc.edit(&cfg)
			cpu := hostModel(t, cfg, uint64(10+i))
			if tc.bias {
				rng := rand.New(rand.NewPCG(uint64(i), 3))
				for j := range cpu.Balance.Flat {
					cpu.Balance.Flat[j] = float32(rng.NormFloat64() * 0.05)
				}
			}
			g, err := NewFromHost(dev, cpu)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			for round, shape := range [][2]int{{3, 80}, {2, 33}} { // a smaller second batch reuses the buffers
				in := batch(cfg, shape[0], shape[1], tc.packed, uint64(100*i+round))
				want, err := cpu.ForwardBackward(in)
				if err != nil {
					t.Fatal(err)
				}
				got, err := g.ForwardBackward(in)
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range []struct {
					what      string
					got, want float64
				}{{"loss", got.Loss, want.Loss}, {"ce", got.CE, want.CE}, {"aux", got.Aux, want.Aux}, {"zloss", got.ZLoss, want.ZLoss}} {
					if d := math.Abs(c.got - c.want); d > 1e-5*math.Max(math.Abs(c.want), 1e-3) {
						t.Errorf("round %d %s = %.9g, CPU %.9g", round, c.what, c.got, c.want)
					}
				}
				if got.Targets != want.Targets {
					t.Errorf("targets %d, CPU %d", got.Targets, want.Targets)
				}
				grads := make([]float32, cpu.Layout.Total)
				if err := g.Grads(grads); err != nil {
					t.Fatal(err)
				}
				for _, e := range cpu.Layout.Entries {
					if r := relNorm(e.Slice(grads), e.Slice(cpu.Grads)); !(r <= 1e-4) {
						t.Errorf("round %d gradient %s: relative error %.3g", round, e.Name, r)
					}
				}
				wantLoad, gotLoad := cpu.RoutedLoad(), g.RoutedLoad()
				for l := range wantLoad {
					for x := range wantLoad[l] {
						if wantLoad[l][x] != gotLoad[l][x] {
							t.Fatalf("round %d layer %d routed load %v, CPU %v", round, l, gotLoad[l], wantLoad[l])
						}
					}
				}
			}
		})
	}
}

// TestTrainingStepsEqualCPU: five AdamW steps (with clipping) on the GPU
// track the CPU trainer's parameters within 1e-4 relative.
func TestTrainingStepsEqualCPU(t *testing.T) {
	dev := device(t)
	cfg := smallConfig()
	ocfg := optim.DefaultConfig()
	cpu := hostModel(t, cfg, 5)
	g, err := NewFromHost(dev, cpu)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	copt, _ := optim.NewAdamW(ocfg, 0, cpu.Layout.Total)
	gopt, err := NewAdamW(dev, ocfg, cpu.Layout.Total)
	if err != nil {
		t.Fatal(err)
	}
	defer gopt.Close()
	for step := 1; step <= 5; step++ {
		in := batch(cfg, 2, 64, false, uint64(step))
		if _, err := cpu.ForwardBackward(in); err != nil {
			t.Fatal(err)
		}
		if _, err := g.ForwardBackward(in); err != nil {
			t.Fatal(err)
		}
		norm := optim.GlobalNorm(cpu.Grads)
		gnorm, err := gopt.GradNorm(g.GradsPtr())
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(gnorm-norm) > 1e-4*norm {
			t.Fatalf("step %d grad norm %g, CPU %g", step, gnorm, norm)
		}
		scale := optim.ClipScale(norm, 0.5)
		ss, _ := copt.Update(cpu.Params, cpu.Grads, step, 1e-3, scale)
		gss, err := gopt.Update(g.ParamsPtr(), g.GradsPtr(), step, 1e-3, scale)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(gss-ss) > 1e-4*ss {
			t.Fatalf("step %d Σg² %g, CPU %g", step, gss, ss)
		}
	}
	p := make([]float32, cpu.Layout.Total)
	if err := g.Params(p); err != nil {
		t.Fatal(err)
	}
	if r := relNorm(p, cpu.Params); r > 1e-4 {
		t.Fatalf("parameters after 5 steps: relative error %g", r)
	}
	m, v := make([]float32, cpu.Layout.Total), make([]float32, cpu.Layout.Total)
	if err := gopt.Moments(m, v); err != nil {
		t.Fatal(err)
	}
	if r := relNorm(m, copt.M); r > 1e-3 {
		t.Fatalf("first moment: relative error %g", r)
	}
}

// TestBF16StepCloseToFP32: a mixed-precision step is the fp32 step up to
// bf16 rounding: loss within 1e-2 relative, every gradient tensor within
// 0.25 in relative norm. Rounding also flips some tokens' expert choices
// (bf16 router inputs), which moves whole rows between experts: that put a
// few expert tensors near 0.11 on an H100; an indexing or type error gives
// O(1).
func TestBF16StepCloseToFP32(t *testing.T) {
	dev := device(t)
	for i, edit := range []func(*model.Config){
		func(*model.Config) {},
		func(c *model.Config) { c.Router, c.Groups, c.Score, c.ZLossCoef = "moge", 2, "sigmoid", 1e-3 },
	} {
		cfg := smallConfig()
		edit(&cfg)
		cpu := hostModel(t, cfg, uint64(20+i))
		g, err := NewFromHost(dev, cpu)
		if err != nil {
			t.Fatal(err)
		}
		in := batch(cfg, 3, 80, i == 1, uint64(i))
		// step runs a forward and backward of in: the result and the gradients.
		step := func() (model.Result, []float32) {
			r, err := g.ForwardBackward(in)
			if err != nil {
				t.Fatal(err)
			}
			grads := make([]float32, cpu.Layout.Total)
			if err := g.Grads(grads); err != nil {
				t.Fatal(err)
			}
			return r, grads
		}
		want, wantG := step()
		if err := g.SetPrecision(true); err != nil {
			t.Fatal(err)
		}
		got, gotG := step()
		if d := math.Abs(got.Loss - want.Loss); !(d <= 1e-2*want.Loss) {
			t.Errorf("case %d: bf16 loss %.6g, fp32 %.6g", i, got.Loss, want.Loss)
		}
		for _, e := range cpu.Layout.Entries {
			if r := relNorm(e.Slice(gotG), e.Slice(wantG)); !(r <= 0.25) {
				t.Errorf("case %d: bf16 gradient %s: relative error %.3g", i, e.Name, r)
			}
		}
		g.Close()
	}
}

// TestBF16TracksFP32Over300Steps: the reference model trained 300 AdamW
// steps on the embedded corpus in bf16 mixed precision stays within 0.03
// of the fp32 GPU run's loss at steps 100, 200 and 300 (same initial
// weights, same batches), under the usual recipe for a run of that length:
// the learning rate 1e-3 reached by a linear warm-up over 100 steps, then a
// cosine decay to 1e-4 at step 300 (optim's "cosine" schedule). Logged for
// context, and not asserted: the fp32 control (initial weights multiplied
// by 1 + 1e-6·N(0,1): how far two fp32 runs drift apart from a difference
// far below bf16's rounding), two more weight seeds, and the same
// comparison at a constant 1e-3 from the first step (optim's default),
// where the control itself drifts past the bound (docs/gpu.md).
func TestBF16TracksFP32Over300Steps(t *testing.T) {
	dev := device(t)
	cfg := model.DefaultConfig()
	sampler := corpusSampler(t)
	const steps = 300
	batches := make([]model.Input, steps)
	for i := range batches {
		b, err := sampler.Next()
		if err != nil {
			t.Fatal(err)
		}
		batches[i] = model.Input{B: b.B, T: b.T, Tokens: b.Tokens, Targets: b.Targets, Pos: b.Pos, Seg: b.Seg}
	}
	recipe := optim.DefaultConfig()
	recipe.Schedule, recipe.WarmupSteps = "cosine", 100
	constant := optim.DefaultConfig()
	// run trains from seed's weights under ocfg's schedule; perturb
	// multiplies each initial weight by 1 + 1e-6·N(0,1).
	run := func(ocfg optim.Config, bf16 bool, seed uint64, perturb bool) []float64 {
		cpu := hostModel(t, cfg, seed)
		if perturb {
			rng := rand.New(rand.NewPCG(seed, 99))
			for i := range cpu.Params {
				cpu.Params[i] *= float32(1 + 1e-6*rng.NormFloat64())
			}
		}
		g, err := NewFromHost(dev, cpu)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		if err := g.SetPrecision(bf16); err != nil {
			t.Fatal(err)
		}
		opt, err := NewAdamW(dev, ocfg, cpu.Layout.Total)
		if err != nil {
			t.Fatal(err)
		}
		defer opt.Close()
		sched := optim.NewSchedule(ocfg, steps)
		losses := make([]float64, steps)
		for i, in := range batches {
			r, err := g.ForwardBackward(in)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := g.Update(opt, i+1, sched.LR(i), 1); err != nil {
				t.Fatal(err)
			}
			losses[i] = r.Loss
		}
		return losses
	}
	at := func(a, b []float64) [3]float64 { return [3]float64{a[99] - b[99], a[199] - b[199], a[299] - b[299]} }
	fp32, bf16 := run(recipe, false, 1, false), run(recipe, true, 1, false)
	for _, s := range []int{100, 200, 300} {
		d := bf16[s-1] - fp32[s-1]
		t.Logf("step %d: fp32 loss %.4f, bf16 %.4f (difference %+.4f)", s, fp32[s-1], bf16[s-1], d)
		if !(math.Abs(d) <= 0.03) {
			t.Errorf("step %d: bf16 loss %.4f differs from fp32 %.4f by %.4f (> 0.03)", s, bf16[s-1], fp32[s-1], d)
		}
	}
	t.Logf("control (perturbed fp32 minus fp32) at steps 100/200/300: %+.4f", at(run(recipe, false, 1, true), fp32))
	for _, seed := range []uint64{2, 3} {
		t.Logf("seed %d: bf16 minus fp32 at steps 100/200/300: %+.4f", seed, at(run(recipe, true, seed, false), run(recipe, false, seed, false)))
	}
	cf := run(constant, false, 1, false)
	t.Logf("constant lr 1e-3 from step 1: bf16 minus fp32 %+.4f; control %+.4f",
		at(run(constant, true, 1, false), cf), at(run(constant, false, 1, true), cf))
}
