package train

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
)

// meshJob is a tiny model every mesh of the tests splits evenly: 2 heads
// (TP ≤ 2), 8 experts (EP ≤ 4, MoGE groups), 16 positions (SP ≤ 4 chunks of 2).
func meshJob() JobConfig {
	cfg := DefaultJobConfig()
	cfg.Model.DModel, cfg.Model.Layers, cfg.Model.Heads, cfg.Model.SeqLen = 16, 2, 2, 16
	cfg.Model.Experts, cfg.Model.ExpertHidden, cfg.Model.TopK = 8, 32, 2
	cfg.Model.ZLossCoef = 1e-3
	cfg.Data.SeqLen, cfg.Data.BatchSize = 16, 2
	cfg.Train.Steps, cfg.Train.Threads = 2, 1
	return cfg
}

// randomBatch is rows×t tokens with next-token targets, some ignored.
func randomBatch(rng *rand.Rand, rows, t, vocab int) sampling.Batch {
	b := sampling.Batch{B: rows, T: t}
	for i := 0; i < rows*t; i++ {
		b.Tokens = append(b.Tokens, int32(rng.IntN(vocab)))
		tg := int32(rng.IntN(vocab))
		if rng.IntN(7) == 0 {
			tg = -1
		}
		b.Targets = append(b.Targets, tg)
		b.Pos = append(b.Pos, int32(i%t))
	}
	return b
}

// rowsOf is rows [lo, hi) of b.
func rowsOf(b sampling.Batch, lo, hi int) sampling.Batch {
	return sampling.Batch{B: hi - lo, T: b.T, Tokens: b.Tokens[lo*b.T : hi*b.T],
		Targets: b.Targets[lo*b.T : hi*b.T], Pos: b.Pos[lo*b.T : hi*b.T]}
}

type serialRun struct {
	losses []float64
	params []float32
	grads  []float32 // the last step's gradient
	layout model.Layout
}

func runSerial(t *testing.T, cfg JobConfig, global []sampling.Batch) serialRun {
	t.Helper()
	tr, err := NewTrainer(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var out serialRun
	for _, b := range global { // Run's step
		st, _, err := tr.TrainStep(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.UpdateRouterBias(st.RoutedLoad); err != nil {
			t.Fatal(err)
		}
		out.losses = append(out.losses, st.Loss)
	}
	out.params, out.grads, out.layout = tr.Params(), tr.Grads(), tr.Layout()
	return out
}

type meshRun struct {
	losses [][]float64 // [rank][step]
	params []float32   // gathered whole-model parameters
	grads  []float32   // gathered reduced gradient of the last step (nil under ZeRO-1)
}

// runMesh trains every rank of mesh as a goroutine over in-process links;
// DP replica d gets rows [d·B, (d+1)·B) of each global batch. The ranks'
// final shards are gathered into the whole layout, checking that ranks
// holding the same block agree bit for bit.
func runMesh(t *testing.T, cfg JobConfig, mesh parallel.Mesh, global []sampling.Batch) meshRun {
	t.Helper()
	losses, ranks := stepMesh(t, cfg, mesh, global, nil)
	whole := model.NewLayout(cfg.Model)
	out := meshRun{losses: losses, params: gatherMesh(t, ranks, whole, (*MeshRank).params)}
	if !cfg.DP.Zero1 { // under ZeRO-1 only the shard ranges hold the reduced gradient
		out.grads = gatherMesh(t, ranks, whole, (*MeshRank).grads)
	}
	return out
}

func (r *MeshRank) params() []float32 { return r.tr.Params() }
func (r *MeshRank) grads() []float32  { return r.tr.Grads() }

// gatherMesh assembles the whole-model buffer from every rank's local one
// (buf), checking that ranks holding the same block agree bit for bit and
// that every element is held.
func gatherMesh(t *testing.T, ranks []*MeshRank, whole model.Layout, buf func(*MeshRank) []float32) []float32 {
	t.Helper()
	out := make([]float32, whole.Total)
	seen := make([]bool, whole.Total)
	for r, mr := range ranks {
		tmp := make([]float32, whole.Total)
		for i := range tmp {
			tmp[i] = float32(math.NaN())
		}
		mr.Trainer().Layout().Insert(tmp, buf(mr), whole)
		for i, v := range tmp {
			if v != v { // not held by this rank
				continue
			}
			if seen[i] && out[i] != v {
				t.Fatalf("rank %d disagrees with another holder of element %d: %v vs %v", r, i, v, out[i])
			}
			out[i], seen[i] = v, true
		}
	}
	for i, s := range seen {
		if !s {
			t.Fatalf("element %d held by no rank", i)
		}
	}
	return out
}

// compareMesh checks parallel-equals-serial (docs/mesh.md#parallel-equals-serial): every rank's loss
// within 1e-5 relative of the serial trainer's, every tensor of the gathered
// last-step gradient within 1e-5 and of the parameters within 1e-4 relative
// (norm of the difference over norm of the tensor).
func compareMesh(t *testing.T, want serialRun, got meshRun) {
	t.Helper()
	for r, ls := range got.losses {
		for s, l := range ls {
			if rel := math.Abs(l-want.losses[s]) / math.Abs(want.losses[s]); rel > 1e-5 {
				t.Errorf("rank %d step %d: loss %.9g, serial %.9g (rel %.2g)", r, s+1, l, want.losses[s], rel)
			}
		}
	}
	if got.grads != nil {
		for _, e := range want.layout.Entries {
			if rel := relDiff(e.Slice(got.grads), e.Slice(want.grads)); rel > 1e-5 {
				t.Errorf("%s: gradient of the last step differs from serial by %.2g relative", e.Name, rel)
			}
		}
	}
	for _, e := range want.layout.Entries {
		if rel := relDiff(e.Slice(got.params), e.Slice(want.params)); rel > 1e-4 {
			t.Errorf("%s: parameters after %d steps differ from serial by %.2g relative", e.Name, len(want.losses), rel)
		}
	}
}

func meshCases() []parallel.Mesh {
	var out []parallel.Mesh
	for _, d := range []int{1, 2, 4} {
		for _, tp := range []int{1, 2} {
			for _, ep := range []int{1, 2, 4} {
				m := parallel.Mesh{DP: d, SP: 1, TP: tp, EP: ep}
				if m.World() <= 8 && m.Validate() == nil {
					out = append(out, m)
				}
			}
		}
	}
	return out
}

// TestMeshStepEqualsSerial is the equivalence matrix of the dense dimensions: DP ∈ {1,2,4},
// TP ∈ {1,2}, EP ∈ {1,2,4} up to 8 ranks, ZeRO-1 off and on; two steps from
// the serial model's initial weights on the same global batches, with the aux
// loss, z-loss and bias balancing on (global statistics).
func TestMeshStepEqualsSerial(t *testing.T) {
	cfg := meshJob()
	cfg.Model.BiasUpdateRate = 1e-3
	rng := rand.New(rand.NewPCG(11, 12))
	global := []sampling.Batch{randomBatch(rng, 4, 16, cfg.Model.Vocab), randomBatch(rng, 4, 16, cfg.Model.Vocab)}
	// Rows 2 and 3 of the second batch have no targets: with DP = 4 one
	// rank then counts none, with DP = 2 one counts half as many.
	for i := 2 * 16; i < 4*16; i++ {
		global[1].Targets[i] = -1
	}
	want := runSerial(t, cfg, global)
	for _, m := range meshCases() {
		for _, zero1 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/zero1=%v", m, zero1), func(t *testing.T) {
				c := cfg
				c.DP.Zero1 = zero1
				c.Mesh = parallel.Config{DP: m.DP, TP: m.TP, EP: m.EP, SP: m.SP, SPAlgorithm: "tokenring"}
				compareMesh(t, want, runMesh(t, c, m, global))
			})
		}
	}
}

