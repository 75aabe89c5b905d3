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

// saveTest writes and commits one checkpoint of ts under layout at step.
func saveTest(t *testing.T, s *Store, step int64, ts []testTensor, l testLayout, world int, opts WriterOptions) *Manifest {
	t.Helper()
	m := &Manifest{Version: ManifestVersion, Step: step, Mesh: map[string]int{"dp": world}, Config: []byte(`{"lr":0.001}`)}
	for r := 0; r < world; r++ {
		w, err := s.CreateShard(context.Background(), step, r, opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range ts {
			reg := l[tt.name][r]
			if err := w.WriteTensor(tt.name, tt.shape, reg, tt.extract(reg)); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.WriteBlob(BlobRNG, []byte{byte(r), byte(step), 7}); err != nil {
			t.Fatal(err)
		}
		info, err := w.Close()
		if err != nil {
			t.Fatal(err)
		}
		m.Shards = append(m.Shards, info)
	}
	if err := s.Commit(m); err != nil {
		t.Fatal(err)
	}
	return m
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
