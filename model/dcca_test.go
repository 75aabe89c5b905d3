package model

import (
	"slices"
	"strings"
	"testing"
)

func dccaConfig() Config {
	cfg := tinyConfig()
	cfg.MoELayout, cfg.DispatchDim = "dcca", 4
	return cfg
}

// TestDCCAModelGradCheck is TestModelGradCheck for the DCCA layout: every
// tensor, the projections moe_down and moe_up included.
func TestDCCAModelGradCheck(t *testing.T) {
	cfg := dccaConfig()
	m := mustNew(t, cfg)
	for _, name := range []string{"layers.0.moe_down", "layers.1.moe_up"} {
		if _, ok := m.Layout.Lookup(name); !ok {
			t.Fatalf("layout has no %s", name)
		}
	}
	if e, _ := m.Layout.Lookup("layers.0.w1"); !slices.Equal(e.Shape, []int{cfg.Experts, cfg.ExpertHidden, cfg.DispatchDim}) {
		t.Fatalf("w1 shape %v, want experts at dispatch_dim", e.Shape)
	}
	checkModelGradients(t, m, cfg)
}

// The layout keys are validated with errors naming them, and the memory
// estimate counts the DCCA layout's parameters exactly.
func TestDCCAConfig(t *testing.T) {
	for _, c := range []struct {
		layout string
		dim    int
		want   string
	}{
		{"dcca", 0, "model.dispatch_dim = 0"},
		{"dcca", 17, "model.dispatch_dim = 17"},
		{"standard", 4, "only the \"dcca\" moe_layout"},
		{"bigmac", 4, "model.moe_layout = \"bigmac\""},
	} {
		cfg := tinyConfig()
		cfg.MoELayout, cfg.DispatchDim = c.layout, c.dim
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s/%d: error %v, want %q", c.layout, c.dim, err, c.want)
		}
	}
	for _, bad := range []Config{{DispatchDType: "fp16"}, {EPChunks: -2}, {EPChunks: 17}} {
		cfg := tinyConfig()
		cfg.DispatchDType, cfg.EPChunks = bad.DispatchDType, bad.EPChunks
		if err := cfg.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	cfg := dccaConfig()
	for _, sh := range []Shard{Whole, {TP: 1, EP: 2, EPRank: 1}, {TP: 2, TPRank: 1, EP: 2}} {
		l, err := NewShardLayout(cfg, sh)
		if err != nil {
			t.Fatal(err)
		}
		if got := EstimateMemory(cfg, sh, 16).Params; got != float64(l.Total) {
			t.Errorf("shard %+v: estimate counts %g parameters, layout has %d", sh, got, l.Total)
		}
	}
}
