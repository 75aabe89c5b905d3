package cluster

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/parallel"
)

// workersOn makes workers on hosts given as counts, e.g. hosts("a",2,"b",2).
func workersOn(spec ...any) []WorkerInfo {
	var out []WorkerInfo
	for i := 0; i < len(spec); i += 2 {
		h, n := spec[i].(string), spec[i+1].(int)
		for j := 0; j < n; j++ {
			id := fmt.Sprintf("w%d", len(out))
			out = append(out, WorkerInfo{ID: id, Host: h, DataAddr: h + ":" + fmt.Sprint(9000+j)})
		}
	}
	return out
}

func ref(dp, tp, ep, sp int) PlanRequest {
	return PlanRequest{Mesh: parallel.Config{DP: dp, TP: tp, EP: ep, SP: sp}, Experts: 8, Heads: 4, SeqLen: 256}
}

func TestMakePlanValid(t *testing.T) {
	cases := []struct {
		name    string
		req     PlanRequest
		workers []WorkerInfo
		mesh    parallel.Mesh
		check   func(t *testing.T, p Plan)
	}{
		{"dp auto 2", ref(0, 1, 1, 1), workersOn("a", 2), parallel.Mesh{DP: 2, SP: 1, TP: 1, EP: 1}, func(t *testing.T, p Plan) {
			if p.Ranks[1].DataShard != 1 || p.Ranks[1].Experts != [2]int{0, 8} || p.Ranks[1].Heads != [2]int{0, 4} {
				t.Errorf("rank 1 = %+v", p.Ranks[1])
			}
		}},
		{"single", ref(1, 1, 1, 1), workersOn("a", 1), parallel.Mesh{DP: 1, SP: 1, TP: 1, EP: 1}, nil},
		{"tp2 ep2", ref(0, 2, 2, 1), workersOn("a", 4), parallel.Mesh{DP: 2, SP: 1, TP: 2, EP: 2}, func(t *testing.T, p Plan) {
			r := p.Ranks[3] // dp=1 tp=1
			if r.Heads != [2]int{2, 4} || r.Experts != [2]int{4, 8} || r.DataShard != 1 {
				t.Errorf("rank 3 = %+v", r)
			}
		}},
		{"sp2 zigzag", ref(1, 1, 1, 2), workersOn("a", 2), parallel.Mesh{DP: 1, SP: 2, TP: 1, EP: 1}, func(t *testing.T, p Plan) {
			if p.Ranks[0].SeqChunks != [2]int{0, 3} || p.Ranks[1].SeqChunks != [2]int{1, 2} {
				t.Errorf("chunks %v %v", p.Ranks[0].SeqChunks, p.Ranks[1].SeqChunks)
			}
		}},
		// Join order interleaves hosts; the TP pairs must still land on one host.
		{"tp kept on host", ref(0, 2, 1, 1), []WorkerInfo{
			{ID: "w0", Host: "a"}, {ID: "w1", Host: "b"}, {ID: "w2", Host: "a"}, {ID: "w3", Host: "b"},
		}, parallel.Mesh{DP: 2, SP: 1, TP: 2, EP: 1}, func(t *testing.T, p Plan) {
			for _, g := range p.Mesh.Groups(parallel.AxisTP) {
				if p.Ranks[g[0]].Worker.Host != p.Ranks[g[1]].Worker.Host {
					t.Errorf("tp group %v spans hosts", g)
				}
			}
			if len(p.Warnings) != 0 {
				t.Errorf("unexpected warnings %v", p.Warnings)
			}
		}},
		{"block must span", ref(0, 2, 1, 1), workersOn("a", 1, "b", 1), parallel.Mesh{DP: 1, SP: 1, TP: 2, EP: 1}, func(t *testing.T, p Plan) {
			if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "spans hosts a,b") {
				t.Errorf("warnings %v", p.Warnings)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := MakePlan(c.req, c.workers)
			if err != nil {
				t.Fatal(err)
			}
			if p.Mesh != c.mesh {
				t.Fatalf("mesh %+v, want %+v", p.Mesh, c.mesh)
			}
			used := map[string]bool{}
			for i, r := range p.Ranks {
				if r.Rank != i || p.Mesh.Rank(r.Coord) != i || used[r.Worker.ID] {
					t.Fatalf("rank %d assignment %+v inconsistent", i, r)
				}
				used[r.Worker.ID] = true
			}
			if c.check != nil {
				c.check(t, p)
			}
		})
	}
}

