package train

import (
	"context"
	"fmt"
	"math"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/moe"
	"github.com/moetrain/moetrain/optim"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/parallel/dp"
	"github.com/moetrain/moetrain/parallel/sp"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tensor"
)

// MeshRank is one rank of a job laid out on a DP × SP × TP mesh with EP
// (docs/mesh.md): its shard of the model (heads, expert hidden and
// vocabulary over TP; experts over EP), the communicators of its groups, the
// gradient reducer (dense tensors over the DP·SP plane, expert tensors over
// the expert-data-parallel group; buckets overlapped with the backward;
// ZeRO-1 optional) and the optimizer. Every rank of a DP replica is given the
// replica's batch; SP ranks take their zigzag chunks of it. A step equals
// the serial trainer's step on the concatenation of the DP replicas' batches
// (within float32 re-association): the model normalises the loss by the
// global target count and the aux and z-losses use global statistics, so the
// reducer only sums.
//
// Not safe for concurrent use.
type MeshRank struct {
	tr     *Trainer
	mesh   parallel.Mesh
	rank   int
	coord  parallel.Coord
	comms  *parallel.Comms
	world  *collective.Comm
	red    *dp.Reducer
	shards []*optim.AdamW // this rank's optimizers: its ZeRO-1 shards, else the trainer's whole-buffer one
	zero1  bool
	// normWeight[i] says whether entry i's squared gradient counts on this
	// rank towards the global norm (each distinct tensor block once).
	normWeight []bool
	load       []float32
}

// MeshStepStats are one mesh step's results; the losses are global (the
// serial trainer's on the whole step's batch), identical on every rank.
type MeshStepStats struct {
	StepStats
	// GradNorm is the global gradient norm before clipping. It costs a pass
	// over the gradients and a collective, so without clipping it is
	// computed only on steps the log shows (the first and every
	// train.log_every-th); NaN on the others.
	GradNorm float64
}

// NewMeshRank builds rank's part of the job over world (the job's ranks, in
// mesh order). cfg.Mesh must resolve to mesh.
func NewMeshRank(cfg JobConfig, mesh parallel.Mesh, rank int, world *collective.Comm, log zerolog.Logger) (*MeshRank, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	if err := mesh.Validate(); err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	alg, err := sp.ParseAlgorithm(cfg.Mesh.SPAlgorithm)
	if err != nil {
		return nil, fmt.Errorf("train: mesh.sp_algorithm: %w", err)
	}
	comms, err := parallel.NewComms(world, mesh, rank, alg)
	if err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	tpSize, tpRank := comms.TP()
	epSize, epRank := comms.EP()
	shard := model.Shard{TP: tpSize, TPRank: tpRank, EP: epSize, EPRank: epRank}
	tr, err := newTrainer(cfg, shard, !cfg.DP.Zero1, log)
	if err != nil {
		return nil, err
	}
	tr.m.Comms = comms
	// Window batches have one shape for every rank (bucketed and packed
	// ones need not): MoGE's static split then sizes the dispatch.
	comms.SetUniformTokens(cfg.Data.FixedShape())
	edp, err := world.Sub(mesh.Group(parallel.AxisEDP, rank))
	if err != nil {
		return nil, fmt.Errorf("train: expert-data-parallel group: %w", err)
	}
	plane := comms.Plane()
	red, err := dp.NewReducer(cfg.DP, tr.Layout(), tr.Grads(), plane, edp)
	if err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	r := &MeshRank{tr: tr, mesh: mesh, rank: rank, coord: mesh.Coord(rank), comms: comms, world: world, red: red, zero1: cfg.DP.Zero1}
	if r.zero1 {
		if r.shards, err = tr.NewShardOptimizers(red.ShardRanges()); err != nil {
			return nil, err
		}
	} else {
		r.shards = []*optim.AdamW{tr.Optimizer()} // one shard: the whole buffer
	}
	tr.SetGradsReadyHook(red.Hook())
	// Each distinct block of the model has one canonical holder among the
	// ranks that hold it (for the gradient norm and for checkpoints), spread
	// over the holders by entry so that checkpoint writes are split.
	planeIdx, planeSize := r.coord.DP*mesh.SP+r.coord.SP, mesh.DP*mesh.SP
	edpSize := planeSize / mesh.EP
	for i, e := range tr.Layout().Entries {
		var w bool
		switch {
		case r.zero1: // shard ranges partition each reduction group
			w = e.Expert || e.IsSharded() || tpRank == 0
		case e.Expert: // replicated over the expert-data-parallel group
			w = planeIdx/mesh.EP == i%edpSize
		case e.IsSharded(): // a tensor-parallel slice, replicated over the plane
			w = planeIdx == i%planeSize
		default: // replicated over the plane and over TP
			w = planeIdx*tpSize+tpRank == i%(planeSize*tpSize)
		}
		r.normWeight = append(r.normWeight, w)
	}
	return r, nil
}

