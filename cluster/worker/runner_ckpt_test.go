package worker

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/cluster"
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

func withCheckpoint(cc cluster.CheckpointConfig) func(*cluster.CoordinatorConfig) {
	return func(c *cluster.CoordinatorConfig) { c.Checkpoint = cc }
}

// Three in-process ranks write shards every 2 steps of 5 (and the last);
// the coordinator publishes each complete step with its manifest (shards of
// every rank, mesh, config), keeps the newest 2, and a second job resumes
// every rank from the latest; a fresh job into the same directory, and a
// resume from an older step that would overwrite newer ones, are refused.
func TestCoordinatorCommitsCheckpoints(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ck")
	var states sync.Map
	r := runJobWith(t, 3, ckptRunner(-1, 0, &states), nil, withCheckpoint(cluster.CheckpointConfig{Dir: dir, Every: 2, Keep: 2}))
	if r.Err != nil || r.Res.Phase != cluster.PhaseSucceeded {
		t.Fatalf("result %+v, %v", r.Res, r.Err)
	}
	if r.Res.Status.LastCheckpoint != 5 {
		t.Errorf("last checkpoint %d, want 5", r.Res.Status.LastCheckpoint)
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

	if _, err := cluster.NewCoordinator(cluster.CoordinatorConfig{Listen: "127.0.0.1:0", Token: "x", Workers: 1, Log: zerolog.Nop(),
		Checkpoint: cluster.CheckpointConfig{Dir: dir}}); err == nil || !strings.Contains(err.Error(), "already holds checkpoints") {
		t.Errorf("fresh job into a used directory: %v", err)
	}
	if _, err := cluster.NewCoordinator(cluster.CoordinatorConfig{Listen: "127.0.0.1:0", Token: "x", Workers: 1, Log: zerolog.Nop(),
		Checkpoint: cluster.CheckpointConfig{Dir: dir, Resume: "4"}}); err == nil || !strings.Contains(err.Error(), "newer than step 4") {
		t.Errorf("resume from an older step: %v", err)
	}

	var again sync.Map
	r = runJobWith(t, 3, ckptRunner(-1, 0, &again), nil, withCheckpoint(cluster.CheckpointConfig{Dir: dir, Every: 2, Keep: 2, Resume: "latest"}))
	if r.Err != nil || r.Res.Phase != cluster.PhaseSucceeded || r.Res.ResumedStep != 5 || r.Res.ResumedFrom != store.StepDir(5) {
		t.Fatalf("resumed job: result %+v, %v", r.Res, r.Err)
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
	r := runJobWith(t, 2, ckptRunner(1, 4, &states), nil, withCheckpoint(cluster.CheckpointConfig{Dir: dir, Every: 2}))
	if r.Res.Phase != cluster.PhaseFailed || !strings.Contains(r.Res.Reason, "rank 1") ||
		!strings.Contains(r.Res.Reason, "could not write its shard of checkpoint step 4") {
		t.Fatalf("result %s: %s", r.Res.Phase, r.Res.Reason)
	}
	store, _ := checkpoint.NewStore(dir, 0)
	steps, _ := store.Steps()
	if latest, _ := store.Latest(); !slices.Equal(steps, []int64{2}) || latest != 2 {
		t.Fatalf("committed %v latest %d, want [2] and 2", steps, latest)
	}
}
