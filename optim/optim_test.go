package optim

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// refAdamW is torch.optim.AdamW's update in float64.
func refAdamW(p, m, v, g []float64, t int, lr, b1, b2, eps, wd float64) {
	for i := range p {
		p[i] -= lr * wd * p[i]
		m[i] = b1*m[i] + (1-b1)*g[i]
		v[i] = b2*v[i] + (1-b2)*g[i]*g[i]
		mh := m[i] / (1 - math.Pow(b1, float64(t)))
		vh := v[i] / (1 - math.Pow(b2, float64(t)))
		p[i] -= lr * mh / (math.Sqrt(vh) + eps)
	}
}

func TestAdamWMatchesReference(t *testing.T) {
	cfg := DefaultConfig()
	cfg.WeightDecay = 0.1
	const n = 37
	r := rand.New(rand.NewPCG(1, 1))
	p := make([]float32, n)
	p64, m64, v64 := make([]float64, n), make([]float64, n), make([]float64, n)
	for i := range p {
		p[i] = float32(r.NormFloat64())
		p64[i] = float64(p[i])
	}
	o, err := NewAdamW(cfg, 0, n)
	if err != nil {
		t.Fatal(err)
	}
	g := make([]float32, n)
	g64 := make([]float64, n)
	for step := 1; step <= 5; step++ {
		for i := range g {
			g[i] = float32(r.NormFloat64() * 0.1)
			g64[i] = float64(g[i])
		}
		ss, err := o.Update(p, g, step, 0.01, 1)
		if err != nil {
			t.Fatal(err)
		}
		if want := GlobalNorm(g); math.Abs(math.Sqrt(ss)-want) > 1e-12*want {
			t.Fatalf("fused norm %v, GlobalNorm %v", math.Sqrt(ss), want)
		}
		refAdamW(p64, m64, v64, g64, step, 0.01, cfg.Beta1, cfg.Beta2, cfg.Eps, cfg.WeightDecay)
	}
	for i := range p {
		if math.Abs(float64(p[i])-p64[i]) > 1e-5*(1+math.Abs(p64[i])) {
			t.Fatalf("p[%d] = %v, reference %v", i, p[i], p64[i])
		}
	}
}

// TestAdamWShards: updating [0,k) and [k,n) with two optimizers equals one
// full update bitwise (what ZeRO-1 relies on).
func TestAdamWShards(t *testing.T) {
	cfg := DefaultConfig()
	const n, k = 1000, 413
	r := rand.New(rand.NewPCG(2, 2))
	full := make([]float32, n)
	g := make([]float32, n)
	for i := range full {
		full[i] = float32(r.NormFloat64())
		g[i] = float32(r.NormFloat64())
	}
	sharded, start := slices.Clone(full), slices.Clone(full)
	of, _ := NewAdamW(cfg, 0, n)
	o1, _ := NewAdamW(cfg, 0, k)
	o2, _ := NewAdamW(cfg, k, n)
	for step := 1; step <= 3; step++ {
		for _, u := range []struct {
			o   *AdamW
			buf []float32
		}{{of, full}, {o1, sharded}, {o2, sharded}} {
			if _, err := u.o.Update(u.buf, g, step, 1e-3, 0.5); err != nil {
				t.Fatalf("step %d, range [%d, %d): %v", step, u.o.Lo, u.o.Hi, err)
			}
		}
	}
	if !slices.Equal(full, sharded) {
		t.Fatal("sharded update differs from the full update")
	}
	if slices.Equal(full, start) {
		t.Fatal("three updates left the parameters unchanged")
	}
	if _, err := o2.Update(sharded[:500], g, 1, 1e-3, 1); err == nil {
		t.Fatal("update beyond the buffer accepted")
	}
}

func TestSchedules(t *testing.T) {
	c := WarmupCosine{Peak: 1, Min: 0.1, Warmup: 10, Decay: 110}
	for _, tc := range []struct {
		step int
		want float64
	}{{0, 0.1}, {9, 1}, {10, 1}, {60, 0.55}, {110, 0.1}, {500, 0.1}} {
		if got := c.LR(tc.step); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("cosine LR(%d) = %v, want %v", tc.step, got, tc.want)
		}
	}
	cfg := DefaultConfig()
	if s := NewSchedule(cfg, 100); s.LR(0) != cfg.LR || s.LR(99) != cfg.LR {
		t.Error("constant schedule is not constant")
	}
	cfg.Schedule = "cosine"
	if s := NewSchedule(cfg, 100); s.LR(100) != cfg.LR*cfg.MinLRRatio {
		t.Errorf("cosine with decay_steps 0 ends at %v, want %v at train.steps", s.LR(100), cfg.LR*cfg.MinLRRatio)
	}
}

func TestClip(t *testing.T) {
	g := []float32{3, 4}
	n := GlobalNorm(g)
	if n != 5 {
		t.Fatalf("norm %v, want 5", n)
	}
	if s := ClipScale(n, 0); s != 1 {
		t.Fatalf("clip disabled gives scale %v", s)
	}
	if s := ClipScale(n, 10); s != 1 {
		t.Fatalf("norm within bound gives scale %v", s)
	}
	if s := ClipScale(n, 1); math.Abs(s*5-1) > 1e-6 {
		t.Fatalf("clip to 1 gives scale %v", s)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.LR, c.Beta2, c.Schedule, c.ClipNorm = 0, 1, "linear", -1
	err := c.Validate()
	for _, key := range []string{"optim.lr", "optim.beta2", "optim.schedule", "optim.clip_norm"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("error %v does not name %s", err, key)
		}
	}
	c = DefaultConfig()
	c.Schedule, c.WarmupSteps, c.DecaySteps = "cosine", 10, 10
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "optim.decay_steps") {
		t.Errorf("decay_steps <= warmup_steps: error %v does not name optim.decay_steps", err)
	}
	c.DecaySteps = 0 // train.steps stands in, which this section cannot see
	if err := c.Validate(); err != nil {
		t.Errorf("cosine with decay_steps 0: %v", err)
	}
}
