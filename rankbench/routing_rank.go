package rankbench

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/moe"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/train"
)

// rankTimeout bounds every collective of a benchmark rank: a peer silent
// for this long has failed.
const rankTimeout = 60 * time.Second

// RoutingCase is one router configuration of the routing benchmark: a name
// and the [model] router settings it puts over the job's. Every case of one
// run has the same TopK, so every case does the same expert FLOPs per token
// (before drops).
type RoutingCase struct {
	Name           string  `json:"name"`
	Router         string  `json:"router"`
	TopK           int     `json:"top_k"`
	Groups         int     `json:"groups"`
	TopKGroups     int     `json:"topk_groups"`
	CapacityFactor float64 `json:"capacity_factor"`
	BiasRate       float64 `json:"bias_update_rate"`
}

// DefaultRoutingCases are the configurations the benchmark compares unless
// told otherwise, in table order. Besides these names, "topk+capF" for any
// factor F > 0 is accepted.
var DefaultRoutingCases = []string{"topk", "moge", "group_limited", "topk+cap1.25", "topk+bias"}

// RoutingCases resolves names for ep expert-parallel ranks and k choices per
// token: "topk" is dropless top-k; "moge" has one group per EP rank (k/ep
// experts in each); "group_limited" has one group per EP rank and keeps
// max(1, ep/2) of them; "topk+capF" is top-k with capacity factor F, dropping
// the lowest-probability slots; "topk+bias" is dropless top-k with
// aux-loss-free balancing at rate biasRate. Every other case keeps the job's
// bias_update_rate (jobBiasRate; 0 unless the job asks for balancing).
func RoutingCases(names []string, ep, k int, biasRate, jobBiasRate float64) ([]RoutingCase, error) {
	if len(names) == 0 {
		return nil, fmt.Errorf("no router configurations given (known: %s, topk+capF)", strings.Join(DefaultRoutingCases, ", "))
	}
	seen := map[string]bool{}
	var out []RoutingCase
	for _, name := range names {
		if seen[name] {
			return nil, fmt.Errorf("router configuration %q given twice", name)
		}
		seen[name] = true
		c := RoutingCase{Name: name, Router: "topk", TopK: k, Groups: 1, BiasRate: jobBiasRate}
		switch {
		case name == "topk":
		case name == "moge":
			c.Router, c.Groups = "moge", ep
		case name == "group_limited":
			c.Router, c.Groups, c.TopKGroups = "group_limited", ep, max(1, ep/2)
		case name == "topk+bias":
			c.BiasRate = biasRate
		case strings.HasPrefix(name, "topk+cap"):
			f, err := strconv.ParseFloat(strings.TrimPrefix(name, "topk+cap"), 64)
			if err != nil || !(f > 0 && f < 1e6) {
				return nil, fmt.Errorf("router configuration %q: want topk+capF with a capacity factor F > 0, e.g. topk+cap1.25", name)
			}
			c.CapacityFactor = f
		default:
			return nil, fmt.Errorf("unknown router configuration %q (known: %s, topk+capF)", name, strings.Join(DefaultRoutingCases, ", "))
		}
		out = append(out, c)
	}
	return out, nil
}

// Apply puts the case's router settings over m: dropless unless the case
// sets a capacity factor (then dropping by probability); score and z-loss
// stay the job's.
func (c RoutingCase) Apply(m model.Config) model.Config {
	m.Router, m.TopK, m.Groups, m.TopKGroups = c.Router, c.TopK, c.Groups, c.TopKGroups
	m.CapacityFactor, m.BiasUpdateRate = c.CapacityFactor, c.BiasRate
	if c.CapacityFactor > 0 {
		m.DropPolicy = "probability"
	}
	return m
}

// RoutingBenchSpec is what every rank of one router configuration runs; the
// parent of the rank processes sends it to each of them.
type RoutingBenchSpec struct {
	Job  train.JobConfig `json:"job"` // the case applied; mesh dp = ep = EP
	Case RoutingCase     `json:"case"`
	// Skew is added to the selection bias of every expert of EP rank 0 in
	// every layer before the first step (the router "initialised to be
	// skewed"); identical on all ranks.
	Skew    float64 `json:"skew"`
	Warmup  int     `json:"warmup"`
	Steps   int     `json:"steps"`
	Threads int     `json:"threads"` // kernel threads per rank process
	// Layer (nil: whole training steps) runs `bench moe` instead: one MoE
	// layer's forward and backward over the expert-parallel group.
	Layer *LayerBench `json:"layer,omitempty"`
}

