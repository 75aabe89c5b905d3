package metrics

import "time"

// Observer receives every observation the metrics accept, in the order the
// metrics record them: the dashboard keeps its history this way, fed by the
// same calls as the Prometheus series.
//
// Its methods are called with the metrics' lock held, so they see the
// observations in one order and must be quick (copy and return), must not
// block and must not call back into the Metrics. What they receive they may
// keep but must not modify: the metrics keep the same slices and maps.
// Refused observations (out-of-bound ranks, layers, experts, values or
// enum labels) never reach an observer.
type Observer interface {
	// ObserveStart: the coordinator started the job at t, resumed from
	// the checkpoint step resumedStep (0: a fresh start).
	ObserveStart(t time.Time, resumedStep int64)
	// ObserveJob: the job's state after a progress report or phase
	// change (SetJob).
	ObserveJob(j Job)
	// ObserveWorker: a rank's progress report (SetWorker), its expert
	// load included.
	ObserveWorker(w Worker)
}

// AddObserver makes o receive every observation accepted from now on.
func (m *Metrics) AddObserver(o Observer) {
	c := m.col
	c.mu.Lock()
	defer c.mu.Unlock()
	c.observers = append(c.observers, o)
}
