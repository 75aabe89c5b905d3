package worker

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"

	"github.com/moetrain/moetrain/cluster"
	pb "github.com/moetrain/moetrain/cluster/proto"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/tensor"
	"github.com/moetrain/moetrain/train"
)

// SPSALogPath is where a job's rank 0 keeps the SPSA log: spsa.log, else
// SPSALogName in the checkpoint directory, else "" (no log: a restarted job
// starts again from spsa.init_from).
func SPSALogPath(job train.JobConfig, ckptDir string) string {
	switch {
	case job.SPSA.Log != "":
		return job.SPSA.Log
	case ckptDir != "":
		return filepath.Join(ckptDir, cluster.SPSALogName)
	}
	return ""
}

// RunSPSA is the runner of train.mode = "spsa" (docs/algorithms/spsa.md)
// for a worker with no line to its coordinator's log: every rank is a
// whole-model replica loaded from spsa.init_from; per step it measures its
// own directions on its own batch (sampler stream = rank) and the ranks
// all-gather the quantized projected gradients over the data plane, so
// every replica applies the same updates and stays bitwise equal.
//
// Rank 0 keeps the log of every applied step (SPSALogPath), appended and
// fsync'd after each step. A job that starts with a log present (a restart,
// a recovery, a launch with more train.steps) loads spsa.init_from on every
// rank, replays the log instead of receiving weights, checks that every rank
// reached the same step with the same parameter checksum, and continues.
// Only rank 0 validates (the replicas are equal); it reports validation at
// the starting step too. The run ends with the same checksum check, and
// each rank's "done" record carries its traffic (SPSABytesFromLogs).
//
// CoordinatedRunner adds the coordinator's log: the authority every rank
// replays at a start and a worker joining between steps catches up from
// (docs/control-plane.md#spsa-join).
func RunSPSA(ctx context.Context, spec StartSpec) error { return runSPSA(ctx, spec, nil) }

// spsaPauseBound bounds a paused member's wait for the next member set;
// the coordinator publishes one within its join timeout (--rejoin-timeout).
const spsaPauseBound = 10 * time.Minute

// spsaRun is one SPSA rank's state: its replica, its member set and the
// traffic counted so far.
type spsaRun struct {
	spec    StartSpec
	cfg     train.JobConfig
	log     zerolog.Logger
	rank    int
	m       *model.Model
	fwd     spsa.Forwarder // the replica's loss: m, or its copy on a GPU
	w       *spsa.Worker
	base    uint32
	data    *sampling.Data
	sampler sampling.Sampler
	ctl     *spsaControl // nil: no line to the coordinator's log
	keeper  *spsa.Log    // rank 0's own log (a cache of the coordinator's when ctl is set)
	logPath string

	plan      cluster.Plan
	epoch     int64
	t         collective.Transport
	unwatch   func() bool // stops closing t when ctx ends
	ex        *spsaFlagExchange
	wire      int64 // step traffic of the member sets before this one
	wireStart int64 // ex.WireBytes() when this set's steps began
}