// NewRoutingBenchSpec lays job out as one expert-parallel group of ep ranks
// (dp = ep, so every rank draws its own batch), applies c and checks the
// result; errors name the case.
func NewRoutingBenchSpec(job train.JobConfig, c RoutingCase, ep int, skew float64, warmup, steps, threads int) (RoutingBenchSpec, error) {
	if ep < 2 {
		return RoutingBenchSpec{}, fmt.Errorf("routing bench: ep = %d: imbalance over expert-parallel ranks needs at least 2", ep)
	}
	if !(skew >= 0 && skew < 1e6) {
		return RoutingBenchSpec{}, fmt.Errorf("routing bench: skew = %g: want a finite value >= 0", skew)
	}
	if warmup < 0 || steps < 1 || threads < 1 {
		return RoutingBenchSpec{}, fmt.Errorf("routing bench: warmup = %d must be >= 0, steps = %d and threads = %d >= 1", warmup, steps, threads)
	}
	job.Model = c.Apply(job.Model)
	job.Mesh = parallel.Config{DP: ep, TP: 1, EP: ep, SP: 1, SPAlgorithm: job.Mesh.SPAlgorithm}
	if job.Mesh.SPAlgorithm == "" {
		job.Mesh.SPAlgorithm = parallel.DefaultConfig().SPAlgorithm
	}
	job.Train.Steps, job.Train.Threads = warmup+steps, threads
	if err := job.Validate(); err != nil {
		return RoutingBenchSpec{}, fmt.Errorf("routing bench: router configuration %q (k = %d, groups = %d) on ep = %d: %w", c.Name, c.TopK, c.Groups, ep, err)
	}
	return RoutingBenchSpec{Job: job, Case: c, Skew: skew, Warmup: warmup, Steps: steps, Threads: threads}, nil
}

// Mesh is the spec's layout.
func (s RoutingBenchSpec) Mesh() parallel.Mesh {
	return parallel.Mesh{DP: s.Job.Mesh.DP, SP: 1, TP: 1, EP: s.Job.Mesh.EP}
}

// RoutingStep is one timed step as a rank saw it. The load metrics are
// global (the same on every rank), each the mean over the MoE layers.
type RoutingStep struct {
	Wall        time.Duration `json:"wall_ns"`       // this rank's step, from a common start (barrier)
	CPU         time.Duration `json:"cpu_ns"`        // CPU time of this rank's process during the step
	Loss        float64       `json:"loss"`          // global training loss
	IS          float64       `json:"is"`            // (max − min per-EP-rank slots) / tokens
	MaxMean     float64       `json:"max_mean"`      // max / mean expert load
	RankMaxMean float64       `json:"rank_max_mean"` // max / mean EP-rank load
	DropRate    float64       `json:"drop_rate"`
	// Layer benchmark only: time blocked in expert-parallel exchanges and
	// the chunk count the layer used.
	ExchangeWait time.Duration `json:"exchange_wait_ns,omitempty"`
	Chunks       int           `json:"chunks,omitempty"`
}

// RoutingRankResult is one rank's report of one router configuration.
type RoutingRankResult struct {
	Rank  int           `json:"rank"`
	Steps []RoutingStep `json:"steps"` // the timed steps, after the warmup
}

// SkewRouterBias adds skew to the selection bias of the experts of EP rank
// 0 (the first E/ep of each layer) in rs.
func SkewRouterBias(rs *model.RouterState, ep int, skew float32) error {
	if rs == nil || ep < 1 || rs.E%ep != 0 {
		return fmt.Errorf("routing bench: cannot skew the router bias: need experts divisible by ep = %d", ep)
	}
	b := slices.Clone(rs.Flat)
	for l := 0; l < rs.Layers; l++ {
		for e := 0; e < rs.E/ep; e++ {
			b[l*rs.E+e] += skew
		}
	}
	return rs.SetFlat(b)
}

