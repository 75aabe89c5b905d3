package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
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

// stateKind is one kind of trained float32 state, named as the benchmarks
// report it.
type stateKind struct {
	name string
	d    []float32
}

// trainingStateKinds is trainingState(n, seed) as named kinds: the weights
// and Adam's two moments.
func trainingStateKinds(n int, seed uint64) []stateKind {
	w, m, v := trainingState(n, seed)
	return []stateKind{{"weights", w}, {"adam_m", m}, {"adam_v", v}}
}

// BenchmarkCompressionRatio reports raw/stored size ("ratio") for weights and
// Adam moments with and without the byte shuffle, and compression speed.
func BenchmarkCompressionRatio(b *testing.B) {
	const n = 1 << 22
	for _, data := range trainingStateKinds(n, 1) {
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

// benchState is the state BenchmarkSave writes: per rank (2), weights and
// both Adam moments of benchMB()/6 MiB each, the rank's flat range of one
// tensor of each kind (ZeRO-1 style).
func benchState() [][3][]float32 {
	const ranks = 2
	per := benchMB() << 20 / ranks / 4 / 3
	states := make([][3][]float32, ranks)
	for r := range states {
		w, m, v := trainingState(per, uint64(r+10))
		states[r] = [3][]float32{w, m, v}
	}
	return states
}

// benchTensors names the tensors of benchState, in order.
var benchTensors = [3]string{"model.w", "optim.m.w", "optim.v.w"}

// saveBenchState writes every rank's shard of step concurrently, as
// BenchmarkSave times it (without the commit).
func saveBenchState(s *Store, step int64, states [][3][]float32, opts WriterOptions) ([]ShardInfo, error) {
	ranks, per := len(states), len(states[0][0])
	infos := make([]ShardInfo, ranks)
	errs := make([]error, ranks)
	var wg sync.WaitGroup
	for r := 0; r < ranks; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			opts := opts
			opts.Workers = max(1, (runtime.GOMAXPROCS(0)+ranks-1)/ranks)
			sw, err := s.CreateShard(context.Background(), step, r, opts)
			if err != nil {
				errs[r] = err
				return
			}
			shape := []int64{int64(ranks * per)}
			for k, d := range states[r] {
				if err := sw.WriteTensor(benchTensors[k], shape, FlatRange(int64(r*per), int64(per)), d); err != nil {
					sw.Abort()
					errs[r] = err
					return
				}
			}
			infos[r], errs[r] = sw.Close()
		}(r)
	}
	wg.Wait()
	return infos, errors.Join(errs...)
}

