package checkpoint

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSaveLoadReshard(t *testing.T) {
	for name, opts := range map[string]WriterOptions{
		"auto-tiny-chunks": {ChunkBytes: 16, Workers: 3, InFlight: 2},
		"zstd-noshuffle":   {NoShuffle: true, ChunkBytes: 40},
		"raw":              {Codec: CodecNone, ChunkBytes: 28},
		"defaults":         {},
	} {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, 6))
			ts, layout := standardTensors(rng)
			for _, world := range []int{1, 3, 4} {
				s := newTestStore(t, 0)
				saveTest(t, s, 10, ts, layout(world), world, opts)
				c, rep, err := s.Open("latest", OpenOptions{Verify: VerifyFull})
				if err != nil {
					t.Fatal(err)
				}
				if rep.Step != 10 || len(rep.Skipped) != 0 || rep.Latest != 10 {
					t.Fatalf("report %+v", rep)
				}
				for _, tt := range ts {
					got, shape, err := c.ReadTensor(tt.name)
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(shape, tt.shape) || !slices.Equal(got, tt.data) {
						t.Fatalf("world %d: tensor %s differs", world, tt.name)
					}
					// Random regions of both forms: a reader's layout need
					// not match the writer's.
					for k := 0; k < 50; k++ {
						r := randRegion(rng, tt.shape)
						dst := make([]float32, r.Len())
						if err := c.ReadRegion(tt.name, r, dst); err != nil {
							t.Fatalf("world %d: %s %v: %v", world, tt.name, r, err)
						}
						if !slices.Equal(dst, tt.extract(r)) {
							t.Fatalf("world %d: %s region %v differs", world, tt.name, r)
						}
					}
				}
				for r := 0; r < world; r++ {
					b, err := c.Blob(r, BlobRNG)
					if err != nil || !bytes.Equal(b, []byte{byte(r), 10, 7}) {
						t.Fatalf("blob of rank %d: %v %v", r, b, err)
					}
				}
				if _, err := c.Blob(world, BlobRNG); err == nil {
					t.Fatal("blob of a missing rank read without error")
				}
				if string(c.Manifest.Config) != `{"lr":0.001}` || c.Manifest.Mesh["dp"] != world {
					t.Fatalf("manifest config/mesh lost: %s %v", c.Manifest.Config, c.Manifest.Mesh)
				}
				c.Close()
			}
		})
	}
}

func TestMissingCoverageIsError(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	ts, layout := standardTensors(rng)
	l := layout(3)
	s := newTestStore(t, 0)
	m := &Manifest{Version: ManifestVersion, Step: 1}
	// Only ranks 0 and 2 write: rows of model.a held by rank 1 are missing.
	for _, r := range []int{0, 2} {
		m.Shards = append(m.Shards, closedShard(t, s, 1, r, WriterOptions{}, rankPieces(ts, l, r)))
	}
	c := commitOpen(t, s, m, "1")
	if _, _, err := c.ReadTensor("model.a"); err == nil || !strings.Contains(err.Error(), "not covered") {
		t.Fatalf("reading a partly missing tensor: %v", err)
	}
	// Rows held by rank 0 alone still read.
	r := DimRange([]int64{7, 10}, 0, 0, 2)
	dst := make([]float32, r.Len())
	if err := c.ReadRegion("model.a", r, dst); err != nil || !slices.Equal(dst, ts[0].extract(r)) {
		t.Fatalf("covered rows: %v", err)
	}
}

func TestWriterRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	w, err := CreateShard(t.Context(), filepath.Join(dir, "s"), 0, WriterOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor("x", []int64{2, 2}, FlatRange(0, 3), make([]float32, 2)); err == nil {
		t.Fatal("accepted 2 values for 3 elements")
	}
	if _, err := w.Close(); err == nil {
		t.Fatal("Close after a failed write succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "s.part")); !os.IsNotExist(err) {
		t.Fatalf("partial file left behind: %v", err)
	}
	w, err = CreateShard(t.Context(), filepath.Join(dir, "s"), 0, WriterOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteBlob("b", nil); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor("b", []int64{1}, Whole([]int64{1}), []float32{1}); err == nil {
		t.Fatal("accepted a duplicate name")
	}
	w.Abort()
}

func TestManifestRejects(t *testing.T) {
	good := func() *Manifest {
		return &Manifest{Version: ManifestVersion, Step: 3, Shards: []ShardInfo{
			{File: "shard-00000.mtck", Rank: 0, Size: 100, Pieces: []PieceInfo{{Name: "w", Shape: []int64{4, 4}, Region: DimRange([]int64{4, 4}, 0, 0, 2)}}},
			{File: "shard-00001.mtck", Rank: 1, Size: 100, Pieces: []PieceInfo{{Name: "w", Shape: []int64{4, 4}, Region: DimRange([]int64{4, 4}, 0, 2, 2)}}},
		}}
	}
	if _, err := good().layout(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(m *Manifest){
		"overlap":      func(m *Manifest) { m.Shards[1].Pieces[0].Region = DimRange([]int64{4, 4}, 0, 1, 2) },
		"shape":        func(m *Manifest) { m.Shards[1].Pieces[0].Shape = []int64{4, 5} },
		"mixed":        func(m *Manifest) { m.Shards[1].Pieces[0].Region = FlatRange(8, 8) },
		"path":         func(m *Manifest) { m.Shards[1].File = "../x" },
		"dupfile":      func(m *Manifest) { m.Shards[1].File = m.Shards[0].File },
		"version":      func(m *Manifest) { m.Version = 9 },
		"outside":      func(m *Manifest) { m.Shards[1].Pieces[0].Region = DimRange([]int64{4, 4}, 0, 2, 3) },
		"config":       func(m *Manifest) { m.Config = []byte("{") },
		"negativestep": func(m *Manifest) { m.Step = -1 },
	} {
		m := good()
		mutate(m)
		if _, err := m.layout(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Identical replicas are fine and kept once.
	m := good()
	m.Shards = append(m.Shards, ShardInfo{File: "shard-00002.mtck", Rank: 2, Size: 100, Pieces: m.Shards[0].Pieces})
	l, err := m.layout()
	if err != nil || len(l["w"].pieces) != 2 {
		t.Fatalf("replicas: %v %+v", err, l["w"])
	}
}
