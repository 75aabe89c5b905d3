package spsa

import (
	"context"
	"fmt"
	"math"

	"github.com/moetrain/moetrain/model"
)

// LossFunc evaluates the loss at the current parameters on this worker's
// batch of the step, forward only. It must be deterministic: called twice
// on the same parameters it returns the same value.
type LossFunc func() (float64, error)

// StepStats describe one worker's step.
type StepStats struct {
	Step int64
	// LossPlus and LossMinus are this worker's last direction's losses at
	// θ + ε·z and θ − ε·z; Loss is their mean over the directions (an
	// estimate of the loss at θ on this worker's batch).
	LossPlus, LossMinus, Loss float64
	// Grads are this worker's projected gradients before quantization, one
	// per direction (reused by the next step).
	Grads []float64
	// Clipped and NonFinite count this worker's directions whose gradient
	// was clamped to ±clip, or sent as 0 because it was not finite.
	Clipped, NonFinite int
	// Entries are the step's applied entries, every member's (reused by the
	// next step): what the log keeper appends.
	Entries []Entry
	// WireBytes is what this worker sent for the step, framing included.
	WireBytes int64
}

// Worker is one replica: it owns the step counter and the scratch of a step
// over a caller's parameter buffer. Not safe for concurrent use.
type Worker struct {
	cfg     Config
	id      uint32
	store   Store
	upd     *Updater
	step    int64
	stats   StepStats
	payload []byte
	all     []byte
}

// NewWorker returns worker id over params, whose next step is step. backup
// (the same length, not overlapping params) holds the step's unperturbed
// parameters: the perturbations are computed from it and the restore is a
// copy, so the parameters come back bit for bit (x + εz − 2εz + εz in
// floats would not). A model's gradient buffer, unused without a backward,
// serves. threads (< 1: one) splits the perturbation and the update; it
// changes no bit.
func NewWorker(cfg Config, id uint32, params, backup []float32, step int64, threads int) (*Worker, error) {
	s, err := NewHostStore(params, backup, threads)
	if err != nil {
		return nil, fmt.Errorf("spsa: worker %d: %w", id, err)
	}
	return NewWorkerOn(cfg, id, s, step)
}

// NewWorkerOn returns worker id over the parameters of store (host or
// device), whose next step is step.
func NewWorkerOn(cfg Config, id uint32, store Store, step int64) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if step < 0 {
		return nil, fmt.Errorf("spsa: worker %d: start step %d < 0", id, step)
	}
	return &Worker{cfg: cfg, id: id, store: store, upd: NewUpdater(cfg, 1), step: step,
		payload: make([]byte, cfg.Directions*cfg.EntryBytes())}, nil
}

// Checksum is the CRC-32C of the worker's parameters (see Checksum).
func (w *Worker) Checksum() (uint32, error) { return w.store.Checksum() }

// Step is the number of steps applied (the next step's index).
func (w *Worker) Step() int64 { return w.step }

// measure perturbs, evaluates and restores the parameters for each of this
// worker's directions of the current step and fills the payload. The
// parameters are bitwise what they were when it returns, error or not.
func (w *Worker) measure(loss LossFunc) (err error) {
	st := &w.stats
	st.Step, st.Clipped, st.NonFinite, st.Loss = w.step, 0, 0, 0
	st.Grads = st.Grads[:0]
	if err := w.store.Save(); err != nil {
		return fmt.Errorf("spsa: worker %d step %d: save parameters: %w", w.id, w.step, err)
	}
	defer func() {
		if rerr := w.store.Restore(); rerr != nil && err == nil {
			err = fmt.Errorf("spsa: worker %d step %d: restore parameters: %w", w.id, w.step, rerr)
		}
	}()
	h := float32(w.cfg.Epsilon)
	eb := w.cfg.EntryBytes()
	for d := range w.cfg.Directions {
		s := DirectionSeed(w.cfg.Seed, w.step, w.id, uint32(d))
		if err := w.store.Perturb(s, h); err != nil {
			return fmt.Errorf("spsa: worker %d step %d direction %d: perturb: %w", w.id, w.step, d, err)
		}
		lp, err := loss()
		if err != nil {
			return fmt.Errorf("spsa: worker %d step %d direction %d: loss at +ε: %w", w.id, w.step, d, err)
		}
		if err := w.store.Perturb(s, -h); err != nil {
			return fmt.Errorf("spsa: worker %d step %d direction %d: perturb: %w", w.id, w.step, d, err)
		}
		lm, err := loss()
		if err != nil {
			return fmt.Errorf("spsa: worker %d step %d direction %d: loss at −ε: %w", w.id, w.step, d, err)
		}
		g := (lp - lm) / (2 * float64(h))
		raw, clipped, ok := w.cfg.Quantize(g)
		if clipped {
			st.Clipped++
		}
		if !ok {
			st.NonFinite++
		}
		st.LossPlus, st.LossMinus = lp, lm
		st.Loss += (lp + lm) / 2 / float64(w.cfg.Directions)
		st.Grads = append(st.Grads, g)
		for i := range eb {
			w.payload[d*eb+i] = byte(raw >> (8 * i))
		}
	}
	return nil
}

