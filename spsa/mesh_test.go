package spsa

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/model"
)

func tinyModel(t testing.TB) model.Config {
	c := model.DefaultConfig()
	c.Vocab, c.DModel, c.Layers, c.Heads, c.SeqLen = 32, 16, 2, 2, 16
	c.Experts, c.ExpertHidden, c.TopK = 4, 16, 2
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// batchOf is worker id's batch of a step: its own data, which no other
// worker sees.
func batchOf(cfg model.Config, id uint32, step int64) model.Input {
	const B, T = 2, 12
	rng := rand.New(rand.NewPCG(uint64(id), uint64(step)))
	in := model.Input{B: B, T: T, Tokens: make([]int32, B*T), Targets: make([]int32, B*T), Pos: make([]int32, B*T)}
	seq := make([]int32, T+1)
	for r := range B {
		for i := range seq {
			// A learnable pattern (next = previous + id) with noise.
			if i == 0 || rng.IntN(4) == 0 {
				seq[i] = int32(rng.IntN(cfg.Vocab))
			} else {
				seq[i] = (seq[i-1] + int32(id)) % int32(cfg.Vocab)
			}
		}
		for i := range T {
			in.Tokens[r*T+i], in.Targets[r*T+i], in.Pos[r*T+i] = seq[i], seq[i+1], int32(i)
		}
	}
	return in
}

// replica is one worker with its own model (built from the shared
// checkpoint's parameters).
type replica struct {
	id  uint32
	m   *model.Model
	w   *Worker
	in  model.Input
	log *Log // the log keeper's (the coordinator's role), else nil
}

func newReplica(t testing.TB, mc model.Config, sc Config, ckpt []float32, id uint32, threads int) *replica {
	m, err := model.New(mc, 99) // any init: the checkpoint overwrites it
	if err != nil {
		t.Fatal(err)
	}
	copy(m.Params, ckpt)
	w, err := NewWorker(sc, id, m.Params, m.Grads, 0, threads)
	if err != nil {
		t.Fatal(err)
	}
	return &replica{id: id, m: m, w: w}
}

// meshOf dials a TCP loopback mesh of n ranks and returns each rank's
// transport.
func meshOf(t testing.TB, ctx context.Context, n int) []collective.Transport {
	lns := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range lns {
		ln, err := collective.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		lns[i], addrs[i] = ln, ln.Addr().String()
	}
	ts := make([]collective.Transport, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ts[i], errs[i] = collective.DialMesh(ctx, lns[i], collective.TCPConfig{Rank: i, Addrs: addrs, Token: "spsa-test"})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", i, err)
		}
		t.Cleanup(func() { ts[i].Close() })
	}
	return ts
}