// TestMeshDataParallelVariants: the gradient reduction's settings — buckets
// of one tensor or a few thousand floats, overlap off, ZeRO-1 with buckets
// not divisible by the group — and clipping (a global norm over every
// distinct block) give the serial step.
func TestMeshDataParallelVariants(t *testing.T) {
	base := meshJob()
	rng := rand.New(rand.NewPCG(31, 32))
	global := []sampling.Batch{randomBatch(rng, 4, 16, base.Model.Vocab), randomBatch(rng, 4, 16, base.Model.Vocab)}
	for _, clip := range []float64{0, 0.05} {
		cfg := base
		cfg.Optim.ClipNorm = clip
		want := runSerial(t, cfg, global)
		for _, v := range []struct {
			name     string
			bucketMB float64
			overlap  bool
			zero1    bool
		}{
			{"tiny-buckets", 1e-6, true, false},
			{"3000-float-buckets", 3000 * 4 / 1e6, true, false},
			{"no-overlap", 3000 * 4 / 1e6, false, false},
			{"zero1-tiny-buckets", 1e-6, true, true},
			{"zero1-odd-buckets", 3001 * 4 / 1e6, true, true},
		} {
			for _, m := range []parallel.Mesh{{DP: 4, SP: 1, TP: 1, EP: 1}, {DP: 2, SP: 1, TP: 2, EP: 2}} {
				t.Run(fmt.Sprintf("clip=%g/%s/%v", clip, v.name, m), func(t *testing.T) {
					c := meshConfig(cfg, m)
					c.DP.BucketMB, c.DP.Overlap, c.DP.Zero1 = v.bucketMB, v.overlap, v.zero1
					compareMesh(t, want, runMesh(t, c, m, global))
				})
			}
		}
	}
	// Three replicas (group sizes that divide nothing evenly).
	cfg := base
	cfg.Optim.ClipNorm = 0.05
	odd := []sampling.Batch{randomBatch(rng, 3, 16, base.Model.Vocab), randomBatch(rng, 3, 16, base.Model.Vocab)}
	want := runSerial(t, cfg, odd)
	for _, zero1 := range []bool{false, true} {
		m := parallel.Mesh{DP: 3, SP: 1, TP: 1, EP: 1}
		t.Run(fmt.Sprintf("dp=3/zero1=%v", zero1), func(t *testing.T) {
			c := meshConfig(cfg, m)
			c.DP.BucketMB, c.DP.Zero1 = 3001*4/1e6, zero1
			compareMesh(t, want, runMesh(t, c, m, odd))
		})
	}
}