// runRoutingSpec runs rank t.Rank() of spec over t: the rank's shard of the
// model with the router skewed, its own stream of the job's data (dp rank =
// rank), spec.Warmup untimed then spec.Steps timed steps, each started
// together with a barrier so that the slowest rank's wall time is the step
// time. The caller sets the kernel thread budget (tensor.SetThreads). Every
// collective is bounded by rankTimeout and ctx.
func runRoutingSpec(ctx context.Context, t collective.Transport, spec RoutingBenchSpec, log zerolog.Logger) (RoutingRankResult, error) {
	rank, mesh := t.Rank(), spec.Mesh()
	if t.Size() != mesh.World() {
		return RoutingRankResult{}, fmt.Errorf("routing bench: transport has %d ranks, the mesh %v needs %d", t.Size(), mesh, mesh.World())
	}
	if spec.Layer != nil {
		return runLayerRank(ctx, t, spec)
	}
	fail := func(err error) (RoutingRankResult, error) {
		return RoutingRankResult{}, fmt.Errorf("routing bench %q, rank %d: %w", spec.Case.Name, rank, err)
	}
	data, err := sampling.Open(spec.Job.Data, spec.Job.Train.Seed)
	if err != nil {
		return fail(fmt.Errorf("data: %w", err))
	}
	sampler, err := data.Sampler(mesh.Coord(rank).DP, mesh.DP)
	if err != nil {
		return fail(fmt.Errorf("sampler: %w", err))
	}
	world := collective.NewWorldConfig(t, collective.Config{Timeout: rankTimeout})
	mr, err := train.NewMeshRank(spec.Job, mesh, rank, world, log)
	if err != nil {
		return fail(err)
	}
	if err := SkewRouterBias(mr.Trainer().Model().Balance, mesh.EP, float32(spec.Skew)); err != nil {
		return fail(err)
	}
	res := RoutingRankResult{Rank: rank}
	for i := 0; i < spec.Warmup+spec.Steps; i++ {
		b, err := sampler.Next()
		if err != nil {
			return fail(fmt.Errorf("step %d: data: %w", i+1, err))
		}
		if err := world.Barrier(ctx); err != nil {
			return fail(fmt.Errorf("barrier before step %d: %w", i+1, err))
		}
		cpu0, err := processCPU()
		if err != nil {
			return fail(err)
		}
		t0 := time.Now()
		st, err := mr.Step(ctx, b)
		wall := time.Since(t0)
		if err != nil {
			return fail(err)
		}
		cpu1, err := processCPU()
		if err != nil {
			return fail(err)
		}
		if math.IsNaN(st.Loss) || math.IsInf(st.Loss, 0) {
			return fail(fmt.Errorf("step %d: loss is %v", i+1, st.Loss))
		}
		if len(st.Router) == 0 {
			return fail(fmt.Errorf("step %d: no router statistics", i+1))
		}
		if i < spec.Warmup {
			continue
		}
		rs := RoutingStep{Wall: wall, CPU: cpu1 - cpu0, Loss: st.Loss}
		for _, l := range st.Router {
			rs.IS += l.IS
			rs.MaxMean += l.MaxMean
			rs.DropRate += l.DropRate
			total, mx := 0, 0
			for _, c := range l.PerRank {
				total, mx = total+c, max(mx, c)
			}
			if total > 0 {
				rs.RankMaxMean += float64(mx) * float64(len(l.PerRank)) / float64(total)
			}
		}
		n := float64(len(st.Router))
		rs.IS, rs.MaxMean, rs.RankMaxMean, rs.DropRate = rs.IS/n, rs.MaxMean/n, rs.RankMaxMean/n, rs.DropRate/n
		res.Steps = append(res.Steps, rs)
		log.Debug().Int("step", i+1).Dur("wall", wall).Float64("loss", st.Loss).Float64("is", rs.IS).Msg("routing bench step")
	}
	// Leave together, so no rank sees its peers' sockets close early.
	if err := world.Barrier(ctx); err != nil {
		return fail(fmt.Errorf("final barrier: %w", err))
	}
	return res, nil
}

