package cluster

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/optim"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/train"
)

// fakeState is a rank state of one flat tensor "model.w" of n·world
// elements, of which the rank holds [rank·n, (rank+1)·n), every element
// equal to the step; failAt makes the snapshot of that step unwritable.
type fakeState struct {
	rank, n, world int
	step           int
	failAt         int
	mu             sync.Mutex
	restored       []int64 // steps restored
}

func (f *fakeState) Snapshot(rank int) (*checkpoint.Snapshot, error) {
	snap := &checkpoint.Snapshot{Step: int64(f.step), Rank: rank}
	data := make([]float32, f.n)
	for i := range data {
		data[i] = float32(f.step)
	}
	length := int64(f.n)
	if f.step == f.failAt {
		length++ // the piece does not match its data: the write fails
	}
	snap.AddTensor("model.w", []int64{int64(f.n * f.world)}, checkpoint.FlatRange(int64(rank*f.n), length), data)
	snap.AddBlob(checkpoint.BlobOptimizer, []byte(fmt.Sprint(f.step)))
	return snap, nil
}

func (f *fakeState) Restore(c *checkpoint.Checkpoint, rank int) error {
	dst := make([]float32, f.n)
	if err := c.ReadRegion("model.w", checkpoint.FlatRange(int64(rank*f.n), int64(f.n)), dst); err != nil {
		return err
	}
	f.mu.Lock()
	f.restored = append(f.restored, c.Step())
	f.mu.Unlock()
	f.step = int(c.Step())
	return nil
}

// ckptRunner is a fake runner that checkpoints a fakeState through the rank
// checkpointer; states receives each rank's state.
func ckptRunner(failRank, failAt int, states *sync.Map) Runner {
	return func(ctx context.Context, spec StartSpec) error {
		st := &fakeState{rank: spec.Rank, n: 1000, world: spec.Plan.Mesh.World(), failAt: -1}
		if spec.Rank == failRank {
			st.failAt = failAt
		}
		states.Store(spec.Rank, st)
		rc, _, err := openRankCheckpoints(ctx, spec, st)
		if err != nil {
			return err
		}
		for st.step < spec.Job.Train.Steps {
			st.step++
			spec.Report(ProgressUpdate{Step: st.step, Loss: 1})
			if st.step == st.failAt {
				// Fail only once the previous checkpoint is published (the
				// other ranks write in the background, unsynchronised).
				waitLatest(ctx, spec.Checkpoint.Dir, int64(st.failAt-spec.Checkpoint.Every))
			}
			if err := rc.afterStep(ctx, st.step); err != nil {
				return err
			}
		}
		return rc.finish(ctx)
	}
}