// Trainer is the rank's sharded trainer (its Layout entries carry their
// global placement: Entry.Global, Entry.Start).
func (r *MeshRank) Trainer() *Trainer { return r.tr }

// Mesh is the layout; Rank this rank's index in it.
func (r *MeshRank) Mesh() parallel.Mesh { return r.mesh }

// Rank is this rank's world rank.
func (r *MeshRank) Rank() int { return r.rank }

// LocalInput is this rank's share of its DP replica's batch b: the whole
// batch, or with SP > 1 the zigzag chunks (i and 2·SP−1−i of 2·SP) of every
// row, with their true positions.
func (r *MeshRank) LocalInput(b sampling.Batch) (model.Input, error) {
	return ShardSequence(b, r.mesh.SP, r.coord.SP)
}

// ShardSequence returns SP rank spRank's zigzag share of b (see LocalInput).
func ShardSequence(b sampling.Batch, spSize, spRank int) (model.Input, error) {
	in := toInput(b)
	if spSize <= 1 {
		return in, nil
	}
	if b.Seg != nil {
		return model.Input{}, fmt.Errorf("train: sequence parallelism cannot split packed documents (batch has segment ids)")
	}
	c, err := sp.ChunkLen(b.T, spSize)
	if err != nil {
		return model.Input{}, fmt.Errorf("train: batch of T=%d over sp=%d: %w", b.T, spSize, err)
	}
	first, second := sp.ChunkIDs(spSize, spRank)
	out := model.Input{B: b.B, T: 2 * c}
	take := func(src []int32) []int32 {
		dst := make([]int32, 0, b.B*2*c)
		for row := 0; row < b.B; row++ {
			for _, ch := range []int{first, second} {
				dst = append(dst, src[row*b.T+ch*c:row*b.T+(ch+1)*c]...)
			}
		}
		return dst
	}
	out.Tokens, out.Targets, out.Pos = take(b.Tokens), take(b.Targets), take(b.Pos)
	return out, nil
}

// Step runs one training step on this rank's DP replica batch b: forward and
// backward with the gradient buckets reducing as they become final, the
// routing-bias update from the global expert load, the global gradient norm
// (clipping) and the optimizer step (ZeRO-1: on this rank's shards, then the
// parameter all-gather). ctx cancels every collective of the step.
func (r *MeshRank) Step(ctx context.Context, b sampling.Batch) (MeshStepStats, error) {
	tr := r.tr
	stepNo := tr.Step() + 1
	fail := func(err error) (MeshStepStats, error) {
		return MeshStepStats{}, fmt.Errorf("train: step %d (rank %d, %v): %w", stepNo, r.rank, r.mesh, err)
	}
	in, err := r.LocalInput(b)
	if err != nil {
		return fail(err)
	}
	r.comms.Begin(ctx)
	if err := r.red.Begin(ctx); err != nil {
		return fail(err)
	}
	res, err := tr.m.ForwardBackward(in)
	if ferr := r.red.Finish(ctx); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		return fail(err)
	}
	st := StepStats{Loss: res.Loss, CE: res.CE, Aux: res.Aux, ZLoss: res.ZLoss, Tokens: in.B * in.T, Targets: res.Targets}
	if st.RoutedLoad, st.Router, err = r.globalLoad(ctx); err != nil {
		return fail(err)
	}
	if err := tr.UpdateRouterBias(st.RoutedLoad); err != nil {
		return fail(err)
	}
	clip := tr.cfg.Optim.ClipNorm
	norm, scale := math.NaN(), 1.0
	if clip > 0 || stepNo == 1 || stepNo%tr.cfg.Train.LogEvery == 0 { // the same on every rank
		if norm, err = r.gradNorm(ctx); err != nil {
			return fail(err)
		}
	}
	if clip > 0 {
		scale = optim.ClipScale(norm, clip)
	}
	if _, err := tr.OptimizerStepShards(r.shards, scale); err != nil {
		return fail(err)
	}
	if r.zero1 {
		if err := r.red.GatherParams(ctx, tr.Params()); err != nil {
			return fail(err)
		}
	}
	return MeshStepStats{StepStats: st, GradNorm: norm}, nil
}