func TestMakePlanInvalid(t *testing.T) {
	cases := []struct {
		name    string
		req     PlanRequest
		n       int
		want    []string // substrings of the problem list
		suggest parallel.Mesh
	}{
		{"product mismatch", ref(2, 2, 1, 1), 3, []string{"dp=2 × sp=1 × tp=2 = 4 ranks, but only 3 workers"},
			parallel.Mesh{DP: 3, SP: 1, TP: 1, EP: 1}},
		{"auto not divisible", ref(0, 2, 1, 1), 3, []string{"worker count 3 divisible by sp=1 × tp=2 = 2"},
			parallel.Mesh{DP: 3, SP: 1, TP: 1, EP: 1}},
		{"heads", ref(0, 3, 1, 1), 3, []string{"4 attention heads are not divisible by tp=3"},
			parallel.Mesh{DP: 3, SP: 1, TP: 1, EP: 1}},
		{"experts", ref(0, 1, 3, 1), 3, []string{"8 experts are not divisible by ep=3"},
			parallel.Mesh{DP: 3, SP: 1, TP: 1, EP: 1}},
		{"ep divides dp·sp", ref(0, 2, 4, 1), 4, []string{"ep=4 does not divide dp=2 × sp=1 = 2"},
			parallel.Mesh{DP: 2, SP: 1, TP: 2, EP: 2}},
		{"seq", PlanRequest{Mesh: parallel.Config{DP: 1, TP: 1, EP: 1, SP: 3}, Experts: 8, Heads: 4, SeqLen: 256}, 3,
			[]string{"sequence length 256 is not divisible by 2 × sp=3 = 6"}, parallel.Mesh{DP: 3, SP: 1, TP: 1, EP: 1}},
		{"too few", ref(0, 4, 1, 1), 2, []string{"too few workers: sp=1 × tp=4 needs at least 4, have 2"},
			parallel.Mesh{DP: 1, SP: 1, TP: 2, EP: 1}},
		{"several at once", ref(0, 3, 3, 1), 4, []string{"divisible by sp=1 × tp=3", "not divisible by tp=3", "not divisible by ep=3"},
			parallel.Mesh{DP: 2, SP: 1, TP: 2, EP: 2}},
		{"bad degree", ref(1, 0, 1, 1), 1, []string{"tp, sp, ep must be ≥ 1"}, parallel.Mesh{DP: 1, SP: 1, TP: 1, EP: 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := MakePlan(c.req, workersOn("h", c.n))
			var le *LayoutError
			if !errors.As(err, &le) {
				t.Fatalf("error %v, want *LayoutError", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if le.Suggestion != c.suggest {
				t.Errorf("suggestion %+v, want %+v", le.Suggestion, c.suggest)
			}
			// The suggestion must itself be a valid plan for the same workers.
			s := le.Suggestion
			req := c.req
			req.Mesh = parallel.Config{DP: s.DP, TP: s.TP, EP: s.EP, SP: s.SP}
			if _, err := MakePlan(req, workersOn("h", c.n)); err != nil {
				t.Errorf("suggested layout %v fails: %v", s, err)
			}
		})
	}
}

func TestMakePlanBadModel(t *testing.T) {
	_, err := MakePlan(PlanRequest{Mesh: parallel.DefaultConfig(), Experts: 0, Heads: 4, SeqLen: 8}, workersOn("h", 1))
	if err == nil || !strings.Contains(err.Error(), "0 experts") {
		t.Fatalf("error %v", err)
	}
}

func TestPlanValidate(t *testing.T) {
	p, err := MakePlan(ref(0, 2, 1, 1), workersOn("a", 4))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatalf("valid plan refused: %v", err)
	}
	bad := []struct {
		name string
		mut  func(p *Plan)
		want string
	}{
		{"short", func(p *Plan) { p.Ranks = p.Ranks[:3] }, "3 rank assignments for a mesh of 4"},
		{"order", func(p *Plan) { p.Ranks[1], p.Ranks[2] = p.Ranks[2], p.Ranks[1] }, "entry 1 is rank 2"},
		{"addr", func(p *Plan) { p.Ranks[3].Worker.DataAddr = "" }, "rank 3 has no worker id or data-plane address"},
		{"mesh", func(p *Plan) { p.Mesh.EP = 3 }, "ep=3 does not divide"},
	}
	for _, c := range bad {
		q := p
		q.Ranks = append([]RankAssignment(nil), p.Ranks...)
		c.mut(&q)
		if err := q.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