// TestMeshSequenceParallelEqualsSerial is sequence parallelism's training step: SP=2
// alone and with DP=2, EP=2 and TP=2, both attention algorithms, and SP=4.
func TestMeshSequenceParallelEqualsSerial(t *testing.T) {
	cfg := meshJob()
	rng := rand.New(rand.NewPCG(13, 14))
	global := []sampling.Batch{randomBatch(rng, 4, 16, cfg.Model.Vocab), randomBatch(rng, 4, 16, cfg.Model.Vocab)}
	want := runSerial(t, cfg, global)
	for _, m := range []parallel.Mesh{{DP: 1, SP: 2, TP: 1, EP: 1}, {DP: 2, SP: 2, TP: 1, EP: 1}, {DP: 1, SP: 2, TP: 1, EP: 2},
		{DP: 1, SP: 2, TP: 2, EP: 1}, {DP: 1, SP: 4, TP: 1, EP: 4}, {DP: 2, SP: 2, TP: 2, EP: 4}} {
		for _, alg := range []string{"ring", "tokenring"} {
			t.Run(fmt.Sprintf("%v/%s", m, alg), func(t *testing.T) {
				c := cfg
				c.Mesh = parallel.Config{DP: m.DP, TP: m.TP, EP: m.EP, SP: m.SP, SPAlgorithm: alg}
				compareMesh(t, want, runMesh(t, c, m, global))
			})
		}
	}
}

// TestMeshRoutersEqualSerial is the routers' equivalence: every router with
// EP ∈ {1, 2, 4} (MoGE with one group per EP rank at EP = 2; group-limited
// with 4 groups) equals the serial trainer.
func TestMeshRoutersEqualSerial(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	for _, rc := range []struct {
		name                     string
		router, score            string
		groups, topkGroups, topK int
	}{
		{"topk-sigmoid", "topk", "sigmoid", 1, 0, 2},
		{"moge-2groups", "moge", "softmax", 2, 0, 2},
		{"moge-4groups", "moge", "softmax", 4, 0, 4},
		{"group_limited", "group_limited", "sigmoid", 4, 2, 2},
	} {
		cfg := meshJob()
		cfg.Model.Router, cfg.Model.Score, cfg.Model.Groups, cfg.Model.TopKGroups, cfg.Model.TopK = rc.router, rc.score, rc.groups, rc.topkGroups, rc.topK
		cfg.Model.BiasUpdateRate = 1e-3
		global := []sampling.Batch{randomBatch(rng, 4, 16, cfg.Model.Vocab), randomBatch(rng, 4, 16, cfg.Model.Vocab)}
		want := runSerial(t, cfg, global)
		for _, ep := range []int{1, 2, 4} {
			m := parallel.Mesh{DP: 4, SP: 1, TP: 1, EP: ep}
			t.Run(fmt.Sprintf("%s/ep=%d", rc.name, ep), func(t *testing.T) {
				c := cfg
				c.Mesh = parallel.Config{DP: 4, TP: 1, EP: ep, SP: 1, SPAlgorithm: "tokenring"}
				compareMesh(t, want, runMesh(t, c, m, global))
			})
		}
	}
}

// A MoGE dispatch sized by the static split fails with an error on every
// rank, never wrong numbers or a hang, when ranks route different token
// counts despite declaring fixed-shape batches.
func TestMeshStaticSplitMismatchFails(t *testing.T) {
	cfg := meshJob()
	cfg.Model.Router, cfg.Model.Groups = "moge", 2
	mesh := parallel.Mesh{DP: 2, SP: 1, TP: 1, EP: 2}
	cfg.Mesh = parallel.Config{DP: 2, TP: 1, EP: 2, SP: 1, SPAlgorithm: "tokenring"}
	rng := rand.New(rand.NewPCG(17, 18))
	// Drawn before the ranks start: the generator is not safe for concurrent use.
	batches := []sampling.Batch{randomBatch(rng, 1, 16, cfg.Model.Vocab), randomBatch(rng, 2, 16, cfg.Model.Vocab)}
	errs := testkit.OnRanks(2, func(r int, tr collective.Transport) error {
		world := collective.NewWorldConfig(tr, collective.Config{Timeout: 5 * time.Second})
		mr, err := NewMeshRank(cfg, mesh, r, world, zerolog.Nop())
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err = mr.Step(ctx, batches[r])
		return err
	})
	for r, err := range errs {
		if err == nil {
			t.Errorf("rank %d: step with mismatched token counts succeeded", r)
		} else if !strings.Contains(err.Error(), "all-to-all") {
			t.Errorf("rank %d: error does not name the exchange: %v", r, err)
		}
	}
}

// relDiff is ‖a − b‖ / ‖b‖ (0 when both are zero).
func relDiff(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i] - b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}