func runSPSA(ctx context.Context, spec StartSpec, ctl *spsaControl) error {
	cfg, log, rank := spec.Job, spec.Log, spec.Rank
	if spec.Checkpoint.ResumeDir != "" {
		return fmt.Errorf(`spsa runner: --resume %s: a train.mode = "spsa" job restarts from spsa.init_from and its log, not from a trainer checkpoint`, spec.Checkpoint.ResumeDir)
	}
	if m := spec.Plan.Mesh; m.TP > 1 || m.SP > 1 || m.EP > 1 {
		return fmt.Errorf("spsa runner: mesh %s: every SPSA rank holds the whole model (tp = sp = ep = 1)", m)
	}
	threads := spec.Threads
	if threads <= 0 {
		threads = cfg.Train.Threads
	}
	tensor.SetThreads(threads)
	r := &spsaRun{spec: spec, cfg: cfg, log: log, rank: rank, ctl: ctl, plan: spec.Plan}
	defer r.closeNet()
	defer func() {
		if r.keeper != nil {
			r.keeper.Close()
		}
	}()
	var err error
	if r.data, err = sampling.Open(cfg.Data, cfg.Train.Seed); err != nil {
		return fmt.Errorf("spsa runner: data: %w", err)
	}
	var val []sampling.Batch
	if rank == 0 && cfg.Train.EvalEvery > 0 {
		if val, err = r.data.ValBatches(cfg.Train.EvalBatches); err != nil {
			log.Warn().Err(err).Msg("training without validation")
			val = nil
		}
	}
	if r.m, err = model.New(cfg.Model, cfg.Train.Seed); err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	if err := loadSPSAStart(cfg.SPSA.InitFrom, r.m); err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	r.base = spsa.Checksum(r.m.Params)
	// The replica's loss and parameters: the host model, or its copy on a
	// GPU (train.device = "cuda"), the same bits either way.
	rep, err := newSPSAReplica(cfg, r.m, PlanHosts(spec.Plan), rank, threads)
	if err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	defer rep.Close()
	if rep.Device != "" {
		log.Info().Str("gpu", rep.Device).Msg("SPSA replica on the GPU")
	}
	r.fwd = rep.Model
	if r.w, err = spsa.NewWorkerOn(cfg.SPSA, spsaWorkerID(rank), rep.Store, 0); err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	joining := false
	if ctl != nil {
		joining, err = ctl.joining(ctx)
		switch {
		case spsaRefused(err, codes.FailedPrecondition):
			log.Warn().Err(err).Msg("the coordinator keeps no SPSA log: rank 0 keeps it alone and no worker can join while the job runs")
			r.ctl = nil
		case err != nil:
			return fmt.Errorf("spsa runner: %w", err)
		}
	}
	if rank == 0 && spec.Checkpoint.Every > 0 {
		log.Warn().Int("every", spec.Checkpoint.Every).Msg("SPSA writes no checkpoints: spsa.init_from and the log are its state")
	}
	if joining {
		err = r.join(ctx)
	} else {
		err = r.start(ctx)
	}
	if err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	return r.run(ctx, val, joining)
}

// start is a start of the whole job: rank 0 reconciles its own log with
// the coordinator's, every rank replays the log and the ranks check they
// agree.
func (r *spsaRun) start(ctx context.Context) error {
	cfg := r.cfg
	r.logPath = SPSALogPath(cfg, r.spec.Checkpoint.Dir)
	var recs []spsa.Record
	var err error
	if r.rank == 0 {
		if r.logPath != "" {
			if r.keeper, recs, err = openSPSALog(r.logPath, cfg.SPSA, r.base); err != nil {
				return err
			}
		} else if r.ctl == nil {
			r.log.Warn().Msg("no SPSA log kept (set spsa.log or a checkpoint directory): a restarted job starts again from spsa.init_from")
		}
		if r.ctl != nil {
			if recs, err = r.reconcile(ctx, recs); err != nil {
				return err
			}
		}
	}
	if err := r.connect(ctx); err != nil {
		return err
	}
	// Rank 0 has opened (and repaired) its log and brought the
	// coordinator's up to date before this barrier; the others read after.
	bctx, cancel := context.WithTimeout(ctx, SetupTimeout(len(r.plan.Ranks)))
	err = r.ex.inner.Comm().Barrier(bctx)
	cancel()
	if err != nil {
		return fmt.Errorf("waiting for every rank to be ready: %w", err)
	}
	if r.rank != 0 {
		switch {
		case r.ctl != nil:
			f, err := r.ctl.fetch(ctx, 0)
			if err != nil {
				return err
			}
			if f.exists {
				if err := checkSPSAParams("the coordinator's spsa log", f.params, cfg.SPSA, r.base); err != nil {
					return err
				}
			}
			recs = f.recs
		case r.logPath != "":
			if recs, err = readSPSALog(r.logPath, cfg.SPSA, r.base); err != nil {
				return err
			}
		}
	}
	start := int64(0)
	if len(recs) > 0 {
		start = recs[len(recs)-1].Step + 1
	}
	if start > int64(cfg.Train.Steps) {
		return fmt.Errorf("the log holds %d steps, more than train.steps = %d", start, cfg.Train.Steps)
	}
	if err := r.w.Replay(recs, start); err != nil {
		return err
	}
	if err := r.agree(ctx, "before the first step"); err != nil {
		return err
	}
	if start > 0 {
		r.log.Info().Int64("replayed_steps", start).Str("log", r.logPath).Bool("coordinator_log", r.ctl != nil).Msg("replayed the SPSA log")
	}
	return r.openSampler()
}

