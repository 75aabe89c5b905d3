// Package metrics is the coordinator's Prometheus metrics: a private
// registry (never the process-global default) holding the latest job,
// worker, expert-load and checkpoint figures the coordinator hands it, and
// an HTTP server for /metrics (docs/metrics.md lists every series).
//
// It only records and serves: it must not block its callers (every setter
// takes one mutex for a copy), call back into the job, or create label
// values without bound. Ranks, layers and experts are checked against the
// Limits given to New, and the phase and state labels accept at most
// maxEnumValues distinct values; anything beyond is refused with an error.
package metrics

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Limits bound the label values of a job's metrics: rank < Ranks,
// layer < Layers, expert < Experts.
type Limits struct {
	Ranks, Layers, Experts int
}

// Job is the job-wide state after a progress report or phase change.
type Job struct {
	Phase        string // e.g. "running"; see maxEnumValues
	Step         int    // completed steps of the slowest running rank
	TotalSteps   int
	Loss         float64 // training loss at Step
	TokensPerSec float64 // summed over the ranks
	HasVal       bool
	ValLoss      float64 // latest validation loss, at ValStep
	ValStep      int
	// Workers counts the job's workers by state (joined, running, ...).
	Workers map[string]int
	// Table is the job's worker table, one row a worker. It is not
	// exported to Prometheus (ids and hosts would be unbounded label
	// values); observers (the dashboard) get it.
	Table []WorkerRow
}

// WorkerRow is one worker's line of the job's worker table.
type WorkerRow struct {
	ID, Host     string
	Rank         int // -1: not ranked (yet)
	State        string
	Step         int
	Loss         float64
	TokensPerSec float64
}

// Phases are a rank's cumulative seconds in the parts of its training
// loop. Compute is the whole training step (forward, backward, the
// collectives inside it and the optimizer); Checkpoint is the time the
// training thread spent on checkpoint saves (the shard write itself runs
// in the background).
type Phases struct {
	Data, Compute, Checkpoint, Validation float64
}

// LayerLoad is one MoE layer's expert load at one step, with the job's
// routed and dropped slots of the layer so far.
type LayerLoad struct {
	PerExpert    []int64 // slots each expert processed after capacity
	MaxMean      float64 // max / mean of PerExpert
	Imbalance    float64 // (max − min) of the expert-parallel ranks' slots / tokens
	SlotsTotal   int64   // token-to-expert slots the router chose, all steps
	DroppedTotal int64   // of them, dropped by the capacity
}

// Worker is one rank's progress report.
type Worker struct {
	Rank         int
	Step         int
	TokensPerSec float64
	Tokens       int64 // processed so far
	Phases       Phases
	// Load is the expert load at Step (empty: none in this report). Every
	// rank reports the same global load; the one of the highest step is
	// kept.
	Load []LayerLoad
}

// maxEnumValues bounds the distinct values of the phase and state labels
// (the coordinator's fixed sets have 7 and 5).
const maxEnumValues = 16

// Metrics holds a job's metrics. Its methods are safe for concurrent use.
type Metrics struct {
	lim Limits
	reg *prometheus.Registry
	col *collector

	commit prometheus.Histogram
}

// New returns the metrics of a job within lim, registered with a fresh
// registry together with the Go runtime and process collectors.
func New(lim Limits) (*Metrics, error) {
	if lim.Ranks < 1 || lim.Layers < 0 || lim.Experts < 0 {
		return nil, fmt.Errorf("metrics: limits %+v: need ranks ≥ 1, layers and experts ≥ 0", lim)
	}
	m := &Metrics{lim: lim, reg: prometheus.NewRegistry(), col: newCollector(lim)}
	m.commit = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "moetrain_checkpoint_commit_duration_seconds",
		Help:    "Time the coordinator took to publish a checkpoint step once every rank had written its shard (manifest, renames, fsyncs, pruning).",
		Buckets: []float64{0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300},
	})
	for _, c := range []prometheus.Collector{m.col, m.commit,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := m.reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: register: %w", err)
		}
	}
	return m, nil
}

