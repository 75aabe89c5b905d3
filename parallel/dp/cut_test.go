package dp

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
)

// hookRanges is the sequence of ranges a real backward of cfg reports.
func hookRanges(t *testing.T, cfg model.Config) [][2]int {
	t.Helper()
	m, err := model.New(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	var out [][2]int
	m.OnGradsReady = func(lo, hi int) { out = append(out, [2]int{lo, hi}) }
	if _, err := m.ForwardBackward(randomInput(cfg, 1, 5, 1)); err != nil {
		t.Fatal(err)
	}
	return out
}

// coarsen merges consecutive ranges of seq at random (as a backward that
// reports less often would).
func coarsen(seq [][2]int, rng *rand.Rand) [][2]int {
	var out [][2]int
	for _, r := range seq {
		if len(out) > 0 && rng.IntN(2) == 0 {
			out[len(out)-1][0] = r[0]
			continue
		}
		out = append(out, r)
	}
	return out
}

// Without ZeRO-1 the buckets are cut while the backward runs: after every
// reported range each started bucket holds only final gradients, the
// started buckets tile the top of the buffer, and what is final but not
// started is less than minFloats of one reduction group; a bucket stays
// within the cap unless it is a single entry and never mixes groups when
// they differ. Without the hook the cut is PlanBuckets' plan, and the same
// sequence cuts the same buckets in every step.
func TestCutFollowsBackward(t *testing.T) {
	ref := model.DefaultConfig()
	ref.Layers = 2
	for _, cfg := range []model.Config{tinyModelConfig(), ref} {
		l := model.NewLayout(cfg)
		entryAt := map[int]int{}
		for i, e := range l.Entries {
			entryAt[e.Offset] = i
		}
		bwd := hookRanges(t, cfg)
		var perEntry [][2]int
		for i := len(l.Entries) - 1; i >= 0; i-- {
			e := l.Entries[i]
			perEntry = append(perEntry, [2]int{e.Offset, e.Offset + e.Size()})
		}
		grads := make([]float32, l.Total) // one rank: reduced as it is
		rng := rand.New(rand.NewPCG(7, uint64(l.Total)))
		seqs := map[string][][2]int{"backward": bwd, "per entry": perEntry, "none": nil,
			"coarse 1": coarsen(perEntry, rng), "coarse 2": coarsen(perEntry, rng)}
		for name, seq := range seqs {
			for _, split := range []bool{false, true} {
				for _, capF := range []int{1, 500, 3000, l.Total / 3, 1 << 30} {
					for _, minF := range []int{1, 200, 1 << 18} {
						checkCut(t, l, grads, seq, split, capF, minF, name)
					}
				}
			}
		}
	}
}

func checkCut(t *testing.T, l model.Layout, grads []float32, seq [][2]int, split bool, capF, minF int, name string) {
	t.Helper()
	ts := collective.NewInProcess(1)
	defer ts[0].Close()
	world := collective.NewWorld(ts[0])
	var expert *collective.Comm
	if split { // a second communicator: expert buckets reduce apart
		var err error
		if expert, err = world.Sub([]int{0}); err != nil {
			t.Fatal(err)
		}
	}
	red, err := NewReducer(Config{BucketMB: float64(capF) * 4 / 1e6, Overlap: true}, l, grads, world, expert)
	if err != nil {
		t.Fatal(err)
	}
	red.maxFloats, red.minFloats = capF, min(minF, capF) // exact values, free of MB rounding
	isEntry := map[int]bool{l.Total: true}
	expertAt := map[int]bool{}
	for _, e := range l.Entries {
		isEntry[e.Offset] = true
		expertAt[e.Offset] = e.Expert
	}
	mixed := func(lo, hi int) bool {
		for _, e := range l.Entries {
			if e.Offset >= lo && e.Offset < hi && e.Size() > 0 && e.Expert != expertAt[lo] {
				return true
			}
		}
		return false
	}
	single := func(lo, hi int) bool {
		for _, e := range l.Entries {
			if e.Offset == lo && e.Offset+e.Size() == hi {
				return true
			}
		}
		return false
	}
	ctx := context.Background()
	var steps [][]Bucket
	for step := 0; step < 2; step++ {
		if err := red.Begin(ctx); err != nil {
			t.Fatal(err)
		}
		for ci, r := range seq {
			red.GradsReady(r[0], r[1])
			if red.err != nil {
				t.Fatalf("%s: %v", name, red.err)
			}
			top := l.Total
			for _, b := range red.buckets[:red.next] {
				if b.Hi != top || b.Lo >= b.Hi || b.Lo < r[0] {
					t.Fatalf("%s cap %d min %d split %v, after range %d [%d, %d): started bucket [%d, %d), want it to end at %d and hold only final gradients",
						name, capF, minF, split, ci, r[0], r[1], b.Lo, b.Hi, top)
				}
				top = b.Lo
			}
			if left := top - r[0]; left > 0 && (left >= red.minFloats || (split && mixed(r[0], top))) {
				t.Fatalf("%s cap %d min %d split %v, after range %d [%d, %d): [%d, %d) is final but not started",
					name, capF, minF, split, ci, r[0], r[1], r[0], top)
			}
		}
		if err := red.Finish(ctx); err != nil {
			t.Fatal(err)
		}
		got := red.Buckets()
		hi := l.Total
		for i, b := range got {
			if b.Hi != hi || !isEntry[b.Lo] || b.Lo >= b.Hi {
				t.Fatalf("%s: bucket %d = [%d, %d), want a non-empty range of entries ending at %d", name, i, b.Lo, b.Hi, hi)
			}
			if b.Len() > capF && !single(b.Lo, b.Hi) {
				t.Fatalf("%s cap %d: bucket %d [%d, %d) over the cap across entries", name, capF, i, b.Lo, b.Hi)
			}
			if split && mixed(b.Lo, b.Hi) {
				t.Fatalf("%s: bucket %d [%d, %d) mixes expert and dense entries", name, i, b.Lo, b.Hi)
			}
			hi = b.Lo
		}
		if hi != 0 {
			t.Fatalf("%s: buckets stop at %d, not 0", name, hi)
		}
		if seq == nil && !slices.Equal(got, PlanBuckets(l, capF, split)) {
			t.Fatalf("%s cap %d split %v: without the hook cut %v, want PlanBuckets' %v", name, capF, split, got, PlanBuckets(l, capF, split))
		}
		steps = append(steps, got)
	}
	if !slices.Equal(steps[0], steps[1]) {
		t.Fatalf("%s cap %d min %d: step 1 cut %v, step 2 %v", name, capF, minF, steps[0], steps[1])
	}
}

// Two ranks with real models and backward hooks: the buckets follow the
// backward's ranges, every rank cuts the same ones, and the reduced
// gradient is the sum of the ranks' plain gradients.
func TestReducerWithModelHook(t *testing.T) {
	cfg := tinyModelConfig()
	const n = 2
	plain := make([][]float32, n)
	inputs := make([]model.Input, n)
	for r := range n {
		inputs[r] = randomInput(cfg, 1+r, 7, uint64(10+r))
		m, _ := model.New(cfg, 3)
		if _, err := m.ForwardBackward(inputs[r]); err != nil {
			t.Fatal(err)
		}
		plain[r] = m.Grads
	}
	got := make([][]float32, n)
	cuts := make([][]Bucket, n)
	errs := onRanks(n, func(r int, world *collective.Comm) error {
		m, _ := model.New(cfg, 3)
		red, err := NewReducer(Config{BucketMB: 1, Overlap: true}, m.Layout, m.Grads, world, nil)
		if err != nil {
			return err
		}
		red.minFloats = 1 // the tiny model's ranges are far below 1 MiB
		m.OnGradsReady = red.Hook()
		ctx := testCtx(t)
		for step := 0; step < 2; step++ {
			if err := red.Begin(ctx); err != nil {
				return err
			}
			if _, err := m.ForwardBackward(inputs[r]); err != nil {
				return err
			}
			if err := red.Finish(ctx); err != nil {
				return err
			}
		}
		got[r], cuts[r] = m.Grads, red.Buckets()
		return nil
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	ranges := hookRanges(t, cfg)
	if len(cuts[0]) != len(ranges) || !slices.Equal(cuts[0], cuts[1]) {
		t.Fatalf("buckets %v (rank 1: %v); want one per backward range %v", cuts[0], cuts[1], ranges)
	}
	for i, b := range cuts[0] {
		if b.Lo != ranges[i][0] || b.Hi != ranges[i][1] {
			t.Fatalf("bucket %d = [%d, %d), backward range %v", i, b.Lo, b.Hi, ranges[i])
		}
	}
	for i := range got[0] {
		want := float64(plain[0][i]) + float64(plain[1][i])
		for r := range n {
			if d := math.Abs(float64(got[r][i]) - want); d > 1e-6*(1+math.Abs(want)) {
				t.Fatalf("rank %d element %d: %v, want %v", r, i, got[r][i], want)
			}
		}
	}
}

// Ranks that cut differently (one reports the backward's ranges, the other
// installed no hook) fail with a size mismatch naming the peer, on both
// ranks, instead of summing unrelated ranges or hanging.
func TestCutDisagreementFails(t *testing.T) {
	cfg := tinyModelConfig()
	l := model.NewLayout(cfg)
	ranges := hookRanges(t, cfg)
	errs := onRanks(2, func(r int, world *collective.Comm) error {
		red, err := NewReducer(Config{BucketMB: 1, Overlap: true}, l, make([]float32, l.Total), world, nil)
		if err != nil {
			return err
		}
		red.minFloats = 1
		ctx := testCtx(t)
		if err := red.Begin(ctx); err != nil {
			return err
		}
		if r == 0 {
			for _, g := range ranges {
				red.GradsReady(g[0], g[1])
			}
		}
		return red.Finish(ctx)
	})
	for r, err := range errs {
		if err == nil || !(strings.Contains(err.Error(), "desynchronised") || strings.Contains(err.Error(), "aborted")) {
			t.Errorf("rank %d: got %v, want a desynchronisation error", r, err)
		}
	}
}