// reconcile brings rank 0's own log (local, maybe none) and the
// coordinator's to the same records: their common steps must agree; what
// one lacks, the other gives. It returns the records.
func (r *spsaRun) reconcile(ctx context.Context, local []spsa.Record) ([]spsa.Record, error) {
	f, err := r.ctl.fetch(ctx, 0)
	if err != nil {
		return nil, err
	}
	if f.exists {
		if err := checkSPSAParams("the coordinator's spsa log", f.params, r.cfg.SPSA, r.base); err != nil {
			return nil, err
		}
	}
	for i := range min(len(local), len(f.recs)) {
		if !reflect.DeepEqual(local[i], f.recs[i]) {
			return nil, fmt.Errorf("rank 0's spsa log %s and the coordinator's differ at step %d", r.logPath, local[i].Step)
		}
	}
	if len(local) > len(f.recs) {
		r.log.Info().Int("records", len(local)-len(f.recs)).Msg("handing the coordinator the log records it lacks")
		return local, r.ctl.appendAll(ctx, r.base, local[len(f.recs):])
	}
	if r.keeper != nil {
		if err := r.keeper.Append(f.recs[len(local):]...); err != nil {
			return nil, err
		}
	}
	return f.recs, nil
}

// join catches up from the coordinator's log (no parameter transfer) and
// enters the exchange at the step boundary the coordinator publishes.
func (r *spsaRun) join(ctx context.Context) error {
	t0 := time.Now()
	deadline := t0.Add(spsaPauseBound)
	var logBytes, received int64
	fetches := 0
	for {
		f, err := r.ctl.fetch(ctx, r.w.Step())
		if err != nil {
			return err
		}
		fetches++
		if f.exists {
			if err := checkSPSAParams("the coordinator's spsa log", f.params, r.cfg.SPSA, r.base); err != nil {
				return err
			}
			if logBytes == 0 {
				logBytes = spsa.LogHeaderSize
			}
			logBytes += f.bytes - spsa.LogHeaderSize
			received += f.bytes
			if err := r.w.Replay(f.recs, r.w.Step()+int64(len(f.recs))); err != nil {
				return err
			}
		}
		resp, err := r.ctl.waitOnce(ctx, r.w.Step())
		if err != nil {
			return err
		}
		if resp.Go {
			r.log.Info().Int64("catchup_steps", r.w.Step()).Int64("catchup_log_bytes", logBytes).Int64("catchup_received_bytes", received).
				Int("catchup_fetches", fetches).Float64("catchup_s", time.Since(t0).Seconds()).Int64("epoch", resp.Epoch).
				Msg("caught up from the coordinator's SPSA log")
			return r.enter(ctx, resp, "when it joined")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("joining at step %d: %w within %v", r.w.Step(), errSPSAWaitBound, spsaPauseBound)
		}
	}
}

