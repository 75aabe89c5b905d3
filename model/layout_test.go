package model

import (
	"math"
	"strings"
	"testing"
)

func TestReferenceParamCount(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	l := NewLayout(cfg)
	if l.Total != 9_644_288 {
		t.Fatalf("reference model has %d parameters, want 9,644,288", l.Total)
	}
}

func TestLayoutContiguousAndViews(t *testing.T) {
	cfg := tinyConfig()
	l := NewLayout(cfg)
	off := 0
	for _, e := range l.Entries {
		if e.Offset != off {
			t.Fatalf("%s at offset %d, want %d (entries must tile the buffer)", e.Name, e.Offset, off)
		}
		off += e.Size()
	}
	if off != l.Total {
		t.Fatalf("entries cover %d elements, Total %d", off, l.Total)
	}
	buf := make([]float32, l.Total)
	w := l.Views(buf)
	if len(w.Layers) != cfg.Layers {
		t.Fatalf("%d layer views, want %d", len(w.Layers), cfg.Layers)
	}
	// Writing through a view writes the named entry of the buffer.
	w.Layers[1].Router[3] = 42
	e, ok := l.Lookup("layers.1.router")
	if !ok || buf[e.Offset+3] != 42 {
		t.Fatalf("view of layers.1.router does not alias the flat buffer")
	}
	if got := len(w.Layers[0].W1); got != cfg.Experts*cfg.ExpertHidden*cfg.DModel {
		t.Fatalf("w1 view has %d elements", got)
	}
}

func TestInitParamsDeterministic(t *testing.T) {
	cfg := tinyConfig()
	l := NewLayout(cfg)
	a, b, c := make([]float32, l.Total), make([]float32, l.Total), make([]float32, l.Total)
	l.InitParams(a, cfg.InitStd, 5)
	l.InitParams(b, cfg.InitStd, 5)
	l.InitParams(c, cfg.InitStd, 6)
	same, differ := true, false
	for i := range a {
		same = same && a[i] == b[i]
		differ = differ || a[i] != c[i]
	}
	if !same || !differ {
		t.Fatalf("init: same seed equal=%v, different seed differs=%v", same, differ)
	}
	e, _ := l.Lookup("layers.0.ln1")
	for _, v := range e.Slice(a) {
		if v != 1 {
			t.Fatalf("norm weight initialised to %v, want 1", v)
		}
	}
}

// validateCase is a change to the default config and a part of the error
// Validate must return for it.
type validateCase struct {
	mut  func(*Config)
	want string
}

// checkValidate applies each case to DefaultConfig and checks Validate's error.
func checkValidate(t *testing.T, cases []validateCase) {
	t.Helper()
	for _, tc := range cases {
		c := DefaultConfig()
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []validateCase{
		{func(c *Config) { c.DModel = 250 }, "model.d_model = 250: must be a multiple of model.heads"},
		{func(c *Config) { c.TopK = 9 }, "model.top_k = 9"},
		{func(c *Config) { c.Layers = 0 }, "model.layers = 0"},
		{func(c *Config) { c.NormEps = 0 }, "model.norm_eps"},
		{func(c *Config) { c.AuxCoef = -1 }, "model.aux_coef"},
		{func(c *Config) { c.Router = "magic" }, `model.router = "magic"`},
	}
	checkValidate(t, cases)
}

// The DCCA projections start scale-preserving (N(0, 1/fan_in)), every other
// matrix N(0, init_std²): checked on the reference size's layer (R = 64).
func TestInitFanInScales(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MoELayout, cfg.DispatchDim, cfg.ExpertHidden = "dcca", 64, 2016
	l := NewLayout(cfg)
	params := make([]float32, l.Total)
	l.InitParams(params, cfg.InitStd, 1)
	for _, tc := range []struct {
		name string
		want float64
	}{
		{"layers.0.moe_down", 1 / math.Sqrt(float64(cfg.DModel))},
		{"layers.0.moe_up", 1 / math.Sqrt(64)},
		{"layers.0.w1", cfg.InitStd},
		{"layers.0.router", cfg.InitStd},
	} {
		e, ok := l.Lookup(tc.name)
		if !ok {
			t.Fatalf("no %s", tc.name)
		}
		var ss float64
		x := e.Slice(params)
		for _, v := range x {
			ss += float64(v) * float64(v)
		}
		if got := math.Sqrt(ss / float64(len(x))); math.Abs(got/tc.want-1) > 0.05 {
			t.Errorf("%s: std %.4f, want %.4f", tc.name, got, tc.want)
		}
	}
}
