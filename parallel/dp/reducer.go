package dp

import (
	"context"
	"fmt"
	"math"
	"sort"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/tensor"
)

// Reducer reduces one rank's flat gradient buffer over the data-parallel
// group (on a mesh: dense tensors over the DP·SP plane, expert tensors over
// the expert-data-parallel group; see NewReducer), bucket by bucket. Per
// step:
//
//	r.Begin(ctx)                  // before the forward
//	forward + backward, with r.Hook() as the model's OnGradsReady
//	r.Finish(ctx)                 // before the optimizer
//
// The gradients must already be scaled for the global batch (the model
// normalises its loss by the global target count and uses global aux
// statistics, as model.Model with Comms does): the reducer only sums them.
// After Finish the whole buffer holds the global-batch gradient (ZeRO-1 off),
// or this rank's shards (ShardRanges) do (ZeRO-1 on; the rest of the buffer
// is then undefined). With ZeRO-1 the caller then computes GlobalNorm,
// updates its shards and calls GatherParams. Not safe for concurrent use;
// the hook runs on the backward's goroutine.
//
// Bucket boundaries. With ZeRO-1 the buckets are fixed at construction
// (PlanBuckets: the optimizer-state shards are cut from them). Without it
// they are cut during each step from the top of the buffer down, as the
// backward reports gradients final: at bucket_mb on entry boundaries (as
// PlanBuckets), between expert and dense entries when they reduce over
// different groups, and also at each boundary the backward reports once the
// open bucket holds at least min(1 MiB, bucket_mb). A bucket therefore never
// waits for gradients it does not hold, so what is left to reduce when the
// backward ends is at most its last reported range (the embeddings) instead
// of up to a whole bucket_mb. The cut depends only on the layout, the
// configuration and the sequence of ranges the backward reports, which is
// the same on every rank and in every step (and without the hook, it is
// PlanBuckets' plan); ranks that disagree fail with a size-mismatch error
// from the collective rather than mixing up ranges.
type Reducer struct {
	cfg     Config
	grads   []float32
	dense   *collective.Comm
	expert  *collective.Comm
	buckets []bucket

	// Per-step cutting (ZeRO-1 off): the non-empty layout entries from the
	// top of the buffer down, the bucket cap and the least size at which a
	// reported boundary closes a bucket.
	dynamic    bool
	desc       []span
	maxFloats  int
	minFloats  int
	splitGroup bool

	ctx    context.Context
	ready  int // every gradient at or above this offset is final
	next   int // first bucket not started
	reqs   []*collective.Request
	err    error
	active bool
}

// span is a non-empty layout entry's range of the flat buffer.
type span struct {
	lo, hi int
	expert bool
}

// minReadyFloats is the least size (1 MiB of float32) at which a boundary
// reported by the backward closes a bucket: smaller ranges merge so that a
// model with many small layers does not pay one collective's latency (tens
// of µs over TCP) per range, while 1 MiB already moves in about a
// millisecond at 1 GB/s.
const minReadyFloats = 1 << 18

type bucket struct {
	Bucket
	comm  *collective.Comm
	n, k  int       // group size, this rank's index in it
	s     int       // shard length ⌈len/n⌉
	stage []float32 // ZeRO-1 staging, padded to n·s; nil when len = n·s
}

// NewReducer plans the buckets of layout over grads (length layout.Total).
// dense is the group over which dense tensors reduce: every rank holding
// other tokens of the step (on a mesh the DP·SP plane at this rank's tp,
// parallel.AxisPlane, which is the data-parallel group when SP = 1); expert
// the expert-data-parallel group over which expert tensors reduce (nil or
// the same *Comm as dense when EP = 1: then expert and dense tensors may
// share buckets).
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
	r := &Reducer{cfg: cfg, grads: grads, dense: dense, expert: expert,
		dynamic: !cfg.Zero1, maxFloats: cfg.BucketFloats(), splitGroup: expert != dense}
	r.minFloats = min(minReadyFloats, r.maxFloats)
	next := 0
	for i, e := range layout.Entries {
		if e.Offset != next {
			return nil, fmt.Errorf("dp: layout entry %d (%s) starts at %d, want %d: the entries must tile the buffer in order", i, e.Name, e.Offset, next)
		}
		next += e.Size()
	}
	for i := len(layout.Entries) - 1; i >= 0; i-- {
		if e := layout.Entries[i]; e.Size() > 0 {
			r.desc = append(r.desc, span{lo: e.Offset, hi: e.Offset + e.Size(), expert: e.Expert})
		}
	}
	for _, b := range PlanBuckets(layout, r.maxFloats, r.splitGroup) {
		r.buckets = append(r.buckets, r.newBucket(b))
	}
	return r, nil
}