// RoutingRow is one router configuration's line of the table.
type RoutingRow struct {
	Case RoutingCase `json:"case"`
	// StepMS is the median over the timed steps of the slowest rank's wall
	// time of the step, in milliseconds.
	StepMS float64 `json:"step_ms"`
	// Speedup is the anchor's StepMS over this one's (the anchor is dropless
	// top-k when it is in the run); set by SetSpeedups.
	Speedup float64 `json:"speedup_vs_anchor"`
	// CPUMS is the median over the timed steps of the busiest rank's CPU
	// time in the step (one rank per process): about the step time with a
	// core per rank, communication aside. Where ranks share cores, the
	// waiting ranks lend theirs to the busy one, which hides the imbalance
	// from StepMS but not from CPUMS.
	CPUMS float64 `json:"cpu_ms"`
	// CPUSpeedup is the anchor's CPUMS over this one's.
	CPUSpeedup float64 `json:"cpu_speedup_vs_anchor"`
	// RankCPUMS is each rank's median CPU time of a step, in milliseconds.
	RankCPUMS []float64 `json:"rank_cpu_ms"`
	// Means over layers and timed steps.
	IS          float64 `json:"is"`
	MaxMean     float64 `json:"max_mean_expert"`
	RankMaxMean float64 `json:"max_mean_rank"`
	DropRate    float64 `json:"drop_rate"`
	// ISFirst and ISLast are the first and last timed steps' IS (bias
	// balancing moves it).
	ISFirst   float64 `json:"is_first"`
	ISLast    float64 `json:"is_last"`
	FinalLoss float64 `json:"final_loss"`
	// Layer benchmark only: the median over steps of the slowest rank's
	// time blocked in exchanges, and the chunk count of the last step.
	ExchangeMS float64 `json:"exchange_ms,omitempty"`
	Chunks     int     `json:"chunks,omitempty"`
}

// SummarizeRouting combines the reports of every rank of one configuration:
// each must be present, once, with spec.Steps timed steps and the same
// losses (they are global).
func SummarizeRouting(spec RoutingBenchSpec, results []RoutingRankResult) (RoutingRow, error) {
	n := spec.Mesh().World()
	byRank := make([]*RoutingRankResult, n)
	for i := range results {
		r := &results[i]
		if r.Rank < 0 || r.Rank >= n {
			return RoutingRow{}, fmt.Errorf("routing bench %q: report from rank %d outside 0..%d", spec.Case.Name, r.Rank, n-1)
		}
		if byRank[r.Rank] != nil {
			return RoutingRow{}, fmt.Errorf("routing bench %q: rank %d reported twice", spec.Case.Name, r.Rank)
		}
		if len(r.Steps) != spec.Steps {
			return RoutingRow{}, fmt.Errorf("routing bench %q: rank %d reported %d timed steps, want %d", spec.Case.Name, r.Rank, len(r.Steps), spec.Steps)
		}
		byRank[r.Rank] = r
	}
	for r, p := range byRank {
		if p == nil {
			return RoutingRow{}, fmt.Errorf("routing bench %q: rank %d did not report", spec.Case.Name, r)
		}
	}
	row := RoutingRow{Case: spec.Case}
	walls, cpus, waits := make([]float64, spec.Steps), make([]float64, spec.Steps), make([]float64, spec.Steps)
	for s := 0; s < spec.Steps; s++ {
		ref := byRank[0].Steps[s]
		for _, p := range byRank {
			st := p.Steps[s]
			walls[s] = max(walls[s], float64(st.Wall)/1e6)
			cpus[s] = max(cpus[s], float64(st.CPU)/1e6)
			waits[s] = max(waits[s], float64(st.ExchangeWait)/1e6)
			if st.Loss != ref.Loss {
				return RoutingRow{}, fmt.Errorf("routing bench %q: timed step %d: rank %d's loss %v differs from rank 0's %v (the loss is global)", spec.Case.Name, s+1, p.Rank, st.Loss, ref.Loss)
			}
		}
		row.IS += ref.IS
		row.MaxMean += ref.MaxMean
		row.RankMaxMean += ref.RankMaxMean
		row.DropRate += ref.DropRate
	}
	k := float64(spec.Steps)
	row.IS, row.MaxMean, row.RankMaxMean, row.DropRate = row.IS/k, row.MaxMean/k, row.RankMaxMean/k, row.DropRate/k
	row.StepMS, row.CPUMS, row.ExchangeMS = median(walls), median(cpus), median(waits)
	row.Chunks = byRank[0].Steps[spec.Steps-1].Chunks
	for _, p := range byRank {
		c := make([]float64, len(p.Steps))
		for i, st := range p.Steps {
			c[i] = float64(st.CPU) / 1e6
		}
		row.RankCPUMS = append(row.RankCPUMS, median(c))
	}
	steps := byRank[0].Steps
	row.ISFirst, row.ISLast, row.FinalLoss = steps[0].IS, steps[len(steps)-1].IS, steps[len(steps)-1].Loss
	return row, nil
}