// Registry is the metrics' registry (what /metrics serves).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SetStart records when this coordinator started the job and the
// checkpoint step it resumed from (0: a fresh start).
func (m *Metrics) SetStart(t time.Time, resumedStep int64) {
	c := m.col
	c.mu.Lock()
	defer c.mu.Unlock()
	c.start = float64(t.UnixNano()) / 1e9
	c.resumed = float64(resumedStep)
	for _, o := range c.observers {
		o.ObserveStart(t, resumedStep)
	}
}

// SetJob records the job-wide state. An unseen phase or worker state
// beyond maxEnumValues distinct ones is refused (nothing is recorded).
func (m *Metrics) SetJob(j Job) error {
	c := m.col
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.phases.admit(j.Phase); err != nil {
		return fmt.Errorf("metrics: job phase: %w", err)
	}
	for s := range j.Workers {
		if err := c.states.admit(s); err != nil {
			return fmt.Errorf("metrics: worker state: %w", err)
		}
	}
	workers := make(map[string]int, len(j.Workers))
	for s, n := range j.Workers {
		workers[s] = n
	}
	j.Workers = workers
	j.Table = append([]WorkerRow(nil), j.Table...)
	c.job, c.hasJob = j, true
	for _, o := range c.observers {
		o.ObserveJob(j)
	}
	return nil
}

// SetWorker records a rank's progress report. A rank, layer or expert
// outside the Limits is refused (nothing of the report is recorded), as
// are negative counts and non-finite rates.
func (m *Metrics) SetWorker(w Worker) error {
	if w.Rank < 0 || w.Rank >= m.lim.Ranks {
		return fmt.Errorf("metrics: rank %d outside [0, %d)", w.Rank, m.lim.Ranks)
	}
	if w.Step < 0 || w.Tokens < 0 || !finiteNonNeg(w.TokensPerSec) ||
		!finiteNonNeg(w.Phases.Data) || !finiteNonNeg(w.Phases.Compute) ||
		!finiteNonNeg(w.Phases.Checkpoint) || !finiteNonNeg(w.Phases.Validation) {
		return fmt.Errorf("metrics: rank %d: step %d, tokens %d, tokens/s %v, phases %+v: must be finite and ≥ 0",
			w.Rank, w.Step, w.Tokens, w.TokensPerSec, w.Phases)
	}
	if len(w.Load) > m.lim.Layers {
		return fmt.Errorf("metrics: rank %d: expert load of %d layers, the model has %d", w.Rank, len(w.Load), m.lim.Layers)
	}
	load := make([]LayerLoad, len(w.Load))
	for l, ll := range w.Load {
		if len(ll.PerExpert) > m.lim.Experts {
			return fmt.Errorf("metrics: rank %d: layer %d: load of %d experts, the model has %d", w.Rank, l, len(ll.PerExpert), m.lim.Experts)
		}
		if ll.SlotsTotal < 0 || ll.DroppedTotal < 0 || !finiteNonNeg(ll.MaxMean) || !finiteNonNeg(ll.Imbalance) {
			return fmt.Errorf("metrics: rank %d: layer %d: %+v: counts and ratios must be finite and ≥ 0", w.Rank, l, ll)
		}
		ll.PerExpert = append([]int64(nil), ll.PerExpert...)
		load[l] = ll
	}
	c := m.col
	c.mu.Lock()
	defer c.mu.Unlock()
	w.Load = nil
	c.workers[w.Rank] = w
	if len(load) > 0 && (c.load == nil || w.Step >= c.loadStep) {
		c.load, c.loadStep = load, w.Step
	}
	if len(c.observers) > 0 {
		w.Load = load
		for _, o := range c.observers {
			o.ObserveWorker(w)
		}
	}
	return nil
}

// CheckpointPublished records a published checkpoint step of size bytes
// (the sum of its shards) whose commit took d.
func (m *Metrics) CheckpointPublished(step int, size int64, d time.Duration) {
	m.commit.Observe(d.Seconds())
	c := m.col
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ckptResults["published"]++
	c.ckptLastStep, c.ckptLastBytes = float64(step), float64(size)
	c.ckptBytes += float64(size)
}

