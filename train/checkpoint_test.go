package train

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/sampling"
)

// ckptJob is a tiny job: a step takes about a millisecond. Cosine schedule
// with warmup and clipping, so the schedule position and every optimizer
// input matter for an exact resume.
func ckptJob(steps int) JobConfig {
	cfg := DefaultJobConfig()
	cfg.Model.DModel, cfg.Model.Heads, cfg.Model.Layers = 32, 2, 2
	cfg.Model.SeqLen, cfg.Model.Experts, cfg.Model.ExpertHidden = 16, 4, 48
	cfg.Data.SeqLen, cfg.Data.BatchSize = 16, 4
	cfg.Train.Steps = steps
	cfg.Optim.Schedule, cfg.Optim.WarmupSteps, cfg.Optim.ClipNorm = "cosine", 3, 1
	return cfg
}

func ckptDocs() []sampling.Document {
	var docs []sampling.Document
	for i := 0; i < 12; i++ {
		text := strings.Repeat(fmt.Sprintf("let v%d = %d * x + %d;\n", i, i*7, i), 1+i%5)
		docs = append(docs, sampling.Document{Name: fmt.Sprint(i), Tokens: sampling.ByteTokenize([]byte(text))})
	}
	return docs
}

func newSampler(t *testing.T, mode string, cfg JobConfig) sampling.Sampler {
	t.Helper()
	var s sampling.Sampler
	var err error
	switch mode {
	case "window":
		s, err = sampling.NewWindowSampler(ckptDocs(), cfg.Data.SeqLen, cfg.Data.BatchSize, cfg.Train.Seed, 0, 1)
	case "pack":
		s, err = sampling.NewPackSampler(ckptDocs(), cfg.Data.SeqLen, cfg.Data.BatchSize, cfg.Train.Seed, 0, 1)
	default:
		t.Fatalf("mode %q", mode)
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// otherTrainer is a trainer of cfg with other weights than saved (another
// seed), so that a restore which loaded any of saved's tensors would show,
// and a copy of its parameters.
func otherTrainer(t *testing.T, cfg JobConfig, saved *Trainer) (*Trainer, []float32) {
	t.Helper()
	other := cfg
	other.Train.Seed = cfg.Train.Seed + 1
	b := newTestTrainer(t, other)
	before := slices.Clone(b.Params())
	if slices.Equal(before, saved.Params()) {
		t.Fatal("the restoring trainer starts from the checkpoint's weights: the test could not see a restore")
	}
	return b, before
}

func newTestTrainer(t *testing.T, cfg JobConfig) *Trainer {
	t.Helper()
	tr, err := NewTrainer(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// trainSteps takes n steps and returns each step's loss and gradient norm.
func trainSteps(t *testing.T, tr *Trainer, s sampling.Sampler, n int) []float64 {
	t.Helper()
	var out []float64
	for i := 0; i < n; i++ {
		b, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		st, err := tr.ForwardBackward(b)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, st.Loss, tr.OptimizerStep())
		if err := tr.UpdateRouterBias(st.RoutedLoad); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func newTestStore(t *testing.T) *checkpoint.Store {
	t.Helper()
	s, err := checkpoint.NewStore(filepath.Join(t.TempDir(), "ckpt"), 0)
	if err != nil {
		t.Fatal(err)
	}
	s.NoSync = true
	return s
}

// mustOpenRef is OpenRef(store, ref), closed when the test ends; an error
// fails t.
func mustOpenRef(t *testing.T, store *checkpoint.Store, ref string) *checkpoint.Checkpoint {
	t.Helper()
	c, _, err := OpenRef(store, ref)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// bitsEqual compares float64s by bit pattern (so -0 ≠ 0 and NaN = NaN).
func bitsEqual(a, b []float64) bool {
	return slices.EqualFunc(a, b, func(x, y float64) bool { return math.Float64bits(x) == math.Float64bits(y) })
}

func f32BitsEqual(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}

// sameState fails unless a and b hold bitwise-identical step, parameters
// and moments.
func sameState(t *testing.T, what string, a, b *Trainer) {
	t.Helper()
	if a.Step() != b.Step() {
		t.Fatalf("%s: step %d vs %d", what, a.Step(), b.Step())
	}
	if !f32BitsEqual(a.Params(), b.Params()) {
		t.Fatalf("%s: parameters differ", what)
	}
	if !f32BitsEqual(a.Optimizer().M, b.Optimizer().M) || !f32BitsEqual(a.Optimizer().V, b.Optimizer().V) {
		t.Fatalf("%s: AdamW moments differ", what)
	}
}

// TestResumeBitwiseExact: 20 steps uninterrupted vs 10 steps, an
// asynchronous checkpoint, a fresh trainer and sampler restored from it and
// 10 more steps: identical losses, gradient norms, parameters and moments,
// bit for bit. The saving trainer keeps training while the checkpoint is
// written, and its own run must be unaffected as well.
func TestResumeBitwiseExact(t *testing.T) {
	for _, mode := range []string{"window", "pack", "window+bias"} {
		t.Run(mode, func(t *testing.T) {
			cfg := ckptJob(20)
			if mode == "window+bias" {
				// Aux-loss-free balancing: the routing biases are state too.
				cfg.Model.BiasUpdateRate = 0.01
				mode = "window"
			}
			ref := newTestTrainer(t, cfg)
			want := trainSteps(t, ref, newSampler(t, mode, cfg), 20)

			store := newTestStore(t)
			a := newTestTrainer(t, cfg)
			sa := newSampler(t, mode, cfg)
			got := trainSteps(t, a, sa, 10)
			cp := NewCheckpointer(store, checkpoint.WriterOptions{ChunkBytes: 4096}, zerolog.Nop())
			st := sa.State()
			if err := cp.Save(t.Context(), a, &st); err != nil {
				t.Fatal(err)
			}
			rest := trainSteps(t, a, sa, 10) // runs while the checkpoint is written
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			if err := cp.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			if !bitsEqual(append(slices.Clone(got), rest...), want) {
				t.Fatal("checkpointing changed the saving run")
			}
			sameState(t, "saving run vs uninterrupted", a, ref)

			b := newTestTrainer(t, cfg)
			// A different seed would give different initial weights: the
			// restore must overwrite all of them.
			b.Params()[0] += 1
			res, err := b.ResumeCheckpoint(store, "latest", 0)
			if err != nil {
				t.Fatal(err)
			}
			if res.Step != 10 || b.Step() != 10 || len(res.Report.Skipped) != 0 {
				t.Fatalf("resumed step %d (trainer %d), report %v", res.Step, b.Step(), res.Report)
			}
			sb := newSampler(t, mode, cfg)
			if err := res.RestoreSampler(sb); err != nil {
				t.Fatal(err)
			}
			got = append(got, trainSteps(t, b, sb, 10)...)
			if !bitsEqual(got, want) {
				for i := range want {
					if i < len(got) && math.Float64bits(got[i]) != math.Float64bits(want[i]) {
						t.Fatalf("resumed run differs first at step %d (%s): %v vs %v", i/2+1, []string{"loss", "grad norm"}[i%2], got[i], want[i])
					}
				}
				t.Fatalf("resumed run has %d values, want %d", len(got), len(want))
			}
			sameState(t, "resumed vs uninterrupted", b, ref)
		})
	}
}

// TestReferenceLayoutRoundTrip saves a fresh reference-size model (with
// non-trivial moments and step) and restores it into a trainer built from
// another seed; the checkpoint's tensor names are the layout's.
func TestReferenceLayoutRoundTrip(t *testing.T) {
	cfg := DefaultJobConfig()
	a := newTestTrainer(t, cfg)
	for i := range a.Optimizer().M {
		a.Optimizer().M[i] = float32(i%1013) * 1e-4
		a.Optimizer().V[i] = float32(i%997) * 1e-7
	}
	a.SetStep(7)
	store := newTestStore(t)
	m, err := a.SaveCheckpoint(t.Context(), store, nil, checkpoint.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Step != 7 || len(m.Shards) != 1 || m.Mesh["dp"] != 1 || len(m.Config) == 0 {
		t.Fatalf("manifest step %d, %d shards, mesh %v, config %d bytes", m.Step, len(m.Shards), m.Mesh, len(m.Config))
	}
	cfg.Train.Seed = 99
	b := newTestTrainer(t, cfg)
	if f32BitsEqual(a.Params(), b.Params()) {
		t.Fatal("different seeds gave identical weights")
	}
	res, err := b.ResumeCheckpoint(store, "7", 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sampler != nil {
		t.Fatalf("sampler state %v restored from a checkpoint saved without one", res.Sampler)
	}
	if err := res.RestoreSampler(nil); !errors.Is(err, errNoSampler) {
		t.Fatalf("RestoreSampler without state: %v", err)
	}
	sameState(t, "reference round trip", a, b)

	c := mustOpenRef(t, store, "latest")
	var want []string
	for _, e := range a.Layout().Entries {
		want = append(want, checkpoint.ModelPrefix+e.Name, checkpoint.MomentMPrefix+e.Name, checkpoint.MomentVPrefix+e.Name)
	}
	slices.Sort(want)
	if got := c.TensorNames(); !slices.Equal(got, want) {
		t.Fatalf("tensor names %v, want %v", got, want)
	}
	if s, _ := c.Shape("model.layers.3.w1"); !slices.Equal(s, []int64{8, 512, 256}) {
		t.Fatalf("model.layers.3.w1 shape %v", s)
	}
}

// TestShardedLayoutRestoresSerial writes one checkpoint as two ZeRO-1-style
// ranks (each the whole parameters, a replica, and the moments of half the
// flat buffer, split inside an entry) through SnapshotLayout, and restores
// it into a serial trainer and into the halves again.
func TestShardedLayoutRestoresSerial(t *testing.T) {
	cfg := ckptJob(6)
	a := newTestTrainer(t, cfg)
	trainSteps(t, a, newSampler(t, "window", cfg), 3)
	l := a.Layout()
	split := l.Entries[3].Offset + 5 // inside layers.0.qkv
	ranges := [][2]int{{0, split}, {split, l.Total}}
	layouts := make([]ShardLayout, 2)
	store := newTestStore(t)
	var snaps []*checkpoint.Snapshot
	for r, rg := range ranges {
		sl := SerialShardLayout(l, rg[0], rg[1])
		// a's moments cover the whole buffer; a real ZeRO-1 rank holds only
		// [lo, hi), at offsets relative to lo.
		shifted := sl
		shifted.Moments = slices.Clone(sl.Moments)
		for i := range shifted.Moments {
			shifted.Moments[i].Offset += rg[0]
		}
		layouts[r] = shifted
		st := sampling.State{Kind: "window", Seed: cfg.Train.Seed, Step: 3, DPSize: 2}
		snap, err := a.SnapshotLayout(r, shifted, &st)
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, snap)
	}
	commitSnapshots(t, store, cfg, snaps, 1000, map[string]int{"dp": 2, "tp": 1, "ep": 1, "sp": 1})
	b := newTestTrainer(t, cfg)
	res, err := b.ResumeCheckpoint(store, "latest", 5) // rank 5 is absent: blobs of rank 0
	if err != nil {
		t.Fatal(err)
	}
	if res.Sampler == nil || res.Sampler.DPSize != 2 {
		t.Fatalf("sampler state %v", res.Sampler)
	}
	sameState(t, "two ZeRO-1 ranks into serial", a, b)

	// Back into one half: only that half's moments are loaded.
	c := mustOpenRef(t, store, "3")
	h := newTestTrainer(t, cfg)
	if _, err := h.RestoreLayout(c, 1, layouts[1]); err != nil {
		t.Fatal(err)
	}
	lo := ranges[1][0]
	if !f32BitsEqual(h.Optimizer().M[lo:], a.Optimizer().M[lo:]) || !f32BitsEqual(h.Optimizer().V[lo:], a.Optimizer().V[lo:]) {
		t.Fatal("second half's moments differ")
	}
	for i, x := range h.Optimizer().M[:lo] {
		if x != 0 {
			t.Fatalf("moment %d outside the restored half changed to %v", i, x)
		}
	}
}

// TestCorruptShardFallsBack: a flipped bit, a truncation and a deletion of
// the newest checkpoint's shard are each reported naming the shard file;
// "latest" then resumes from the previous intact checkpoint and says so.
func TestCorruptShardFallsBack(t *testing.T) {
	cfg := ckptJob(10)
	for _, damage := range []string{"flip", "truncate", "delete"} {
		t.Run(damage, func(t *testing.T) {
			store := newTestStore(t)
			a := newTestTrainer(t, cfg)
			s := newSampler(t, "window", cfg)
			var saved [2]*Trainer
			for i, step := range []int{2, 4} {
				trainSteps(t, a, s, step-a.Step())
				st := s.State()
				if _, err := a.SaveCheckpoint(t.Context(), store, &st, checkpoint.WriterOptions{ChunkBytes: 2048}); err != nil {
					t.Fatal(err)
				}
				saved[i] = newTestTrainer(t, cfg)
				if _, err := saved[i].ResumeCheckpoint(store, fmt.Sprint(step), 0); err != nil {
					t.Fatal(err)
				}
			}
			shard := filepath.Join(store.StepDir(4), checkpoint.ShardName(0))
			fi, err := os.Stat(shard)
			if err != nil {
				t.Fatal(err)
			}
			switch damage {
			case "flip":
				b, err := os.ReadFile(shard)
				if err != nil {
					t.Fatal(err)
				}
				b[len(b)/2] ^= 0x10
				err = os.WriteFile(shard, b, 0o644)
			case "truncate":
				err = os.Truncate(shard, fi.Size()-100)
			case "delete":
				err = os.Remove(shard)
			}
			if err != nil {
				t.Fatal(err)
			}
			b, before := otherTrainer(t, cfg, a)
			_, err = b.ResumeCheckpoint(store, "4", 0)
			if err == nil || !strings.Contains(err.Error(), checkpoint.ShardName(0)) || !strings.Contains(err.Error(), checkpoint.StepName(4)) {
				t.Fatalf("explicit resume of the damaged step: error %v, want one naming %s", err, shard)
			}
			t.Logf("%s: %v", damage, err)
			if !f32BitsEqual(b.Params(), before) || b.Step() != 0 {
				t.Fatal("a failed resume changed the trainer")
			}
			res, err := b.ResumeCheckpoint(store, "latest", 0)
			if err != nil {
				t.Fatal(err)
			}
			if res.Step != 2 || len(res.Report.Skipped) != 1 || res.Report.Skipped[0].Step != 4 ||
				!strings.Contains(res.Report.Skipped[0].Reason.Error(), checkpoint.ShardName(0)) {
				t.Fatalf("latest resumed step %d, report %v", res.Step, res.Report)
			}
			if !strings.Contains(res.Report.String(), "skipped step 4") {
				t.Fatalf("report %q does not say it skipped step 4", res.Report.String())
			}
			sameState(t, "fallback", b, saved[0])
		})
	}
}

// TestShapeMismatch: restoring into a model of another shape fails with an
// error naming the tensor and both shapes, and leaves the trainer unchanged.
func TestShapeMismatch(t *testing.T) {
	cfg := ckptJob(4)
	store := newTestStore(t)
	a := newTestTrainer(t, cfg)
	if _, err := a.SaveCheckpoint(t.Context(), store, nil, checkpoint.WriterOptions{}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		change func(*JobConfig)
		want   string
	}{
		{"experts", func(c *JobConfig) { c.Model.Experts = 8 },
			"tensor model.layers.0.router: checkpoint shape [4 32], config shape [8 32]"},
		{"more layers", func(c *JobConfig) { c.Model.Layers = 3 },
			"tensor model.layers.2.ln1 is missing (config shape [32])"},
		{"fewer layers", func(c *JobConfig) { c.Model.Layers = 1 },
			"tensor model.layers.1.ln1 [32] is not in the configured model"},
		{"vocab", func(c *JobConfig) { c.Model.Vocab = 300 },
			"tensor model.tok_emb: checkpoint shape [256 32], config shape [300 32]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			tc.change(&c)
			b := newTestTrainer(t, c)
			before := slices.Clone(b.Params())
			_, err := b.ResumeCheckpoint(store, "latest", 0)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "does not fit the model config") {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if !f32BitsEqual(b.Params(), before) {
				t.Fatal("a failed restore changed the parameters")
			}
		})
	}
	// Weights-only checking ignores the moments but not the model tensors.
	c := mustOpenRef(t, store, "latest")
	if err := CheckModelShapes(c, a.Layout(), true); err != nil {
		t.Fatal(err)
	}
	other := cfg
	other.Model.ExpertHidden = 64
	err := CheckModelShapes(c, newTestTrainer(t, other).Layout(), true)
	if err == nil || !strings.Contains(err.Error(), "tensor model.layers.0.w1: checkpoint shape [4 48 32], config shape [4 64 32] (and 3 more mismatches)") {
		t.Fatalf("weights-only check of another expert width: %v", err)
	}
}

// TestOpenRef resolves every reference form and rejects bad ones.
func TestOpenRef(t *testing.T) {
	cfg := ckptJob(4)
	store := newTestStore(t)
	a := newTestTrainer(t, cfg)
	for _, step := range []int{1, 3} {
		a.SetStep(step)
		if _, err := a.SaveCheckpoint(t.Context(), store, nil, checkpoint.WriterOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	dir := store.Dir()
	for _, tc := range []struct {
		store *checkpoint.Store
		ref   string
		step  int64
	}{
		{store, "latest", 3}, {store, "", 3}, {store, "1", 1},
		{nil, dir, 3}, {nil, dir + ":latest", 3}, {nil, dir + ":1", 1},
		{nil, store.StepDir(1), 1}, {store, store.StepDir(1), 1},
	} {
		c, rep, err := OpenRef(tc.store, tc.ref)
		if err != nil {
			t.Fatalf("OpenRef(%q): %v", tc.ref, err)
		}
		c.Close()
		if c.Step() != tc.step || rep.Step != tc.step {
			t.Fatalf("OpenRef(%q): step %d (report %d), want %d", tc.ref, c.Step(), rep.Step, tc.step)
		}
	}
	for _, tc := range []struct {
		store *checkpoint.Store
		ref   string
		want  string
	}{
		{nil, "latest", "no checkpoint directory"},
		{store, "2", checkpoint.StepName(2)},
		{nil, dir + ":newest", `neither "latest" nor a step number`},
		{nil, filepath.Join(dir, "nope"), "no such file"},
		{nil, filepath.Join(dir, "nope") + ":latest", "no such file"},
		{nil, filepath.Join(dir, "LATEST"), "not a directory"},
		{nil, t.TempDir(), "no checkpoint in"},
	} {
		c, _, err := OpenRef(tc.store, tc.ref)
		if err == nil {
			c.Close()
			t.Fatalf("OpenRef(%q) succeeded", tc.ref)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("OpenRef(%q): %v, want it to contain %q", tc.ref, err, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "nope")); !os.IsNotExist(err) {
		t.Fatalf("OpenRef created a directory for a missing path: %v", err)
	}
}

// TestCheckpointerReportsFailure: a save that cannot be written surfaces on
// the next Wait, once.
func TestCheckpointerReportsFailure(t *testing.T) {
	cfg := ckptJob(4)
	store := newTestStore(t)
	a := newTestTrainer(t, cfg)
	a.SetStep(2)
	if _, err := a.SaveCheckpoint(t.Context(), store, nil, checkpoint.WriterOptions{}); err != nil {
		t.Fatal(err)
	}
	cp := NewCheckpointer(store, checkpoint.WriterOptions{}, zerolog.Nop())
	if err := cp.Save(t.Context(), a, nil); err != nil { // step 2 is already committed
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := cp.Wait(ctx); err == nil || !strings.Contains(err.Error(), "already committed") {
		t.Fatalf("Wait: %v, want the save's failure", err)
	}
	if err := cp.Wait(ctx); err != nil {
		t.Fatalf("second Wait: %v, want nil (a failure is reported once)", err)
	}
}

// TestRunCheckpointHelpers drives the standalone loop's helpers as Run
// would: a run saving every 4 steps (keeping 2) dies after step 10; a second
// run resumes "latest" (step 8) and finishes: its losses and final state
// match an uninterrupted run bit for bit.
func TestRunCheckpointHelpers(t *testing.T) {
	cfg := ckptJob(14)
	ref := newTestTrainer(t, cfg)
	want := trainSteps(t, ref, newSampler(t, "pack", cfg), cfg.Train.Steps)
	dir := filepath.Join(t.TempDir(), "ckpt")
	loop := func(o CheckpointOptions, stopAfter int) (*Trainer, []float64) {
		tr := newTestTrainer(t, cfg)
		s := newSampler(t, "pack", cfg)
		rc, err := startCheckpoints(o, tr, s, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		var got []float64
		for tr.Step() < min(cfg.Train.Steps, stopAfter) {
			got = append(got, trainSteps(t, tr, s, 1)...)
			if err := rc.afterStep(t.Context(), tr, s, tr.Step() == cfg.Train.Steps); err != nil {
				t.Fatal(err)
			}
		}
		if err := rc.finish(t.Context(), time.Minute); err != nil {
			t.Fatal(err)
		}
		return tr, got
	}
	o := CheckpointOptions{Dir: dir, Every: 4, Keep: 2, Writer: checkpoint.WriterOptions{NoSync: true}}
	_, first := loop(o, 10)
	store, err := checkpoint.NewStore(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if steps, err := store.Steps(); err != nil || !slices.Equal(steps, []int64{4, 8}) {
		t.Fatalf("committed steps %v (%v), want [4 8]", steps, err)
	}
	o.Resume = "latest"
	tr, second := loop(o, math.MaxInt)
	got := append(first[:16], second...) // steps 1-8, then 9-14 resumed
	if !bitsEqual(got, want) {
		t.Fatalf("resumed losses differ:\n%v\n%v", got, want)
	}
	sameState(t, "loop resume", tr, ref)
	if steps, err := store.Steps(); err != nil || !slices.Equal(steps, []int64{12, 14}) {
		t.Fatalf("committed steps %v (%v), want [12 14] (keep 2, final step saved)", steps, err)
	}
	if _, err := startCheckpoints(CheckpointOptions{Every: -1}, tr, nil, zerolog.Nop()); err == nil {
		t.Fatal("negative Every accepted")
	}
	if _, err := startCheckpoints(CheckpointOptions{Resume: "latest"}, tr, nil, zerolog.Nop()); err == nil ||
		!strings.Contains(err.Error(), "no checkpoint directory") {
		t.Fatalf("resume latest without a directory: %v", err)
	}
}

// BenchmarkAsyncCheckpointOverhead measures what asynchronous checkpointing
// every 50 steps adds to the mean step time of the reference model. Each
// iteration runs two interleaved 50-step blocks on one trainer: one that
// starts with Checkpointer.Save (snapshot on the step path; compression,
// writing, fsync and commit in the background, waited for at the block's
// end) and one without (the anchor). Interleaving cancels slow drift in
// machine load. Reported: mean ns per step of each and overhead_% (saving
// vs anchor).
//
//	go test ./train -run '^$' -bench AsyncCheckpointOverhead -benchtime 1x
func BenchmarkAsyncCheckpointOverhead(b *testing.B) {
	const block = 50
	_, s, tr, step := benchTrainer(b)
	store, err := checkpoint.NewStore(b.TempDir(), 2)
	if err != nil {
		b.Fatal(err)
	}
	cp := NewCheckpointer(store, checkpoint.WriterOptions{}, zerolog.Nop())
	var withSave, anchor time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		st := s.State()
		if err := cp.Save(b.Context(), tr, &st); err != nil {
			b.Fatal(err)
		}
		for j := 0; j < block; j++ {
			step()
		}
		if err := cp.Wait(b.Context()); err != nil {
			b.Fatal(err)
		}
		withSave += time.Since(t0)
		t0 = time.Now()
		for j := 0; j < block; j++ {
			step()
		}
		anchor += time.Since(t0)
	}
	n := float64(b.N * block)
	b.ReportMetric(float64(withSave.Nanoseconds())/n, "ns/step_saving")
	b.ReportMetric(float64(anchor.Nanoseconds())/n, "ns/step_anchor")
	b.ReportMetric(100*(float64(withSave)/float64(anchor)-1), "overhead_%")
}

// TestRangeShardLayoutWithShardOptimizers: two ranks each save a disjoint
// set of flat ranges of the parameters and of their own shard optimizers'
// moments (ZeRO-1, moments indexed by LocalPiece.Opt); a serial trainer
// restores the whole state bitwise, shard optimizers of other ranges
// restore theirs, and an Opt index without an optimizer is an error.
func TestRangeShardLayoutWithShardOptimizers(t *testing.T) {
	cfg := ckptJob(6)
	a := newTestTrainer(t, cfg)
	trainSteps(t, a, newSampler(t, "window", cfg), 3)
	l := a.Layout()
	third := l.Total / 3
	// Rank 0 owns [0, t) and [2t, total); rank 1 owns [t, 2t).
	owned := [][][2]int{{{0, third}, {2 * third, l.Total}}, {{third, 2 * third}}}
	store := newTestStore(t)
	var snaps []*checkpoint.Snapshot
	for r, ranges := range owned {
		opts, err := a.NewShardOptimizers(ranges)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range opts {
			copy(o.M, a.Optimizer().M[o.Lo:o.Hi])
			copy(o.V, a.Optimizer().V[o.Lo:o.Hi])
		}
		st := sampling.State{Kind: "window", Seed: cfg.Train.Seed, Step: 3, DPSize: 2}
		snap, err := a.SnapshotWith(r, RangeShardLayout(l, ranges, true), opts, &st)
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, snap)
	}
	commitSnapshots(t, store, cfg, snaps, 1000, map[string]int{"dp": 2, "tp": 1, "ep": 1, "sp": 1})
	b := newTestTrainer(t, cfg)
	if _, err := b.ResumeCheckpoint(store, "latest", 0); err != nil {
		t.Fatal(err)
	}
	sameState(t, "ranges of two ranks into serial", a, b)

	c := mustOpenRef(t, store, "3")
	h := newTestTrainer(t, cfg)
	other := [][2]int{{5, third + 7}, {l.Total - 11, l.Total}}
	opts, err := h.NewShardOptimizers(other)
	if err != nil {
		t.Fatal(err)
	}
	whole := SerialShardLayout(l, 0, 0)
	sl := ShardLayout{Params: whole.Params, Moments: RangeShardLayout(l, other, true).Moments}
	if _, err := h.RestoreWith(c, 1, sl, opts); err != nil {
		t.Fatal(err)
	}
	if !f32BitsEqual(h.Params(), a.Params()) || h.Step() != 3 {
		t.Fatal("parameters or step differ")
	}
	for _, o := range opts {
		if !f32BitsEqual(o.M, a.Optimizer().M[o.Lo:o.Hi]) || !f32BitsEqual(o.V, a.Optimizer().V[o.Lo:o.Hi]) {
			t.Fatalf("moments of shard [%d, %d) differ", o.Lo, o.Hi)
		}
	}
	bad := RangeShardLayout(l, [][2]int{{0, 10}}, true)
	bad.Moments[0].Opt = 3
	if _, err := a.SnapshotWith(0, bad, opts, nil); err == nil || !strings.Contains(err.Error(), "optimizer 3 does not exist") {
		t.Fatalf("snapshot with a missing optimizer: %v", err)
	}
}

// commitSnapshots writes every snapshot as a shard of store (chunks of
// chunkBytes; 0 = the default) and publishes them as one checkpoint of cfg
// written by mesh.
func commitSnapshots(t *testing.T, store *checkpoint.Store, cfg JobConfig, snaps []*checkpoint.Snapshot, chunkBytes int, mesh map[string]int) {
	t.Helper()
	infos := make([]checkpoint.ShardInfo, len(snaps))
	for i, snap := range snaps {
		info, err := snap.WriteShard(t.Context(), store, checkpoint.WriterOptions{ChunkBytes: chunkBytes})
		if err != nil {
			t.Fatal(err)
		}
		infos[i] = info
	}
	m, err := JobManifest(cfg, snaps[0].Step, infos, mesh)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Commit(m); err != nil {
		t.Fatal(err)
	}
}

// TestSamplerBlobRestore: a checkpoint without a sampler blob restores with
// no sampler position; one whose sampler blob is not a sampler state, or
// cannot be read (a byte of it damaged on disk), is an error naming the
// blob and the rank, and leaves the parameters alone.
func TestSamplerBlobRestore(t *testing.T) {
	cfg := ckptJob(4)
	a := newTestTrainer(t, cfg)
	noise := make([]byte, 256) // incompressible: stored raw, so it can be found in the file
	for i := range noise {
		noise[i] = byte(i*131 + i*i*7 + 13)
	}
	for _, tc := range []struct {
		name   string
		blob   []byte // nil: no sampler blob
		damage bool   // flip a bit of the blob in the shard file
		want   string
	}{
		{"none", nil, false, ""},
		{"not json", []byte("not a sampler state"), false, `blob "sampler" of rank 0`},
		{"unreadable", noise, true, `"sampler"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newTestStore(t)
			snap, err := a.Snapshot(0, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.blob != nil {
				snap.AddBlob(checkpoint.BlobSampler, tc.blob)
			}
			if _, err := commitSnapshot(t.Context(), store, cfg, snap, checkpoint.WriterOptions{}); err != nil {
				t.Fatal(err)
			}
			if tc.damage {
				damageBytes(t, store.StepDir(snap.Step), tc.blob)
			}
			b, before := otherTrainer(t, cfg, a)
			// Opened as a rank of a job opens its resume point (the quick
			// check: the coordinator verified every byte before the job).
			c, err := checkpoint.OpenDir(store.StepDir(snap.Step), checkpoint.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			st, err := b.RestoreFrom(c, 0)
			if tc.want == "" {
				if err != nil || st != nil {
					t.Fatalf("restore without a sampler blob: state %v, %v", st, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("restore of a bad sampler blob: %v, want it to name %s", err, tc.want)
			}
			if !f32BitsEqual(b.Params(), before) {
				t.Fatal("a failed restore changed the parameters")
			}
		})
	}
}

// damageBytes flips one bit inside the first occurrence of what in a file
// of dir, failing the test if no file holds it.
func damageBytes(t *testing.T, dir string, what []byte) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil || e.IsDir() {
			continue
		}
		if i := bytes.Index(b, what); i >= 0 {
			b[i+len(what)/2] ^= 0x10
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no file of %s holds the %d bytes to damage", dir, len(what))
}
