package rankbench

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/train"
)

// tinyRoutingJob is a model small enough for a few steps in milliseconds,
// with 8 experts so that ep 2 and 4 split them.
func tinyRoutingJob() train.JobConfig {
	cfg := train.DefaultJobConfig()
	cfg.Model.DModel, cfg.Model.Layers, cfg.Model.Heads, cfg.Model.SeqLen = 16, 2, 2, 16
	cfg.Model.Experts, cfg.Model.ExpertHidden = 8, 32
	cfg.Data.SeqLen, cfg.Data.BatchSize = 16, 2
	return cfg
}

func TestRoutingCases(t *testing.T) {
	cases, err := RoutingCases(DefaultRoutingCases, 4, 4, 0.01, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]RoutingCase{
		"topk":          {Name: "topk", Router: "topk", TopK: 4, Groups: 1},
		"moge":          {Name: "moge", Router: "moge", TopK: 4, Groups: 4},
		"group_limited": {Name: "group_limited", Router: "group_limited", TopK: 4, Groups: 4, TopKGroups: 2},
		"topk+cap1.25":  {Name: "topk+cap1.25", Router: "topk", TopK: 4, Groups: 1, CapacityFactor: 1.25},
		"topk+bias":     {Name: "topk+bias", Router: "topk", TopK: 4, Groups: 1, BiasRate: 0.01},
	}
	if len(cases) != len(want) {
		t.Fatalf("got %d cases, want %d", len(cases), len(want))
	}
	for i, c := range cases {
		if c.Name != DefaultRoutingCases[i] || c != want[c.Name] {
			t.Errorf("case %d: got %+v, want %+v", i, c, want[c.Name])
		}
	}
	// The job's balancing rate carries over to the other cases.
	cases, err = RoutingCases([]string{"moge", "topk+cap2"}, 2, 2, 0.05, 0.001)
	if err != nil {
		t.Fatal(err)
	}
	if cases[0].BiasRate != 0.001 || cases[1].CapacityFactor != 2 || cases[0].TopKGroups != 0 {
		t.Errorf("got %+v", cases)
	}
	for _, bad := range []struct {
		names []string
		want  string
	}{
		{nil, "no router configurations"},
		{[]string{"topk", "topk"}, "given twice"},
		{[]string{"switch"}, `unknown router configuration "switch"`},
		{[]string{"topk+capx"}, "capacity factor"},
		{[]string{"topk+cap0"}, "capacity factor"},
		{[]string{"topk+cap-1"}, "capacity factor"},
	} {
		if _, err := RoutingCases(bad.names, 4, 4, 0.01, 0); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: error %v, want one containing %q", bad.names, err, bad.want)
		}
	}
}

func TestNewRoutingBenchSpec(t *testing.T) {
	job := tinyRoutingJob()
	cases, err := RoutingCases([]string{"moge"}, 4, 4, 0.01, 0)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewRoutingBenchSpec(job, cases[0], 4, 0.2, 1, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	if s.Job.Mesh.DP != 4 || s.Job.Mesh.EP != 4 || s.Job.Model.Router != "moge" || s.Job.Model.Groups != 4 || s.Job.Model.TopK != 4 || s.Job.Train.Steps != 4 {
		t.Errorf("spec job: mesh %+v, model %+v, steps %d", s.Job.Mesh, s.Job.Model, s.Job.Train.Steps)
	}
	// MoGE with 4 groups cannot take k = 3.
	bad := cases[0]
	bad.TopK = 3
	if _, err := NewRoutingBenchSpec(job, bad, 4, 0.2, 1, 3, 1); err == nil || !strings.Contains(err.Error(), `"moge"`) || !strings.Contains(err.Error(), "top_k") {
		t.Errorf("moge with k = 3 over 4 groups: error %v", err)
	}
	for _, c := range []struct {
		ep, warmup, steps, threads int
		skew                       float64
		want                       string
	}{
		{1, 1, 3, 1, 0.2, "at least 2"},
		{4, -1, 3, 1, 0.2, "warmup"},
		{4, 1, 0, 1, 0.2, "steps"},
		{4, 1, 3, 0, 0.2, "threads"},
		{4, 1, 3, 1, -1, "skew"},
		{3, 1, 3, 1, 0.2, "mesh.ep = 3"},
	} {
		if _, err := NewRoutingBenchSpec(job, cases[0], c.ep, c.skew, c.warmup, c.steps, c.threads); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one containing %q", c, err, c.want)
		}
	}
}