// globalLoad sums every layer's routed expert load (before capacity) and
// processed load (after) over the DP·SP plane: the bias-balancing signal
// and the step's load metrics over the EP ranks.
func (r *MeshRank) globalLoad(ctx context.Context) ([][]int, []moe.LoadStats, error) {
	m := r.tr.m
	routed := m.RoutedLoad()
	stats, err := m.RouterStats(1)
	if err != nil {
		return nil, nil, err
	}
	e := m.Cfg.Experts
	per := 2*e + 2
	r.load = r.load[:0]
	for l := range routed {
		for _, c := range routed[l] {
			r.load = append(r.load, float32(c))
		}
		for _, c := range stats[l].PerExpert {
			r.load = append(r.load, float32(c))
		}
		r.load = append(r.load, float32(stats[l].Tokens), float32(stats[l].Dropped))
	}
	if err := r.comms.Plane().AllReduce(ctx, r.load, collective.Sum); err != nil {
		return nil, nil, fmt.Errorf("expert-load all-reduce over %v: %w", r.comms.Plane().WorldRanks(), err)
	}
	ep := r.mesh.EP
	if ep <= 1 {
		ep = max(1, m.Cfg.Groups)
	}
	out := make([]moe.LoadStats, len(routed))
	for l := range routed {
		b := r.load[l*per:]
		processed := make([]int, e)
		for x := 0; x < e; x++ {
			routed[l][x] = int(b[x]) // counts < 2^24: exact in float32
			processed[x] = int(b[e+x])
		}
		tokens, dropped := int(b[2*e]), int(b[2*e+1])
		if out[l], err = moe.NewLoadStats(processed, tokens, tokens*m.Cfg.TopK, dropped, ep); err != nil {
			return nil, nil, err
		}
	}
	return routed, out, nil
}

// gradNorm is the global gradient norm: each distinct block of the reduced
// gradient counted once over the whole mesh.
func (r *MeshRank) gradNorm(ctx context.Context) (float64, error) {
	g := r.tr.Grads()
	var sum float64
	ranges := r.red.ShardRanges()
	for i, e := range r.tr.Layout().Entries {
		if !r.normWeight[i] {
			continue
		}
		lo, hi := e.Offset, e.Offset+e.Size()
		if !r.zero1 {
			sum += tensor.SumSquares(g[lo:hi])
			continue
		}
		for _, s := range ranges {
			a, b := max(lo, s[0]), min(hi, s[1])
			if a < b {
				sum += tensor.SumSquares(g[a:b])
			}
		}
	}
	buf := []float32{float32(sum), float32(sum - float64(float32(sum)))}
	if err := r.world.AllReduce(ctx, buf, collective.Sum); err != nil {
		return 0, fmt.Errorf("gradient-norm all-reduce: %w", err)
	}
	return math.Sqrt(float64(buf[0]) + float64(buf[1])), nil
}

// Evaluate is the mean cross-entropy over every target of batches; every
// rank of the job must call it with the same batches. The DP replicas split
// them (replica d takes batches d, d+DP, ...; SP ranks their chunks of
// each): a forward's result is already summed over the replicas, so each
// batch is evaluated once in the job. In a last round with fewer batches
// than replicas, the replicas left over run batch 0 with every target
// ignored, which adds nothing, so that every rank makes the same collective
// calls.
func (r *MeshRank) Evaluate(ctx context.Context, batches []sampling.Batch) (float64, error) {
	var ce ceMean
	dp, d := r.mesh.DP, r.coord.DP
	for first := 0; first < len(batches); first += dp {
		k := first + d
		b := batches[min(k, len(batches)-1)]
		if k >= len(batches) {
			b = batches[0]
			b.Targets = make([]int32, len(b.Targets))
			for i := range b.Targets {
				b.Targets[i] = -1
			}
		}
		in, err := r.LocalInput(b)
		if err != nil {
			return 0, fmt.Errorf("train: evaluate batch %d: %w", k, err)
		}
		r.comms.Begin(ctx)
		res, err := r.tr.m.Forward(in, false)
		if err != nil {
			return 0, fmt.Errorf("train: evaluate batch %d: %w", k, err)
		}
		ce.add(res)
	}
	return ce.mean(len(batches))
}
