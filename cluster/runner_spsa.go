package cluster

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/tensor"
	"github.com/moetrain/moetrain/train"
)

// SPSALogName is the SPSA log's file name in the checkpoint directory when
// spsa.log is not set.
const SPSALogName = "spsa.log"

// SPSALogPath is where a job's rank 0 keeps the SPSA log: spsa.log, else
// SPSALogName in the checkpoint directory, else "" (no log: a restarted job
// starts again from spsa.init_from).
func SPSALogPath(job train.JobConfig, ckptDir string) string {
	switch {
	case job.SPSA.Log != "":
		return job.SPSA.Log
	case ckptDir != "":
		return filepath.Join(ckptDir, SPSALogName)
	}
	return ""
}

// RunSPSA is the runner of train.mode = "spsa" (docs/algorithms/spsa.md):
// every rank is a whole-model replica loaded from spsa.init_from; per step
// it measures its own directions on its own batch (sampler stream = rank)
// and the ranks all-gather the quantized projected gradients over the data
// plane, so every replica applies the same updates and stays bitwise equal.
//
// Rank 0 keeps the log of every applied step (SPSALogPath), appended and
// fsync'd after each step. A job that starts with a log present (a restart,
// a recovery, a launch with more train.steps) loads spsa.init_from on every
// rank, replays the log instead of receiving weights, checks that every rank
// reached the same step with the same parameter checksum, and continues.
// Only rank 0 validates (the replicas are equal); it reports validation at
// the starting step too. The run ends with the same checksum check, and
// each rank's "done" record carries its traffic (SPSABytesFromLogs).
func RunSPSA(ctx context.Context, spec StartSpec) error {
	cfg, log, rank := spec.Job, spec.Log, spec.Rank
	n := spec.Plan.Mesh.World()
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
	data, err := sampling.Open(cfg.Data, cfg.Train.Seed)
	if err != nil {
		return fmt.Errorf("spsa runner: data: %w", err)
	}
	sampler, err := data.Sampler(rank, n)
	if err != nil {
		return fmt.Errorf("spsa runner: sampler of rank %d of %d: %w", rank, n, err)
	}
	var val []sampling.Batch
	if rank == 0 && cfg.Train.EvalEvery > 0 {
		if val, err = data.ValBatches(cfg.Train.EvalBatches); err != nil {
			log.Warn().Err(err).Msg("training without validation")
			val = nil
		}
	}
	m, err := model.New(cfg.Model, cfg.Train.Seed)
	if err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	if err := loadSPSAStart(cfg.SPSA.InitFrom, m); err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	base := spsa.Checksum(m.Params)
	logPath := SPSALogPath(cfg, spec.Checkpoint.Dir)
	var keeper *spsa.Log
	var recs []spsa.Record
	if rank == 0 && logPath != "" {
		if keeper, recs, err = openSPSALog(logPath, cfg.SPSA, base); err != nil {
			return fmt.Errorf("spsa runner: %w", err)
		}
		defer keeper.Close()
	} else if rank == 0 {
		log.Warn().Msg("no SPSA log kept (set spsa.log or a checkpoint directory): a restarted job starts again from spsa.init_from")
	}
	if rank == 0 && spec.Checkpoint.Every > 0 {
		log.Warn().Int("every", spec.Checkpoint.Every).Msg("SPSA writes no checkpoints: spsa.init_from and the log are its state")
	}

	ccfg := collective.Config{Timeout: CollectiveTimeout}
	setup := SetupTimeout(n)
	dctx, cancel := context.WithTimeout(ctx, setup)
	lim := JobDataPlaneLimits(cfg, spec.Plan.Mesh, ccfg)
	lim.Hosts = PlanHosts(spec.Plan) // ranks on one host share memory, as RunMesh's do
	t, err := spec.Data.Connect(dctx, rank, spec.Plan.Addrs(), DataPlaneToken(spec.Token, spec.Generation), lim)
	cancel()
	if err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	defer t.Close()
	// An abort, stop or recovery cancels ctx: closing the data plane fails
	// the exchange in flight here and on every peer at once.
	defer context.AfterFunc(ctx, func() { t.Close() })()
	ids := make([]uint32, n)
	for r := range ids {
		ids[r] = spsaWorkerID(r)
	}
	ex, err := spsa.NewCommExchangeConfig(t, ids, ccfg)
	if err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	// Rank 0 has opened (and repaired) the log before this barrier; the
	// others read it after, before any step can append to it.
	bctx, cancel := context.WithTimeout(ctx, setup)
	err = ex.Comm().Barrier(bctx)
	cancel()
	if err != nil {
		return fmt.Errorf("spsa runner: waiting for every rank to be ready: %w", err)
	}
	if rank != 0 && logPath != "" {
		if recs, err = readSPSALog(logPath, cfg.SPSA, base); err != nil {
			return fmt.Errorf("spsa runner: %w", err)
		}
	}
	w, err := spsa.NewWorker(cfg.SPSA, spsaWorkerID(rank), m.Params, m.Grads, 0, threads)
	if err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	start := int64(0)
	if len(recs) > 0 {
		start = recs[len(recs)-1].Step + 1
	}
	if start > int64(cfg.Train.Steps) {
		return fmt.Errorf("spsa runner: the log %s holds %d steps, more than train.steps = %d", logPath, start, cfg.Train.Steps)
	}
	if err := w.Replay(recs, start); err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	recs = nil
	if err := agreeSPSA(ctx, ex.Comm(), "before the first step", start, spsa.Checksum(m.Params)); err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	if start > 0 {
		log.Info().Int64("replayed_steps", start).Str("log", logPath).Msg("replayed the SPSA log")
	}
	// The same batches as an uninterrupted run: skip the steps replayed.
	for s := int64(0); s < start; s++ {
		if _, err := sampler.Next(); err != nil {
			return fmt.Errorf("spsa runner: skipping replayed step %d's batch: %w", s, err)
		}
	}
	log.Info().Int("params", len(m.Params)).Int("threads", tensor.Threads()).Int("workers", n).
		Int("steps", cfg.Train.Steps).Int64("start_step", start).Float64("epsilon", cfg.SPSA.Epsilon).
		Float64("lr", cfg.SPSA.LR).Int("directions", cfg.SPSA.Directions).Str("quant", cfg.SPSA.Quant).
		Str("log", logPath).Msg("spsa fine-tuning")

	setupBytes := ex.WireBytes()
	var last spsa.Point
	var stepErr error
	// A non-finite loss stops the run after the step that reported it:
	// FineTune checks the context before the next one.
	rctx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	ft := &spsa.FineTune{Model: m, Worker: w, Exchange: ex, Sampler: sampler, Val: val,
		EvalEvery: cfg.Train.EvalEvery, Log: keeper}
	ft.OnPoint = func(p spsa.Point) {
		if p.Step == start && p.Tokens == 0 { // the starting point: validation only
			spec.Report(ProgressUpdate{Step: int(p.Step), HasVal: true, ValLoss: p.ValLoss})
			log.Info().Float64("val_loss", p.ValLoss).Msg("validation")
			return
		}
		last = p
		if math.IsNaN(p.Loss) || math.IsInf(p.Loss, 0) {
			stepErr = fmt.Errorf("spsa runner: step %d: loss is %v", p.Step, p.Loss)
			cancelRun()
			return
		}
		u := ProgressUpdate{Step: int(p.Step), Loss: p.Loss, Tokens: p.Tokens,
			TokensPerSec: float64(p.Tokens) / max(p.TrainSeconds, 1e-9), HasVal: p.ValLoss != 0, ValLoss: p.ValLoss}
		u.Phases.Compute = p.TrainSeconds
		spec.Report(u)
		done := p.Step - start
		if p.Step%int64(cfg.Train.LogEvery) == 0 || done == 1 {
			log.Info().Float64("loss", p.Loss).Int64("wire_bytes", p.WireBytes-setupBytes).
				Int64("payload_bytes", p.Payload).Int("clipped", p.Clipped).
				Float64("tokens_per_sec", math.Round(u.TokensPerSec)).Msg("step")
		}
		if u.HasVal {
			log.Info().Float64("val_loss", p.ValLoss).Int64("wire_bytes", p.WireBytes-setupBytes).
				Float64("train_s", p.TrainSeconds).Msg("validation")
		}
	}
	if err := ft.Run(rctx, cfg.Train.Steps-int(start)); err != nil {
		if stepErr != nil {
			return stepErr
		}
		return fmt.Errorf("spsa runner: %w", err)
	}
	sum := spsa.Checksum(m.Params)
	if err := agreeSPSA(ctx, ex.Comm(), "after the last step", w.Step(), sum); err != nil {
		return fmt.Errorf("spsa runner: %w", err)
	}
	steps := w.Step() - start
	perStep := 0.0
	if steps > 0 {
		perStep = float64(last.WireBytes-setupBytes) / float64(steps)
	}
	log.Info().Int64("steps", w.Step()).Int64("steps_run", steps).Int64("wire_bytes", last.WireBytes-setupBytes).
		Int64("payload_bytes", last.Payload).Float64("wire_bytes_per_step", perStep).Int64("tokens", last.Tokens).
		Float64("train_s", last.TrainSeconds).Str("params_crc32c", fmt.Sprintf("%08x", sum)).
		Int64("peak_rss_bytes", peakRSSBytes()).Msg("done")
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

// checkBase refuses a log that starts from other parameters than base.
func checkBase(path string, p spsa.LogParams, base uint32) error {
	if p.Base != base {
		return fmt.Errorf("spsa log %s starts from parameters with checksum %08x, spsa.init_from has %08x: it belongs to another starting checkpoint", path, p.Base, base)
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
	if err := checkBase(path, l.Params(), base); err != nil {
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
	want := cfg.Params()
	want.Base = p.Base
	if p != want {
		return nil, fmt.Errorf("spsa log %s: written with %+v, this job has %+v", path, p, cfg.Params())
	}
	return recs, checkBase(path, p, base)
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

// SPSABytes is one SPSA rank's traffic and memory, from the "done" record
// of its log.
type SPSABytes struct {
	Rank int `json:"rank"`
	// Steps are the steps this process ran (replayed ones excluded), and
	// WireBytes what it sent for them, collective framing included
	// (setup and the final checksum comparison excluded).
	Steps        int64   `json:"steps"`
	WireBytes    int64   `json:"wire_bytes"`
	PayloadBytes int64   `json:"payload_bytes"`
	BytesPerStep float64 `json:"wire_bytes_per_step"`
	ParamsCRC32C string  `json:"params_crc32c"`
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
}

// SPSABytesFromLogs reads the last "done" record of an SPSA runner in each
// worker log (a launch's worker-<i>.log), ordered by rank; logs without one
// are skipped, and so are lines that are not JSON (a torn last line).
func SPSABytesFromLogs(logs []string) ([]SPSABytes, error) {
	var out []SPSABytes
	for _, path := range logs {
		f, err := os.Open(path)
		if err != nil {
			return out, fmt.Errorf("spsa bytes: %w", err)
		}
		var got *SPSABytes
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
		for sc.Scan() {
			var rec struct {
				Message  string  `json:"message"`
				Rank     int     `json:"rank"`
				StepsRun *int64  `json:"steps_run"`
				Wire     int64   `json:"wire_bytes"`
				Payload  int64   `json:"payload_bytes"`
				PerStep  float64 `json:"wire_bytes_per_step"`
				CRC      string  `json:"params_crc32c"`
				PeakRSS  int64   `json:"peak_rss_bytes"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Message != "done" || rec.StepsRun == nil {
				continue
			}
			got = &SPSABytes{Rank: rec.Rank, Steps: *rec.StepsRun, WireBytes: rec.Wire, PayloadBytes: rec.Payload,
				BytesPerStep: rec.PerStep, ParamsCRC32C: rec.CRC, PeakRSSBytes: rec.PeakRSS}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return out, fmt.Errorf("spsa bytes: %s: %w", path, err)
		}
		if got != nil {
			out = append(out, *got)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Rank < out[j].Rank })
	return out, nil
}