// waitLatest waits (up to 10 s) until dir's LATEST names step.
func waitLatest(ctx context.Context, dir string, step int64) {
	s, err := checkpoint.NewStore(dir, 0)
	if err != nil {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if l, ok := s.Latest(); ok && l == step {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func withCheckpoint(cc CheckpointConfig) func(*CoordinatorConfig) {
	return func(c *CoordinatorConfig) { c.Checkpoint = cc }
}

// Three in-process ranks write shards every 2 steps of 5 (and the last);
// the coordinator publishes each complete step with its manifest (shards of
// every rank, mesh, config), keeps the newest 2, and a second job resumes
// every rank from the latest; a fresh job into the same directory, and a
// resume from an older step that would overwrite newer ones, are refused.
func TestCoordinatorCommitsCheckpoints(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ck")
	var states sync.Map
	r := runJobWith(t, 3, ckptRunner(-1, 0, &states), nil, withCheckpoint(CheckpointConfig{Dir: dir, Every: 2, Keep: 2}))
	if r.err != nil || r.res.Phase != PhaseSucceeded {
		t.Fatalf("result %+v, %v", r.res, r.err)
	}
	if r.res.Status.LastCheckpoint != 5 {
		t.Errorf("last checkpoint %d, want 5", r.res.Status.LastCheckpoint)
	}
	store, err := checkpoint.NewStore(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	steps, _ := store.Steps()
	if !slices.Equal(steps, []int64{4, 5}) {
		t.Fatalf("committed steps %v, want [4 5] (keep 2)", steps)
	}
	c, rep, err := store.Open("latest", checkpoint.OpenOptions{Verify: checkpoint.VerifyFull})
	if err != nil {
		t.Fatal(err)
	}
	m := c.Manifest
	if rep.Step != 5 || len(m.Shards) != 3 || m.Mesh["dp"] != 3 || len(m.Config) == 0 || m.Meta["job"] == "" {
		t.Fatalf("manifest %+v", m)
	}
	w, shape, err := c.ReadTensor("model.w")
	c.Close()
	if err != nil || len(shape) != 1 || shape[0] != 3000 {
		t.Fatalf("model.w %v: %v", shape, err)
	}
	for i, v := range w {
		if v != 5 {
			t.Fatalf("model.w[%d] = %v, want 5", i, v)
		}
	}

	if _, err := NewCoordinator(CoordinatorConfig{Listen: "127.0.0.1:0", Token: "x", Workers: 1, Log: zerolog.Nop(),
		Checkpoint: CheckpointConfig{Dir: dir}}); err == nil || !strings.Contains(err.Error(), "already holds checkpoints") {
		t.Errorf("fresh job into a used directory: %v", err)
	}
	if _, err := NewCoordinator(CoordinatorConfig{Listen: "127.0.0.1:0", Token: "x", Workers: 1, Log: zerolog.Nop(),
		Checkpoint: CheckpointConfig{Dir: dir, Resume: "4"}}); err == nil || !strings.Contains(err.Error(), "newer than step 4") {
		t.Errorf("resume from an older step: %v", err)
	}

	var again sync.Map
	r = runJobWith(t, 3, ckptRunner(-1, 0, &again), nil, withCheckpoint(CheckpointConfig{Dir: dir, Every: 2, Keep: 2, Resume: "latest"}))
	if r.err != nil || r.res.Phase != PhaseSucceeded || r.res.ResumedStep != 5 || r.res.ResumedFrom != store.StepDir(5) {
		t.Fatalf("resumed job: result %+v, %v", r.res, r.err)
	}
	for rank := 0; rank < 3; rank++ {
		v, _ := again.Load(rank)
		if st := v.(*fakeState); !slices.Equal(st.restored, []int64{5}) {
			t.Errorf("rank %d restored %v, want [5]", rank, st.restored)
		}
	}
}

// A rank whose shard write fails fails the job, naming the rank and step;
// the step is not published and the previous one stays the latest.
func TestCoordinatorFailsOnShardWriteError(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ck")
	var states sync.Map
	r := runJobWith(t, 2, ckptRunner(1, 4, &states), nil, withCheckpoint(CheckpointConfig{Dir: dir, Every: 2}))
	if r.res.Phase != PhaseFailed || !strings.Contains(r.res.Reason, "rank 1") ||
		!strings.Contains(r.res.Reason, "could not write its shard of checkpoint step 4") {
		t.Fatalf("result %s: %s", r.res.Phase, r.res.Reason)
	}
	store, _ := checkpoint.NewStore(dir, 0)
	steps, _ := store.Steps()
	if latest, _ := store.Latest(); !slices.Equal(steps, []int64{2}) || latest != 2 {
		t.Fatalf("committed %v latest %d, want [2] and 2", steps, latest)
	}
}

// dpState writes disjoint parts of the state from each replica and restores
// whole tensors by name, so a checkpoint saved by 2 ZeRO-1 ranks loads into
// 1 rank without ZeRO-1, 3 ZeRO-1 ranks with other shard ranges, and 2
// ranks without ZeRO-1, with every parameter and moment bitwise equal.
func TestDPStateReshard(t *testing.T) {
	cfg := tinyJob()
	rng := rand.New(rand.NewPCG(3, 4))
	ref, err := train.NewTrainer(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	total := ref.Layout().Total
	for i := range ref.Params() {
		ref.Params()[i] = rng.Float32()
	}
	o := ref.Optimizer()
	for i := range o.M {
		o.M[i], o.V[i] = rng.Float32(), rng.Float32()
	}
	// ZeRO-1-like shards: each rank owns two interleaved ranges.
	shardRanges := func(rank, n int) [][2]int {
		var out [][2]int
		for part := rank; part < 2*n; part += n {
			out = append(out, [2]int{total * part / (2 * n), total * (part + 1) / (2 * n)})
		}
		return out
	}
	newRank := func(t *testing.T, rank, n int, zero1 bool, from *train.Trainer) (*train.Trainer, []*optim.AdamW, sampling.Sampler) {
		tr, err := train.NewTrainer(cfg, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		if from != nil {
			copy(tr.Params(), from.Params())
			copy(tr.Optimizer().M, from.Optimizer().M)
			copy(tr.Optimizer().V, from.Optimizer().V)
		}
		var shards []*optim.AdamW
		if zero1 {
			if shards, err = tr.NewShardOptimizers(shardRanges(rank, n)); err != nil {
				t.Fatal(err)
			}
			for _, s := range shards {
				copy(s.M, tr.Optimizer().M[s.Lo:s.Hi])
				copy(s.V, tr.Optimizer().V[s.Lo:s.Hi])
			}
		}
		data, err := sampling.Open(cfg.Data, cfg.Train.Seed)
		if err != nil {
			t.Fatal(err)
		}
		smp, err := data.Sampler(rank, n)
		if err != nil {
			t.Fatal(err)
		}
		return tr, shards, smp
	}
	store, err := checkpoint.NewStore(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	store.NoSync = true
	var infos []checkpoint.ShardInfo
	for rank := 0; rank < 2; rank++ {
		tr, shards, smp := newRank(t, rank, 2, true, ref)
		snap, err := newDPState(tr, shards, smp, rank, 2).Snapshot(rank)
		if err != nil {
			t.Fatal(err)
		}
		info, err := snap.WriteShard(context.Background(), store, checkpoint.WriterOptions{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		infos = append(infos, info)
	}
	if infos[0].Size > infos[1].Size*2 || infos[1].Size > infos[0].Size*2 {
		t.Errorf("replicas wrote unbalanced shards: %d and %d bytes", infos[0].Size, infos[1].Size)
	}
	if err := store.Commit(checkpoint.NewManifest(0, infos)); err != nil {
		t.Fatal(err)
	}
	c, _, err := store.Open("latest", checkpoint.OpenOptions{Verify: checkpoint.VerifyFull})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		n     int
		zero1 bool
	}{{1, false}, {3, true}, {2, false}} {
		t.Run(fmt.Sprintf("dp=%d/zero1=%v", tc.n, tc.zero1), func(t *testing.T) {
			for rank := 0; rank < tc.n; rank++ {
				tr, shards, smp := newRank(t, rank, tc.n, tc.zero1, nil)
				if err := newDPState(tr, shards, smp, rank, tc.n).Restore(c, rank); err != nil {
					t.Fatal(err)
				}
				if !bitsEqual(tr.Params(), ref.Params()) {
					t.Fatalf("rank %d: parameters differ", rank)
				}
				if !tc.zero1 && (!bitsEqual(tr.Optimizer().M, o.M) || !bitsEqual(tr.Optimizer().V, o.V)) {
					t.Fatalf("rank %d: moments differ", rank)
				}
				for _, s := range shards {
					if !bitsEqual(s.M, o.M[s.Lo:s.Hi]) || !bitsEqual(s.V, o.V[s.Lo:s.Hi]) {
						t.Fatalf("rank %d: moments of shard [%d, %d) differ", rank, s.Lo, s.Hi)
					}
				}
			}
		})
	}
}

func bitsEqual(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}
