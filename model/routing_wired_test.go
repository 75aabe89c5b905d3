// Tests of the router wiring of model.New/Forward (Model.Balance,
// Result.ZLoss).

package model

import (
	"testing"
)

// TestModelWiredRouterGradCheck: the whole-model gradient check through
// model.New with z-loss, selection biases and capacity, for every router.
func TestModelWiredRouterGradCheck(t *testing.T) {
	for ci, mut := range []func(*Config){
		func(c *Config) { c.ZLossCoef = 0.2 },
		func(c *Config) { c.Router, c.Groups, c.ZLossCoef, c.BiasUpdateRate = "moge", 2, 0.2, 0.01 },
		func(c *Config) {
			c.Router, c.Groups, c.TopKGroups, c.Score = "group_limited", 2, 1, "sigmoid"
			c.ZLossCoef, c.BiasUpdateRate, c.CapacityFactor = 0.2, 0.01, 0.8
		},
	} {
		cfg := tinyConfig()
		mut(&cfg)
		m := mustNew(t, cfg)
		if cfg.BiasUpdateRate > 0 {
			b := make([]float32, len(m.Balance.Flat))
			for i := range b {
				b[i] = 0.05 * float32((i*7)%5-2)
			}
			if err := m.Balance.SetFlat(b); err != nil {
				t.Fatal(err)
			}
		}
		in := randomInput(cfg, 2, 8, 3)
		in.Targets[5] = -1
		res, err := m.ForwardBackward(in)
		if err != nil {
			t.Fatal(err)
		}
		if res.ZLoss <= 0 || res.Loss <= res.CE+cfg.AuxCoef*res.Aux {
			t.Fatalf("case %d: z-loss %v not in the loss %v (CE %v, aux %v)", ci, res.ZLoss, res.Loss, res.CE, res.Aux)
		}
		checkModelGradFD(t, ci, m, in, cfg.CapacityFactor > 0)
	}
}

// TestModelWiredBiasUpdate: after each step's Balance.Update(RoutedLoad())
// the biases move by ±rate, and with the rate at 0 they stay nil.
func TestModelWiredBiasUpdate(t *testing.T) {
	cfg := tinyConfig()
	cfg.BiasUpdateRate = 0.01
	m := mustNew(t, cfg)
	in := randomInput(cfg, 2, 8, 3)
	if _, err := m.Forward(in, false); err != nil {
		t.Fatal(err)
	}
	load := m.RoutedLoad()
	if err := m.Balance.Update(load); err != nil {
		t.Fatal(err)
	}
	for l := range load {
		for e, b := range m.Balance.Layer(l) {
			if b != 0 && b != 0.01 && b != -0.01 {
				t.Fatalf("layer %d expert %d bias %v after one update of 0.01", l, e, b)
			}
		}
	}
	def, _ := New(tinyConfig(), 1)
	if def.Balance.Layer(0) != nil {
		t.Fatal("bias active with bias_update_rate = 0")
	}
}