// SetSpeedups sets every row's Speedup and CPUSpeedup against the row named anchor, or the
// first row when no row has that name; it returns the anchor's name.
func SetSpeedups(rows []RoutingRow, anchor string) string {
	if len(rows) == 0 {
		return ""
	}
	a := rows[0]
	for _, r := range rows {
		if r.Case.Name == anchor {
			a = r
			break
		}
	}
	for i := range rows {
		if rows[i].StepMS > 0 {
			rows[i].Speedup = a.StepMS / rows[i].StepMS
		}
		if rows[i].CPUMS > 0 {
			rows[i].CPUSpeedup = a.CPUMS / rows[i].CPUMS
		}
	}
	return a.Case.Name
}

// median of xs (sorted in place); the mean of the middle two for even counts.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	m := len(xs) / 2
	if len(xs)%2 == 1 {
		return xs[m]
	}
	return (xs[m-1] + xs[m]) / 2
}

// LayerBench is what `bench moe` adds to a spec: every rank runs one MoE
// layer of the job's model (the spec's [model] exchange options applied)
// on Tokens random tokens of its own, forward then backward, over links
// shaped to LinkBW bytes/s per direction (0: unshaped loopback).
type LayerBench struct {
	Tokens int     `json:"tokens"`
	LinkBW float64 `json:"link_bw"`
}

// LayerCase is one exchange configuration of `bench moe`, named
// DTYPE[+cC|+auto][+dccaF]: dtype fp32, bf16 or fp8 (dispatch_dtype), a
// fixed chunk count C (1: unpipelined, the default) or the run-time
// choice, and the DCCA layout with dispatch_dim = d_model/F and the
// expert_hidden that keeps the layer's expert parameters (experts and
// projections) those of the standard layout.
type LayerCase struct {
	Name   string `json:"name"`
	DType  string `json:"dispatch_dtype"`
	Chunks int    `json:"ep_chunks"`   // model.ep_chunks: -1 chosen at run time
	DCCA   int    `json:"dcca_factor"` // F; 0: standard layout
}

// DefaultLayerCases are compared unless told otherwise; the first is the
// anchor (unpipelined fp32).
var DefaultLayerCases = []string{"fp32", "fp32+c2", "fp32+c4", "fp32+auto", "bf16", "fp8", "fp8+c4", "fp32+dcca4", "fp32+c4+dcca4"}

