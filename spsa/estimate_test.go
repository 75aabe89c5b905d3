package spsa

import (
	"context"
	"math"
	"testing"

	"github.com/moetrain/moetrain/internal/testkit"
)

// quadratic is f(x) = Σ ½aᵢxᵢ² + bᵢxᵢ evaluated in float64, and counts
// its calls.
type quadratic struct {
	a, b  []float64
	x     []float32
	calls int
}

func newQuadratic(n int) *quadratic {
	q := &quadratic{a: make([]float64, n), b: make([]float64, n), x: randParams(n, 11)}
	for i := range q.a {
		q.a[i] = 0.5 + float64(i%7)
		q.b[i] = float64(i%5) - 2
	}
	return q
}

func (q *quadratic) loss() (float64, error) {
	q.calls++
	var s float64
	for i, v := range q.x {
		x := float64(v)
		s += 0.5*q.a[i]*x*x + q.b[i]*x
	}
	return s, nil
}

// directional is ∇f(x)·z for the direction with seed s.
func (q *quadratic) directional(s uint64) float64 {
	var d float64
	for i, v := range q.x {
		d += (q.a[i]*float64(v) + q.b[i]) * float64(Sign(s, i))
	}
	return d
}

// soloExchange is the exchange of a single member.
type soloExchange struct{ id uint32 }

func (x soloExchange) Members() []uint32 { return []uint32{x.id} }
func (x soloExchange) AllGather(_ context.Context, mine, all []byte) error {
	copy(all, mine)
	return nil
}
func (x soloExchange) WireBytes() int64 { return 0 }

// SoloExchange is soloExchange for the external tests (package spsa_test).
func SoloExchange(id uint32) Exchange { return soloExchange{id} }

// The projected gradient a worker measures is the directional derivative
// along its direction (exact for a quadratic but for the float32 rounding
// of the perturbed parameters), and measuring leaves the parameters bitwise
// as they were.
func TestProjectedGradientIsDirectionalDerivative(t *testing.T) {
	q := newQuadratic(5000)
	cfg := DefaultConfig()
	cfg.Quant, cfg.Directions = QuantFP32, 3
	w, err := NewWorker(cfg, 4, q.x, make([]float32, len(q.x)), 20, 2)
	if err != nil {
		t.Fatal(err)
	}
	before := append([]float32(nil), q.x...)
	if err := w.measure(q.loss); err != nil {
		t.Fatal(err)
	}
	if i := testkit.FirstBitDiff(q.x, before); i >= 0 {
		t.Fatalf("parameter %d not restored: %g, was %g", i, q.x[i], before[i])
	}
	if q.calls != 2*cfg.Directions {
		t.Fatalf("%d loss evaluations, want %d", q.calls, 2*cfg.Directions)
	}
	for d, g := range w.stats.Grads {
		want := q.directional(DirectionSeed(cfg.Seed, 20, 4, uint32(d)))
		if math.Abs(g-want) > 1e-3*math.Abs(want) {
			t.Errorf("direction %d: projected gradient %g, directional derivative %g", d, g, want)
		}
	}
}

// Averaged over directions, ĝ·z estimates the gradient (E[zzᵀ] = I).
func TestEstimatorIsUnbiased(t *testing.T) {
	const n, k = 32, 8000
	q := newQuadratic(n)
	grad := make([]float64, n)
	for i, v := range q.x {
		grad[i] = q.a[i]*float64(v) + q.b[i]
	}
	est := make([]float64, n)
	backup := append([]float32(nil), q.x...)
	h := float32(1e-3)
	for j := range k {
		s := DirectionSeed(3, int64(j), 0, 0)
		Perturb(q.x, backup, s, h, 1)
		lp, _ := q.loss()
		Perturb(q.x, backup, s, -h, 1)
		lm, _ := q.loss()
		g := (lp - lm) / (2 * float64(h))
		for i := range est {
			est[i] += g * float64(Sign(s, i)) / k
		}
	}
	copy(q.x, backup)
	var dot, ne, ng float64
	for i := range est {
		dot += est[i] * grad[i]
		ne += est[i] * est[i]
		ng += grad[i] * grad[i]
	}
	// Relative error ~ √(n/k) = 0.06; the seeds are fixed.
	if cos := dot / math.Sqrt(ne*ng); cos < 0.98 {
		t.Fatalf("cosine(estimate, gradient) = %.4f over %d directions", cos, k)
	}
}

// Steps descend: on the quadratic, loss after 200 single-worker int8 steps
// is below the start.
func TestStepsDescend(t *testing.T) {
	q := newQuadratic(256)
	cfg := DefaultConfig()
	cfg.LR, cfg.Clip = 2e-3, 200
	w, err := NewWorker(cfg, 1, q.x, make([]float32, len(q.x)), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	start, _ := q.loss()
	for range 200 {
		if _, err := w.StepOnce(context.Background(), soloExchange{1}, q.loss); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := q.loss()
	if !(end < start-0.1*math.Abs(start)) {
		t.Fatalf("loss %g after 200 steps from %g", end, start)
	}
	if w.Step() != 200 {
		t.Fatalf("step counter %d", w.Step())
	}
}
