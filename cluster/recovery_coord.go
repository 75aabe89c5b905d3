package cluster

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/metrics"
)

// The coordinator's I/O around recovery: the job-state file, the takeover
// of a job a killed coordinator left, the shrunk plan and evictions.

// loadTakeover reads the job state of cfg.StateDir when cfg.Takeover is set
// and returns it when the job is to be continued (nil: a new job). A
// continued job resumes from the newest committed checkpoint of its
// checkpoint directory, so cfg.Checkpoint.Resume becomes "latest" when the
// directory holds one.
func loadTakeover(cfg *CoordinatorConfig) (*JobState, error) {
	if cfg.StateDir == "" || !cfg.Takeover {
		return nil, nil
	}
	st, err := ReadJobState(cfg.StateDir)
	if err != nil || st == nil {
		return nil, err
	}
	if err := st.CheckTakeover(cfg.StateDir, cfg.Token, cfg.Workers); err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	if cfg.Checkpoint.Dir != "" {
		store, err := checkpoint.NewStore(cfg.Checkpoint.Dir, 0)
		if err != nil {
			return nil, fmt.Errorf("coordinator: take over job %s: %w", st.JobID, err)
		}
		if steps, err := store.Steps(); err != nil {
			return nil, fmt.Errorf("coordinator: take over job %s: %w", st.JobID, err)
		} else if len(steps) > 0 {
			cfg.Checkpoint.Resume = "latest"
		}
	}
	if cfg.JobID == "" {
		cfg.JobID = st.JobID
	}
	return st, nil
}

// shrinkPlan lays req over the longest prefix of workers (join order) that
// works with the data-parallel degree left free, so the job continues on
// fewer replicas.
func shrinkPlan(req PlanRequest, workers []WorkerInfo) (Plan, error) {
	req.Mesh.DP = 0
	var first error
	for n := len(workers); n >= 1; n-- {
		p, err := MakePlan(req, workers[:n])
		if err == nil {
			return p, nil
		}
		if first == nil {
			first = err
		}
	}
	if first == nil {
		first = fmt.Errorf("no workers")
	}
	return Plan{}, first
}

// evict carries out an Evict: logged, and handed to OnEvict.
func (c *Coordinator) evict(x Evict) {
	ev := c.log.Warn().Str("reason", x.Reason).Bool("replace", x.Replace)
	if x.Pid != 0 {
		ev = ev.Str("worker", x.ID).Int("pid", x.Pid).Str("host", x.Host)
	}
	switch {
	case x.Replace && c.cfg.OnEvict == nil:
		ev.Msg("recovery: waiting for a new worker (worker --join) to take this one's place")
	case x.Replace:
		ev.Msg("recovery: replacing the worker")
	default:
		ev.Msg("recovery: the worker is out of the job")
	}
	if c.cfg.OnEvict != nil {
		c.cfg.OnEvict(x)
	}
}

// stateKey is what the job-state file must follow: it is rewritten when
// this changes.
func (c *Coordinator) stateKey(s Status) string {
	return fmt.Sprintf("%s|%d|%d|%d|%p|%d", s.Phase, s.Generation, s.Restarts, s.LastCheckpoint, c.core.Plan(), len(c.core.rec.records))
}

// stateStepEvery bounds how often the job-state file is rewritten for
// progress alone.
const stateStepEvery = 250 * time.Millisecond

// saveState rewrites the job-state file when the job's phase, generation,
// plan or last checkpoint changed. A write that fails is logged: the job
// goes on, only a takeover would miss it.
func (c *Coordinator) saveState() {
	if c.cfg.StateDir == "" {
		return
	}
	s := c.core.Status()
	key := c.stateKey(s)
	// The progress alone is written at most every stateStepEvery: a
	// takeover measures its steps redone from it.
	if key == c.saved && (s.Step == c.savedStep || time.Since(c.savedAt) < stateStepEvery) {
		return
	}
	st := &JobState{JobID: c.cfg.JobID, TokenHash: tokenHash(c.cfg.Token), Phase: s.Phase, Reason: s.Reason,
		ExpectedWorkers: c.cfg.Workers, TotalSteps: c.cfg.TotalSteps, Generation: s.Generation, Restarts: s.Restarts,
		LastCheckpoint: s.LastCheckpoint, StartStep: c.core.rec.startStep, Step: s.Step, Plan: c.core.Plan(),
		Recoveries: c.core.Recoveries(), Updated: time.Now().UTC()}
	if err := WriteJobState(c.cfg.StateDir, st); err != nil {
		c.log.Error().Err(err).Msg("job state not saved")
		return
	}
	c.saved, c.savedStep, c.savedAt = key, s.Step, time.Now()
}

// countRestarts adds the recoveries since the last call to the metrics.
func (c *Coordinator) countRestarts() {
	n := c.core.Status().Restarts
	if c.restarts != nil && n > c.counted {
		c.restarts.Add(float64(n - c.counted))
	}
	c.counted = n
}

// restartsCounter is moetrain_job_restarts_total, registered on m's
// registry (nil without metrics): recoveries of the job, counted by the
// coordinator that carried them out (docs/control-plane.md#automatic-recovery).
func restartsCounter(m *metrics.Metrics) prometheus.Counter {
	if m == nil {
		return nil
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "moetrain_job_restarts_total",
		Help: "Recoveries of the job (a worker died or hung; every rank resumed from the last committed checkpoint)."})
	if err := m.Registry().Register(c); err != nil {
		return nil
	}
	return c
}