// CheckpointNotPublished records a checkpoint step given up: result is
// "failed" (the commit failed) or "dropped" (a rank could not write its
// shard, or the job ended first).
func (m *Metrics) CheckpointNotPublished(result string) error {
	if result != "failed" && result != "dropped" {
		return fmt.Errorf("metrics: checkpoint result %q: want failed or dropped", result)
	}
	c := m.col
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ckptResults[result]++
	return nil
}

func finiteNonNeg(x float64) bool { return x >= 0 && !math.IsInf(x, 1) }

// enum is a label's admitted values, at most maxEnumValues.
type enum map[string]bool

var errTooMany = errors.New("too many distinct values")

func (e enum) admit(v string) error {
	if e[v] {
		return nil
	}
	if len(e) >= maxEnumValues {
		return fmt.Errorf("%q: %w (at most %d)", v, errTooMany, maxEnumValues)
	}
	e[v] = true
	return nil
}

// collector emits the recorded state as constant metrics at each scrape.
type collector struct {
	mu      sync.Mutex
	start   float64
	resumed float64
	job     Job
	hasJob  bool
	phases  enum // phase label values seen
	states  enum // worker state label values seen
	workers map[int]Worker
	load    []LayerLoad
	// loadStep is the step of load.
	loadStep int

	ckptResults                 map[string]float64
	ckptLastStep, ckptLastBytes float64
	ckptBytes                   float64

	// observers get every accepted observation, under mu (observer.go).
	observers []Observer

	d descs
}

type descs struct {
	start, resumed, step, totalSteps, loss, valLoss, valStep, tps, phase, workers *prometheus.Desc
	wStep, wTPS, wTokens, wPhase                                                  *prometheus.Desc
	load, maxMean, imbalance, slots, dropped, loadStep                            *prometheus.Desc
	ckpts, ckptStep, ckptSize, ckptBytes                                          *prometheus.Desc
}

