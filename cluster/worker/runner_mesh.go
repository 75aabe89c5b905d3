package worker

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/metrics"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tensor"
	"github.com/moetrain/moetrain/train"
)

// CollectiveTimeout bounds every collective of a runner: a peer silent for
// this long fails the step on every surviving rank.
const CollectiveTimeout = 60 * time.Second

// SetupTimeout bounds a runner's data-plane connection and the barrier
// before its first step in a world of n ranks: CollectiveTimeout plus a
// second per rank. Ranks reach them as they finish loading, which on a host
// with more ranks than cores spreads over tens of seconds (14–36 s for 128
// ranks on 2 cores, docs/decisions.md#local-simulation-at-64-and-128-workers).
// A rank that dies meanwhile is found by the coordinator, which aborts the
// others (cancelling this wait), so the bound only catches a rank that
// hangs.
func SetupTimeout(n int) time.Duration { return CollectiveTimeout + time.Duration(n)*time.Second }

// RunMesh is the runner of every mesh (DP × SP × TP with EP; pure data
// parallelism is the mesh with tp = sp = ep = 1): every rank holds
// its shard of the model (train.MeshRank), the ranks of one DP replica
// (its TP and SP ranks) draw the replica's batch from the same sampler stream
// (the dp index), and a step equals the serial trainer's on the
// concatenation of the replicas' batches. Validation runs on every rank (the
// sharded model's forward is collective). Progress reports this rank's share
// of the job's tokens, so the coordinator's sum is the whole job's rate.
// A train.mode = "spsa" job goes to RunSPSA.
func RunMesh(ctx context.Context, spec StartSpec) error {
	if spec.Job.Train.Mode == train.ModeSPSA { // zeroth-order: no mesh rank, its own runner
		return RunSPSA(ctx, spec)
	}
	m, cfg, log := spec.Plan.Mesh, spec.Job, spec.Log
	threads := spec.Threads
	if threads <= 0 {
		threads = cfg.Train.Threads
	}
	tensor.SetThreads(threads)
	coord := m.Coord(spec.Rank)
	data, err := sampling.Open(cfg.Data, cfg.Train.Seed)
	if err != nil {
		return fmt.Errorf("mesh runner: data: %w", err)
	}
	sampler, err := data.Sampler(coord.DP, m.DP)
	if err != nil {
		return fmt.Errorf("mesh runner: sampler for dp rank %d of %d: %w", coord.DP, m.DP, err)
	}
	var val []sampling.Batch
	if cfg.Train.EvalEvery > 0 {
		// Every rank reads the same batches; a failure is the same everywhere.
		if val, err = data.ValBatches(cfg.Train.EvalBatches); err != nil {
			log.Warn().Err(err).Msg("training without validation")
			val = nil
		}
	}
	t0 := time.Now()
	log.Debug().Msg("data opened")
	ccfg := collective.Config{Timeout: CollectiveTimeout}
	setup := SetupTimeout(m.World())
	dctx, cancel := context.WithTimeout(ctx, setup)
	lim := JobDataPlaneLimits(cfg, m, ccfg)
	lim.Hosts = PlanHosts(spec.Plan) // ranks on one host share memory
	t, err := spec.Data.Connect(dctx, spec.Rank, spec.Plan.Addrs(), cluster.DataPlaneToken(spec.Token, spec.Generation), lim)
	cancel()
	if err != nil {
		return fmt.Errorf("mesh runner: %w", err)
	}
	defer t.Close()
	// An abort, stop or recovery cancels ctx: closing the data plane then
	// fails every collective in flight, here and (through the closed
	// connections) on every peer, at once rather than at their deadlines.
	defer context.AfterFunc(ctx, func() { t.Close() })()
	log.Debug().Dur("wait", time.Since(t0)).Msg("data plane connected")
	world := collective.NewWorldConfig(t, ccfg)
	mr, err := train.NewMeshRank(cfg, m, spec.Rank, world, log)
	if err != nil {
		return fmt.Errorf("mesh runner: %w", err)
	}
	// Every rank ready before the first step, so the steps' collectives
	// (bounded by CollectiveTimeout) do not wait for a rank still loading.
	t1 := time.Now()
	bctx, cancel := context.WithTimeout(ctx, setup)
	err = world.Barrier(bctx)
	cancel()
	if err != nil {
		return fmt.Errorf("mesh runner: waiting for every rank to be ready: %w", err)
	}
	log.Debug().Dur("wait", time.Since(t1)).Msg("every rank ready")
	tr := mr.Trainer()
	rc, _, err := openRankCheckpoints(ctx, spec, &train.MeshRankState{Rank: mr, Sampler: sampler, Log: log})
	if err != nil {
		return fmt.Errorf("mesh runner: %w", err)
	}
	defer rc.close()
	log.Info().Int("params", tr.Layout().Total).Int("threads", tensor.Threads()).Str("mesh", m.String()).
		Int("dp", coord.DP).Int("sp", coord.SP).Int("tp", coord.TP).Int("steps", cfg.Train.Steps).
		Int("start_step", tr.Step()).Bool("zero1", cfg.DP.Zero1).Str("sp_algorithm", cfg.Mesh.SPAlgorithm).Msg("mesh training")

	var tokens int64 // this rank's share of the job's input positions
	var trainTime time.Duration
	var phases metrics.Phases // cumulative, for the coordinator's metrics
	var chunkLogged []int     // per MoE layer: the step of its newest logged pipelining change
	var tally loadTally
	for tr.Step() < cfg.Train.Steps {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("mesh runner: stopped before step %d: %w", tr.Step()+1, err)
		}
		t0 := time.Now()
		b, err := sampler.Next()
		if err != nil {
			return fmt.Errorf("mesh runner: step %d: data: %w", tr.Step()+1, err)
		}
		t1 := time.Now()
		st, err := mr.Step(ctx, b)
		if err != nil {
			return fmt.Errorf("mesh runner: %w", err)
		}
		t2 := time.Now()
		trainTime += t2.Sub(t0)
		phases.Data += t1.Sub(t0).Seconds()
		phases.Compute += t2.Sub(t1).Seconds()
		tokens += int64(st.Tokens / m.TP)
		step := tr.Step()
		if math.IsNaN(st.Loss) || math.IsInf(st.Loss, 0) {
			return fmt.Errorf("mesh runner: step %d: loss is %v", step, st.Loss)
		}
		if err := rc.afterStep(ctx, step); err != nil {
			return fmt.Errorf("mesh runner: %w", err)
		}
		phases.Checkpoint += time.Since(t2).Seconds()
		u := ProgressUpdate{Step: step, Loss: st.Loss, Tokens: tokens, TokensPerSec: float64(tokens) / trainTime.Seconds(),
			Load: tally.add(st.Router)}
		if len(val) > 0 && (step%cfg.Train.EvalEvery == 0 || step == cfg.Train.Steps) {
			t3 := time.Now()
			v, err := mr.Evaluate(ctx, val)
			if err != nil {
				return fmt.Errorf("mesh runner: step %d: validation: %w", step, err)
			}
			u.HasVal, u.ValLoss = true, v
			phases.Validation += time.Since(t3).Seconds()
		}
		u.Phases = phases
		spec.Report(u)
		if step%cfg.Train.LogEvery == 0 || step == 1 {
			ev := log.Info().Float64("loss", st.Loss).Float64("ce", st.CE).Float64("aux", st.Aux).
				Float64("grad_norm", st.GradNorm).Float64("tokens_per_sec", math.Round(u.TokensPerSec))
			train.LogRouterLoad(ev, st.Router)
			ev.Msg("step")
		}
		if u.HasVal {
			log.Info().Float64("val_loss", u.ValLoss).Msg("validation")
		}
		chunkLogged = logChunkChoices(log, tr.Model(), chunkLogged)
	}
	if err := rc.finish(ctx); err != nil {
		return fmt.Errorf("mesh runner: %w", err)
	}
	log.Info().Int("steps", tr.Step()).Int64("tokens", tokens).Dur("train_time", trainTime).
		Int64("peak_rss_bytes", peakRSSBytes()).Msg("done")
	return nil
}

// logChunkChoices logs the pipelining degree changes that m's MoE layers
// made after the steps in last (model.ep_chunks = -1 lets each layer choose
// from measured times; docs/algorithms/ep-dispatch.md) and returns each
// layer's newest logged step. A layer's log keeps its latest changes only,
// in step order, so changes are told apart by their step.
func logChunkChoices(log zerolog.Logger, m *model.Model, last []int) []int {
	if m.Cfg.EPChunks != model.EPChunksAuto {
		return last
	}
	for l, changes := range m.EPChunkLog() {
		if l >= len(last) {
			last = append(last, -1)
		}
		for _, c := range changes {
			if c.Step <= last[l] {
				continue
			}
			ms := zerolog.Dict()
			for k, d := range c.Times {
				ms.Float64(strconv.Itoa(k), float64(d.Microseconds())/1e3)
			}
			log.Info().Int("layer", l).Int("at_step", c.Step).Int("from", c.From).Int("to", c.To).
				Dict("median_ms_by_chunks", ms).Msg("expert-parallel pipelining changed")
			last[l] = c.Step
		}
	}
	return last
}
