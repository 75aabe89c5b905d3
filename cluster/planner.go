package cluster

import (
	"fmt"
	"math"
	"strings"

	"github.com/moetrain/moetrain/parallel"
)

// WorkerInfo is what a worker tells the coordinator when it joins.
type WorkerInfo struct {
	ID       string `json:"id"`        // assigned by the coordinator: "w0", "w1", ...
	Host     string `json:"host"`      // host name; ranks on one host share fast links
	DataAddr string `json:"data_addr"` // data-plane (collective TCP) listen address
	Cores    int    `json:"cores"`
	Pid      int    `json:"pid"`
}

// PlanRequest is the part of a job that constrains the layout.
type PlanRequest struct {
	Mesh    parallel.Config // requested degrees; DP = 0 means auto
	Experts int             // experts per MoE layer
	Heads   int             // attention heads
	SeqLen  int             // training sequence length
}

// RankAssignment is what one rank owns.
type RankAssignment struct {
	Rank      int            `json:"rank"`
	Worker    WorkerInfo     `json:"worker"`
	Coord     parallel.Coord `json:"coord"`
	EPIndex   int            `json:"ep_index"`
	Experts   [2]int         `json:"experts"`    // [lo, hi) expert ids owned
	Heads     [2]int         `json:"heads"`      // [lo, hi) attention heads owned
	SeqChunks [2]int         `json:"seq_chunks"` // zigzag chunks of 2·SP: sp and 2·SP−1−sp
	DataShard int            `json:"data_shard"` // the dp index: which sampler stream
}

// Plan is the layout of one job: the mesh and every rank's assignment, in
// rank order.
type Plan struct {
	Mesh     parallel.Mesh    `json:"mesh"`
	Ranks    []RankAssignment `json:"ranks"`
	Warnings []string         `json:"warnings,omitempty"`
}

// Addrs returns the data-plane address of every rank, in rank order.
func (p Plan) Addrs() []string {
	out := make([]string, len(p.Ranks))
	for i, r := range p.Ranks {
		out[i] = r.Worker.DataAddr
	}
	return out
}

// Validate checks a plan received from outside (a start command): a valid
// mesh, one assignment per rank in rank order, coordinates that match the
// ranks, and a data-plane address for every rank.
func (p Plan) Validate() error {
	if err := p.Mesh.Validate(); err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	if len(p.Ranks) != p.Mesh.World() {
		return fmt.Errorf("plan: %d rank assignments for a mesh of %d ranks (%v)", len(p.Ranks), p.Mesh.World(), p.Mesh)
	}
	for i, r := range p.Ranks {
		if r.Rank != i || p.Mesh.Coord(i) != r.Coord {
			return fmt.Errorf("plan: entry %d is rank %d at %+v, want rank %d at %+v", i, r.Rank, r.Coord, i, p.Mesh.Coord(i))
		}
		if r.Worker.DataAddr == "" || r.Worker.ID == "" {
			return fmt.Errorf("plan: rank %d has no worker id or data-plane address", i)
		}
	}
	return nil
}

// RankOf returns the rank of the worker with the given id, or -1.
func (p Plan) RankOf(workerID string) int {
	for _, r := range p.Ranks {
		if r.Worker.ID == workerID {
			return r.Rank
		}
	}
	return -1
}

// LayoutError is an impossible layout request: every conflict found, and a
// layout for the same worker count that would work.
type LayoutError struct {
	Workers    int
	Problems   []string
	Suggestion parallel.Mesh
}

func (e *LayoutError) Error() string {
	s := e.Suggestion
	return fmt.Sprintf("impossible layout for %d workers: %s; a layout that works: dp=%d tp=%d sp=%d ep=%d "+
		"(in job.toml: [mesh] dp = %d, tp = %d, sp = %d, ep = %d)",
		e.Workers, strings.Join(e.Problems, "; "), s.DP, s.TP, s.SP, s.EP, s.DP, s.TP, s.SP, s.EP)
}

// layoutProblems lists why (mesh degrees, req) cannot run on n workers; an
// empty list means it can. dp may be 0 (auto).
func layoutProblems(c parallel.Config, req PlanRequest, n int) []string {
	var probs []string
	if n < 1 {
		return []string{fmt.Sprintf("%d workers: need at least 1", n)}
	}
	if c.TP < 1 || c.SP < 1 || c.EP < 1 || c.DP < 0 {
		return []string{fmt.Sprintf("degrees dp=%d tp=%d sp=%d ep=%d: tp, sp, ep must be ≥ 1 and dp ≥ 0 (0 = auto)",
			c.DP, c.TP, c.SP, c.EP)}
	}
	dp := c.DP
	if dp == 0 {
		if n%(c.SP*c.TP) != 0 {
			probs = append(probs, fmt.Sprintf("dp=auto needs the worker count %d divisible by sp=%d × tp=%d = %d",
				n, c.SP, c.TP, c.SP*c.TP))
		}
		dp = n / (c.SP * c.TP)
		if dp == 0 {
			probs = append(probs, fmt.Sprintf("too few workers: sp=%d × tp=%d needs at least %d, have %d",
				c.SP, c.TP, c.SP*c.TP, n))
		}
	} else if w := dp * c.SP * c.TP; w != n {
		what := "but only"
		if w < n {
			what = "but there are"
		}
		probs = append(probs, fmt.Sprintf("dp=%d × sp=%d × tp=%d = %d ranks, %s %d workers", dp, c.SP, c.TP, w, what, n))
	}
	if req.Heads%c.TP != 0 {
		probs = append(probs, fmt.Sprintf("%d attention heads are not divisible by tp=%d", req.Heads, c.TP))
	}
	if req.Experts%c.EP != 0 {
		probs = append(probs, fmt.Sprintf("%d experts are not divisible by ep=%d", req.Experts, c.EP))
	}
	if dp > 0 && (dp*c.SP)%c.EP != 0 {
		probs = append(probs, fmt.Sprintf("ep=%d does not divide dp=%d × sp=%d = %d", c.EP, dp, c.SP, dp*c.SP))
	}
	if c.SP > 1 && req.SeqLen%(2*c.SP) != 0 {
		probs = append(probs, fmt.Sprintf("sequence length %d is not divisible by 2 × sp=%d = %d (zigzag chunks)",
			req.SeqLen, c.SP, 2*c.SP))
	}
	return probs
}

