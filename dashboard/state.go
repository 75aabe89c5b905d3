// Package dashboard is the coordinator's live web dashboard: a State that
// keeps a bounded history of the job (loss and validation curve, tokens/s,
// the worker table, the per-layer expert load) fed by the metrics'
// observations (metrics.Observer), and an HTTP handler serving one embedded
// page and its data as JSON on /api/state (docs/metrics.md#dashboard).
//
// The page is plain HTML and JavaScript drawing on canvas and polls
// /api/state about once a second. It must not fetch anything from outside
// (it works offline), nor import any package of the project but metrics.
package dashboard

import (
	"encoding/json"
	"math"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/moetrain/moetrain/metrics"
)

// Bounds of the history a State keeps (docs/metrics.md#dashboard).
const (
	// MaxCurvePoints bounds the curve. Beyond it the curve is thinned:
	// every other point is dropped, the newest always kept, so it covers
	// the whole run at half the resolution (Snapshot.CurveThinned counts
	// the halvings).
	MaxCurvePoints = 2048
	// MaxWorkerRows bounds the worker table; rows beyond are counted in
	// Snapshot.WorkersOmitted.
	MaxWorkerRows = 1024
	// maxLoadCells bounds the expert-load history: snapshots × layers ×
	// experts, with at least minLoadSnapshots and at most
	// maxLoadSnapshots snapshots; it is thinned like the curve.
	maxLoadCells     = 1 << 16
	minLoadSnapshots = 8
	maxLoadSnapshots = 256
	// maxText bounds a worker id or host as shown (in bytes).
	maxText = 256
)

// stepsEnded reports that no rank takes more steps in phase p (a
// cluster.Phase value other than waiting, running and recovering).
func stepsEnded(p string) bool { return p != "waiting" && p != "running" && p != "recovering" }

func phaseFinal(p string) bool { return p == "succeeded" || p == "failed" || p == "stopped" }

// Num is a float64 that encodes a non-finite value (a diverged loss) as
// JSON null instead of failing the whole encoding.
type Num float64

// MarshalJSON writes n in the shortest form that parses back to the same
// float64, or null when n is NaN or infinite.
func (n Num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, f, 'g', -1, 64), nil
}

// UnmarshalJSON reads a number, or null as NaN.
func (n *Num) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*n = Num(math.NaN())
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*n = Num(f)
	return nil
}

// Point is one point of the curve, recorded by the rule the coordinator
// uses for summary.json's curve, so that Step, Loss, TokensPerSec and
// ValLoss are those of summary.json: a training point when the job's step
// rises above the newest point's while it runs; a validation point
// (ValLoss set, the training loss at that moment in Loss, TokensPerSec 0)
// when a new validation loss arrives. A validation point also says at which
// job step its Loss was (LossStep) and the job's tokens/s then
// (JobTokensPerSec): when progress reports arrive only with validations
// (steps faster than the workers' report interval), these are the page's
// only training-loss and throughput points.
type Point struct {
	Step            int     `json:"step"`
	Loss            Num     `json:"loss"`
	TokensPerSec    Num     `json:"tokens_per_sec"`
	ValLoss         *Num    `json:"val_loss,omitempty"`
	LossStep        int     `json:"loss_step,omitempty"`
	JobTokensPerSec Num     `json:"job_tokens_per_sec,omitempty"`
	ElapsedS        float64 `json:"elapsed_s"`
}

// WorkerRow is one line of the worker table: the job's status of the
// worker, and the tokens of its rank's latest progress report.
type WorkerRow struct {
	ID           string `json:"id"`
	Host         string `json:"host"`
	Rank         int    `json:"rank"` // -1: not ranked
	State        string `json:"state"`
	Step         int    `json:"step"`
	Loss         Num    `json:"loss"`
	TokensPerSec Num    `json:"tokens_per_sec"`
	Tokens       *int64 `json:"tokens,omitempty"`
}