// StepOnce runs one step: measure this worker's directions with loss,
// exchange the payloads over ex (every member calls StepOnce for the same
// step), and apply every member's entries. On an error the parameters are
// those before the step, and the members must not go on (see Exchange).
func (w *Worker) StepOnce(ctx context.Context, ex Exchange, loss LossFunc) (*StepStats, error) {
	members := ex.Members()
	mine := -1
	for r, id := range members {
		if id == w.id {
			mine = r
		}
	}
	if mine < 0 {
		return nil, fmt.Errorf("spsa: worker %d is not a member of the exchange %v", w.id, members)
	}
	if err := w.measure(loss); err != nil {
		return nil, err
	}
	n, eb := len(members), w.cfg.EntryBytes()
	if len(w.all) != n*len(w.payload) {
		w.all = make([]byte, n*len(w.payload))
	}
	before := ex.WireBytes()
	if err := ex.AllGather(ctx, w.payload, w.all); err != nil {
		return nil, fmt.Errorf("spsa: worker %d step %d: %w", w.id, w.step, err)
	}
	st := &w.stats
	st.WireBytes = ex.WireBytes() - before
	st.Entries = st.Entries[:0]
	for r, id := range members {
		for d := range w.cfg.Directions {
			var raw uint32
			for i := range eb {
				raw |= uint32(w.all[(r*w.cfg.Directions+d)*eb+i]) << (8 * i)
			}
			st.Entries = append(st.Entries, Entry{Worker: id, Dir: uint32(d), Raw: raw})
		}
	}
	SortEntries(st.Entries)
	if err := w.upd.ApplyTo(w.store, w.step, st.Entries); err != nil {
		return nil, err
	}
	w.step++
	return st, nil
}

// Replay applies the log records of steps [w.Step(), to) to the parameters
// (which must be those of step w.Step(), e.g. a checkpoint's), and advances
// the step counter: a joining worker's catch-up. Records before w.Step()
// are skipped; a missing step is an error and leaves the parameters at the
// last step applied.
func (w *Worker) Replay(recs []Record, to int64) error {
	for _, r := range recs {
		if r.Step < w.step {
			continue
		}
		if r.Step >= to {
			break
		}
		if r.Step != w.step {
			return fmt.Errorf("spsa: replay: the log has no record of step %d (next is step %d)", w.step, r.Step)
		}
		if err := w.upd.ApplyTo(w.store, r.Step, r.Entries); err != nil {
			return fmt.Errorf("spsa: replay: %w", err)
		}
		w.step++
	}
	if w.step < to {
		return fmt.Errorf("spsa: replay: the log ends before step %d (replayed to step %d)", to, w.step)
	}
	return nil
}

// ModelLoss is the LossFunc of m on *in (read at each call, so the caller
// points it at the step's batch): m's forward-only loss (cross-entropy plus
// the weighted aux and z-losses, what training minimises), without keeping
// anything for a backward.
func ModelLoss(m Forwarder, in *model.Input) LossFunc {
	return func() (float64, error) {
		r, err := m.Forward(*in, false)
		if err != nil {
			return math.NaN(), err
		}
		return r.Loss, nil
	}
}