// enter switches to the member set of resp at the worker's step: a new
// data plane (keyed by the set's epoch), the exchange over its members,
// this rank's sampler of it, and the checksum comparison with every member.
func (r *spsaRun) enter(ctx context.Context, resp *pb.SPSAWaitResponse, when string) error {
	var plan cluster.Plan
	if err := json.Unmarshal(resp.PlanJson, &plan); err != nil {
		return fmt.Errorf("member set %d: plan: %w", resp.Epoch, err)
	}
	if err := plan.Validate(); err != nil {
		return fmt.Errorf("member set %d: %w", resp.Epoch, err)
	}
	if int(resp.Rank) != r.rank || plan.Ranks[r.rank].Worker.ID != r.spec.WorkerID {
		return fmt.Errorf("member set %d puts worker %s at rank %d, it is rank %d (SPSA ranks keep their place)", resp.Epoch, r.spec.WorkerID, resp.Rank, r.rank)
	}
	r.closeNet()
	r.plan, r.epoch = plan, resp.Epoch
	if err := r.connect(ctx); err != nil {
		return err
	}
	if err := r.agree(ctx, fmt.Sprintf("%s (member set %d of %d ranks from step %d)", when, resp.Epoch, len(plan.Ranks), r.w.Step())); err != nil {
		return err
	}
	r.log.Info().Int64("epoch", resp.Epoch).Int("workers", len(plan.Ranks)).Int64("start_step", r.w.Step()).Msg("spsa member set")
	return r.openSampler()
}

// connect builds the data plane and exchange of the current member set.
func (r *spsaRun) connect(ctx context.Context) error {
	ccfg := collective.Config{Timeout: CollectiveTimeout}
	n := len(r.plan.Ranks)
	dctx, cancel := context.WithTimeout(ctx, SetupTimeout(n))
	lim := JobDataPlaneLimits(r.cfg, r.plan.Mesh, ccfg)
	lim.Hosts = PlanHosts(r.plan) // ranks on one host share memory, as RunMesh's do
	t, err := r.spec.Data.Connect(dctx, r.rank, r.plan.Addrs(), spsaDataToken(r.spec.Token, r.spec.Generation, r.epoch), lim)
	cancel()
	if err != nil {
		return err
	}
	r.t = t
	// An abort, stop or recovery cancels ctx: closing the data plane fails
	// the exchange in flight here and on every peer at once.
	r.unwatch = context.AfterFunc(ctx, func() { t.Close() })
	ids := make([]uint32, n)
	for i := range ids {
		ids[i] = spsaWorkerID(i)
	}
	inner, err := spsa.NewCommExchangeConfig(t, ids, ccfg)
	if err != nil {
		return err
	}
	r.ex = &spsaFlagExchange{inner: inner}
	return nil
}

// closeNet closes the current member set's data plane, counting its traffic.
func (r *spsaRun) closeNet() {
	if r.t == nil {
		return
	}
	r.wire += r.ex.WireBytes() - r.wireStart
	r.unwatch()
	r.t.Close()
	r.t, r.ex, r.wireStart = nil, nil, 0
}

// agree compares every member's step and parameter checksum; the setup
// traffic is not counted as step traffic.
func (r *spsaRun) agree(ctx context.Context, when string) error {
	sum, err := r.w.Checksum()
	if err != nil {
		return err
	}
	err = agreeSPSA(ctx, r.ex.inner.Comm(), when, r.w.Step(), sum)
	r.wireStart = r.ex.WireBytes()
	return err
}

// openSampler opens this rank's sampler stream of the current member set
// and skips the steps already taken (the batches of an uninterrupted run of
// that set).
func (r *spsaRun) openSampler() error {
	n := len(r.plan.Ranks)
	s, err := r.data.Sampler(r.rank, n)
	if err != nil {
		return fmt.Errorf("sampler of rank %d of %d: %w", r.rank, n, err)
	}
	for i := int64(0); i < r.w.Step(); i++ {
		if _, err := s.Next(); err != nil {
			return fmt.Errorf("skipping step %d's batch: %w", i, err)
		}
	}
	r.sampler = s
	return nil
}

// stepWire is this rank's step traffic so far, every member set's.
func (r *spsaRun) stepWire() int64 { return r.wire + r.ex.WireBytes() - r.wireStart }

