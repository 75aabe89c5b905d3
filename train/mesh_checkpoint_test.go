package train

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
)

// stepMesh runs one goroutine per rank of mesh: each rank is built by
// NewMeshRank, then prepare (may be nil) runs, then one step per global
// batch; it returns each rank's losses and the ranks.
func stepMesh(t testing.TB, cfg JobConfig, mesh parallel.Mesh, global []sampling.Batch, prepare func(*MeshRank) error) ([][]float64, []*MeshRank) {
	t.Helper()
	n := mesh.World()
	ts := collective.NewInProcess(n)
	defer func() {
		for _, tr := range ts {
			tr.Close()
		}
	}()
	ranks, losses, errs := make([]*MeshRank, n), make([][]float64, n), make([]error, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for r := 0; r < n; r++ {
		wg.Go(func() {
			world := collective.NewWorldConfig(ts[r], collective.Config{Timeout: 30 * time.Second})
			mr, err := NewMeshRank(cfg, mesh, r, world, zerolog.Nop())
			if err == nil && prepare != nil {
				err = prepare(mr)
			}
			if err != nil {
				errs[r] = err
				return
			}
			ranks[r] = mr
			d := mesh.Coord(r).DP
			for _, g := range global {
				per := g.B / mesh.DP
				st, err := mr.Step(ctx, rowsOf(g, d*per, (d+1)*per))
				if err != nil {
					errs[r] = err
					return
				}
				losses[r] = append(losses[r], st.Loss)
			}
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("%v rank %d: %v", mesh, r, err)
		}
	}
	return losses, ranks
}

func meshConfig(cfg JobConfig, m parallel.Mesh) JobConfig {
	cfg.Mesh = parallel.Config{DP: m.DP, TP: m.TP, EP: m.EP, SP: m.SP, SPAlgorithm: "tokenring"}
	return cfg
}

// saveMesh writes every rank's snapshot as one committed checkpoint.
func saveMesh(t *testing.T, cfg JobConfig, mesh parallel.Mesh, ranks []*MeshRank, dir string) {
	t.Helper()
	store, err := checkpoint.NewStore(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	snaps := make([]*checkpoint.Snapshot, len(ranks))
	for r, mr := range ranks {
		if snaps[r], err = mr.Snapshot(nil); err != nil {
			t.Fatal(err)
		}
	}
	commitSnapshots(t, store, cfg, snaps, 0, map[string]int{"dp": mesh.DP, "sp": mesh.SP, "tp": mesh.TP, "ep": mesh.EP})
}

// Resume under another mesh (docs/checkpoint-format.md#resume): a checkpoint saved under DP=2 × EP=2 (two ranks, each
// holding half the experts) loads under DP=1, DP=4, EP=4 (with DP=4) and TP=2
// (alone and with DP=2 × EP=2), with and without ZeRO-1 on either side, and
// the next two steps' losses equal those of the run that never changed
// layout within 1e-5 (and that run's equal the serial trainer's).
func TestMeshCheckpointReshard(t *testing.T) {
	cfg := meshJob()
	cfg.Model.BiasUpdateRate = 1e-3
	cfg.Train.Steps = 3
	rng := rand.New(rand.NewPCG(21, 22))
	var global []sampling.Batch
	for range 3 {
		global = append(global, randomBatch(rng, 4, 16, cfg.Model.Vocab))
	}
	serial := runSerial(t, cfg, global)
	src := parallel.Mesh{DP: 2, SP: 1, TP: 1, EP: 2}
	for _, srcZero := range []bool{false, true} {
		scfg := meshConfig(cfg, src)
		scfg.DP.Zero1 = srcZero
		dir := t.TempDir()
		_, ranks := stepMesh(t, scfg, src, global[:1], nil)
		saveMesh(t, scfg, src, ranks, dir)
		uninterrupted, _ := stepMesh(t, scfg, src, global, nil)
		want := uninterrupted[0][1:]
		for i, w := range want {
			if rel := math.Abs(w-serial.losses[i+1]) / serial.losses[i+1]; rel > 1e-5 {
				t.Fatalf("uninterrupted %v run: step %d loss %.9g, serial %.9g", src, i+2, w, serial.losses[i+1])
			}
		}
		for _, dst := range []parallel.Mesh{src, {DP: 1, SP: 1, TP: 1, EP: 1}, {DP: 4, SP: 1, TP: 1, EP: 1},
			{DP: 4, SP: 1, TP: 1, EP: 4}, {DP: 1, SP: 1, TP: 2, EP: 1}, {DP: 2, SP: 1, TP: 2, EP: 2}, {DP: 2, SP: 2, TP: 1, EP: 4}} {
			for _, dstZero := range []bool{false, true} {
				t.Run(fmt.Sprintf("from_zero1=%v/to_%v/zero1=%v", srcZero, dst, dstZero), func(t *testing.T) {
					dcfg := meshConfig(cfg, dst)
					dcfg.DP.Zero1 = dstZero
					c, err := checkpoint.OpenDir(filepath.Join(dir, checkpoint.StepName(1)), checkpoint.OpenOptions{})
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					losses, _ := stepMesh(t, dcfg, dst, global[1:], func(mr *MeshRank) error {
						_, err := mr.Restore(c)
						return err
					})
					// The first step after loading checks the parameters and
					// routing biases; the second the AdamW moments and step.
					for r, l := range losses {
						for i, w := range want {
							if rel := math.Abs(l[i]-w) / w; rel > 1e-5 {
								t.Errorf("rank %d: loss of step %d after resharding %.9g, uninterrupted %.9g (rel %.2g)", r, i+2, l[i], w, rel)
							}
						}
					}
				})
			}
		}
	}
}

// MeshRank.Evaluate (every rank, collective, batches split over the DP
// replicas, with ignored fillers when they do not divide evenly: 3 batches
// over DP = 2 and DP = 4) gives the serial trainer's validation loss.
func TestMeshEvaluateEqualsSerial(t *testing.T) {
	cfg := meshJob()
	rng := rand.New(rand.NewPCG(23, 24))
	val := []sampling.Batch{randomBatch(rng, 2, 16, cfg.Model.Vocab), randomBatch(rng, 3, 16, cfg.Model.Vocab), randomBatch(rng, 2, 16, cfg.Model.Vocab)}
	tr, err := NewTrainer(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	want, err := tr.Evaluate(val)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []parallel.Mesh{{DP: 2, SP: 1, TP: 2, EP: 2}, {DP: 1, SP: 2, TP: 2, EP: 2}, {DP: 4, SP: 1, TP: 1, EP: 4}} {
		var mu sync.Mutex
		var got []float64
		stepMesh(t, meshConfig(cfg, m), m, nil, func(mr *MeshRank) error {
			v, err := mr.Evaluate(context.Background(), val)
			mu.Lock()
			got = append(got, v)
			mu.Unlock()
			return err
		})
		for r, v := range got {
			if rel := math.Abs(v-want) / want; rel > 1e-5 {
				t.Errorf("%v rank %d: validation loss %.9g, serial %.9g", m, r, v, want)
			}
		}
	}
}