func TestSkewRouterBias(t *testing.T) {
	cfg := model.DefaultConfig()
	rs := model.NewRouterState(cfg)
	if err := SkewRouterBias(rs, 4, 0.5); err != nil {
		t.Fatal(err)
	}
	for i, v := range rs.Flat {
		want := float32(0)
		if i%cfg.Experts < cfg.Experts/4 {
			want = 0.5
		}
		if v != want {
			t.Fatalf("bias[%d] (layer %d, expert %d) = %v, want %v", i, i/cfg.Experts, i%cfg.Experts, v, want)
		}
	}
	if rs.Layer(0) == nil {
		t.Error("a skewed bias with balancing off must still be applied (Layer returned nil)")
	}
	if err := SkewRouterBias(rs, 3, 0.5); err == nil {
		t.Error("ep = 3 over 8 experts: no error")
	}
}

func TestSummarizeRouting(t *testing.T) {
	spec := RoutingBenchSpec{Case: RoutingCase{Name: "x"}, Steps: 3, Job: train.JobConfig{}}
	spec.Job.Mesh.DP, spec.Job.Mesh.EP = 2, 2
	ms := func(v float64) time.Duration { return time.Duration(v * 1e6) }
	good := func() []RoutingRankResult {
		return []RoutingRankResult{
			{Rank: 1, Steps: []RoutingStep{{Wall: ms(5), CPU: ms(1), Loss: 3}, {Wall: ms(1), CPU: ms(8), Loss: 2}, {Wall: ms(9), CPU: ms(2), Loss: 1}}},
			{Rank: 0, Steps: []RoutingStep{{Wall: ms(4), CPU: ms(3), Loss: 3, IS: 1}, {Wall: ms(7), CPU: ms(6), Loss: 2, IS: 0.5, DropRate: 0.75}, {Wall: ms(2), CPU: ms(4), Loss: 1, IS: 0, MaxMean: 3}}},
		}
	}
	row, err := SummarizeRouting(spec, good())
	if err != nil {
		t.Fatal(err)
	}
	// Slowest rank per step: 5, 7, 9 ms, median 7; busiest: 3, 8, 4 ms, median 4.
	if len(row.RankCPUMS) != 2 || row.RankCPUMS[0] != 4 || row.RankCPUMS[1] != 2 {
		t.Errorf("per-rank median CPU %v ms, want [4 2]", row.RankCPUMS)
	}
	if row.StepMS != 7 || row.CPUMS != 4 || row.IS != 0.5 || row.ISFirst != 1 || row.ISLast != 0 || row.FinalLoss != 1 || row.MaxMean != 1 || row.DropRate != 0.25 {
		t.Errorf("row %+v", row)
	}
	for name, mutate := range map[string]func([]RoutingRankResult) []RoutingRankResult{
		"did not report":  func(r []RoutingRankResult) []RoutingRankResult { return r[:1] },
		"reported twice":  func(r []RoutingRankResult) []RoutingRankResult { r[1].Rank = 1; return r },
		"outside":         func(r []RoutingRankResult) []RoutingRankResult { r[0].Rank = 2; return r },
		"timed steps":     func(r []RoutingRankResult) []RoutingRankResult { r[0].Steps = r[0].Steps[:2]; return r },
		"differs from":    func(r []RoutingRankResult) []RoutingRankResult { r[0].Steps[1].Loss = 2.5; return r },
		"rank 0 did not ": func(r []RoutingRankResult) []RoutingRankResult { r[1].Rank = 1; return r[:1] },
	} {
		if _, err := SummarizeRouting(spec, mutate(good())); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: error %v", name, err)
		}
	}
	rows := []RoutingRow{{Case: RoutingCase{Name: "moge"}, StepMS: 5, CPUMS: 1}, {Case: RoutingCase{Name: "topk"}, StepMS: 10, CPUMS: 4}}
	if a := SetSpeedups(rows, "topk"); a != "topk" || rows[0].Speedup != 2 || rows[1].Speedup != 1 || rows[0].CPUSpeedup != 4 {
		t.Errorf("anchor %q, rows %+v", a, rows)
	}
	if a := SetSpeedups(rows, "absent"); a != "moge" || rows[1].Speedup != 0.5 {
		t.Errorf("without topk: anchor %q, rows %+v", a, rows)
	}
}