// run takes the steps left: each one's record goes to rank 0's own log and
// the coordinator's; a pause that rank 0 flags in a step's exchange
// switches every member to the next member set after it.
func (r *spsaRun) run(ctx context.Context, val []sampling.Batch, joined bool) error {
	cfg, log, w := r.cfg, r.log, r.w
	start, total := w.Step(), int64(cfg.Train.Steps)
	log.Info().Int("params", len(r.m.Params)).Int("threads", tensor.Threads()).Int("workers", len(r.plan.Ranks)).
		Int("steps", cfg.Train.Steps).Int64("start_step", start).Float64("epsilon", cfg.SPSA.Epsilon).
		Float64("lr", cfg.SPSA.LR).Int("directions", cfg.SPSA.Directions).Str("quant", cfg.SPSA.Quant).
		Str("log", r.logPath).Bool("coordinator_log", r.ctl != nil).Msg("spsa fine-tuning")
	if val != nil && !joined { // the starting point
		v, err := spsa.EvalCE(r.fwd, val)
		if err != nil {
			return err
		}
		r.spec.Report(ProgressUpdate{Step: int(start), HasVal: true, ValLoss: v})
		log.Info().Float64("val_loss", v).Msg("validation")
	}
	var in model.Input
	loss := spsa.ModelLoss(r.fwd, &in)
	var train time.Duration
	var payload, tokens int64
	clipped := 0
	pauseAfter := int64(-1)
	// Rank 0 hands step t's record to the coordinator while it runs step
	// t+1 (one hand-over in flight; the coordinator's pause answer for t
	// names step t+2 at the earliest): the step does not wait for the RPC
	// and the coordinator's fsync.
	type handed struct {
		pause int64
		err   error
	}
	var inflight chan handed
	settle := func() error {
		if inflight == nil {
			return nil
		}
		h := <-inflight
		inflight = nil
		if h.err != nil {
			return fmt.Errorf("spsa runner: %w", h.err)
		}
		if h.pause >= 0 {
			pauseAfter = h.pause
		}
		return nil
	}
	for w.Step() < total {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("spsa runner: %w", err)
		}
		b, err := r.sampler.Next()
		if err != nil {
			return fmt.Errorf("spsa runner: step %d: data: %w", w.Step(), err)
		}
		in = spsa.Input(b)
		tokens += int64(b.B * b.T)
		r.ex.flag = 0
		if r.rank == 0 && w.Step() == pauseAfter {
			r.ex.flag = 1
		}
		t0 := time.Now()
		st, err := w.StepOnce(ctx, r.ex, loss)
		if err != nil {
			return fmt.Errorf("spsa runner: %w", err)
		}
		train += time.Since(t0)
		payload += int64(cfg.SPSA.Directions * cfg.SPSA.EntryBytes())
		clipped += st.Clipped
		rec := spsa.Record{Step: st.Step, Entries: st.Entries}
		if r.keeper != nil {
			if err := r.keeper.Append(rec); err != nil {
				return fmt.Errorf("spsa runner: %w", err)
			}
		}
		if r.rank == 0 && r.ctl != nil {
			if err := settle(); err != nil {
				return err
			}
			rec.Entries = append([]spsa.Entry(nil), rec.Entries...) // the worker reuses its slice
			ch := make(chan handed, 1)
			go func() {
				p, err := r.ctl.appendRecs(ctx, r.base, rec)
				ch <- handed{p, err}
			}()
			inflight = ch
		}
		if math.IsNaN(st.Loss) || math.IsInf(st.Loss, 0) {
			return fmt.Errorf("spsa runner: step %d: loss is %v", st.Step, st.Loss)
		}
		u := ProgressUpdate{Step: int(w.Step()), Loss: st.Loss, Tokens: tokens,
			TokensPerSec: float64(tokens) / max(train.Seconds(), 1e-9)}
		u.Phases.Compute = train.Seconds()
		if val != nil && ((cfg.Train.EvalEvery > 0 && w.Step()%int64(cfg.Train.EvalEvery) == 0) || w.Step() == total) {
			if u.ValLoss, err = spsa.EvalCE(r.fwd, val); err != nil {
				return fmt.Errorf("spsa runner: %w", err)
			}
			u.HasVal = true
		}
		r.spec.Report(u)
		if w.Step()%int64(cfg.Train.LogEvery) == 0 || w.Step()-start == 1 {
			log.Info().Float64("loss", st.Loss).Int64("wire_bytes", r.stepWire()).Int64("payload_bytes", payload).
				Int("clipped", clipped).Float64("tokens_per_sec", math.Round(u.TokensPerSec)).Msg("step")
		}
		if u.HasVal {
			log.Info().Float64("val_loss", u.ValLoss).Int64("wire_bytes", r.stepWire()).Float64("train_s", train.Seconds()).Msg("validation")
		}
		if r.ex.seen != 0 && w.Step() < total {
			if r.ctl == nil {
				return fmt.Errorf("spsa runner: rank 0 paused the members after step %d, but this rank has no line to the coordinator", st.Step)
			}
			if err := settle(); err != nil { // the joiner replays this step's record
				return err
			}
			log.Info().Int64("after_step", st.Step).Msg("paused for a member set change")
			paused := time.Now()
			resp, err := r.ctl.waitGo(ctx, w.Step(), spsaPauseBound)
			if err != nil {
				return fmt.Errorf("spsa runner: %w", err)
			}
			if err := r.enter(ctx, resp, "after the member set changed"); err != nil {
				return fmt.Errorf("spsa runner: %w", err)
			}
			log.Info().Float64("paused_s", time.Since(paused).Seconds()).Int64("epoch", resp.Epoch).Msg("resumed after the member set change")
		}
	}
	if err := settle(); err != nil {
		return err
	}
	wire := r.stepWire()
	if err := r.agree(ctx, "after the last step"); err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	sum, err := r.w.Checksum()
	if err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	steps := w.Step() - start
	perStep := 0.0
	if steps > 0 {
		perStep = float64(wire) / float64(steps)
	}
	log.Info().Int64("steps", w.Step()).Int64("steps_run", steps).Int64("wire_bytes", wire).
		Int64("payload_bytes", payload).Float64("wire_bytes_per_step", perStep).Int64("tokens", tokens).
		Float64("train_s", train.Seconds()).Str("params_crc32c", fmt.Sprintf("%08x", sum)).
		Int("workers", len(r.plan.Ranks)).Int64("peak_rss_bytes", peakRSSBytes()).Msg("done")
	return nil
}