// LayerLoad is one MoE layer's expert load at Load.Step.
type LayerLoad struct {
	PerExpert    []int64 `json:"per_expert"`
	MaxMean      Num     `json:"max_mean"`
	Imbalance    Num     `json:"imbalance"`
	SlotsTotal   int64   `json:"slots_total"`
	DroppedTotal int64   `json:"dropped_total"`
}

// Load is the expert load of the highest step reported.
type Load struct {
	Step   int         `json:"step"`
	Layers []LayerLoad `json:"layers"`
}

// LoadPoint is one step of the expert-load history: Layers[l][e] is the
// slots expert e of layer l processed at Step.
type LoadPoint struct {
	Step   int       `json:"step"`
	Layers [][]int64 `json:"layers"`
}

// Snapshot is what /api/state serves.
type Snapshot struct {
	Phase        string         `json:"phase"` // "" before the coordinator's first status
	Step         int            `json:"step"`
	TotalSteps   int            `json:"total_steps"`
	Loss         Num            `json:"loss"`
	TokensPerSec Num            `json:"tokens_per_sec"`
	HasVal       bool           `json:"has_val"`
	ValLoss      Num            `json:"val_loss"`
	ValStep      int            `json:"val_step"`
	WorkerStates map[string]int `json:"worker_states"`
	// Started is when the coordinator started the job (Unix seconds; 0:
	// not yet); ElapsedS runs until the job ends, then stays.
	Started     float64 `json:"started"`
	ElapsedS    float64 `json:"elapsed_s"`
	ResumedStep int64   `json:"resumed_step"`

	Curve        []Point `json:"curve"`
	CurveThinned int     `json:"curve_thinned"`

	Workers        []WorkerRow `json:"workers"`
	WorkersOmitted int         `json:"workers_omitted"`

	Layers      int         `json:"layers"`
	Experts     int         `json:"experts"`
	Load        *Load       `json:"load"`
	LoadHistory []LoadPoint `json:"load_history"`
	LoadThinned int         `json:"load_thinned"`
}

// State is a job's dashboard state. It implements metrics.Observer; its
// methods are safe for concurrent use.
type State struct {
	lim     metrics.Limits
	loadCap int
	now     func() time.Time

	mu       sync.Mutex
	started  time.Time
	resumed  int64
	last     time.Time // the latest observation, for the elapsed time of an ended job
	job      metrics.Job
	hasJob   bool
	curve    []Point
	curveAt  metrics.CurveCursor // summary.json's rule for adding points
	thinned  int
	tokens   map[int]int64 // by rank: the latest report's tokens
	load     *Load
	hist     []LoadPoint
	histThin int
}

var _ metrics.Observer = (*State)(nil)

// New returns an empty state for a job within lim (the metrics' Limits:
// layers and experts size the expert-load history).
func New(lim metrics.Limits) *State {
	cells := max(1, lim.Layers*lim.Experts)
	return &State{lim: lim, loadCap: min(maxLoadSnapshots, max(minLoadSnapshots, maxLoadCells/cells)),
		now: time.Now, curveAt: metrics.NewCurveCursor(), tokens: map[int]int64{}}
}

// ObserveStart records when the job started and the step it resumed from.
func (s *State) ObserveStart(t time.Time, resumedStep int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.started, s.resumed, s.last = t, resumedStep, t
}

// ObserveJob records the job's state and extends the curve.
func (s *State) ObserveJob(j metrics.Job) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.job, s.hasJob, s.last = j, true, now
	el := 0.0
	if !s.started.IsZero() {
		el = now.Sub(s.started).Seconds()
	}
	train, val := s.curveAt.Advance(j.Step, j.HasVal, j.ValStep, stepsEnded(j.Phase))
	if train {
		s.addPoint(Point{Step: j.Step, Loss: Num(j.Loss), TokensPerSec: Num(j.TokensPerSec), ElapsedS: el})
	}
	if val {
		v := Num(j.ValLoss)
		s.addPoint(Point{Step: j.ValStep, Loss: Num(j.Loss), ValLoss: &v, LossStep: j.Step,
			JobTokensPerSec: Num(j.TokensPerSec), ElapsedS: el})
	}
}

