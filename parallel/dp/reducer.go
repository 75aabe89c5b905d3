package dp

import (
	"context"
	"fmt"
	"math"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/tensor"
)

// Reducer reduces one rank's flat gradient buffer over the data-parallel
// group, bucket by bucket. Per step:
//
//	r.Begin(ctx, localTargets)    // before the forward
//	forward + backward, with r.Hook() as the model's OnGradsReady
//	r.Finish(ctx)                 // before the optimizer
//
// After Finish the whole buffer holds the global-batch gradient (ZeRO-1 off),
// or this rank's shards (ShardRanges) do (ZeRO-1 on; the rest of the buffer
// is then undefined). With ZeRO-1 the caller then computes GlobalNorm,
// updates its shards and calls GatherParams. Not safe for concurrent use;
// the hook runs on the backward's goroutine.
type Reducer struct {
	cfg     Config
	grads   []float32
	dense   *collective.Comm
	expert  *collective.Comm
	buckets []bucket

	ctx     context.Context
	count   []float32 // {c>>12, c&4095}: exact integer sums in float32
	countRq *collective.Request
	local   int
	global  int
	scale   float32
	ready   int // every gradient at or above this offset is final
	next    int // first bucket not started
	reqs    []*collective.Request
	err     error
	active  bool
}

type bucket struct {
	Bucket
	comm  *collective.Comm
	n, k  int       // group size, this rank's index in it
	s     int       // shard length ⌈len/n⌉
	stage []float32 // ZeRO-1 staging, padded to n·s; nil when len = n·s
}

// NewReducer plans the buckets of layout over grads (length layout.Total).
// dense is the data-parallel group; expert the expert-data-parallel group
// over which expert tensors reduce (nil or the same *Comm as dense when
// EP = 1: then expert and dense tensors may share buckets).
func NewReducer(cfg Config, layout model.Layout, grads []float32, dense, expert *collective.Comm) (*Reducer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if dense == nil {
		return nil, fmt.Errorf("dp: reducer needs a data-parallel communicator")
	}
	if len(grads) != layout.Total {
		return nil, fmt.Errorf("dp: gradient buffer has %d elements, layout needs %d", len(grads), layout.Total)
	}
	if expert == nil {
		expert = dense
	}
	r := &Reducer{cfg: cfg, grads: grads, dense: dense, expert: expert, count: make([]float32, 2)}
	for _, b := range PlanBuckets(layout, cfg.BucketFloats(), expert != dense) {
		c := dense
		if b.Expert {
			c = expert
		}
		bs := bucket{Bucket: b, comm: c, n: c.Size(), k: c.Rank()}
		bs.s = (b.Len() + bs.n - 1) / bs.n
		if cfg.Zero1 && bs.n*bs.s != b.Len() {
			bs.stage = make([]float32, bs.n*bs.s)
		}
		r.buckets = append(r.buckets, bs)
	}
	return r, nil
}

// Buckets lists the buckets in launch order (decreasing offsets).
func (r *Reducer) Buckets() []Bucket {
	out := make([]Bucket, len(r.buckets))
	for i, b := range r.buckets {
		out[i] = b.Bucket
	}
	return out
}

// Hook is the backward callback to install as model.Model.OnGradsReady (nil
// when overlap is off: Finish then starts every bucket).
func (r *Reducer) Hook() func(lo, hi int) {
	if !r.cfg.Overlap {
		return nil
	}
	return r.GradsReady
}