// spsaDataToken is the data-plane secret of member set epoch of generation
// gen: a member of another set cannot join this one's mesh.
func spsaDataToken(token string, gen int, epoch int64) string {
	t := cluster.DataPlaneToken(token, gen)
	if epoch == 0 {
		return t
	}
	return fmt.Sprintf("%s\x00spsa member set %d", t, epoch)
}

// spsaFlagExchange carries rank 0's pause flag in each step's all-gather:
// one byte after the payload, in what is otherwise the padding of the
// collective's 4-byte words (an int8 payload of up to 3 directions travels
// in the same bytes). Every member reads rank 0's flag of the same step, so
// they all pause after the same step.
type spsaFlagExchange struct {
	inner     *spsa.CommExchange
	flag      byte // this member's flag for the next AllGather (rank 0's counts)
	seen      byte // rank 0's flag of the last AllGather
	mine, all []byte
}

func (x *spsaFlagExchange) Members() []uint32 { return x.inner.Members() }
func (x *spsaFlagExchange) WireBytes() int64  { return x.inner.WireBytes() }

func (x *spsaFlagExchange) AllGather(ctx context.Context, mine, all []byte) error {
	n, m := len(x.inner.Members()), len(mine)+1
	if len(all) != n*len(mine) {
		return fmt.Errorf("spsa: exchange: %d bytes for %d members of %d bytes", len(all), n, len(mine))
	}
	x.mine = append(append(x.mine[:0], mine...), x.flag)
	if len(x.all) != n*m {
		x.all = make([]byte, n*m)
	}
	if err := x.inner.AllGather(ctx, x.mine, x.all); err != nil {
		return err
	}
	for r := range n {
		copy(all[r*len(mine):(r+1)*len(mine)], x.all[r*m:])
	}
	if x.seen = x.all[m-1]; x.seen > 1 {
		return fmt.Errorf("spsa: exchange: rank 0 sent pause flag %d (0 or 1)", x.seen)
	}
	return nil
}

