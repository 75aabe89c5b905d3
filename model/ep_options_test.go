package model_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/parallel"
)

func epInput(cfg model.Config, b, t int, seed uint64) model.Input {
	r := rand.New(rand.NewPCG(seed, 7))
	n := b * t
	in := model.Input{B: b, T: t, Tokens: make([]int32, n), Targets: make([]int32, n), Pos: make([]int32, n)}
	for i := 0; i < n; i++ {
		in.Tokens[i], in.Targets[i], in.Pos[i] = int32(r.IntN(cfg.Vocab)), int32(r.IntN(cfg.Vocab)), int32(i%t)
	}
	return in
}

// concat is the serial batch of the ranks' inputs (rows after rows).
func concat(ins []model.Input) model.Input {
	out := model.Input{T: ins[0].T}
	for _, in := range ins {
		out.B += in.B
		out.Tokens = append(out.Tokens, in.Tokens...)
		out.Targets = append(out.Targets, in.Targets...)
		out.Pos = append(out.Pos, in.Pos...)
	}
	return out
}

// epGrads runs one forward and backward of cfg under DP = EP = len(ins)
// (rank r takes ins[r]) and returns the loss, the global gradient and the
// chunk count layer 0 used (rank 0).
func epGrads(t *testing.T, cfg model.Config, ins []model.Input) (float64, []float32, int) {
	return meshGrads(t, cfg, parallel.Mesh{DP: len(ins), SP: 1, TP: 1, EP: len(ins)}, ins)
}