// runRoutingInProcess runs every rank of spec as a goroutine over in-process
// links and summarises them.
func runRoutingInProcess(t *testing.T, spec RoutingBenchSpec) RoutingRow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res := make([]RoutingRankResult, spec.Mesh().World())
	errs := testkit.OnRanks(len(res), func(r int, tr collective.Transport) error {
		var err error
		if res[r], err = runRoutingSpec(ctx, tr, spec, zerolog.Nop()); err != nil {
			cancel() // the others fail at once instead of timing out
		}
		return err
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	row, err := SummarizeRouting(spec, res)
	if err != nil {
		t.Fatal(err)
	}
	return row
}

// TestRunRoutingRank: with the router skewed towards rank 0, dropless top-k
// is imbalanced, MoGE is balanced by construction (IS = 0, even EP-rank
// load), a capacity factor drops slots, and bias balancing moves the load
// towards even over the steps.
func TestRunRoutingRank(t *testing.T) {
	job := tinyRoutingJob()
	cases, err := RoutingCases([]string{"topk", "moge", "topk+cap1", "topk+bias"}, 2, 2, 0.05, 0)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]RoutingRow{}
	for _, c := range cases {
		// No warmup: the first timed step routes with the initial bias.
		spec, err := NewRoutingBenchSpec(job, c, 2, 0.1, 0, 6, 1)
		if err != nil {
			t.Fatal(err)
		}
		rows[c.Name] = runRoutingInProcess(t, spec)
	}
	top, moge, capped, bias := rows["topk"], rows["moge"], rows["topk+cap1"], rows["topk+bias"]
	if moge.IS != 0 || moge.RankMaxMean != 1 {
		t.Errorf("moge: IS %v, EP-rank max/mean %v; want 0 and 1", moge.IS, moge.RankMaxMean)
	}
	if !(top.IS > 1) || !(top.RankMaxMean > 1.5) || top.DropRate != 0 {
		t.Errorf("skewed dropless top-k: IS %v, EP-rank max/mean %v, drop rate %v; want IS > 1, max/mean > 1.5, no drops", top.IS, top.RankMaxMean, top.DropRate)
	}
	if !(capped.DropRate > 0) || !(capped.IS < top.IS) {
		t.Errorf("top-k with capacity 1: drop rate %v, IS %v (dropless %v)", capped.DropRate, capped.IS, top.IS)
	}
	// Step 1 is the same routing with or without balancing; the updates
	// after it move the load.
	if bias.ISFirst != top.ISFirst || !(bias.ISLast < bias.ISFirst/2) || !(bias.IS < top.IS) {
		t.Errorf("bias balancing: IS %v → %v (mean %v); dropless top-k %v → %v (mean %v); want the same start, then a fall", bias.ISFirst, bias.ISLast, bias.IS, top.ISFirst, top.ISLast, top.IS)
	}
}

func TestLayerCases(t *testing.T) {
	cs, err := LayerCases([]string{"fp32", " fp8+c4 ", "bf16+auto", "fp32+c2+dcca4", ""})
	if err != nil {
		t.Fatal(err)
	}
	want := []LayerCase{{"fp32", "fp32", 1, 0}, {"fp8+c4", "fp8e4m3", 4, 0}, {"bf16+auto", "bf16", model.EPChunksAuto, 0}, {"fp32+c2+dcca4", "fp32", 2, 4}}
	if !slices.Equal(cs, want) {
		t.Fatalf("got %+v, want %+v", cs, want)
	}
	for _, bad := range [][]string{nil, {"fp16"}, {"fp32+c0"}, {"fp32+c17"}, {"fp32+x"}, {"fp32+dcca0"}, {"fp32", "fp32"}} {
		if _, err := LayerCases(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	job := tinyRoutingJob()
	s, err := NewLayerBenchSpec(job, want[3], 2, 16, 0, 1, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	m := s.Job.Model
	// Equal expert parameters: 8·2·16·32 = 8·2·4·H' + 2·16·4.
	if m.MoELayout != "dcca" || m.DispatchDim != 4 || m.ExpertHidden != (8*16*32-16*4)/(8*4) || m.EPChunks != 2 {
		t.Errorf("dcca spec model %+v", m)
	}
	if _, err := NewLayerBenchSpec(job, want[0], 2, 0, 0, 1, 2, 1); err == nil {
		t.Error("0 tokens accepted")
	}
}

// The layer benchmark runs every kind of case over in-process links (shaped
// and not) and reports exchange time and the chunk count used.
func TestLayerBenchRuns(t *testing.T) {
	cs, err := LayerCases([]string{"fp32", "fp8+c3", "fp32+auto+dcca2"})
	if err != nil {
		t.Fatal(err)
	}
	var rounds [][]RoutingRow
	for _, bw := range []float64{0, 50e6} {
		var rows []RoutingRow
		for _, c := range cs {
			s, err := NewLayerBenchSpec(tinyRoutingJob(), c, 2, 32, bw, 1, 2, 1)
			if err != nil {
				t.Fatal(err)
			}
			row := runRoutingInProcess(t, s)
			if row.StepMS <= 0 || row.ExchangeMS <= 0 || row.Chunks < 1 || (c.Chunks > 0 && row.Chunks != c.Chunks) {
				t.Errorf("%s: row %+v", c.Name, row)
			}
			rows = append(rows, row)
		}
		rounds = append(rounds, rows)
	}
	out, err := SummarizeLayers(cs, 2, rounds)
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Speedup != 1 || len(out[1].Chunks) != 2 {
		t.Errorf("summary %+v", out)
	}
	if _, err := SummarizeLayers(cs, 2, [][]RoutingRow{rounds[0][:2]}); err == nil {
		t.Error("a short round accepted")
	}
}
