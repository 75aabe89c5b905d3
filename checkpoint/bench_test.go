package checkpoint

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
)

// trainingState returns realistic float32 state of n elements: weights drawn
// from N(0, 0.02²) after a few AdamW updates with noisy gradients, and the
// two Adam moments after those updates.
func trainingState(n int, seed uint64) (w, m, v []float32) {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	w, m, v = make([]float32, n), make([]float32, n), make([]float32, n)
	for i := range w {
		w[i] = float32(rng.NormFloat64() * 0.02)
	}
	const lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 0.1
	for t := 1; t <= 5; t++ {
		c1, c2 := 1-math.Pow(b1, float64(t)), 1-math.Pow(b2, float64(t))
		for i := range w {
			g := rng.NormFloat64()*1e-3 + 0.05*float64(w[i])
			mi := b1*float64(m[i]) + (1-b1)*g
			vi := b2*float64(v[i]) + (1-b2)*g*g
			m[i], v[i] = float32(mi), float32(vi)
			w[i] = float32(float64(w[i]) - lr*((mi/c1)/(math.Sqrt(vi/c2)+eps)+wd*float64(w[i])))
		}
	}
	return w, m, v
}

// BenchmarkCompressionRatio reports raw/stored size ("ratio") for weights and
// Adam moments with and without the byte shuffle, and compression speed.
func BenchmarkCompressionRatio(b *testing.B) {
	const n = 1 << 22
	w, m, v := trainingState(n, 1)
	for _, data := range []struct {
		name string
		d    []float32
	}{{"weights", w}, {"adam_m", m}, {"adam_v", v}} {
		for _, shuffle := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/shuffle=%v", data.name, shuffle), func(b *testing.B) {
				dir := b.TempDir()
				b.SetBytes(int64(4 * len(data.d)))
				var stored int64
				for i := 0; i < b.N; i++ {
					sw, err := CreateShard(context.Background(), dir+"/s", 0, WriterOptions{NoShuffle: !shuffle, NoSync: true, AlwaysCompress: true})
					if err != nil {
						b.Fatal(err)
					}
					if err := sw.WriteTensor("x", []int64{int64(len(data.d))}, FlatRange(0, int64(len(data.d))), data.d); err != nil {
						b.Fatal(err)
					}
					info, err := sw.Close()
					if err != nil {
						b.Fatal(err)
					}
					stored = info.Size
				}
				b.ReportMetric(float64(4*len(data.d))/float64(stored), "ratio")
			})
		}
	}
}

// benchMB is the raw size a BenchmarkSave iteration writes
// (CHECKPOINT_BENCH_MB, default 64).
func benchMB() int {
	if s := os.Getenv("CHECKPOINT_BENCH_MB"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			return n
		}
	}
	return 64
}

// BenchmarkSave measures a full, fsynced save: `ranks` shards written
// concurrently (weights + both moments each, as a ZeRO-1 rank would hold),
// then Commit. MB/s counts raw state bytes. CHECKPOINT_BENCH_DIR picks the
// file system (default: a temp dir); scripts/bench-checkpoint.sh compares
// with dd in the same run.
func BenchmarkSave(b *testing.B) {
	const ranks = 2
	total := benchMB() << 20
	per := total / ranks / 4 / 3 // elements per tensor: 3 tensors per rank
	type rankState struct{ w, m, v []float32 }
	states := make([]rankState, ranks)
	for r := range states {
		w, m, v := trainingState(per, uint64(r+10))
		states[r] = rankState{w, m, v}
	}
	for _, tc := range []struct {
		name string
		opts WriterOptions
	}{
		{"zstd-shuffle", WriterOptions{}},
		{"zstd-shuffle-always", WriterOptions{AlwaysCompress: true}},
		{"zstd", WriterOptions{NoShuffle: true}},
		{"raw", WriterOptions{Codec: CodecNone}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			base := os.Getenv("CHECKPOINT_BENCH_DIR")
			dir, err := os.MkdirTemp(base, "ckbench")
			if err != nil {
				b.Fatal(err)
			}
			defer os.RemoveAll(dir)
			s, err := NewStore(dir, 0)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(ranks * 3 * 4 * per))
			var stored int64
			// Every variant starts from a collected heap: the state
			// generation above (and an earlier variant's buffers) must not
			// be paid for by whichever variant runs first.
			runtime.GC()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				step := int64(i + 1)
				infos := make([]ShardInfo, ranks)
				errs := make([]error, ranks)
				var wg sync.WaitGroup
				for r := 0; r < ranks; r++ {
					wg.Add(1)
					go func(r int) {
						defer wg.Done()
						opts := tc.opts
						opts.Workers = max(1, (runtime.GOMAXPROCS(0)+ranks-1)/ranks)
						sw, err := s.CreateShard(context.Background(), step, r, opts)
						if err != nil {
							errs[r] = err
							return
						}
						st := states[r]
						lo := int64(r * per)
						shape := []int64{int64(ranks * per)}
						for k, d := range [][]float32{st.w, st.m, st.v} {
							name := []string{"model.w", "optim.m.w", "optim.v.w"}[k]
							if err := sw.WriteTensor(name, shape, FlatRange(lo, int64(per)), d); err != nil {
								sw.Abort()
								errs[r] = err
								return
							}
						}
						infos[r], errs[r] = sw.Close()
					}(r)
				}
				wg.Wait()
				stored = 0
				for r, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
					stored += infos[r].Size
				}
				if err := s.Commit(&Manifest{Version: ManifestVersion, Step: step, Shards: infos}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer() // deleting is not part of saving (dd does not delete either)
				if err := os.RemoveAll(s.StepDir(step)); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.StopTimer()
			b.ReportMetric(float64(ranks*3*4*per)/float64(stored), "ratio")
		})
	}
}

// BenchmarkLoad measures reading a whole tensor back (decode, checksums,
// assembly from 2 pieces). MB/s counts raw bytes.
func BenchmarkLoad(b *testing.B) {
	const n = 1 << 22
	w, _, _ := trainingState(n, 3)
	s, err := NewStore(b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	s.NoSync = true
	m := &Manifest{Version: ManifestVersion, Step: 1}
	for r := 0; r < 2; r++ {
		sw, err := s.CreateShard(context.Background(), 1, r, WriterOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if err := sw.WriteTensor("model.w", []int64{n}, FlatRange(int64(r*n/2), n/2), w[r*n/2:(r+1)*n/2]); err != nil {
			b.Fatal(err)
		}
		info, err := sw.Close()
		if err != nil {
			b.Fatal(err)
		}
		m.Shards = append(m.Shards, info)
	}
	if err := s.Commit(m); err != nil {
		b.Fatal(err)
	}
	c, _, err := s.Open("latest", OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	dst := make([]float32, n)
	b.SetBytes(4 * n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.ReadRegion("model.w", Box([]int64{0}, []int64{n}), dst); err != nil {
			b.Fatal(err)
		}
	}
}
