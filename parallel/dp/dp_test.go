package dp

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/model"
)

func tinyModelConfig() model.Config {
	cfg := model.DefaultConfig()
	cfg.DModel, cfg.Layers, cfg.Heads, cfg.SeqLen = 16, 3, 2, 16
	cfg.Experts, cfg.ExpertHidden = 4, 8
	return cfg
}

// PlanBuckets tiles the buffer in decreasing order on entry boundaries, keeps
// each bucket within the cap unless it is a single entry, and with
// splitExpert never mixes expert and dense entries.
func TestPlanBuckets(t *testing.T) {
	l := model.NewLayout(tinyModelConfig())
	starts := map[int]bool{l.Total: true}
	expert := map[int]bool{}
	for _, e := range l.Entries {
		starts[e.Offset] = true
		expert[e.Offset] = e.Expert
	}
	for _, split := range []bool{false, true} {
		for _, maxF := range []int{1, 7, 100, 513, 2000, l.Total, 1 << 30} {
			bs := PlanBuckets(l, maxF, split)
			hi := l.Total
			for i, b := range bs {
				if b.Hi != hi || b.Lo >= b.Hi {
					t.Fatalf("max %d split %v: bucket %d = [%d, %d), want to end at %d", maxF, split, i, b.Lo, b.Hi, hi)
				}
				if !starts[b.Lo] {
					t.Fatalf("max %d: bucket %d starts at %d, not an entry boundary", maxF, i, b.Lo)
				}
				single := false
				for _, e := range l.Entries {
					if e.Offset == b.Lo && e.Offset+e.Size() == b.Hi {
						single = true
					}
					if split && e.Offset >= b.Lo && e.Offset < b.Hi && e.Expert != b.Expert {
						t.Fatalf("max %d: bucket %d [%d, %d) (expert=%v) holds %s (expert=%v)", maxF, i, b.Lo, b.Hi, b.Expert, e.Name, e.Expert)
					}
				}
				if b.Len() > maxF && !single {
					t.Fatalf("max %d: bucket %d has %d elements over several entries", maxF, i, b.Len())
				}
				hi = b.Lo
			}
			if hi != 0 {
				t.Fatalf("max %d: buckets stop at %d, not 0", maxF, hi)
			}
			if maxF >= l.Total && !split && len(bs) != 1 {
				t.Fatalf("max %d: %d buckets, want 1", maxF, len(bs))
			}
		}
	}
}

// ShardOf splits a bucket into n consecutive, disjoint shards of ⌈len/n⌉
// (the last ones shorter or empty) covering it.
func TestShardOf(t *testing.T) {
	for _, ln := range []int{1, 2, 3, 5, 7, 16, 97, 1000} {
		for n := 1; n <= 6; n++ {
			b := Bucket{Lo: 11, Hi: 11 + ln}
			s := (ln + n - 1) / n
			next := b.Lo
			for k := 0; k < n; k++ {
				lo, hi := ShardOf(b, n, k)
				if lo != next || hi < lo || hi-lo > s || (hi < b.Hi && hi-lo != s) {
					t.Fatalf("len %d n %d: shard %d = [%d, %d), want to start at %d with %d elements", ln, n, k, lo, hi, next, s)
				}
				next = hi
			}
			if next != b.Hi {
				t.Fatalf("len %d n %d: shards end at %d, bucket at %d", ln, n, next, b.Hi)
			}
		}
	}
}

func randomInput(cfg model.Config, b, tl int, seed uint64) model.Input {
	r := rand.New(rand.NewPCG(seed, 1))
	in := model.Input{B: b, T: tl}
	for i := 0; i < b*tl; i++ {
		in.Tokens = append(in.Tokens, int32(r.IntN(cfg.Vocab)))
		in.Targets = append(in.Targets, int32(r.IntN(cfg.Vocab)))
		in.Pos = append(in.Pos, int32(i%tl))
	}
	return in
}