// Begin starts a step: localTargets is this rank's count of non-ignored
// targets (what the model's loss averages over). It starts the all-reduce of
// the counts, which the first bucket waits for. ctx cancels the step's
// waits until Finish; each collective also carries the communicator's own
// deadline from its start, so no wait is unbounded.
func (r *Reducer) Begin(ctx context.Context, localTargets int) error {
	if r.active {
		return fmt.Errorf("dp: Begin while the previous step's reduction is unfinished (call Finish)")
	}
	if localTargets < 0 || localTargets >= 1<<36 {
		return fmt.Errorf("dp: local target count %d out of range [0, 2^36)", localTargets)
	}
	r.active, r.ctx, r.err = true, ctx, nil
	r.local, r.global, r.scale = localTargets, -1, 0
	r.ready, r.next, r.reqs = len(r.grads), 0, r.reqs[:0]
	r.count[0], r.count[1] = float32(localTargets>>12), float32(localTargets&4095)
	r.countRq = r.dense.AllReduceAsync(r.count, collective.Sum)
	return nil
}

// GradsReady records that grads[lo:hi] is final and starts every bucket now
// complete. Ranges must arrive as model.Model.OnGradsReady documents; a
// violation (or a failed collective) is kept and returned by Finish.
func (r *Reducer) GradsReady(lo, hi int) {
	if !r.active || r.err != nil {
		return
	}
	if hi != r.ready || lo > hi || lo < 0 {
		r.err = fmt.Errorf("dp: backward reported gradients [%d, %d) final, but only [%d, %d) were pending below the final part", lo, hi, 0, r.ready)
		return
	}
	r.ready = lo
	r.launch()
}

// launch starts the buckets wholly at or above r.ready.
func (r *Reducer) launch() {
	for r.err == nil && r.next < len(r.buckets) && r.buckets[r.next].Lo >= r.ready {
		if r.global < 0 {
			if err := r.countRq.Wait(r.ctx); err != nil {
				r.err = fmt.Errorf("dp: target-count all-reduce over %v: %w", r.dense.WorldRanks(), err)
				return
			}
			r.global = int(r.count[0])<<12 + int(r.count[1])
			if r.global > 0 {
				r.scale = float32(float64(r.local) / float64(r.global))
			} else {
				// No targets anywhere: only the aux loss has a gradient; average it.
				r.scale = float32(1 / float64(r.dense.Size()))
			}
		}
		b := &r.buckets[r.next]
		r.next++
		g := r.grads[b.Lo:b.Hi]
		if r.scale != 1 {
			tensor.Scale(g, r.scale)
		}
		var rq *collective.Request
		switch {
		case !r.cfg.Zero1:
			rq = b.comm.AllReduceAsync(g, collective.Sum)
		case b.stage == nil:
			rq = b.comm.ReduceScatterAsync(g, g[b.k*b.s:(b.k+1)*b.s], collective.Sum)
		default:
			copy(b.stage, g)
			clear(b.stage[len(g):])
			rq = b.comm.ReduceScatterAsync(b.stage, b.stage[b.k*b.s:(b.k+1)*b.s], collective.Sum)
		}
		r.reqs = append(r.reqs, rq)
	}
}

// Finish starts any bucket not yet started (all of them without overlap),
// waits for every reduction and ends the step. ctx bounds the waiting.
func (r *Reducer) Finish(ctx context.Context) error {
	if !r.active {
		return fmt.Errorf("dp: Finish without Begin")
	}
	r.active = false
	if r.err == nil {
		r.ready = 0
		r.launch()
	}
	werr := collective.WaitAll(ctx, r.reqs...)
	if r.countRq != nil && r.global < 0 {
		_ = r.countRq.Wait(ctx) // launch failed before waiting for it: let it go
	}
	if r.err != nil {
		return r.err
	}
	if werr != nil {
		return fmt.Errorf("dp: gradient reduction over %v: %w", r.dense.WorldRanks(), werr)
	}
	if r.cfg.Zero1 {
		for i := range r.buckets {
			b := &r.buckets[i]
			if b.stage != nil {
				lo, hi := ShardOf(b.Bucket, b.n, b.k)
				copy(r.grads[lo:hi], b.stage[b.k*b.s:])
			}
		}
	}
	return nil
}

