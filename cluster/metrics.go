package cluster

import (
	"time"

	"github.com/moetrain/moetrain/metrics"
	"github.com/moetrain/moetrain/train"

	pb "github.com/moetrain/moetrain/cluster/proto"
)

// MetricsLimits are the label bounds (metrics.Limits) of the metrics of
// job run by workers ranks.
func MetricsLimits(job train.JobConfig, workers int) metrics.Limits {
	return metrics.Limits{Ranks: workers, Layers: job.Model.Layers, Experts: job.Model.Experts}
}

// workerMetrics is a progress report as metrics see it.
func workerMetrics(req *pb.ProgressReport) metrics.Worker {
	w := metrics.Worker{Rank: int(req.Rank), Step: int(req.Step), TokensPerSec: req.TokensPerSec, Tokens: req.Tokens,
		Phases: metrics.Phases{Data: req.DataSeconds, Compute: req.ComputeSeconds,
			Checkpoint: req.CheckpointSeconds, Validation: req.ValidationSeconds}}
	for _, ll := range req.ExpertLoad {
		w.Load = append(w.Load, metrics.LayerLoad{PerExpert: ll.PerExpert, MaxMean: ll.MaxMean, Imbalance: ll.Imbalance,
			SlotsTotal: ll.SlotsTotal, DroppedTotal: ll.DroppedTotal})
	}
	return w
}

// jobMetrics is s as metrics see it.
func jobMetrics(s Status) metrics.Job {
	j := metrics.Job{Phase: string(s.Phase), Step: s.Step, TotalSteps: s.TotalSteps, Loss: s.Loss,
		TokensPerSec: s.TokensPerSec, HasVal: s.HasVal, ValLoss: s.ValLoss, ValStep: s.ValStep,
		Workers: map[string]int{}}
	for _, w := range s.Workers {
		j.Workers[w.State]++
		j.Table = append(j.Table, metrics.WorkerRow{ID: w.Info.ID, Host: w.Info.Host, Rank: w.Rank, State: w.State,
			Step: w.Step, Loss: w.Loss, TokensPerSec: w.TokensPerSec})
	}
	return j
}

// recordProgress hands a progress report to the metrics (if any). A
// report they refuse (a rank or layer beyond the job's: a broken worker) is
// logged as a warning once, then at debug level, so it cannot flood the log.
func (c *Coordinator) recordProgress(req *pb.ProgressReport) {
	m := c.cfg.Metrics
	if m == nil {
		return
	}
	if err := m.SetWorker(workerMetrics(req)); err != nil {
		ev := c.log.Debug()
		c.metricsWarn.Do(func() { ev = c.log.Warn() })
		ev.Err(err).Str("worker", req.WorkerId).Msg("progress report not recorded in the metrics")
	}
}

// recordStatus hands the job's status to the metrics (if any).
func (c *Coordinator) recordStatus(s Status) {
	if m := c.cfg.Metrics; m != nil {
		if err := m.SetJob(jobMetrics(s)); err != nil {
			c.log.Warn().Err(err).Msg("status not recorded in the metrics")
		}
	}
}

// recordCheckpoint hands the outcome of checkpoint x to the metrics (if
// any): published (commit took d) when err is nil, else failed.
func (c *Coordinator) recordCheckpoint(x CommitCheckpoint, d time.Duration, err error) {
	m := c.cfg.Metrics
	if m == nil {
		return
	}
	if err != nil {
		_ = m.CheckpointNotPublished("failed") // a valid result: cannot fail
		return
	}
	var size int64
	for _, sh := range x.Shards {
		size += sh.Size
	}
	m.CheckpointPublished(x.Step, size, d)
}
