package checkpoint

import (
	"context"
	"math/rand/v2"
	"testing"
)

// testTensor is a global tensor with its reference values.
type testTensor struct {
	name  string
	shape []int64
	data  []float32
}

// extract returns r's elements of t in r's buffer order (naive reference).
func (tt testTensor) extract(r Region) []float32 {
	idx := naiveIndices(tt.shape, r)
	out := make([]float32, len(idx))
	for i, g := range idx {
		out[i] = tt.data[g]
	}
	return out
}

func newTestTensor(rng *rand.Rand, name string, shape ...int64) testTensor {
	n, err := NumElements(shape)
	if err != nil {
		panic(err)
	}
	d := make([]float32, n)
	for i := range d {
		d[i] = float32(rng.NormFloat64() * 0.02)
	}
	return testTensor{name: name, shape: shape, data: d}
}

// testLayout assigns each rank its pieces: tensor → region per rank.
type testLayout map[string][]Region

// standardTensors is a mix exercising box splits along one and two dims,
// uneven flat ranges, a scalar and an empty tensor.
func standardTensors(rng *rand.Rand) ([]testTensor, func(world int) testLayout) {
	ts := []testTensor{
		newTestTensor(rng, "model.a", 7, 10),
		newTestTensor(rng, "model.b", 5, 6, 4),
		newTestTensor(rng, "optim.m.c", 13, 3),
		newTestTensor(rng, "model.scalar"),
		newTestTensor(rng, "model.empty", 3, 0),
	}
	layout := func(world int) testLayout {
		l := testLayout{}
		// a: rows split as evenly as possible over ranks (dim 0).
		for r := 0; r < world; r++ {
			lo, hi := int64(r)*7/int64(world), int64(r+1)*7/int64(world)
			l["model.a"] = append(l["model.a"], DimRange([]int64{7, 10}, 0, lo, hi-lo))
		}
		// b: a 2-D grid over dims 0 and 2 when world is 4, else dim 2.
		if world == 4 {
			for r := 0; r < 4; r++ {
				i, j := int64(r/2), int64(r%2)
				l["model.b"] = append(l["model.b"], Box([]int64{i * 3, 0, j * 2}, []int64{3 - i, 6, 2}))
			}
		} else {
			for r := 0; r < world; r++ {
				lo, hi := int64(r)*4/int64(world), int64(r+1)*4/int64(world)
				l["model.b"] = append(l["model.b"], DimRange([]int64{5, 6, 4}, 2, lo, hi-lo))
			}
		}
		// c: flat ranges of uneven size (ZeRO-1 style).
		for r := 0; r < world; r++ {
			lo, hi := int64(r)*39/int64(world), int64(r+1)*39/int64(world)
			l["optim.m.c"] = append(l["optim.m.c"], FlatRange(lo, hi-lo))
		}
		// scalar and empty: replicated on every rank (replicas dedupe).
		for r := 0; r < world; r++ {
			l["model.scalar"] = append(l["model.scalar"], Whole(nil))
			l["model.empty"] = append(l["model.empty"], Whole([]int64{3, 0}))
		}
		return l
	}
	return ts, layout
}

// saveTest writes and commits one checkpoint of ts under layout at step,
// every rank's shard with a small RNG blob.
func saveTest(t *testing.T, s *Store, step int64, ts []testTensor, l testLayout, world int, opts WriterOptions) *Manifest {
	t.Helper()
	m := &Manifest{Version: ManifestVersion, Step: step, Mesh: map[string]int{"dp": world}, Config: []byte(`{"lr":0.001}`)}
	for r := 0; r < world; r++ {
		m.Shards = append(m.Shards, closedShard(t, s, step, r, opts, func(w *ShardWriter) error {
			if err := rankPieces(ts, l, r)(w); err != nil {
				return err
			}
			return w.WriteBlob(BlobRNG, []byte{byte(r), byte(step), 7})
		}))
	}
	if err := s.Commit(m); err != nil {
		t.Fatal(err)
	}
	return m
}

// closedShard creates rank r's shard of step in s, fills it with write and
// closes it, failing tb on any error. The shard is not committed.
func closedShard(tb testing.TB, s *Store, step int64, r int, opts WriterOptions, write func(*ShardWriter) error) ShardInfo {
	tb.Helper()
	w, err := s.CreateShard(context.Background(), step, r, opts)
	if err != nil {
		tb.Fatal(err)
	}
	if err := write(w); err != nil {
		tb.Fatal(err)
	}
	info, err := w.Close()
	if err != nil {
		tb.Fatal(err)
	}
	return info
}

// rankShards writes one closed shard per rank of world at m.Step (rank r's
// pieces of ts under l) and appends them to m.Shards, without committing.
func rankShards(tb testing.TB, s *Store, m *Manifest, world int, ts []testTensor, l testLayout, opts WriterOptions) {
	tb.Helper()
	for r := 0; r < world; r++ {
		m.Shards = append(m.Shards, closedShard(tb, s, m.Step, r, opts, rankPieces(ts, l, r)))
	}
}

// rankPieces writes rank r's piece of every tensor of ts under l.
func rankPieces(ts []testTensor, l testLayout, r int) func(*ShardWriter) error {
	return func(w *ShardWriter) error {
		for _, tt := range ts {
			reg := l[tt.name][r]
			if err := w.WriteTensor(tt.name, tt.shape, reg, tt.extract(reg)); err != nil {
				return err
			}
		}
		return nil
	}
}

// wholeTensors writes every tensor of ts whole.
func wholeTensors(ts ...testTensor) func(*ShardWriter) error {
	return func(w *ShardWriter) error {
		for _, tt := range ts {
			if err := w.WriteTensor(tt.name, tt.shape, Whole(tt.shape), tt.data); err != nil {
				return err
			}
		}
		return nil
	}
}

// crashPoint is a point where a commit can stop (Store.crashHook's names)
// and whether the new step is published by then.
type crashPoint struct {
	point     string
	published bool
}

// commitCrashPoints are Commit's stages in order: the step is published
// once the directory is renamed into place.
var commitCrashPoints = []crashPoint{
	{"before-manifest", false},
	{"before-rename", false},
	{"before-latest", true},
	{"before-prune", true},
}

// openAfterCrash opens s's latest checkpoint with full verification after
// an interrupted commit of step 2 over a committed step 1, failing t unless
// it is step 2 exactly when the crash came after publishing (published),
// with nothing skipped. The caller closes the checkpoint.
func openAfterCrash(t *testing.T, s *Store, point string, published bool) *Checkpoint {
	t.Helper()
	want := int64(1)
	if published {
		want = 2
	}
	c, rep, err := s.Open("latest", OpenOptions{Verify: VerifyFull})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Step != want || len(rep.Skipped) != 0 {
		c.Close()
		t.Fatalf("after a crash at %s: %s", point, rep)
	}
	return c
}

// commitOpen commits m to s and opens the checkpoint ref names, closed when
// tb ends.
func commitOpen(tb testing.TB, s *Store, m *Manifest, ref string) *Checkpoint {
	tb.Helper()
	if err := s.Commit(m); err != nil {
		tb.Fatal(err)
	}
	c, _, err := s.Open(ref, OpenOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func newTestStore(t *testing.T, keep int) *Store {
	t.Helper()
	s, err := NewStore(t.TempDir(), keep)
	if err != nil {
		t.Fatal(err)
	}
	s.NoSync = true // fsync does not change what these tests observe
	return s
}