// meshGrads runs one forward and backward of cfg under mesh (data-parallel
// rank d takes ins[d]) and assembles the global gradient: sharded boxes
// from their owners; replicated tensors summed over the ranks and divided
// by TP (tensor-parallel ranks hold the same gradient, data-parallel ones
// the parts of their tokens).
func meshGrads(t *testing.T, cfg model.Config, mesh parallel.Mesh, ins []model.Input) (float64, []float32, int) {
	t.Helper()
	ep := mesh.World()
	whole := model.NewLayout(cfg)
	global := make([]float32, whole.Total)
	losses := make([]float64, ep)
	chunks := make([]int, ep)
	var mu sync.Mutex
	errs := testkit.OnRanks(ep, func(r int, tr collective.Transport) error {
		world := collective.NewWorldConfig(tr, collective.Config{Timeout: 20 * time.Second})
		cm, err := parallel.NewComms(world, mesh, r, 0)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cm.Begin(ctx)
		cm.SetUniformTokens(true)
		co := mesh.Coord(r)
		m, err := model.NewSharded(cfg, model.Shard{TP: mesh.TP, TPRank: co.TP, EP: mesh.EP, EPRank: mesh.EPIndex(r)}, 1)
		if err != nil {
			return err
		}
		m.Comms = cm
		res, err := m.ForwardBackward(ins[co.DP])
		if err != nil {
			return err
		}
		losses[r] = res.Loss
		chunks[r] = m.EPTiming()[0].Chunks
		if len(m.EPChunkLog()) != cfg.Layers {
			return fmt.Errorf("chunk log has %d layers", len(m.EPChunkLog()))
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range m.Layout.Entries {
			g, _ := whole.Lookup(e.Name)
			dst, src := g.Slice(global), e.Slice(m.Grads)
			scale := float32(1)
			if !e.IsSharded() {
				scale = 1 / float32(mesh.TP)
			}
			e.Runs(func(lo, gl, k int) {
				for i := 0; i < k; i++ {
					dst[gl+i] += scale * src[lo+i]
				}
			})
		}
		return nil
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return losses[0], global, chunks[0]
}

// serialStep is the serial model's (seed 1) forward and backward over
// every input concatenated: the reference of the parallel runs.
func serialStep(t *testing.T, cfg model.Config, ins []model.Input) (*model.Model, model.Result) {
	t.Helper()
	serial, err := model.New(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	sr, err := serial.ForwardBackward(concat(ins))
	if err != nil {
		t.Fatal(err)
	}
	return serial, sr
}

func relDiff(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / math.Max(den, 1e-300))
}

// Under expert parallelism the pipelined exchange (fixed and run-time chunk
// counts) and the DCCA layout (with every chunking) give the serial model's
// loss and gradient, tensor by tensor; fp8 dispatch stays within its
// quantization error of it (the serial model never rounds).
func TestEPOptionsEqualSerial(t *testing.T) {
	base := model.Config{
		Vocab: 32, DModel: 16, Layers: 2, Heads: 2, SeqLen: 8, NormEps: 1e-5,
		Experts: 4, ExpertHidden: 24, TopK: 2, AuxCoef: 0.5, InitStd: 0.3, Router: "topk",
	}
	for _, c := range []struct {
		name          string
		layout        string
		dim, chunks   int
		dtype         string
		loss, gradTol float64
	}{
		{"unpipelined", "standard", 0, 1, "fp32", 1e-5, 1e-5},
		{"chunks=3", "standard", 0, 3, "fp32", 1e-5, 1e-5},
		{"auto", "standard", 0, model.EPChunksAuto, "fp32", 1e-5, 1e-5},
		{"default (unpipelined)", "standard", 0, 0, "fp32", 1e-5, 1e-5},
		{"dcca", "dcca", 4, 1, "fp32", 1e-5, 1e-5},
		{"dcca chunks=2", "dcca", 4, 2, "fp32", 1e-5, 1e-5},
		// fp8 rounds every dispatched element by up to 2^-4 relative (moe's
		// tests check it exactly against a reference quantizer); here only
		// its size: a few per mille on the loss, tens of percent on the
		// gradients of this tiny, large-init model.
		{"fp8", "standard", 0, 2, "fp8e4m3", 1e-2, 0.4},
	} {
		cfg := base
		cfg.MoELayout, cfg.DispatchDim, cfg.EPChunks, cfg.DispatchDType = c.layout, c.dim, c.chunks, c.dtype
		ins := []model.Input{epInput(cfg, 2, 8, 3), epInput(cfg, 2, 8, 4)}
		serial, sr := serialStep(t, cfg, ins)
		loss, grads, chunks := epGrads(t, cfg, ins)
		if want := c.chunks; want > 1 && chunks != want {
			t.Errorf("%s: layer 0 used %d chunks", c.name, chunks)
		}
		dl := math.Abs(loss-sr.Loss) / math.Abs(sr.Loss)
		worst := 0.0
		for _, e := range serial.Layout.Entries {
			d := relDiff(e.Slice(grads), e.Slice(serial.Grads))
			worst = max(worst, d)
			if d > c.gradTol {
				t.Errorf("%s: %s gradient differs from serial by %.3g", c.name, e.Name, d)
			}
		}
		t.Logf("%s: loss rel diff %.3g, largest gradient rel diff %.3g", c.name, dl, worst)
		if dl > c.loss {
			t.Errorf("%s: loss %v, serial %v", c.name, loss, sr.Loss)
		}
	}
}

// DCCA under tensor parallelism (each expert's hidden dimension split, the
// projections replicated) and under TP × EP gives the serial gradient.
func TestDCCATensorParallelEqualsSerial(t *testing.T) {
	cfg := model.Config{
		Vocab: 32, DModel: 16, Layers: 2, Heads: 2, SeqLen: 8, NormEps: 1e-5,
		Experts: 4, ExpertHidden: 24, TopK: 2, AuxCoef: 0.5, InitStd: 0.3, Router: "topk",
		MoELayout: "dcca", DispatchDim: 4, EPChunks: 2,
	}
	for _, mesh := range []parallel.Mesh{{DP: 1, SP: 1, TP: 2, EP: 1}, {DP: 2, SP: 1, TP: 2, EP: 2}} {
		var ins []model.Input
		for d := range mesh.DP {
			ins = append(ins, epInput(cfg, 2, 8, uint64(3+d)))
		}
		serial, sr := serialStep(t, cfg, ins)
		loss, grads, _ := meshGrads(t, cfg, mesh, ins)
		if d := math.Abs(loss-sr.Loss) / sr.Loss; d > 1e-5 {
			t.Errorf("%v: loss %v, serial %v", mesh, loss, sr.Loss)
		}
		for _, e := range serial.Layout.Entries {
			if d := relDiff(e.Slice(grads), e.Slice(serial.Grads)); d > 1e-5 {
				t.Errorf("%v: %s gradient differs from serial by %.3g", mesh, e.Name, d)
			}
		}
	}
}