// suggestLayout finds the valid layout for n workers closest to the request
// (distance in log-degrees, TP then SP then EP); dp=n, tp=sp=ep=1 always works
// when heads, experts and n are positive.
func suggestLayout(req PlanRequest, n int) parallel.Mesh {
	want := req.Mesh
	best, bestScore := parallel.Mesh{DP: n, SP: 1, TP: 1, EP: 1}, math.Inf(1)
	dist := func(a, b int) float64 {
		if b < 1 {
			b = 1
		}
		return math.Abs(math.Log2(float64(a)) - math.Log2(float64(b)))
	}
	for m := range parallel.Layouts(n) {
		if len(layoutProblems(parallel.Config{DP: m.DP, TP: m.TP, SP: m.SP, EP: m.EP}, req, n)) > 0 {
			continue
		}
		score := 4*dist(m.TP, want.TP) + 2*dist(m.SP, want.SP) + dist(m.EP, want.EP)
		if want.DP > 0 {
			score += 0.5 * dist(m.DP, want.DP)
		}
		if score < bestScore {
			best, bestScore = m, score
		}
	}
	return best
}

// MakePlan lays the requested mesh over the joined workers (in join order).
// Ranks are placed so that each dp index's TP×SP block of consecutive ranks
// stays on one host where some host has room for it; a block that has to span
// hosts is reported in Plan.Warnings. An impossible request is a *LayoutError.
func MakePlan(req PlanRequest, workers []WorkerInfo) (Plan, error) {
	n := len(workers)
	if req.Heads < 1 || req.Experts < 1 || req.SeqLen < 1 {
		return Plan{}, fmt.Errorf("plan: model has %d heads, %d experts, sequence length %d: each must be ≥ 1",
			req.Heads, req.Experts, req.SeqLen)
	}
	if probs := layoutProblems(req.Mesh, req, n); len(probs) > 0 {
		return Plan{}, &LayoutError{Workers: n, Problems: probs, Suggestion: suggestLayout(req, n)}
	}
	mesh, err := parallel.NewMesh(req.Mesh, n)
	if err != nil {
		return Plan{}, fmt.Errorf("plan: %w", err)
	}
	order, warnings := placeBlocks(workers, mesh.SP*mesh.TP)
	p := Plan{Mesh: mesh, Warnings: warnings, Ranks: make([]RankAssignment, n)}
	expPer, headPer := req.Experts/mesh.EP, req.Heads/mesh.TP
	for r := 0; r < n; r++ {
		c := mesh.Coord(r)
		e := mesh.EPIndex(r)
		p.Ranks[r] = RankAssignment{
			Rank:      r,
			Worker:    workers[order[r]],
			Coord:     c,
			EPIndex:   e,
			Experts:   [2]int{e * expPer, (e + 1) * expPer},
			Heads:     [2]int{c.TP * headPer, (c.TP + 1) * headPer},
			SeqChunks: parallel.ZigzagChunks(c.SP, mesh.SP),
			DataShard: c.DP,
		}
	}
	return p, nil
}

// placeBlocks returns, for each rank, the index of the worker that runs it.
// Blocks of `block` consecutive ranks go first-fit onto the first host (in
// join order) with that many free workers; when none has, the block takes free
// workers in join order and a warning names the hosts it spans.
func placeBlocks(workers []WorkerInfo, block int) ([]int, []string) {
	var hosts []string
	free := map[string][]int{}
	for i, w := range workers {
		if _, ok := free[w.Host]; !ok {
			hosts = append(hosts, w.Host)
		}
		free[w.Host] = append(free[w.Host], i)
	}
	var order []int
	var warnings []string
	for b := 0; b < len(workers)/block; b++ {
		placed := false
		for _, h := range hosts {
			if len(free[h]) >= block {
				order = append(order, free[h][:block]...)
				free[h] = free[h][block:]
				placed = true
				break
			}
		}
		if placed {
			continue
		}
		var spanned []string
		need := block
		for _, h := range hosts {
			take := min(need, len(free[h]))
			if take == 0 {
				continue
			}
			order = append(order, free[h][:take]...)
			free[h] = free[h][take:]
			spanned = append(spanned, h)
			need -= take
		}
		warnings = append(warnings, fmt.Sprintf("the tp×sp group of ranks %d..%d spans hosts %s (no host has %d free workers)",
			b*block, (b+1)*block-1, strings.Join(spanned, ","), block))
	}
	return order, warnings
}
