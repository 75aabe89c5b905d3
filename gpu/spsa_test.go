package gpu

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/spsa"
)

// TestSPSAMixedDevicesStayIdentical: three SPSA replicas, one on the GPU and
// two on the host, each measuring on its own batches, exchange their
// projected gradients over in-process transports; after every step all
// three hold the same bits, equal to a host replay of the step records from
// the starting parameters. The GPU replica's losses at ±ε match the host
// model's at the same parameters (so it measured, not copied).
func TestSPSAMixedDevicesStayIdentical(t *testing.T) {
	dev := device(t)
	cfg := smallConfig()
	start := hostModel(t, cfg, 3)
	sc := spsa.DefaultConfig()
	sc.Seed, sc.Directions, sc.LR, sc.Epsilon = 11, 2, 1e-3, 1e-3
	const steps = 4

	type replica struct {
		id    uint32
		w     *spsa.Worker
		loss  spsa.LossFunc
		in    *model.Input
		host  *model.Model // nil on the GPU
		recs  []spsa.Record
		stats []spsa.StepStats
	}
	reps := make([]*replica, 3)
	for r := range reps {
		id := uint32(r + 1)
		cpu := hostModel(t, cfg, 99)
		copy(cpu.Params, start.Params)
		rep := &replica{id: id, in: new(model.Input)}
		if r == 0 {
			g, err := NewFromHost(dev, cpu)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(g.Close)
			store := g.NewSPSAStore()
			t.Cleanup(store.Close)
			rep.loss = spsa.ModelLoss(g, rep.in)
			if rep.w, err = spsa.NewWorkerOn(sc, id, store, 0); err != nil {
				t.Fatal(err)
			}
		} else {
			rep.host = cpu
			rep.loss = spsa.ModelLoss(cpu, rep.in)
			w, err := spsa.NewWorker(sc, id, cpu.Params, cpu.Grads, 0, 1)
			if err != nil {
				t.Fatal(err)
			}
			rep.w = w
		}
		reps[r] = rep
	}
	ts := collective.NewInProcess(len(reps))
	ids := []uint32{1, 2, 3}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(reps))
	for r, rep := range reps {
		wg.Go(func() {
			ex, err := spsa.NewCommExchange(ts[r], ids)
			if err != nil {
				errs[r] = err
				return
			}
			defer ex.Close()
			for s := range int64(steps) {
				*rep.in = batch(cfg, 2, 32, false, uint64(100*rep.id)+uint64(s))
				st, err := rep.w.StepOnce(ctx, ex, rep.loss)
				if err != nil {
					errs[r] = err
					return
				}
				rep.recs = append(rep.recs, spsa.Record{Step: st.Step, Entries: append([]spsa.Entry(nil), st.Entries...)})
				rep.stats = append(rep.stats, *st)
			}
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", r, err)
		}
	}
	sums := make([]uint32, len(reps))
	for r, rep := range reps {
		sum, err := rep.w.Checksum()
		if err != nil {
			t.Fatal(err)
		}
		sums[r] = sum
	}
	// replayed is a host model at start's parameters with the records of
	// steps [0, to) applied.
	replayed := func(to int64) *model.Model {
		m := hostModel(t, cfg, 99)
		copy(m.Params, start.Params)
		w, err := spsa.NewWorker(sc, 9, m.Params, m.Grads, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Replay(reps[1].recs, to); err != nil {
			t.Fatal(err)
		}
		return m
	}
	replay := replayed(steps)
	want := spsa.Checksum(replay.Params)
	for r := range reps {
		if sums[r] != want {
			t.Fatalf("replica %d (GPU: %v) ends with crc32c %08x, the host replay with %08x", r, r == 0, sums[r], want)
		}
	}
	if spsa.Checksum(start.Params) == want {
		t.Fatal("the steps changed no parameter")
	}

	// The GPU replica measured its own losses: its last step's loss at +ε
	// on its batch equals the host model's at the same parameters.
	host := replayed(steps - 1)
	spsa.Perturb(host.Params, append([]float32(nil), host.Params...), spsa.DirectionSeed(sc.Seed, steps-1, 1, uint32(sc.Directions-1)), float32(sc.Epsilon), 1)
	r, err := host.Forward(batch(cfg, 2, 32, false, 100+steps-1), false)
	if err != nil {
		t.Fatal(err)
	}
	got := reps[0].stats[steps-1].LossPlus
	if math.Abs(got-r.Loss) > 1e-5*math.Abs(r.Loss) {
		t.Fatalf("GPU replica's loss at +ε %v, host model's %v", got, r.Loss)
	}
}

// TestForwardOnlyEqualsCPU: a forward without gradients (what SPSA and
// evaluation run) gives the CPU model's loss, twice in a row bitwise the
// same (SPSA's loss must be deterministic).
func TestForwardOnlyEqualsCPU(t *testing.T) {
	dev := device(t)
	cfg := smallConfig()
	cpu := hostModel(t, cfg, 5)
	g, err := NewFromHost(dev, cpu)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, packed := range []bool{false, true} {
		in := batch(cfg, 3, 40, packed, 9)
		want, err := cpu.Forward(in, false)
		if err != nil {
			t.Fatal(err)
		}
		got, err := g.Forward(in, false)
		if err != nil {
			t.Fatal(err)
		}
		again, err := g.Forward(in, false)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(got.Loss-want.Loss) > 1e-5*math.Abs(want.Loss) {
			t.Fatalf("packed %v: GPU loss %v, CPU %v", packed, got.Loss, want.Loss)
		}
		if got.Loss != again.Loss {
			t.Fatalf("packed %v: two forwards gave %v and %v", packed, got.Loss, again.Loss)
		}
	}
}

// BenchmarkSPSAStep: one SPSA step of the reference model (the job
// defaults: batch 8×256 from the embedded corpus, one direction: two
// forwards, the perturbations, restore and update) on one replica, on the
// host ("cpu", kernel threads as tensor's default) and on the GPU ("gpu").
// tokens/s counts the batch's positions once per step.
func BenchmarkSPSAStep(b *testing.B) {
	cfg := model.DefaultConfig()
	bt, err := corpusSampler(b).Next()
	if err != nil {
		b.Fatal(err)
	}
	in := spsa.Input(bt)
	sc := spsa.DefaultConfig()
	for _, onGPU := range []bool{false, true} {
		name := map[bool]string{false: "cpu", true: "gpu"}[onGPU]
		b.Run(name, func(b *testing.B) {
			cpu := hostModel(b, cfg, 1)
			var store spsa.Store
			var fwd spsa.Forwarder = cpu
			if onGPU {
				g, err := NewFromHost(device(b), cpu)
				if err != nil {
					b.Fatal(err)
				}
				defer g.Close()
				s := g.NewSPSAStore()
				defer s.Close()
				store, fwd = s, g
			} else if store, err = spsa.NewHostStore(cpu.Params, cpu.Grads, 0); err != nil {
				b.Fatal(err)
			}
			w, err := spsa.NewWorkerOn(sc, 1, store, 0)
			if err != nil {
				b.Fatal(err)
			}
			ex, err := spsa.NewCommExchange(collective.NewInProcess(1)[0], []uint32{1})
			if err != nil {
				b.Fatal(err)
			}
			defer ex.Close()
			loss := spsa.ModelLoss(fwd, &in)
			ctx := context.Background()
			if _, err := w.StepOnce(ctx, ex, loss); err != nil { // warm-up: allocations, plans
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := w.StepOnce(ctx, ex, loss); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*in.B*in.T)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}