// BenchmarkSave measures a full, fsynced save: `ranks` shards written
// concurrently (weights + both moments each, as a ZeRO-1 rank would hold),
// then Commit. MB/s counts raw state bytes. CHECKPOINT_BENCH_DIR picks the
// file system (default: a temp dir); scripts/bench-checkpoint.sh compares
// with dd in the same run. Each variant's store is opened with Prewarm, as
// training opens its own, so the first timed save is a training process's
// first save. With CHECKPOINT_BENCH_WARMUP=1 each variant first saves once
// untimed (coder tables and the other pools warm too), and the timed saves
// are a training process's later ones.
func BenchmarkSave(b *testing.B) {
	states := benchState()
	ranks, per := len(states), len(states[0][0])
	for _, tc := range []struct {
		name string
		opts WriterOptions
	}{
		{"auto", WriterOptions{}},                            // the default: byte planes where they pay
		{"auto-always", WriterOptions{AlwaysCompress: true}}, // no raw fallback
		{"zstd-frames", WriterOptions{NoShuffle: true}},      // float32 as zstd frames, no byte planes
		{"raw", WriterOptions{Codec: CodecNone}},
		{"direct", WriterOptions{DirectIO: true}},
		{"raw-direct", WriterOptions{Codec: CodecNone, DirectIO: true}},
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
			Prewarm(ranks) // as each training process does when it opens its store
			if os.Getenv("CHECKPOINT_BENCH_WARMUP") == "1" {
				if _, err := saveBenchState(s, 1<<40, states, tc.opts); err != nil {
					b.Fatal(err)
				}
				if err := os.RemoveAll(s.TempDir(1 << 40)); err != nil {
					b.Fatal(err)
				}
			}
			var stored int64
			// Every variant starts from a collected heap: the state
			// generation above (and an earlier variant's buffers) must not
			// be paid for by whichever variant runs first.
			runtime.GC()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				step := int64(i + 1)
				infos, err := saveBenchState(s, step, states, tc.opts)
				if err != nil {
					b.Fatal(err)
				}
				stored = 0
				for _, in := range infos {
					stored += in.Size
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
		m.Shards = append(m.Shards, closedShard(b, s, 1, r, WriterOptions{}, func(sw *ShardWriter) error {
			return sw.WriteTensor("model.w", []int64{n}, FlatRange(int64(r*n/2), n/2), w[r*n/2:(r+1)*n/2])
		}))
	}
	c := commitOpen(b, s, m, "latest")
	dst := make([]float32, n)
	b.SetBytes(4 * n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.ReadRegion("model.w", Box([]int64{0}, []int64{n}), dst); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadCheckpoint measures loading a whole checkpoint of benchState
// (CHECKPOINT_BENCH_MB of raw state in 2 shards, default options) from
// CHECKPOINT_BENCH_DIR, where it is written once as ckload-MB and kept for
// scripts/bench-checkpoint-load.sh to read with dd. "read" is a rank's
// resume: it opens the checkpoint (manifest, trailers, indexes) and reads
// every tensor whole into buffers that exist and were just written, as a
// trainer's are. "verify" is the coordinator's check before a resume:
// Open with VerifyFull, which reads and checks every byte. With
// CHECKPOINT_BENCH_DROP_CACHES=1 every iteration starts with the page cache
// dropped (root only), so the bytes come from the device, and then waits
// CHECKPOINT_BENCH_SETTLE seconds (default 0): on a virtual machine that
// hands freed memory back to its host, pages freed a moment ago are cheaper
// to fill than pages the host took back, so a read right after the drop
// measures that, not the disk. MB/s counts the shard files' bytes.
func BenchmarkLoadCheckpoint(b *testing.B) {
	base := os.Getenv("CHECKPOINT_BENCH_DIR")
	if base == "" {
		b.Skip("CHECKPOINT_BENCH_DIR is not set (the checkpoint is kept there)")
	}
	s, err := NewStore(filepath.Join(base, fmt.Sprintf("ckload-%d", benchMB())), 0)
	if err != nil {
		b.Fatal(err)
	}
	if _, ok := s.Latest(); !ok {
		infos, err := saveBenchState(s, 1, benchState(), WriterOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Commit(&Manifest{Version: ManifestVersion, Step: 1, Shards: infos}); err != nil {
			b.Fatal(err)
		}
	}
	drop := os.Getenv("CHECKPOINT_BENCH_DROP_CACHES") == "1"
	var settle time.Duration
	if v := os.Getenv("CHECKPOINT_BENCH_SETTLE"); v != "" {
		sec, err := strconv.ParseFloat(v, 64)
		if err != nil || sec < 0 {
			b.Fatalf("CHECKPOINT_BENCH_SETTLE=%q: want seconds >= 0", v)
		}
		settle = time.Duration(sec * float64(time.Second))
	}
	for _, tc := range []struct {
		name   string
		verify VerifyLevel
	}{{"read", VerifyQuick}, {"verify", VerifyFull}} {
		b.Run(tc.name, func(b *testing.B) {
			c, _, err := s.Open("latest", OpenOptions{})
			if err != nil {
				b.Fatal(err)
			}
			var fileBytes int64
			for _, sh := range c.Manifest.Shards {
				fileBytes += sh.Size
			}
			// In file order, as a trainer's restore reads (parameters, then
			// each entry's moments).
			names := c.TensorNames()
			dst := map[string][]float32{}
			for _, name := range names {
				shape, _ := c.Shape(name)
				n, _ := NumElements(shape)
				dst[name] = make([]float32, n)
			}
			c.Close()
			b.SetBytes(fileBytes)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if drop {
					b.StopTimer()
					if err := dropCaches(); err != nil {
						b.Fatal(err)
					}
					time.Sleep(settle)
					// A trainer initializes its state right before restoring
					// it: the buffers are written just before the timed read,
					// whose cost is then the read's, not that of the memory
					// (on a virtual machine, memory idle for seconds may have
					// to be faulted back in from the host).
					for _, d := range dst {
						clear(d)
					}
					b.StartTimer()
				}
				c, _, err := s.Open("latest", OpenOptions{Verify: tc.verify})
				if err != nil {
					b.Fatal(err)
				}
				if tc.verify == VerifyFull {
					c.Close()
					continue
				}
				for _, name := range names {
					shape, _ := c.Shape(name)
					if err := c.ReadRegion(name, Whole(shape), dst[name]); err != nil {
						b.Fatal(err)
					}
				}
				c.Close()
			}
		})
	}
}

// dropCaches writes dirty pages back and drops the page cache (root only).
func dropCaches() error {
	if err := exec.Command("sync").Run(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop caches (CHECKPOINT_BENCH_DROP_CACHES=1 needs root): %w", err)
	}
	return nil
}

// BenchmarkPlaneCodecPerKind measures the plane codec on one 4 MiB chunk of
// each kind of trained float32 state: its speed on one core and the ratio
// (raw/stored). The write probe compares this speed, times the writer's
// workers, with the disk's rate (probe.go).
func BenchmarkPlaneCodecPerKind(b *testing.B) {
	const n = 1 << 20
	for _, k := range trainingStateKinds(n, 7) {
		b.Run(k.name, func(b *testing.B) {
			raw := f32Bytes(k.d)
			tmp := make([]byte, len(raw))
			out := make([]byte, 0, len(raw)+len(raw)/8+1024)
			b.SetBytes(int64(len(raw)))
			for i := 0; i < b.N; i++ {
				out, _ = encodePlanes(out[:0], tmp, raw)
			}
			b.ReportMetric(float64(len(raw))/float64(len(out)), "ratio")
		})
	}
}

// BenchmarkPageCacheWrite is the measurement behind the file writer's
// bounce buffer (docs/decisions.md#checkpoint-io-at-disk-bandwidth): one
// file of CHECKPOINT_BENCH_MB written from a region of the heap as large as
// the file, either by fileWriter, which copies the stream into its 1 MiB
// bounce buffer and writes that ("bounce"), or by 1 MiB write calls
// straight from the region ("heap"); both start writeback every 8 MiB and
// fsync at the end. MB/s counts the file's bytes. CHECKPOINT_BENCH_DIR
// picks the file system.
func BenchmarkPageCacheWrite(b *testing.B) {
	n := benchMB() << 20
	src := make([]byte, n)
	for i := range src {
		src[i] = byte(i * 7)
	}
	write := map[string]func(f *os.File) error{
		"bounce": func(f *os.File) error {
			fw := newFileWriter(f, true)
			_, err := fw.Write(src)
			return errors.Join(err, fw.finish())
		},
		"heap": func(f *os.File) error {
			var started int64
			for off := 0; off < n; off += bufferedWriteBytes {
				p := src[off:min(n, off+bufferedWriteBytes)]
				if _, err := f.Write(p); err != nil {
					return err
				}
				if end := int64(off + len(p)); end-started >= writebackEvery {
					startWriteback(f, started, end-started)
					started = end
				}
			}
			return nil
		},
	}
	for _, name := range []string{"heap", "bounce"} {
		b.Run(name, func(b *testing.B) {
			dir, err := os.MkdirTemp(os.Getenv("CHECKPOINT_BENCH_DIR"), "pcbench")
			if err != nil {
				b.Fatal(err)
			}
			defer os.RemoveAll(dir)
			b.SetBytes(int64(n))
			for i := 0; i < b.N; i++ {
				f, err := os.Create(filepath.Join(dir, "f"))
				if err != nil {
					b.Fatal(err)
				}
				if err := errors.Join(write[name](f), f.Sync(), f.Close()); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := os.Remove(f.Name()); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
