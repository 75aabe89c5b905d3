package stepmodel

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tensor"
	"github.com/moetrain/moetrain/train"
)

// Shape is a link shaping applied to every link of a measured mesh
// (collective.NewShaped); zero values mean unshaped.
type Shape struct {
	Bandwidth float64       // bytes per second per direction
	Latency   time.Duration // one-way
}

// Shaped reports whether s limits anything.
func (s Shape) Shaped() bool { return s.Bandwidth > 0 || s.Latency > 0 }

func (s Shape) String() string {
	if !s.Shaped() {
		return "unshaped"
	}
	return fmt.Sprintf("%.3g GB/s %v", s.Bandwidth/1e9, s.Latency)
}

// Link is the link class a shaped mesh's collectives see: the in-process
// link (from the profile) plus the shaping's latency, at its bandwidth, one
// link per pair of ranks.
func (s Shape) Link(base Link) Link {
	l := base
	l.Alpha += s.Latency.Seconds()
	if s.Bandwidth > 0 {
		l.Beta += 1 / s.Bandwidth
	}
	l.PerPeer = true
	return l
}

// Measurement is the measured step times of one mesh, after warm-up.
type Measurement struct {
	Mesh   parallel.Mesh
	Shape  Shape
	Steps  []float64 // seconds, rank 0's step ends one after another
	Median float64
	Min    float64 // the least disturbed step
}

// Measure trains steps+warmup steps of job on mesh, every rank a goroutine
// of this process with max(1, cores/world) kernel threads (as launch gives
// its workers), over in-process transports shaped by shape, on random
// batches of the job's shape, and returns the post-warm-up step times.
// The process's kernel thread budget is restored afterwards. ctx bounds
// the whole run; each collective also has a 60 s deadline.
func Measure(ctx context.Context, job train.JobConfig, mesh parallel.Mesh, shape Shape, steps, warmup, cores int) (Measurement, error) {
	if steps < 1 || warmup < 0 || cores < 1 {
		return Measurement{}, fmt.Errorf("stepmodel: measure: steps %d ≥ 1, warmup %d ≥ 0 and cores %d ≥ 1 required", steps, warmup, cores)
	}
	if err := mesh.Validate(); err != nil {
		return Measurement{}, err
	}
	job.Mesh.DP, job.Mesh.SP, job.Mesh.TP, job.Mesh.EP = mesh.DP, mesh.SP, mesh.TP, mesh.EP
	if err := job.Validate(); err != nil {
		return Measurement{}, fmt.Errorf("stepmodel: measure %s: %w", MeshString(mesh), err)
	}
	if !job.Data.FixedShape() {
		return Measurement{}, fmt.Errorf("stepmodel: measure needs fixed-shape batches (data.mode window or random), not %q", job.Data.Mode)
	}
	n := mesh.World()
	prev := tensor.Threads()
	tensor.SetThreads(max(1, cores/n))
	defer tensor.SetThreads(prev)
	ts := collective.NewInProcess(n)
	for r := range ts {
		if shape.Shaped() {
			ts[r] = collective.NewShaped(ts[r], collective.LinkShape{From: -1, To: -1, Bandwidth: shape.Bandwidth, Latency: shape.Latency})
		}
	}
	defer func() {
		for _, t := range ts {
			t.Close()
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	B, T, vocab := job.Data.BatchSize, job.Data.SeqLen, job.Model.Vocab
	total := steps + warmup
	ends := make([]time.Time, 0, total+1)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := 0; r < n; r++ {
		wg.Go(func() {
			fail := func(err error) { errs[r] = fmt.Errorf("rank %d: %w", r, err); cancel() }
			world := collective.NewWorldConfig(ts[r], collective.Config{Timeout: 60 * time.Second})
			mr, err := train.NewMeshRank(job, mesh, r, world, zerolog.Nop())
			if err != nil {
				fail(err)
				return
			}
			dp := mesh.Coord(r).DP
			if err := world.Barrier(ctx); err != nil { // start the clock together
				fail(err)
				return
			}
			if r == 0 {
				ends = append(ends, time.Now())
			}
			for i := 0; i < total; i++ {
				if _, err := mr.Step(ctx, randomBatch(uint64(i), uint64(dp), B, T, vocab)); err != nil {
					fail(err)
					return
				}
				if r == 0 {
					ends = append(ends, time.Now())
				}
			}
		})
	}
	wg.Wait()
	runtime.GC()
	if err := errors.Join(errs...); err != nil {
		return Measurement{}, fmt.Errorf("stepmodel: measure %s (%v): %w", MeshString(mesh), shape, err)
	}
	out := Measurement{Mesh: mesh, Shape: shape}
	for i := warmup + 1; i < len(ends); i++ {
		out.Steps = append(out.Steps, ends[i].Sub(ends[i-1]).Seconds())
	}
	out.Median, out.Min = median(out.Steps), slices.Min(out.Steps)
	return out, nil
}

// randomBatch is replica dp's batch of step i: uniform tokens, next-token
// targets, positions from 0; the same on every rank of the replica.
func randomBatch(step, dp uint64, b, t, vocab int) sampling.Batch {
	rng := rand.New(rand.NewPCG(step, dp))
	out := sampling.Batch{B: b, T: t, Tokens: make([]int32, b*t), Targets: make([]int32, b*t), Pos: make([]int32, b*t)}
	for i := range out.Tokens {
		out.Tokens[i] = int32(rng.IntN(vocab))
		out.Targets[i] = int32(rng.IntN(vocab))
		out.Pos[i] = int32(i % t)
	}
	return out
}

// median of xs (NaN-free); 0 for none. xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