// newBucket binds b to its communicator (and ZeRO-1 staging).
func (r *Reducer) newBucket(b Bucket) bucket {
	c := r.dense
	if b.Expert {
		c = r.expert
	}
	bs := bucket{Bucket: b, comm: c, n: c.Size(), k: c.Rank()}
	bs.s = (b.Len() + bs.n - 1) / bs.n
	if r.cfg.Zero1 && bs.n*bs.s != b.Len() {
		bs.stage = make([]float32, bs.n*bs.s)
	}
	return bs
}

// Buckets lists the buckets in launch order (decreasing offsets): with
// ZeRO-1 the fixed plan; without it those of the last finished step (before
// the first one, PlanBuckets' plan, which is also every step's when the hook
// is not installed).
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

// Begin starts a step. ctx cancels the step's waits until Finish; each
// collective also carries the communicator's own deadline from its start,
// so no wait is unbounded.
func (r *Reducer) Begin(ctx context.Context) error {
	if r.active {
		return fmt.Errorf("dp: Begin while the previous step's reduction is unfinished (call Finish)")
	}
	r.active, r.ctx, r.err = true, ctx, nil
	r.ready, r.next, r.reqs = len(r.grads), 0, r.reqs[:0]
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

// launch starts every bucket whose gradients are all final (at or above
// r.ready): the fixed plan's next ones under ZeRO-1, otherwise those cut
// now (see Reducer).
func (r *Reducer) launch() {
	if r.dynamic {
		r.cut()
		return
	}
	for r.err == nil && r.next < len(r.buckets) && r.buckets[r.next].Lo >= r.ready {
		r.next++
		r.start(&r.buckets[r.next-1])
	}
}

// cut closes and starts buckets from the top of the unstarted part of the
// buffer down, over final gradients only: a bucket closes where one more
// entry would pass the cap or change the reduction group, or where the
// final part ends if that is a reported boundary and the bucket holds at
// least minFloats (any size once everything is final). The buckets started
// in this step are r.buckets[:r.next].
func (r *Reducer) cut() {
	for r.err == nil {
		top := len(r.grads)
		if r.next > 0 {
			top = r.buckets[r.next-1].Lo
		}
		// desc is ordered by decreasing hi; find the entry ending at top.
		i := sort.Search(len(r.desc), func(i int) bool { return r.desc[i].hi <= top })
		lo, expert, closed := top, true, false
		for ; i < len(r.desc) && r.desc[i].lo >= r.ready; i++ {
			e := r.desc[i]
			if lo < top && (top-e.lo > r.maxFloats || (r.splitGroup && e.expert != expert)) {
				closed = true
				break
			}
			lo, expert = e.lo, expert && e.expert
		}
		if lo == top || !(closed || lo == r.ready && (lo == 0 || top-lo >= r.minFloats)) {
			return
		}
		b := Bucket{Lo: lo, Hi: top, Expert: expert}
		if r.next == len(r.buckets) {
			r.buckets = append(r.buckets, r.newBucket(b))
		} else if r.buckets[r.next].Bucket != b {
			r.buckets[r.next] = r.newBucket(b)
		}
		r.next++
		r.start(&r.buckets[r.next-1])
	}
}

// start starts bucket b's reduction.
func (r *Reducer) start(b *bucket) {
	g := r.grads[b.Lo:b.Hi]
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
	if r.dynamic && r.err == nil {
		r.buckets = r.buckets[:r.next] // drop the previous step's extra cuts
	}
	werr := collective.WaitAll(ctx, r.reqs...)
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