func newCollector(lim Limits) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &collector{phases: enum{}, states: enum{}, workers: map[int]Worker{},
		ckptResults: map[string]float64{"published": 0, "failed": 0, "dropped": 0},
		d: descs{
			start:      d("moetrain_start_time_seconds", "When this coordinator started the job (Unix time); a change is a restart."),
			resumed:    d("moetrain_resumed_step", "The checkpoint step the job resumed from; 0 for a fresh start."),
			step:       d("moetrain_step", "Training steps completed by the slowest running rank."),
			totalSteps: d("moetrain_total_steps", "Training steps the job runs."),
			loss:       d("moetrain_loss", "Training loss at moetrain_step (global: the serial trainer's on the step's whole batch)."),
			valLoss:    d("moetrain_validation_loss", "Latest validation loss."),
			valStep:    d("moetrain_validation_step", "The step of moetrain_validation_loss."),
			tps:        d("moetrain_tokens_per_second", "Training throughput of the job: the ranks' rates summed."),
			phase:      d("moetrain_job_phase", "1 for the job's current phase.", "phase"),
			workers:    d("moetrain_workers", "Workers of the job by state.", "state"),
			wStep:      d("moetrain_worker_step", "Training steps a rank has completed.", "rank"),
			wTPS:       d("moetrain_worker_tokens_per_second", "A rank's share of the job's training throughput.", "rank"),
			wTokens:    d("moetrain_worker_tokens_total", "Tokens a rank has processed (its share of the job's input positions).", "rank"),
			wPhase: d("moetrain_worker_step_phase_seconds_total",
				"Seconds a rank spent in each part of its training loop: data (drawing batches), compute (the training step, its collectives included), checkpoint (saves on the training thread), validation.",
				"rank", "phase"),
			load:      d("moetrain_expert_load_slots", "Slots each expert of an MoE layer processed at moetrain_expert_load_step (after capacity, the whole job's batch).", "layer", "expert"),
			maxMean:   d("moetrain_expert_load_max_mean_ratio", "Max over mean of an MoE layer's per-expert load at moetrain_expert_load_step (1 = even).", "layer"),
			imbalance: d("moetrain_expert_load_imbalance_ratio", "(max − min) of an MoE layer's per-expert-parallel-rank load over its tokens at moetrain_expert_load_step.", "layer"),
			slots:     d("moetrain_routed_slots_total", "Token-to-expert slots an MoE layer's router chose, over the job so far.", "layer"),
			dropped:   d("moetrain_dropped_slots_total", "Token-to-expert slots of an MoE layer dropped by the expert capacity, over the job so far.", "layer"),
			loadStep:  d("moetrain_expert_load_step", "The step of the expert-load series."),
			ckpts:     d("moetrain_checkpoints_total", "Checkpoint steps by outcome: published, failed (the commit failed), dropped (a shard was missing).", "result"),
			ckptStep:  d("moetrain_checkpoint_last_step", "The newest checkpoint step this coordinator published."),
			ckptSize:  d("moetrain_checkpoint_last_size_bytes", "Size of the newest published checkpoint (its shards summed)."),
			ckptBytes: d("moetrain_checkpoint_written_bytes_total", "Bytes of every checkpoint this coordinator published."),
		}}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	d := c.d
	for _, x := range []*prometheus.Desc{d.start, d.resumed, d.step, d.totalSteps, d.loss, d.valLoss, d.valStep, d.tps, d.phase,
		d.workers, d.wStep, d.wTPS, d.wTokens, d.wPhase, d.load, d.maxMean, d.imbalance, d.slots, d.dropped, d.loadStep,
		d.ckpts, d.ckptStep, d.ckptSize, d.ckptBytes} {
		ch <- x
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.d
	g := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	ctr := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, labels...)
	}
	if c.start > 0 {
		g(d.start, c.start)
		g(d.resumed, c.resumed)
	}
	if c.hasJob {
		j := c.job
		g(d.step, float64(j.Step))
		g(d.totalSteps, float64(j.TotalSteps))
		if j.Step > 0 {
			g(d.loss, j.Loss)
		}
		g(d.tps, j.TokensPerSec)
		if j.HasVal {
			g(d.valLoss, j.ValLoss)
			g(d.valStep, float64(j.ValStep))
		}
		for p := range c.phases {
			g(d.phase, b2f(p == j.Phase), p)
		}
		for s := range c.states {
			g(d.workers, float64(j.Workers[s]), s)
		}
	}
	for r, w := range c.workers {
		rank := strconv.Itoa(r)
		g(d.wStep, float64(w.Step), rank)
		g(d.wTPS, w.TokensPerSec, rank)
		ctr(d.wTokens, float64(w.Tokens), rank)
		ctr(d.wPhase, w.Phases.Data, rank, "data")
		ctr(d.wPhase, w.Phases.Compute, rank, "compute")
		ctr(d.wPhase, w.Phases.Checkpoint, rank, "checkpoint")
		ctr(d.wPhase, w.Phases.Validation, rank, "validation")
	}
	if c.load != nil {
		g(d.loadStep, float64(c.loadStep))
	}
	for l, ll := range c.load {
		layer := strconv.Itoa(l)
		for e, n := range ll.PerExpert {
			g(d.load, float64(n), layer, strconv.Itoa(e))
		}
		g(d.maxMean, ll.MaxMean, layer)
		g(d.imbalance, ll.Imbalance, layer)
		ctr(d.slots, float64(ll.SlotsTotal), layer)
		ctr(d.dropped, float64(ll.DroppedTotal), layer)
	}
	for r, n := range c.ckptResults {
		ctr(d.ckpts, n, r)
	}
	if c.ckptResults["published"] > 0 {
		g(d.ckptStep, c.ckptLastStep)
		g(d.ckptSize, c.ckptLastBytes)
	}
	ctr(d.ckptBytes, c.ckptBytes)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