// The backward hook reports contiguous, decreasing ranges tiling the buffer
// on entry boundaries, each already holding its final gradient, and the
// gradients are bitwise those of a backward without the hook.
func TestBackwardHook(t *testing.T) {
	cfg := tinyModelConfig()
	in := randomInput(cfg, 2, 9, 3)
	plain, err := model.New(cfg, 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.ForwardBackward(in); err != nil {
		t.Fatal(err)
	}
	hooked, _ := model.New(cfg, 5)
	starts := map[int]bool{}
	for _, e := range hooked.Layout.Entries {
		starts[e.Offset] = true
	}
	var snaps [][]float32
	var ranges [][2]int
	hooked.OnGradsReady = func(lo, hi int) {
		ranges = append(ranges, [2]int{lo, hi})
		snaps = append(snaps, append([]float32(nil), hooked.Grads[lo:hi]...))
	}
	for rep := 0; rep < 2; rep++ {
		ranges, snaps = nil, nil
		if _, err := hooked.ForwardBackward(in); err != nil {
			t.Fatal(err)
		}
		hi := hooked.Layout.Total
		for i, r := range ranges {
			if r[1] != hi || r[0] >= r[1] || !starts[r[0]] {
				t.Fatalf("call %d reported [%d, %d); want a non-empty range on entry boundaries ending at %d", i, r[0], r[1], hi)
			}
			for j, g := range snaps[i] {
				if math.Float32bits(g) != math.Float32bits(plain.Grads[r[0]+j]) {
					t.Fatalf("range [%d, %d) was reported final, but element %d changed afterwards", r[0], r[1], r[0]+j)
				}
			}
			hi = r[0]
		}
		if hi != 0 || len(ranges) != 2*cfg.Layers+2 {
			t.Fatalf("%d ranges down to %d; want %d down to 0", len(ranges), hi, 2*cfg.Layers+2)
		}
		for i, g := range hooked.Grads {
			if math.Float32bits(g) != math.Float32bits(plain.Grads[i]) {
				t.Fatalf("gradient %d differs with the hook installed: %v vs %v", i, g, plain.Grads[i])
			}
		}
	}
}

// onRanks runs f concurrently on n in-process ranks, each given its rank and
// world (whose transport is closed when f returns), and returns each rank's
// error.
func onRanks(n int, f func(r int, world *collective.Comm) error) []error {
	return testkit.OnRanks(n, func(r int, t collective.Transport) error { return f(r, collective.NewWorld(t)) })
}

// allRanksSub is world's sub-communicator of all its n ranks.
func allRanksSub(world *collective.Comm, n int) (*collective.Comm, error) {
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	return world.Sub(all)
}

// runReducer reduces per-rank gradient buffers over n in-process ranks
// (reporting ranges in hook order: per entry, last to first) and returns
// every rank's buffer afterwards plus its shard ranges.
// With splitExpert, expert tensors reduce over a second communicator of the
// same ranks (as EP > 1 would give them their own group). Under ZeRO-1 it
// also returns the rank's GlobalNorm.
func runReducer(t *testing.T, cfg Config, l model.Layout, grads [][]float32, splitExpert bool) ([][]float32, [][][2]int, []float64) {
	t.Helper()
	n := len(grads)
	out := make([][]float32, n)
	shards := make([][][2]int, n)
	norms := make([]float64, n)
	errs := onRanks(n, func(r int, world *collective.Comm) error {
		g := append([]float32(nil), grads[r]...)
		var expert *collective.Comm
		if splitExpert {
			var err error
			if expert, err = allRanksSub(world, n); err != nil {
				return err
			}
		}
		red, err := NewReducer(cfg, l, g, world, expert)
		if err != nil {
			return err
		}
		ctx := context.Background()
		if err := red.Begin(ctx); err != nil {
			return err
		}
		if h := red.Hook(); h != nil {
			for i := len(l.Entries) - 1; i >= 0; i-- {
				e := l.Entries[i]
				h(e.Offset, e.Offset+e.Size())
			}
		}
		if err := red.Finish(ctx); err != nil {
			return err
		}
		out[r], shards[r] = g, red.ShardRanges()
		if cfg.Zero1 {
			norms[r], err = red.GlobalNorm(ctx)
		}
		return err
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return out, shards, norms
}

// The reduced gradient is Σ_r g_r on every rank (ZeRO-1: on the rank's
// shards, which tile the buffer across ranks); the model has already scaled
// each rank's gradient for the global batch.
func TestReducerSum(t *testing.T) {
	l := model.NewLayout(tinyModelConfig())
	for _, n := range []int{1, 2, 3, 4} {
		for _, z := range []bool{false, true} {
			for _, ov := range []bool{false, true} {
				split := ov // both communicator layouts, without doubling the cases
				cfg := Config{BucketMB: 700 * 4 / 1e6, Zero1: z, Overlap: ov}
				rng := rand.New(rand.NewPCG(uint64(n), 9))
				grads := make([][]float32, n)
				for r := range grads {
					grads[r] = make([]float32, l.Total)
					for i := range grads[r] {
						grads[r][i] = float32(rng.NormFloat64())
					}
				}
				got, shards, norms := runReducer(t, cfg, l, grads, split)
				covered := make([]int, l.Total)
				var sumSq float64
				for r := range n {
					rs := shards[r]
					if !z {
						rs = [][2]int{{0, l.Total}}
					}
					for _, s := range rs {
						for i := s[0]; i < s[1]; i++ {
							covered[i]++
							var want float64
							for q := range n {
								want += float64(grads[q][i])
							}
							if r == 0 || z {
								sumSq += want * want
							}
							if d := math.Abs(float64(got[r][i]) - want); d > 1e-5*(1+math.Abs(want)) {
								t.Fatalf("n=%d zero1=%v overlap=%v rank %d element %d: %v, want %v", n, z, ov, r, i, got[r][i], want)
							}
						}
					}
				}
				for r, nm := range norms {
					if want := math.Sqrt(sumSq); z && math.Abs(nm-want) > 1e-5*want {
						t.Fatalf("n=%d split=%v rank %d: GlobalNorm %v, want %v", n, split, r, nm, want)
					}
				}
				for i, c := range covered {
					if want := map[bool]int{false: n, true: 1}[z]; c != want {
						t.Fatalf("n=%d zero1=%v: element %d held by %d ranks, want %d", n, z, i, c, want)
					}
				}
			}
		}
	}
}

// Misuse is an error, not a hang or a silent wrong answer.
func TestReducerMisuse(t *testing.T) {
	l := model.NewLayout(tinyModelConfig())
	ts := collective.NewInProcess(1)
	defer ts[0].Close()
	g := make([]float32, l.Total)
	if _, err := NewReducer(Config{BucketMB: 0}, l, g, collective.NewWorld(ts[0]), nil); err == nil || !strings.Contains(err.Error(), "bucket_mb") {
		t.Fatalf("bucket_mb = 0: got %v, want an error naming bucket_mb", err)
	}
	if _, err := NewReducer(DefaultConfig(), l, g[:5], collective.NewWorld(ts[0]), nil); err == nil {
		t.Fatal("short gradient buffer accepted")
	}
	red, err := NewReducer(DefaultConfig(), l, g, collective.NewWorld(ts[0]), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := red.Finish(ctx); err == nil {
		t.Fatal("Finish without Begin accepted")
	}
	if err := red.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	if err := red.Begin(ctx); err == nil {
		t.Fatal("Begin twice accepted")
	}
	red.GradsReady(0, 10) // not the top of the buffer
	if err := red.Finish(ctx); err == nil || !strings.Contains(err.Error(), "final") {
		t.Fatalf("out-of-order hook range: got %v, want an error", err)
	}
	if _, err := red.GlobalNorm(ctx); err == nil {
		t.Fatal("GlobalNorm without ZeRO-1 accepted")
	}
}

// GatherParams leaves every rank with the union of the ranks' shards, bucket
// sizes divisible by n or not, whatever the rest of each buffer held.
func TestGatherParams(t *testing.T) {
	l := model.NewLayout(tinyModelConfig())
	for _, n := range []int{1, 2, 3, 4} {
		for _, split := range []bool{false, true} {
			cfg := Config{BucketMB: 700 * 4 / 1e6, Zero1: true}
			out := make([][]float32, n)
			errs := onRanks(n, func(r int, world *collective.Comm) error {
				expert := world
				if split {
					var err error
					if expert, err = allRanksSub(world, n); err != nil {
						return err
					}
				}
				p := make([]float32, l.Total)
				red, err := NewReducer(cfg, l, p, world, expert)
				if err != nil {
					return err
				}
				for i := range p {
					p[i] = float32(-1 - r) // stale values outside the shards
				}
				for _, s := range red.ShardRanges() {
					for i := s[0]; i < s[1]; i++ {
						p[i] = float32(i)
					}
				}
				out[r] = p
				return red.GatherParams(testCtx(t), p)
			})
			for r := range n {
				if errs[r] != nil {
					t.Fatalf("n=%d split=%v rank %d: %v", n, split, r, errs[r])
				}
				for i, v := range out[r] {
					if v != float32(i) {
						t.Fatalf("n=%d split=%v rank %d: element %d = %v after the gather, want %d", n, split, r, i, v, i)
					}
				}
			}
		}
	}
	ts := collective.NewInProcess(1)
	defer ts[0].Close()
	g := make([]float32, l.Total)
	red, err := NewReducer(DefaultConfig(), l, g, collective.NewWorld(ts[0]), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := red.GatherParams(context.Background(), g); err == nil {
		t.Error("GatherParams without ZeRO-1 accepted")
	}
	red, err = NewReducer(Config{BucketMB: 1, Zero1: true}, l, g, collective.NewWorld(ts[0]), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := red.GatherParams(context.Background(), g[:len(g)-1]); err == nil {
		t.Error("short parameter buffer accepted")
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