func (s *State) addPoint(p Point) {
	if len(s.curve) >= MaxCurvePoints {
		s.curve = thin(s.curve)
		s.thinned++
	}
	s.curve = append(s.curve, p)
}

// thin keeps the elements at even indices and the last one.
func thin[T any](xs []T) []T {
	n := len(xs)
	out := xs[:0]
	for i := 0; i < n; i += 2 {
		out = append(out, xs[i])
	}
	if (n-1)%2 != 0 {
		out = append(out, xs[n-1])
	}
	clear(xs[len(out):n]) // drop references for the collector
	return out
}

// ObserveWorker records a rank's tokens and its expert load: the latest
// is the highest step's (as in the metrics), and the history gets each step
// once, in increasing order (a late report of an older step is not added).
func (s *State) ObserveWorker(w metrics.Worker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = s.now()
	s.tokens[w.Rank] = w.Tokens
	if len(w.Load) == 0 {
		return
	}
	if s.load == nil || w.Step >= s.load.Step {
		l := &Load{Step: w.Step, Layers: make([]LayerLoad, len(w.Load))}
		for i, ll := range w.Load {
			l.Layers[i] = LayerLoad{PerExpert: ll.PerExpert, MaxMean: Num(ll.MaxMean), Imbalance: Num(ll.Imbalance),
				SlotsTotal: ll.SlotsTotal, DroppedTotal: ll.DroppedTotal}
		}
		s.load = l
	}
	if n := len(s.hist); n == 0 || w.Step > s.hist[n-1].Step {
		if n >= s.loadCap {
			s.hist = thin(s.hist)
			s.histThin++
		}
		p := LoadPoint{Step: w.Step, Layers: make([][]int64, len(w.Load))}
		for i, ll := range w.Load {
			p.Layers[i] = ll.PerExpert // not modified by the metrics (metrics.Observer)
		}
		s.hist = append(s.hist, p)
	}
}

// Snapshot returns a copy of the state.
func (s *State) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.job
	out := Snapshot{Step: j.Step, TotalSteps: j.TotalSteps, Loss: Num(j.Loss), TokensPerSec: Num(j.TokensPerSec),
		HasVal: j.HasVal, ValLoss: Num(j.ValLoss), ValStep: j.ValStep, WorkerStates: map[string]int{},
		ResumedStep: s.resumed, Curve: append([]Point(nil), s.curve...), CurveThinned: s.thinned,
		Layers: s.lim.Layers, Experts: s.lim.Experts, Load: s.load,
		LoadHistory: append([]LoadPoint(nil), s.hist...), LoadThinned: s.histThin}
	if s.hasJob {
		out.Phase = j.Phase
	}
	for st, n := range j.Workers {
		out.WorkerStates[st] = n
	}
	if !s.started.IsZero() {
		out.Started = float64(s.started.UnixNano()) / 1e9
		end := s.now()
		if phaseFinal(j.Phase) {
			end = s.last
		}
		out.ElapsedS = max(0, end.Sub(s.started).Seconds())
	}
	rows := j.Table
	if len(rows) > MaxWorkerRows {
		out.WorkersOmitted = len(rows) - MaxWorkerRows
		rows = rows[:MaxWorkerRows]
	}
	out.Workers = make([]WorkerRow, len(rows))
	for i, r := range rows {
		out.Workers[i] = WorkerRow{ID: clip(r.ID), Host: clip(r.Host), Rank: r.Rank, State: r.State, Step: r.Step,
			Loss: Num(r.Loss), TokensPerSec: Num(r.TokensPerSec)}
		if t, ok := s.tokens[r.Rank]; ok && r.Rank >= 0 {
			out.Workers[i].Tokens = &t
		}
	}
	return out
}

// clip cuts s to at most maxText bytes at a rune boundary, marking the cut.
func clip(s string) string {
	if len(s) <= maxText {
		return s
	}
	n := maxText
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
