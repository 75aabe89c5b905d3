package model

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/moetrain/moetrain/moe"
)

func TestRouterConfigValidate(t *testing.T) {
	cases := []validateCase{
		{func(c *Config) { c.Score = "relu" }, `model.score = "relu"`},
		{func(c *Config) { c.DropPolicy = "random" }, `model.drop_policy = "random"`},
		{func(c *Config) { c.Router, c.Groups = "moge", 3 }, "model.groups = 3: must divide model.experts = 8"},
		{func(c *Config) { c.Router, c.Groups = "moge", 4 }, "model.groups = 4: must divide model.top_k = 2"},
		{func(c *Config) { c.Groups = -1 }, "model.groups = -1"},
		{func(c *Config) { c.Router, c.Groups, c.TopKGroups = "group_limited", 4, 5 }, "model.topk_groups = 5"},
		{func(c *Config) { c.Router, c.Groups, c.TopKGroups, c.TopK = "group_limited", 8, 1, 2 }, "model.topk_groups = 1: its 1 experts are fewer than model.top_k = 2"},
		{func(c *Config) { c.ZLossCoef = -1 }, "model.z_loss_coef"},
		{func(c *Config) { c.BiasUpdateRate = -0.1 }, "model.bias_update_rate"},
		{func(c *Config) { c.CapacityFactor = -1 }, "model.capacity_factor"},
		{func(c *Config) { c.Router = "magic" }, `model.router = "magic"`},
	}
	checkValidate(t, cases)
	for _, mut := range []func(*Config){
		func(c *Config) { c.Router, c.Groups = "moge", 2 },
		func(c *Config) { c.Router, c.Groups, c.TopKGroups, c.Score = "group_limited", 4, 2, "sigmoid" },
		func(c *Config) {
			c.CapacityFactor, c.DropPolicy, c.ZLossCoef, c.BiasUpdateRate = 1.25, "position", 1e-3, 1e-3
		},
		func(c *Config) { c.Score, c.DropPolicy, c.Groups = "", "", 0 }, // a [model] table without the new keys
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("valid config rejected: %v", err)
		}
	}
}

// TestDefaultRouterIsReference: the default configuration builds exactly
// the reference router (plain top-k, zero options but the exchange's, which
// only act under expert parallelism: chunk count chosen at run time, fp32),
// so the reference model is unchanged.
func TestDefaultRouterIsReference(t *testing.T) {
	r, err := NewRouter(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	want := moe.TopK{Opts: moe.Options{Exchange: moe.ExchangeOptions{Chunks: 1, DType: moe.FP32}}}
	if r != want {
		t.Fatalf("default router %#v, want %#v", r, want)
	}
	if b := NewRouterState(DefaultConfig()).Layer(0); b != nil {
		t.Fatalf("default bias %v, want nil (balancing off)", b)
	}
}

func TestRouterStateUpdate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Layers, cfg.Experts, cfg.BiasUpdateRate = 2, 4, 0.25
	s := NewRouterState(cfg)
	if err := s.Update([][]int{{4, 0, 2, 2}, {1, 1, 1, 1}}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Layer(0), []float32{-0.25, 0.25, 0, 0}) || !slices.Equal(s.Layer(1), []float32{0, 0, 0, 0}) {
		t.Fatalf("biases %v, want layer 0 [-0.25 0.25 0 0], layer 1 zeros", s.Flat)
	}
	if err := s.Update([][]int{{1, 2, 3, 4}}); err == nil {
		t.Fatal("load of 1 layer accepted for 2")
	}
	if err := s.SetFlat(make([]float32, 7)); err == nil {
		t.Fatal("7 bias values accepted for 2·4")
	}
	frozen := NewRouterState(DefaultConfig())
	if err := frozen.SetFlat(append(make([]float32, len(frozen.Flat)-1), 0.5)); err != nil {
		t.Fatal(err)
	}
	if b := frozen.Layer(frozen.Layers - 1); b == nil || b[len(b)-1] != 0.5 {
		t.Fatalf("a restored non-zero bias must apply even with rate 0; got %v", b)
	}
}