// GlobalTargets is G, the number of non-ignored targets over the group in
// the last step (-1 before the first bucket started).
func (r *Reducer) GlobalTargets() int { return r.global }

// ShardRanges are the non-empty ranges of the flat buffer whose optimizer
// state this rank owns under ZeRO-1 (one per bucket; nil when ZeRO-1 is
// off), in bucket order.
func (r *Reducer) ShardRanges() [][2]int {
	if !r.cfg.Zero1 {
		return nil
	}
	var out [][2]int
	for _, b := range r.buckets {
		if lo, hi := ShardOf(b.Bucket, b.n, b.k); hi > lo {
			out = append(out, [2]int{lo, hi})
		}
	}
	return out
}

// GlobalNorm is the L2 norm of the whole reduced gradient under ZeRO-1: the
// sums of squares of this rank's shards, all-reduced over the groups that
// own them (expert shards over the expert group when it differs). Every
// rank gets the same value. Call it after Finish.
func (r *Reducer) GlobalNorm(ctx context.Context) (float64, error) {
	if !r.cfg.Zero1 {
		return 0, fmt.Errorf("dp: GlobalNorm is for ZeRO-1 shards; without ZeRO-1 the whole gradient is local")
	}
	var dense, expert float64
	for _, b := range r.buckets {
		lo, hi := ShardOf(b.Bucket, b.n, b.k)
		s := tensor.SumSquares(r.grads[lo:hi])
		if b.comm == r.dense {
			dense += s
		} else {
			expert += s
		}
	}
	total, err := sum64(ctx, r.dense, dense)
	if err != nil {
		return 0, err
	}
	if r.expert != r.dense {
		e, err := sum64(ctx, r.expert, expert)
		if err != nil {
			return 0, err
		}
		total += e
	}
	return math.Sqrt(total), nil
}

// sum64 all-reduces x over c keeping about 48 bits: x travels as a float32
// head and the float32 of its remainder.
func sum64(ctx context.Context, c *collective.Comm, x float64) (float64, error) {
	h := float32(x)
	buf := []float32{h, float32(x - float64(h))}
	if err := c.AllReduce(ctx, buf, collective.Sum); err != nil {
		return 0, fmt.Errorf("dp: gradient-norm all-reduce over %v: %w", c.WorldRanks(), err)
	}
	return float64(buf[0]) + float64(buf[1]), nil
}

// GatherParams all-gathers params (layout.Total) bucket by bucket after
// ZeRO-1 updated this rank's shards, so every rank ends with the same whole
// parameter buffer.
func (r *Reducer) GatherParams(ctx context.Context, params []float32) error {
	if !r.cfg.Zero1 {
		return fmt.Errorf("dp: GatherParams is for ZeRO-1")
	}
	if len(params) != len(r.grads) {
		return fmt.Errorf("dp: parameter buffer has %d elements, gradients %d", len(params), len(r.grads))
	}
	reqs := make([]*collective.Request, 0, len(r.buckets))
	for i := range r.buckets {
		b := &r.buckets[i]
		p := params[b.Lo:b.Hi]
		if b.stage == nil {
			reqs = append(reqs, b.comm.AllGatherAsync(p[b.k*b.s:(b.k+1)*b.s], p))
			continue
		}
		lo, hi := ShardOf(b.Bucket, b.n, b.k)
		own := b.stage[b.k*b.s : (b.k+1)*b.s]
		clear(own[copy(own, params[lo:hi]):])
		reqs = append(reqs, b.comm.AllGatherAsync(own, b.stage))
	}
	if err := collective.WaitAll(ctx, reqs...); err != nil {
		return fmt.Errorf("dp: parameter all-gather over %v: %w", r.dense.WorldRanks(), err)
	}
	for i := range r.buckets {
		b := &r.buckets[i]
		if b.stage != nil {
			copy(params[b.Lo:b.Hi], b.stage)
		}
	}
	return nil
}
