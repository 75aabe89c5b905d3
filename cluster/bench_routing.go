package cluster

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/train"
)

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

// RunRoutingRank runs rank t.Rank() of spec over t: the rank's shard of the
// model with the router skewed, its own stream of the job's data (dp rank =
// rank), spec.Warmup untimed then spec.Steps timed steps, each started
// together with a barrier so that the slowest rank's wall time is the step
// time. The caller sets the kernel thread budget (tensor.SetThreads). Every
// collective is bounded by CollectiveTimeout and ctx.
func RunRoutingRank(ctx context.Context, t collective.Transport, spec RoutingBenchSpec, log zerolog.Logger) (RoutingRankResult, error) {
	rank, mesh := t.Rank(), spec.Mesh()
	if t.Size() != mesh.World() {
		return RoutingRankResult{}, fmt.Errorf("routing bench: transport has %d ranks, the mesh %v needs %d", t.Size(), mesh, mesh.World())
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
	world := collective.NewWorldConfig(t, collective.Config{Timeout: CollectiveTimeout})
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
	walls, cpus := make([]float64, spec.Steps), make([]float64, spec.Steps)
	for s := 0; s < spec.Steps; s++ {
		ref := byRank[0].Steps[s]
		for _, p := range byRank {
			st := p.Steps[s]
			walls[s] = max(walls[s], float64(st.Wall)/1e6)
			cpus[s] = max(cpus[s], float64(st.CPU)/1e6)
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
	row.StepMS, row.CPUMS = median(walls), median(cpus)
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