func TestRouterLoadAndStats(t *testing.T) {
	cfg := tinyConfig()
	m, err := New(cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Router, cfg.Groups = "moge", 2
	if m.Router, err = NewRouter(cfg); err != nil {
		t.Fatal(err)
	}
	in := randomInput(cfg, 2, 8, 5)
	if _, err := m.Forward(in, false); err != nil {
		t.Fatal(err)
	}
	load := m.RoutedLoad()
	stats, err := m.RouterStats(2)
	if err != nil {
		t.Fatal(err)
	}
	n := in.B * in.T
	for l, st := range stats {
		sum := 0
		for _, c := range load[l] {
			sum += c
		}
		if sum != n*cfg.TopK || !slices.Equal(st.PerExpert, load[l]) || st.IS != 0 || !slices.Equal(st.PerRank, []int{n, n}) {
			t.Fatalf("layer %d: load %v, stats %+v; want %d slots, per rank [%d %d], IS 0", l, load[l], st, n*cfg.TopK, n, n)
		}
	}
	if _, err := m.RouterStats(3); err == nil {
		t.Fatal("EP degree 3 accepted for 4 experts")
	}
}

// TestModelGradCheckRouters runs the whole-model gradient check with every
// router kind, sigmoid scores and capacity drops, the router swapped into a
// default model (TestModelWiredRouterGradCheck covers the routers built by
// New, with z-loss and selection biases).
func TestModelGradCheckRouters(t *testing.T) {
	for ci, mut := range []func(*Config){
		func(c *Config) { c.Router, c.Groups = "moge", 2 },
		func(c *Config) { c.Router, c.Groups, c.TopKGroups, c.Score = "group_limited", 2, 1, "sigmoid" },
		func(c *Config) { c.CapacityFactor, c.DropPolicy = 0.75, "position" },
		func(c *Config) { c.Router, c.Groups, c.CapacityFactor, c.Score = "moge", 2, 0.8, "sigmoid" },
	} {
		cfg := tinyConfig()
		mut(&cfg)
		m, err := New(tinyConfig(), 1)
		if err != nil {
			t.Fatal(err)
		}
		if m.Router, err = NewRouter(cfg); err != nil {
			t.Fatal(err)
		}
		in := randomInput(cfg, 2, 8, 3)
		in.Targets[5] = -1
		if _, err := m.ForwardBackward(in); err != nil {
			t.Fatal(err)
		}
		checkModelGradFD(t, ci, m, in, cfg.CapacityFactor > 0)
	}
}

// checkModelGradFD compares m.Grads, from a ForwardBackward on in just run,
// with float64 finite differences of the loss at a sample of every layout
// entry's coordinates, skipping those whose perturbation changes a routing
// or capacity-slot decision. wantDrops asserts that the capacity dropped a
// slot (else the case would not exercise it).
func checkModelGradFD(t *testing.T, ci int, m *Model, in Input, wantDrops bool) {
	t.Helper()
	grad := slices.Clone(m.Grads)
	snapshot := func() []int32 {
		out := routingSnapshot(m)
		for l := range m.acts.Layers {
			out = append(out, m.acts.Layers[l].MoE.Plan.SlotOf...)
		}
		return out
	}
	base := snapshot()
	dropped := 0
	for l := range m.acts.Layers {
		dropped += m.acts.Layers[l].MoE.Plan.Dropped
	}
	if wantDrops && dropped == 0 {
		t.Fatalf("case %d: no slot dropped; the case does not exercise capacity", ci)
	}
	loss := func() float64 {
		r, err := m.Forward(in, false)
		if err != nil {
			t.Fatal(err)
		}
		return r.Loss
	}
	stable := func() bool { return slices.Equal(snapshot(), base) }
	r := rand.New(rand.NewPCG(9, uint64(ci)))
	total := 0
	for _, e := range m.Layout.Entries {
		p, g := e.Slice(m.Params), e.Slice(grad)
		total += fdCheck(t, e.Name, p, g, sampleIdx(len(p), 6, r), 1e-2, loss, stable)
	}
	if total < len(m.Layout.Entries)*3 {
		t.Fatalf("case %d: only %d coordinates had stable routing; the check is too weak", ci, total)
	}
}