// LayerCases resolves names (see LayerCase).
func LayerCases(names []string) ([]LayerCase, error) {
	names = slices.DeleteFunc(slices.Clone(names), func(s string) bool { return strings.TrimSpace(s) == "" })
	for i := range names {
		names[i] = strings.TrimSpace(names[i])
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no layer configurations given (e.g. %s)", strings.Join(DefaultLayerCases, ","))
	}
	seen := map[string]bool{}
	var out []LayerCase
	for _, name := range names {
		if seen[name] {
			return nil, fmt.Errorf("layer configuration %q given twice", name)
		}
		seen[name] = true
		parts := strings.Split(name, "+")
		dt := parts[0]
		c := LayerCase{Name: name, Chunks: 1}
		switch dt {
		case "fp32", "bf16":
			c.DType = dt
		case "fp8":
			c.DType = "fp8e4m3"
		default:
			return nil, fmt.Errorf("layer configuration %q: dtype %q unknown (want fp32, bf16 or fp8)", name, dt)
		}
		for _, opt := range parts[1:] {
			switch {
			case opt == "auto":
				c.Chunks = model.EPChunksAuto
			case strings.HasPrefix(opt, "dcca"):
				f, err := strconv.Atoi(opt[4:])
				if err != nil || f < 1 || f > 1<<16 {
					return nil, fmt.Errorf("layer configuration %q: want +dccaF with F >= 1 (dispatch_dim = d_model/F)", name)
				}
				c.DCCA = f
			case strings.HasPrefix(opt, "c"):
				k, err := strconv.Atoi(opt[1:])
				if err != nil || k < 1 || k > 16 {
					return nil, fmt.Errorf("layer configuration %q: want +cC with C in 1..16, or +auto", name)
				}
				c.Chunks = k
			default:
				return nil, fmt.Errorf("layer configuration %q: want DTYPE[+cC|+auto][+dccaF]", name)
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// NewLayerBenchSpec is NewRoutingBenchSpec for `bench moe`: job's model
// with c's exchange options, dropless top-k, one EP group of ep ranks.
func NewLayerBenchSpec(job train.JobConfig, c LayerCase, ep, tokens int, linkBW float64, warmup, steps, threads int) (RoutingBenchSpec, error) {
	if tokens < 1 || tokens > 1<<20 {
		return RoutingBenchSpec{}, fmt.Errorf("moe bench: tokens = %d: want 1..%d per rank", tokens, 1<<20)
	}
	if !(linkBW >= 0 && linkBW < 1e15) {
		return RoutingBenchSpec{}, fmt.Errorf("moe bench: link bandwidth %g: want a finite value >= 0", linkBW)
	}
	job.Model.DispatchDType, job.Model.EPChunks = c.DType, c.Chunks
	if c.DCCA > 0 {
		m := &job.Model
		r := m.DModel / c.DCCA
		if r < 1 {
			return RoutingBenchSpec{}, fmt.Errorf("moe bench %q: d_model = %d has no 1/%d", c.Name, m.DModel, c.DCCA)
		}
		// Equal expert parameters: E·2·D·H = E·2·R·H' + 2·D·R.
		h := (m.Experts*m.DModel*m.ExpertHidden - m.DModel*r) / (m.Experts * r)
		if h < 1 {
			return RoutingBenchSpec{}, fmt.Errorf("moe bench %q: no expert_hidden keeps the expert parameters at dispatch_dim %d", c.Name, r)
		}
		m.MoELayout, m.DispatchDim, m.ExpertHidden = "dcca", r, h
	}
	rc := RoutingCase{Name: c.Name, Router: "topk", TopK: job.Model.TopK, Groups: 1}
	s, err := NewRoutingBenchSpec(job, rc, ep, 0, warmup, steps, threads)
	if err != nil {
		return RoutingBenchSpec{}, fmt.Errorf("moe bench %q: %w", c.Name, err)
	}
	s.Layer = &LayerBench{Tokens: tokens, LinkBW: linkBW}
	return s, nil
}

// timedExchange counts the time the layer spends blocked in exchanges.
type timedExchange struct {
	*parallel.Comms
	wait time.Duration
}

func (x *timedExchange) AllToAllV(send []float32, sc []int, recv []float32, rc []int) {
	t0 := time.Now()
	x.Comms.AllToAllV(send, sc, recv, rc)
	x.wait += time.Since(t0)
}

func (x *timedExchange) AllToAllVStart(send []float32, sc []int, recv []float32, rc []int) func() {
	w := x.Comms.AllToAllVStart(send, sc, recv, rc)
	return func() {
		t0 := time.Now()
		w()
		x.wait += time.Since(t0)
	}
}

// runLayerRank is runRoutingSpec for a layer benchmark: random weights
// (the router's identical on every rank, experts this rank's E/EP) and
// tokens, spec.Warmup untimed and spec.Steps timed forward+backward steps,
// each started with a barrier.
func runLayerRank(ctx context.Context, t collective.Transport, spec RoutingBenchSpec) (RoutingRankResult, error) {
	rank, mesh := t.Rank(), spec.Mesh()
	fail := func(err error) (RoutingRankResult, error) {
		return RoutingRankResult{}, fmt.Errorf("moe bench %q, rank %d: %w", spec.Case.Name, rank, err)
	}
	if bw := spec.Layer.LinkBW; bw > 0 {
		t = collective.NewShaped(t, collective.LinkShape{From: -1, To: -1, Bandwidth: bw})
	}
	world := collective.NewWorldConfig(t, collective.Config{Timeout: rankTimeout})
	cm, err := parallel.NewComms(world, mesh, rank, 0)
	if err != nil {
		return fail(err)
	}
	cm.SetUniformTokens(true)
	ex := &timedExchange{Comms: cm}
	m := spec.Job.Model
	router, err := model.NewRouter(m)
	if err != nil {
		return fail(err)
	}
	md := moe.Dims{D: m.DModel, H: m.ExpertHidden, E: m.Experts, K: m.TopK}
	el, n := m.Experts/mesh.EP, spec.Layer.Tokens
	rnd := func(seed uint64, k int, std float64) []float32 {
		r := rand.New(rand.NewPCG(seed, 0x6d6f65))
		out := make([]float32, k)
		for i := range out {
			out[i] = float32(r.NormFloat64() * std)
		}
		return out
	}
	r64, xd := uint64(rank), md.D
	if m.DCCA() {
		xd = m.DispatchDim
	}
	w := moe.Weights{Router: rnd(1, md.E*md.D, 0.02), W1: rnd(10+r64, el*md.H*xd, 0.02), W2: rnd(100+r64, el*xd*md.H, 0.02)}
	if m.DCCA() {
		w.Down, w.Up = rnd(2, xd*md.D, 0.05), rnd(3, md.D*xd, 0.05)
	}
	dw := moe.Weights{Router: make([]float32, len(w.Router)), W1: make([]float32, len(w.W1)), W2: make([]float32, len(w.W2)),
		Down: make([]float32, len(w.Down)), Up: make([]float32, len(w.Up))}
	x, dout := rnd(1000+r64, n*md.D, 1), rnd(2000+r64, n*md.D, 1)
	out, dx := make([]float32, n*md.D), make([]float32, n*md.D)
	var st moe.State
	var sc moe.Scratch
	st.Resize(md, n)
	sc.Resize(md, n)
	st.Ex = ex
	res := RoutingRankResult{Rank: rank}
	for i := 0; i < spec.Warmup+spec.Steps; i++ {
		if err := world.Barrier(ctx); err != nil {
			return fail(fmt.Errorf("barrier before step %d: %w", i+1, err))
		}
		cm.Begin(ctx)
		ex.wait = 0
		cpu0, err := processCPU()
		if err != nil {
			return fail(err)
		}
		t0 := time.Now()
		clear(out)
		clear(dx)
		moe.Forward(out, x, w, md, router, nil, &st)
		moe.Backward(dx, dw, dout, x, w, md, router, nil, 0, &st, &sc)
		wall := time.Since(t0)
		cpu1, err := processCPU()
		if err != nil {
			return fail(err)
		}
		if err := cm.Err(); err != nil {
			return fail(fmt.Errorf("step %d: %w", i+1, err))
		}
		if i >= spec.Warmup {
			res.Steps = append(res.Steps, RoutingStep{Wall: wall, CPU: cpu1 - cpu0, ExchangeWait: ex.wait, Chunks: max(st.ExchangeTiming().Chunks, 1)})
		}
	}
	if err := world.Barrier(ctx); err != nil {
		return fail(fmt.Errorf("final barrier: %w", err))
	}
	return res, nil
}

// LayerRow is one configuration's line of the `bench moe` table: medians
// over rounds of each round's RoutingRow figures.
type LayerRow struct {
	Case       LayerCase `json:"case"`
	EP         int       `json:"ep"`
	StepMS     float64   `json:"step_ms"`
	ExchangeMS float64   `json:"exchange_ms"`
	CPUMS      float64   `json:"cpu_ms"`
	Chunks     []int     `json:"chunks"` // per round (the run-time choice may differ)
	// Speedup and ExchangeSpeedup are the anchor's (same EP) StepMS and
	// ExchangeMS over this row's.
	Speedup         float64 `json:"speedup_vs_anchor"`
	ExchangeSpeedup float64 `json:"exchange_speedup_vs_anchor"`
}

// SummarizeLayers folds rounds (each a row per case, in case order) into
// LayerRows, with speedups against cases[0].
func SummarizeLayers(cases []LayerCase, ep int, rounds [][]RoutingRow) ([]LayerRow, error) {
	out := make([]LayerRow, len(cases))
	for i, c := range cases {
		var step, exch, cpu []float64
		var chunks []int
		for r, rows := range rounds {
			if len(rows) != len(cases) || rows[i].Case.Name != c.Name {
				return nil, fmt.Errorf("moe bench: round %d does not have %q at row %d", r+1, c.Name, i)
			}
			step, exch, cpu = append(step, rows[i].StepMS), append(exch, rows[i].ExchangeMS), append(cpu, rows[i].CPUMS)
			chunks = append(chunks, rows[i].Chunks)
		}
		out[i] = LayerRow{Case: c, EP: ep, StepMS: median(step), ExchangeMS: median(exch), CPUMS: median(cpu), Chunks: chunks}
	}
	for i := range out {
		if out[i].StepMS > 0 {
			out[i].Speedup = out[0].StepMS / out[i].StepMS
		}
		if out[i].ExchangeMS > 0 {
			out[i].ExchangeSpeedup = out[0].ExchangeMS / out[i].ExchangeMS
		}
	}
	return out, nil
}

// PrintLayers writes the `bench moe` table of one EP degree.
func PrintLayers(w io.Writer, spec RoutingBenchSpec, rows []LayerRow, rounds int) {
	m, lb := spec.Job.Model, spec.Layer
	link := "unshaped loopback"
	if lb.LinkBW > 0 {
		link = fmt.Sprintf("%.0f MB/s (%.2f Gbit/s) per direction of every link", lb.LinkBW/1e6, lb.LinkBW*8/1e9)
	}
	fmt.Fprintf(w, "# bench moe: ep=%d rank processes over TCP loopback, links %s\n", spec.Mesh().EP, link)
	fmt.Fprintf(w, "# layer: d_model=%d expert_hidden=%d experts=%d top_k=%d, %d tokens per rank; warmup %d, %d timed steps, %d interleaved rounds\n",
		m.DModel, m.ExpertHidden, m.Experts, m.TopK, lb.Tokens, spec.Warmup, spec.Steps, rounds)
	fmt.Fprintf(w, "# step ms: forward+backward of the layer, slowest rank; exchange ms: slowest rank's time blocked in exchanges; medians of round medians\n")
	fmt.Fprintf(w, "# +dccaF: dispatch_dim = d_model/F, expert_hidden raised so the expert parameters (projections included) equal the standard layout's\n")
	fmt.Fprintf(w, "%-16s %3s %9s %8s %11s %8s %9s %s\n", "config", "ep", "step ms", "speedup", "exchange ms", "speedup", "cpu ms", "chunks/round")
	for _, r := range rows {
		fmt.Fprintf(w, "%-16s %3d %9.1f %8.2f %11.1f %8.2f %9.1f %v\n", r.Case.Name, r.EP, r.StepMS, r.Speedup, r.ExchangeMS, r.ExchangeSpeedup, r.CPUMS, r.Chunks)
	}
}

// ParseIntList reads "2,4".
func ParseIntList(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil {
			return nil, fmt.Errorf("%q: want a comma-separated list of integers", s)
		}
		out = append(out, v)
	}
	return out, nil
}

// RunLayerBench runs `bench moe`: for every EP degree, rounds interleaved
// rounds of every case (run starts one set of rank processes per spec and
// returns their rows), then prints the table to w.
func RunLayerBench(ctx context.Context, job train.JobConfig, cases []LayerCase, eps []int, tokens int, linkBW float64, warmup, steps, rounds int,
	run func(context.Context, []RoutingBenchSpec) ([]RoutingRow, error), w io.Writer) error {
	if rounds < 1 {
		return fmt.Errorf("moe bench: rounds = %d: must be >= 1", rounds)
	}
	for _, ep := range eps {
		var specs []RoutingBenchSpec
		for _, c := range cases {
			s, err := NewLayerBenchSpec(job, c, ep, tokens, linkBW, warmup, steps, 1)
			if err != nil {
				return err
			}
			specs = append(specs, s)
		}
		var all [][]RoutingRow
		for r := 0; r < rounds; r++ {
			rows, err := run(ctx, specs)
			if err != nil {
				return err
			}
			all = append(all, rows)
		}
		rows, err := SummarizeLayers(cases, ep, all)
		if err != nil {
			return err
		}
		PrintLayers(w, specs[0], rows, rounds)
	}
	return nil
}