// runSteps runs steps steps on every replica over one mesh whose rank r is
// reps[r], each in its own goroutine, and returns the wire bytes each sent.
func runSteps(t testing.TB, ctx context.Context, reps []*replica, steps int) []int64 {
	ts := meshOf(t, ctx, len(reps))
	ids := make([]uint32, len(reps))
	for r, rp := range reps {
		ids[r] = rp.id
	}
	sent := make([]int64, len(reps))
	errs := make([]error, len(reps))
	var wg sync.WaitGroup
	for r, rp := range reps {
		wg.Go(func() {
			ex, err := NewCommExchange(ts[r], ids)
			if err != nil {
				errs[r] = err
				return
			}
			loss := ModelLoss(rp.m, &rp.in)
			for range steps {
				rp.in = batchOf(rp.m.Cfg, rp.id, rp.w.Step())
				st, err := rp.w.StepOnce(ctx, ex, loss)
				if err != nil {
					errs[r] = err
					return
				}
				if rp.log != nil {
					if err := rp.log.Append(Record{Step: st.Step, Entries: st.Entries}); err != nil {
						errs[r] = err
						return
					}
				}
			}
			sent[r] = ex.WireBytes()
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("worker %d: %v", reps[r].id, err)
		}
	}
	return sent
}

// Determinism (docs/algorithms/spsa.md): four workers over real TCP
// loopback take N steps on their own data and end bitwise identical; a
// fifth that joins at N/2 from the checkpoint plus the log replay is
// bitwise identical too, and stays so for the remaining steps. Workers use
// different thread counts.
func TestWorkersBitwiseIdenticalOverTCP(t *testing.T) {
	for _, quant := range []string{QuantInt8, QuantFP32} {
		t.Run(quant, func(t *testing.T) { testWorkersOverTCP(t, quant) })
	}
}

func testWorkersOverTCP(t *testing.T, quant string) {
	const N = 12
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mc := tinyModel(t)
	sc := DefaultConfig()
	sc.Quant, sc.Directions, sc.LR, sc.Clip, sc.Epsilon = quant, 2, 1e-3, 2, 1e-2
	base, err := model.New(mc, 5)
	if err != nil {
		t.Fatal(err)
	}
	ckpt := append([]float32(nil), base.Params...) // the checkpoint fine-tuning starts from
	logPath := filepath.Join(t.TempDir(), "spsa.log")
	keeper, err := CreateLog(logPath, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer keeper.Close()

	var reps []*replica
	for i, id := range []uint32{1, 2, 3, 4} {
		reps = append(reps, newReplica(t, mc, sc, ckpt, id, i+1))
	}
	reps[0].log = keeper
	l0, _ := ModelLoss(reps[0].m, ptr(batchOf(mc, 1, 0)))()
	sent := runSteps(t, ctx, reps, N/2)

	// Worker 5 joins: checkpoint + log, no weights transferred.
	joiner := newReplica(t, mc, sc, ckpt, 5, 3)
	_, recs, err := ReadLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != N/2 {
		t.Fatalf("log holds %d records after %d steps", len(recs), N/2)
	}
	if err := joiner.w.Replay(recs, N/2); err != nil {
		t.Fatal(err)
	}
	mustIdentical(t, fmt.Sprintf("after %d steps, joiner replayed", N/2), append([]*replica{joiner}, reps...))

	// Membership changes between steps: a new mesh, ranks in another order.
	reps2 := []*replica{reps[2], joiner, reps[0], reps[3], reps[1]}
	runSteps(t, ctx, reps2, N/2)
	mustIdentical(t, fmt.Sprintf("after %d steps", N), reps2)

	if testkit.FirstBitDiff(reps[0].m.Params, ckpt) == -1 {
		t.Fatal("parameters never moved")
	}
	l1, _ := ModelLoss(reps[0].m, ptr(batchOf(mc, 1, 0)))()
	t.Logf("%s: worker 1's batch-0 loss %.5f → %.5f; wire bytes per worker over %d steps of 4: %v", quant, l0, l1, N/2, sent)

	// The whole log replayed from the checkpoint gives the same bits; one
	// record short does not (so the comparison can fail).
	_, recs, err = ReadLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	late := newReplica(t, mc, sc, ckpt, 6, 1)
	if err := late.w.Replay(recs[:N-1], N-1); err != nil {
		t.Fatal(err)
	}
	if testkit.FirstBitDiff(late.m.Params, reps[0].m.Params) == -1 {
		t.Fatal("a replica one step behind has the same parameters")
	}
	if err := late.w.Replay(recs, N); err != nil {
		t.Fatal(err)
	}
	mustIdentical(t, "whole log replayed", []*replica{late, reps[0]})
	if err := late.w.Replay(recs, N+1); err == nil {
		t.Fatal("replay past the log's end succeeded")
	}
}

func ptr[T any](v T) *T { return &v }

func mustIdentical(t *testing.T, when string, reps []*replica) {
	t.Helper()
	for _, rp := range reps[1:] {
		if i := testkit.FirstBitDiff(rp.m.Params, reps[0].m.Params); i >= 0 {
			t.Fatalf("%s: worker %d's parameter %d = %g, worker %d's = %g", when, rp.id, i, rp.m.Params[i], reps[0].id, reps[0].m.Params[i])
		}
		if rp.w.Step() != reps[0].w.Step() {
			t.Fatalf("%s: worker %d at step %d, worker %d at %d", when, rp.id, rp.w.Step(), reps[0].id, reps[0].w.Step())
		}
	}
}
