package model

import (
	"math"
	"runtime"
	"strings"
	"testing"
)

// The estimate counts exactly the parameters the layout holds, whole or
// sharded.
func TestEstimateMemoryParams(t *testing.T) {
	small := Config{Vocab: 512, DModel: 64, Layers: 3, Heads: 4, SeqLen: 128, NormEps: 1e-5, Experts: 8, ExpertHidden: 96,
		TopK: 2, InitStd: 0.02, Router: "topk", Score: "softmax", Groups: 1, DropPolicy: "probability"}
	for _, cfg := range []Config{DefaultConfig(), small} {
		for _, sh := range []Shard{Whole, {TP: 2, EP: 1}, {TP: 1, EP: 4, EPRank: 3}, {TP: 4, TPRank: 1, EP: 2, EPRank: 1}} {
			l, err := NewShardLayout(cfg, sh)
			if err != nil {
				t.Fatal(err)
			}
			if got := EstimateMemory(cfg, sh, 1).Params; got != float64(l.Total) {
				t.Errorf("%+v: estimate counts %v parameters, the layout holds %d", sh, got, l.Total)
			}
		}
	}
}

// What building a model and one training step allocate stays within the
// estimate (less the optimizer, which the model does not hold).
func TestEstimateMemoryCoversModel(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Layers = 2
	const b, tl = 4, 64
	in := randomInput(cfg, b, tl, 1)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	m := mustNew(t, cfg)
	if _, err := m.ForwardBackward(in); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	est := EstimateMemory(cfg, Whole, b*tl)
	used := float64(after.TotalAlloc - before.TotalAlloc)
	if budget := est.Total() - est.OptimBytes; used > budget {
		t.Fatalf("a model and one step allocated %s, the estimate without the optimizer is %s (%v)", FormatBytes(used), FormatBytes(budget), est)
	}
	t.Logf("allocated %s; estimate %v", FormatBytes(used), est)
}

// Any configuration has an estimate, however large or invalid its sizes,
// and one past MaxRankMemory is refused with the estimate in the error.
func TestEstimateMemoryRefusesHuge(t *testing.T) {
	huge := DefaultConfig()
	huge.DModel = 1 << 40
	many := DefaultConfig()
	many.Experts = 1 << 30
	neg := DefaultConfig()
	neg.DModel, neg.Layers, neg.Vocab = -5, math.MinInt, 0
	for _, tc := range []struct {
		cfg  Config
		sh   Shard
		fits bool
	}{
		{DefaultConfig(), Whole, true},
		{huge, Whole, false},
		{many, Shard{EP: 8}, false},
		{neg, Shard{TP: -1}, true},
	} {
		m := EstimateMemory(tc.cfg, tc.sh, 2048)
		err := m.Check()
		if (err == nil) != tc.fits {
			t.Fatalf("d_model %d, experts %d: Check = %v", tc.cfg.DModel, tc.cfg.Experts, err)
		}
		if err != nil && (!strings.Contains(err.Error(), "estimated memory per rank") || !strings.Contains(err.Error(), "parameters")) {
			t.Fatalf("error without the estimate: %v", err)
		}
		if err != nil {
			t.Log(err)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for _, tc := range []struct {
		n    float64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {1536, "1.5 KiB"}, {1 << 40, "1.0 TiB"}, {math.Pow(2, 90), "1.07e+09 EiB"}} {
		if got := FormatBytes(tc.n); got != tc.want {
			t.Errorf("FormatBytes(%v) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
