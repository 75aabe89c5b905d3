package stepmodel

import (
	"context"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/train"
)

// Case is one mesh to validate the model on, with its links' shaping.
type Case struct {
	Mesh  parallel.Mesh
	Shape Shape
}

// ParseCases reads "dp=2,ep=2; tp=2/shaped; sp=4": cases separated by ';',
// each a comma-separated list of degrees (missing ones are 1) with an
// optional "/shaped" suffix that applies shape to its links.
func ParseCases(spec string, shape Shape) ([]Case, error) {
	var out []Case
	for _, part := range strings.Split(spec, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		c := Case{Mesh: parallel.Mesh{DP: 1, SP: 1, TP: 1, EP: 1}}
		if body, ok := strings.CutSuffix(part, "/shaped"); ok {
			if !shape.Shaped() {
				return nil, fmt.Errorf("case %q is shaped, but no link bandwidth or latency is set", part)
			}
			part, c.Shape = body, shape
		}
		for _, kv := range strings.Split(part, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			deg, err := strconv.Atoi(v)
			if !ok || err != nil || deg < 1 || deg > 1<<16 {
				return nil, fmt.Errorf("case %q: %q is not axis=degree with a degree in [1, 65536]", part, kv)
			}
			switch k {
			case "dp":
				c.Mesh.DP = deg
			case "sp":
				c.Mesh.SP = deg
			case "tp":
				c.Mesh.TP = deg
			case "ep":
				c.Mesh.EP = deg
			default:
				return nil, fmt.Errorf("case %q: unknown axis %q (want dp, sp, tp, ep)", part, k)
			}
		}
		if err := c.Mesh.Validate(); err != nil {
			return nil, fmt.Errorf("case %q: %w", part, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no validation cases in %q", spec)
	}
	return out, nil
}

// Row is one validated case: the prediction, the measured medians of each
// round and their median.
type Row struct {
	Case
	Predicted Breakdown
	Rounds    []float64
	Measured  float64
	// Fastest is the median over rounds of each run's fastest step: the
	// step least disturbed by other load on a shared machine.
	Fastest float64
	fastest []float64
	// Available is the available_cores the prediction used.
	Available float64
}

// Error is (predicted − measured) / measured.
func (r Row) Error() float64 { return (r.Predicted.Step - r.Measured) / r.Measured }

// ForShape is p with the intra-host links replaced by the shaped in-process
// link a measured mesh uses.
func ForShape(p *Profile, s Shape) *Profile {
	q := *p
	if s.Shaped() {
		q.Intra = s.Link(p.Intra)
	}
	return &q
}

// Validate measures every case in rounds (each round runs every case once,
// in order, so load changes hit all cases alike) and predicts each on one
// host of p.Cores cores. On a shared host the cores concurrent ranks get
// change by the minute, so with probe set, available_cores is measured
// again just before each run (availableCores, about 0.2 s, not during the
// run) and the case is predicted with the median of its probes.
func Validate(ctx context.Context, job train.JobConfig, cases []Case, p *Profile, rounds, steps, warmup int, probe bool, logf func(string, ...any)) ([]Row, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	rows := make([]Row, len(cases))
	avail := make([][]float64, len(cases))
	for i, c := range cases {
		rows[i] = Row{Case: c}
	}
	for r := 0; r < rounds; r++ {
		for i, c := range cases {
			if probe && p.Cores > 1 {
				avail[i] = append(avail[i], availableCores(p.Cores, 5))
			}
			m, err := Measure(ctx, job, c.Mesh, c.Shape, steps, warmup, p.Cores)
			if err != nil {
				return nil, err
			}
			rows[i].Rounds = append(rows[i].Rounds, m.Median)
			rows[i].fastest = append(rows[i].fastest, m.Min)
			logf("round %d %s %s: %.2f ms", r+1, MeshString(c.Mesh), c.Shape, m.Median*1e3)
		}
	}
	for i, c := range cases {
		q := ForShape(p, c.Shape)
		if len(avail[i]) > 0 {
			q.AvailableCores = median(avail[i])
		}
		b, err := Predict(job, c.Mesh, Single(c.Mesh.World()), q)
		if err != nil {
			return nil, err
		}
		rows[i].Predicted, rows[i].Available = b, q.AvailableCores
		rows[i].Measured = median(rows[i].Rounds)
		rows[i].Fastest = median(rows[i].fastest)
	}
	return rows, nil
}

// FastestError is (predicted − fastest) / fastest.
func (r Row) FastestError() float64 { return (r.Predicted.Step - r.Fastest) / r.Fastest }

// MedianAbsError is the median of |Row.Error| over rows.
func MedianAbsError(rows []Row) float64 {
	var e []float64
	for _, r := range rows {
		e = append(e, math.Abs(r.Error()))
	}
	return median(e)
}

// MedianAbsFastestError is the median of |Row.FastestError| over rows.
func MedianAbsFastestError(rows []Row) float64 {
	var e []float64
	for _, r := range rows {
		e = append(e, math.Abs(r.FastestError()))
	}
	return median(e)
}

// WriteTable writes rows as a Markdown table with the median absolute
// error and the best measured and best predicted mesh by tokens/s.
func WriteTable(w io.Writer, job train.JobConfig, rows []Row) {
	fmt.Fprintln(w, "| mesh | links | avail. cores | predicted ms | measured median ms (rounds) | error | fastest ms | error | compute | tp | sp | ep | dp | other | pred tok/s | meas tok/s |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	tokens := float64(job.MaxBatchTokens())
	for _, r := range rows {
		var rs []string
		for _, x := range r.Rounds {
			rs = append(rs, fmt.Sprintf("%.1f", x*1e3))
		}
		b := r.Predicted
		meas := float64(r.Mesh.DP) * tokens / r.Measured
		fmt.Fprintf(w, "| %s | %s | %.2f | %.1f | %.1f (%s) | %+.1f%% | %.1f | %+.1f%% | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f | %.0f |\n",
			MeshString(r.Mesh), r.Shape, r.Available, b.Step*1e3, r.Measured*1e3, strings.Join(rs, ", "), 100*r.Error(), r.Fastest*1e3, 100*r.FastestError(),
			b.Compute*1e3, b.TP*1e3, b.SP*1e3, b.EP*1e3, b.DP*1e3, b.Other*1e3, b.TokensPerSec, meas)
	}
	fmt.Fprintf(w, "\nmedian |error| %.1f%% against the median step, %.1f%% against the fastest, over %d meshes\n",
		100*MedianAbsError(rows), 100*MedianAbsFastestError(rows), len(rows))
	// Per set of meshes with the same ranks and links: the model's pick
	// (best predicted) against the best measured.
	type set struct {
		world int
		shape Shape
	}
	var order []set
	groups := map[set][]Row{}
	for _, r := range rows {
		k := set{r.Mesh.World(), r.Shape}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	for _, k := range order {
		g := groups[k]
		if len(g) < 2 {
			continue
		}
		meas := func(r Row) float64 { return float64(r.Mesh.DP) * tokens / r.Measured }
		pick, best := g[0], g[0]
		for _, r := range g {
			if r.Predicted.TokensPerSec > pick.Predicted.TokensPerSec {
				pick = r
			}
			if meas(r) > meas(best) {
				best = r
			}
		}
		fmt.Fprintf(w, "%d ranks, %s: model's pick %s measures %.0f tok/s; best measured %s %.0f tok/s (pick at %.1f%%)\n",
			k.world, k.shape, MeshString(pick.Mesh), meas(pick), MeshString(best.Mesh), meas(best), 100*meas(pick)/meas(best))
	}
}