// spsaWorkerID is rank's identifier in direction seeds and log entries
// (rank + 1, as `coordinator spsa-worker` numbers its ranks).
func spsaWorkerID(rank int) uint32 { return uint32(rank + 1) }

// loadSPSAStart reads the model weights of checkpoint ref into m.
func loadSPSAStart(ref string, m *model.Model) error {
	c, _, err := train.OpenRef(nil, ref)
	if err != nil {
		return fmt.Errorf("spsa.init_from: %w", err)
	}
	defer c.Close()
	if err := spsa.LoadWeights(c, m); err != nil {
		return fmt.Errorf("spsa.init_from %s: %w", ref, err)
	}
	return nil
}

// checkBase refuses a log (what names it) that starts from other
// parameters than base.
func checkBase(what string, p spsa.LogParams, base uint32) error {
	if p.Base != base {
		return fmt.Errorf("%s starts from parameters with checksum %08x, spsa.init_from has %08x: it belongs to another starting checkpoint", what, p.Base, base)
	}
	return nil
}

// openSPSALog opens the log at path for appending (its records, a torn
// tail cut), or creates it when there is none.
func openSPSALog(path string, cfg spsa.Config, base uint32) (*spsa.Log, []spsa.Record, error) {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		l, err := spsa.CreateLogFrom(path, cfg, base)
		return l, nil, err
	}
	l, recs, err := spsa.OpenLog(path, cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := checkBase("spsa log "+path, l.Params(), base); err != nil {
		l.Close()
		return nil, nil, err
	}
	return l, recs, nil
}

// readSPSALog reads the log rank 0 opened (all of it: rank 0 cut any torn
// tail before the barrier).
func readSPSALog(path string, cfg spsa.Config, base uint32) ([]spsa.Record, error) {
	p, recs, err := spsa.ReadLog(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("spsa log %s: not found on this worker, but rank 0 keeps it there (the path must be on a file system every worker shares)", path)
	}
	if err != nil {
		return nil, err
	}
	return recs, checkSPSAParams("spsa log "+path, p, cfg, base)
}

// checkSPSAParams refuses a log (what names it) written with other
// settings than cfg's or starting from other parameters than base.
func checkSPSAParams(what string, p spsa.LogParams, cfg spsa.Config, base uint32) error {
	want := cfg.Params()
	want.Base = p.Base
	if p != want {
		return fmt.Errorf("%s: written with %+v, this job has %+v", what, p, cfg.Params())
	}
	return checkBase(what, p, base)
}

// agreeSPSA all-gathers every rank's step and parameter checksum and fails,
// naming the ranks, unless they are all equal: the replicas must never
// drift apart silently.
func agreeSPSA(ctx context.Context, c *collective.Comm, when string, step int64, sum uint32) error {
	mine := make([]float32, 3)
	b := make([]byte, 12)
	binary.LittleEndian.PutUint64(b, uint64(step))
	binary.LittleEndian.PutUint32(b[8:], sum)
	for i := range mine { // raw bits: no arithmetic touches them
		mine[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	all := make([]float32, 3*c.Size())
	if err := c.AllGather(ctx, mine, all); err != nil {
		return fmt.Errorf("comparing the replicas %s: %w", when, err)
	}
	for r := range c.Size() {
		for i := range 3 {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(all[3*r+i]))
		}
		s, x := int64(binary.LittleEndian.Uint64(b)), binary.LittleEndian.Uint32(b[8:])
		if s != step || x != sum {
			return fmt.Errorf("replicas differ %s: rank %d is at step %d with parameter checksum %08x, rank %d at step %d with %08x",
				when, r, s, x, c.Rank(), step, sum)
		}
	}
	return nil
}
