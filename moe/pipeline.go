package moe

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/moetrain/moetrain/tensor"
)

// AutoChunks as ExchangeOptions.Chunks lets every layer choose its chunk
// count from measured step times (see tuner).
const AutoChunks = -1

// MaxChunks bounds the chunk count of one layer's exchange.
const MaxChunks = 16

// ExchangeOptions shape the expert-parallel exchange of a layer; the zero
// value is the unpipelined fp32 exchange. They change no result beyond
// float reordering, except DType (docs/algorithms/ep-dispatch.md).
type ExchangeOptions struct {
	// Chunks splits the dispatch, the expert GEMMs and the combine into
	// that many row chunks, so that chunk i's GEMMs overlap the exchanges
	// of the others (forward and backward): 0 or 1 is unpipelined,
	// AutoChunks is chosen at run time.
	Chunks int
	// DType is the forward dispatch's element type. The forward combine
	// travels as bfloat16 whenever DType is not FP32 (fp8's range needs a
	// scale that the gated sum of outputs would not keep); the backward's
	// exchanges are always FP32.
	DType DType
}

func (o ExchangeOptions) validate() error {
	if o.Chunks != AutoChunks && (o.Chunks < 0 || o.Chunks > MaxChunks) {
		return fmt.Errorf("exchange chunks %d: want 0 or 1 (unpipelined), 2..%d, or AutoChunks", o.Chunks, MaxChunks)
	}
	if o.DType > FP8E4M3 {
		return fmt.Errorf("exchange dtype %d: unknown", o.DType)
	}
	return nil
}

// piped reports whether the layer takes the chunked exchange path.
func (o ExchangeOptions) piped() bool {
	return o.Chunks == AutoChunks || o.Chunks > 1 || o.DType != FP32
}

func (o ExchangeOptions) combineType() DType {
	if o.DType == FP32 {
		return FP32
	}
	return BF16
}

// Timing is what the last Forward and Backward of a layer spent on its
// expert-parallel part, from the first packed row to the last unpacked one
// (exchanges, expert GEMMs and their overlap), and of that the time spent
// waiting for exchanges (the chunked path only).
type Timing struct {
	Chunks             int
	Forward, Backward  time.Duration
	FwdWait, BwdWait   time.Duration
	FwdBytes, BwdBytes int // bytes this rank sent, its own rows included
}

// ChunkChoice is one change of a layer's chunk count by its tuner: after
// Step forwards it moves From → To, given Times, the median step time (the
// layer's forward and backward EP part) measured for each candidate.
type ChunkChoice struct {
	Step     int
	From, To int
	Times    map[int]time.Duration
}

// pipe is the chunked expert-parallel exchange. The rows for member q (its
// block of the plan) go in C chunks: chunk c of block q is its rows
// [c·S_q/C, (c+1)·S_q/C). On the receiving side the buffer holds chunk
// after chunk, each member after member, and the local rows (XL, YL, …)
// are kept chunk after chunk, each expert-major, so that chunk c's GEMMs
// read only chunk c's rows. With C = 1 this is the unpipelined layout.
type pipe struct {
	c, ep, el, d int
	opt          ExchangeOptions
	sLo, rLo     []int   // [(C+1)·EP] chunk c of block q starts at row sLo[c·EP+q] of it
	sPos, rPos   []int   // [C·EP+1] first buffer row of chunk c, member q
	offs         []int   // [C·(El+1)] expert-major offsets of chunk c, from its first row
	perm         []int32 // [R] local row k is buffer row perm[k]
	send, recv   []float32
	csend, crecv []float32
	sN, rN       []int // [C·EP] word counts of each chunk's exchange
	waits        []func()
	timing       Timing
	tune         tuner
}

// agree runs the count exchange with every member's proposed chunk count
// appended to its counts, and returns member 0's proposal: every member
// uses it, so that all chunk the same way. A proposal that is not an
// integer in [1, MaxChunks] is reported (Failer) and counts as 1. With a
// static split (static >= 0 rows from every member) the rows expected are
// the split's, as on the unpipelined path: a member whose counts disagree
// gets zero counts here and its row exchange fails on the sizes.
func (pp *pipe) agree(ex Exchange, dp *dispatch, p *Plan, propose int, static, most int) int {
	ep, me := ex.EP()
	el := p.E / ep
	dp.ep, dp.el = ep, el
	dp.sendRows = growInt(dp.sendRows, ep)
	dp.recvRows = growInt(dp.recvRows, ep)
	dp.counts = growInt(dp.counts, ep*el)
	dp.offsets = growInt(dp.offsets, el+1)
	dp.recvC = grow(dp.recvC, ep*el)
	dp.countN = growInt(dp.countN, ep)
	pp.send = grow(pp.send, ep*(el+1))
	pp.recv = grow(pp.recv, ep*(el+1))
	for j := 0; j < ep; j++ {
		dp.sendRows[j] = p.Offsets[(j+1)*el] - p.Offsets[j*el]
		dp.countN[j] = el + 1
		for x := 0; x < el; x++ {
			pp.send[j*(el+1)+x] = float32(p.Counts[j*el+x]) // < 2^24 rows: exact
		}
		pp.send[j*(el+1)+el] = float32(propose)
	}
	ex.AllToAllV(pp.send[:ep*(el+1)], dp.countN, pp.recv[:ep*(el+1)], dp.countN)
	for j := 0; j < ep; j++ {
		copy(dp.recvC[j*el:(j+1)*el], pp.recv[j*(el+1):j*(el+1)+el])
	}
	dp.takeCounts(ex, me, -1, most)
	for j := 0; j < ep; j++ {
		dp.recvRows[j] = 0
		for _, c := range dp.counts[j*el : (j+1)*el] {
			dp.recvRows[j] += c
		}
		if static >= 0 && dp.recvRows[j] != static {
			clear(dp.counts[j*el : (j+1)*el])
			dp.recvRows[j] = static
		}
	}
	if e, ok := ex.(interface{ Err() error }); ok && e.Err() != nil {
		return 1
	}
	c := pp.recv[el]
	if !(c >= 1 && c <= MaxChunks && c == float32(math.Trunc(float64(c)))) {
		if f, ok := ex.(Failer); ok {
			f.Fail(&CountError{Member: 0, Expert: -1, Count: float64(c), Reason: fmt.Sprintf("not a chunk count in 1..%d", MaxChunks)})
		}
		return 1
	}
	return int(c)
}

// layout fixes the chunk geometry for C chunks from the agreed counts.
func (pp *pipe) layout(dp *dispatch, c int) {
	ep, el := dp.ep, dp.el
	pp.c, pp.ep, pp.el = c, ep, el
	pp.sLo = growInt(pp.sLo, (c+1)*ep)
	pp.rLo = growInt(pp.rLo, (c+1)*ep)
	pp.sPos = growInt(pp.sPos, c*ep+1)
	pp.rPos = growInt(pp.rPos, c*ep+1)
	pp.offs = growInt(pp.offs, c*(el+1))
	var s, r int
	for i := 0; i <= c; i++ {
		for q := 0; q < ep; q++ {
			pp.sLo[i*ep+q] = i * dp.sendRows[q] / c
			pp.rLo[i*ep+q] = i * dp.recvRows[q] / c
		}
	}
	for i := 0; i < c; i++ {
		for q := 0; q < ep; q++ {
			pp.sPos[i*ep+q], pp.rPos[i*ep+q] = s, r
			s += pp.sLo[(i+1)*ep+q] - pp.sLo[i*ep+q]
			r += pp.rLo[(i+1)*ep+q] - pp.rLo[i*ep+q]
		}
	}
	pp.sPos[c*ep], pp.rPos[c*ep] = s, r
	// Expert-major order inside each chunk: expert x's rows from member j
	// are rows [base, base+count) of j's block; chunk i holds the part in
	// [rLo(i, j), rLo(i+1, j)).
	pp.perm = growInt32(pp.perm, r)
	k := 0
	for i := 0; i < c; i++ {
		k0 := k
		for x := 0; x < el; x++ {
			pp.offs[i*(el+1)+x] = k - k0
			for j := 0; j < ep; j++ {
				base := 0
				for y := 0; y < x; y++ {
					base += dp.counts[j*el+y]
				}
				lo := max(base, pp.rLo[i*ep+j])
				hi := min(base+dp.counts[j*el+x], pp.rLo[(i+1)*ep+j])
				for row := lo; row < hi; row++ {
					pp.perm[k] = int32(pp.rPos[i*ep+j] + row - pp.rLo[i*ep+j])
					k++
				}
			}
		}
		pp.offs[i*(el+1)+el] = k - k0
		for ; k < pp.rPos[(i+1)*ep]; k++ { // counts short of a static split: the exchange fails
			pp.perm[k] = int32(pp.rPos[i*ep])
		}
	}
}

// rows is the number of local rows.
func (pp *pipe) rows() int { return pp.rPos[pp.c*pp.ep] }

// chunkRows is the local row range of chunk i.
func (pp *pipe) chunkRows(i int) (lo, hi int) { return pp.rPos[i*pp.ep], pp.rPos[(i+1)*pp.ep] }

// start starts one direction of chunk i's exchange (w words per row): dir 0 sends
// plan rows (src in send order) and receives local rows (dst); dir 1 the reverse.
func (pp *pipe) start(ex Exchange, i, w int, dir int, src, dst []float32) func() {
	ep := pp.ep
	sN, rN := pp.sN[i*ep:(i+1)*ep], pp.rN[i*ep:(i+1)*ep]
	sp, rp := pp.sPos, pp.rPos
	if dir == 1 {
		sp, rp = rp, sp
	}
	for q := 0; q < ep; q++ {
		sN[q] = (sp[i*ep+q+1] - sp[i*ep+q]) * w
		rN[q] = (rp[i*ep+q+1] - rp[i*ep+q]) * w
	}
	return ex.AllToAllVStart(src[sp[i*ep]*w:sp[(i+1)*ep]*w], sN, dst[rp[i*ep]*w:rp[(i+1)*ep]*w], rN)
}

// packPlan packs chunk i of the plan-order rows [S, d] into buf (send
// order, t words per row); planOff[q] is block q's first plan row.
func (pp *pipe) packPlan(t DType, buf, rows []float32, planOff []int, i, d int) {
	w := t.Words(d)
	pp.eachPlanRow(planOff, i, func(row, slot int) {
		packRow(t, buf[slot*w:(slot+1)*w], rows[row*d:(row+1)*d])
	})
}

// unpackPlan is packPlan's inverse for chunk i.
func (pp *pipe) unpackPlan(t DType, rows, buf []float32, planOff []int, i, d int) {
	w := t.Words(d)
	pp.eachPlanRow(planOff, i, func(row, slot int) {
		unpackRow(t, rows[row*d:(row+1)*d], buf[slot*w:(slot+1)*w])
	})
}

// eachPlanRow calls f(row, slot) for every row of chunk i, in parallel:
// row is its index in plan order, slot its index in the send buffer.
func (pp *pipe) eachPlanRow(planOff []int, i int, f func(row, slot int)) {
	for q := 0; q < pp.ep; q++ {
		lo, hi := pp.sLo[i*pp.ep+q], pp.sLo[(i+1)*pp.ep+q]
		at, first := pp.sPos[i*pp.ep+q], planOff[q]+lo
		tensor.ParallelFor(hi-lo, 64, func(a, b int) {
			for r := a; r < b; r++ {
				f(first+r, at+r)
			}
		})
	}
}

// gatherLocal unpacks chunk i's received rows into local (expert-major).
func (pp *pipe) gatherLocal(t DType, local, buf []float32, i, d int) {
	w := t.Words(d)
	pp.eachLocalRow(i, func(k, r int) {
		unpackRow(t, local[k*d:(k+1)*d], buf[r*w:(r+1)*w])
	})
}

// scatterLocal packs chunk i's local rows back into buffer (receive) order.
func (pp *pipe) scatterLocal(t DType, buf, local []float32, i, d int) {
	w := t.Words(d)
	pp.eachLocalRow(i, func(k, r int) {
		packRow(t, buf[r*w:(r+1)*w], local[k*d:(k+1)*d])
	})
}

// eachLocalRow calls f(k, r) for every local row k of chunk i, in
// parallel: r is its row in the receive buffer.
func (pp *pipe) eachLocalRow(i int, f func(k, r int)) {
	lo, hi := pp.chunkRows(i)
	tensor.ParallelFor(hi-lo, 64, func(a, b int) {
		for k := lo + a; k < lo+b; k++ {
			f(k, int(pp.perm[k]))
		}
	})
}

// planOffsets returns block q's first plan row for every member.
func planOffsets(dst []int, p *Plan, ep, el int) []int {
	dst = growInt(dst, ep)
	for q := 0; q < ep; q++ {
		dst[q] = p.Offsets[q*el]
	}
	return dst
}

// run moves rows through the experts chunk by chunk: every chunk's outgoing
// exchange is started at once (links carry them in order), then for each
// chunk in turn: wait for it, unpack, compute, pack and start its return.
// in is plan order [S, d] (dispatch type tIn), out receives plan order
// [S, d] (type tOut); compute(i, lo, hi) works on local rows [lo, hi)
// (unpacked into local before, packed from result after). It returns the
// time spent waiting and the bytes sent.
func (pp *pipe) run(ex Exchange, in, out, local, result []float32, planOff []int, tIn, tOut DType, compute func(i, lo, hi int)) (time.Duration, int) {
	d, c := pp.d, pp.c
	wi, wo := tIn.Words(d), tOut.Words(d)
	sRows, rRows := pp.sPos[c*pp.ep], pp.rows()
	pp.send = grow(pp.send, sRows*wi)
	pp.recv = grow(pp.recv, rRows*wi)
	pp.csend = grow(pp.csend, rRows*wo)
	pp.crecv = grow(pp.crecv, sRows*wo)
	pp.sN = growInt(pp.sN, c*pp.ep)
	pp.rN = growInt(pp.rN, c*pp.ep)
	if cap(pp.waits) < 2*c {
		pp.waits = make([]func(), 2*c)
	}
	waits := pp.waits[:2*c]
	for i := 0; i < c; i++ {
		pp.packPlan(tIn, pp.send, in, planOff, i, d)
		waits[i] = pp.start(ex, i, wi, 0, pp.send, pp.recv)
	}
	// Chunk i's return reuses its word counts (sN, rN of chunk i) only
	// after its outgoing exchange has been waited for.
	var waited time.Duration
	wait := func(f func()) {
		t0 := time.Now()
		f()
		waited += time.Since(t0)
	}
	for i := 0; i < c; i++ {
		wait(waits[i])
		lo, hi := pp.chunkRows(i)
		pp.gatherLocal(tIn, local, pp.recv, i, d)
		compute(i, lo, hi)
		pp.scatterLocal(tOut, pp.csend, result, i, d)
		waits[c+i] = pp.start(ex, i, wo, 1, pp.csend, pp.crecv)
	}
	for i := 0; i < c; i++ {
		wait(waits[c+i])
		pp.unpackPlan(tOut, out, pp.crecv, planOff, i, d)
	}
	return waited, 4 * (sRows*wi + rRows*wo)
}

// tuner chooses a layer's chunk count from measured times: it runs each
// candidate for tuneSamples forwards, keeps the one with the lowest median
// time (the layer's EP part, forward plus backward), holds it for
// tuneHold forwards and then measures again, so that a changed load (rows
// per step, link speed) is followed. Only member 0's tuner decides (see
// agree); chunking changes no result beyond float reordering.
type tuner struct {
	i     int // candidate under measurement; len(tuneCands) when holding
	times map[int][]time.Duration
	best  int
	hold  int
	step  int
	log   []ChunkChoice
}

var tuneCands = []int{1, 2, 4, 8}

const (
	tuneSamples = 3
	tuneHold    = 500
)

func (t *tuner) propose() int {
	if t.best == 0 && t.times == nil {
		t.times = map[int][]time.Duration{}
	}
	if t.i < len(tuneCands) {
		return tuneCands[t.i]
	}
	return t.best
}

// record notes that a forward and backward with c chunks took d.
func (t *tuner) record(c int, d time.Duration) {
	t.step++
	if t.times == nil {
		t.times = map[int][]time.Duration{}
	}
	if t.i >= len(tuneCands) {
		if t.hold--; t.hold <= 0 {
			t.i = 0
			clear(t.times)
		}
		return
	}
	if c != tuneCands[t.i] {
		return // another member's choice (only member 0's counts)
	}
	t.times[c] = append(t.times[c], d)
	if len(t.times[c]) < tuneSamples {
		return
	}
	if t.i++; t.i < len(tuneCands) {
		return
	}
	med := map[int]time.Duration{}
	best := 0
	for _, cand := range tuneCands {
		med[cand] = medianDur(t.times[cand])
		if best == 0 || med[cand] < med[best] {
			best = cand
		}
	}
	if best != t.best {
		t.log = append(t.log, ChunkChoice{Step: t.step, From: t.best, To: best, Times: med})
		if len(t.log) > 64 {
			t.log = t.log[len(t.log)-64:]
		}
	}
	t.best, t.hold = best, tuneHold
}

// medianDur is the upper median of xs (not modified).
func medianDur(xs []time.Duration) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// ExchangeTiming is the last Forward and Backward's EP timing (zero
// Chunks unless they took the chunked path).
func (st *State) ExchangeTiming() Timing { return st.pp.timing }

// ChunkLog is the tuner's changes of this layer's chunk count, oldest
// first (at most the last 64); From 0 is the first choice.
func (st *State) ChunkLog() []ChunkChoice { return st.pp.tune.log }

// pipeForward is Forward's expert-parallel part on the chunked path: the
// rows X [S, D] (plan order) go to their experts' members and the outputs
// come back into Y.
func (st *State) pipeForward(w Weights, dm Dims, opt ExchangeOptions) {
	t0 := time.Now()
	p, pp, dp := &st.Plan, &st.pp, &st.disp
	n, d, s := st.N, dm.D, st.Plan.Slots()
	ep, _ := st.Ex.EP()
	el := dm.E / ep
	pp.opt, pp.d = opt, d
	propose := max(opt.Chunks, 1)
	if opt.Chunks == AutoChunks {
		propose = pp.tune.propose()
	}
	static, most := -1, el*maxCount
	if u, ok := st.Ex.(interface{ UniformTokens() bool }); ok && u.UniformTokens() {
		most = n * dm.K
	}
	if st.StaticSplit {
		static = n * dm.K / ep
	}
	c := pp.agree(st.Ex, dp, p, propose, static, most)
	pp.layout(dp, c)
	r := pp.rows()
	st.XL = grow(st.XL, r*d)
	st.YL = grow(st.YL, r*d)
	st.Hpre = grow(st.Hpre, r*dm.H)
	st.Hact = grow(st.Hact, r*dm.H)
	st.planOff = planOffsets(st.planOff, p, ep, el)
	h := dm.H
	waited, bytes := pp.run(st.Ex, st.X[:s*d], st.Y[:s*d], st.XL, st.YL, st.planOff, opt.DType, opt.combineType(), func(i, lo, hi int) {
		Experts{D: d, H: h}.Forward(st.YL[lo*d:], st.Hpre[lo*h:], st.Hact[lo*h:], st.XL[lo*d:], w.W1, w.W2, pp.offs[i*(el+1):(i+1)*(el+1)])
	})
	pp.timing = Timing{Chunks: c, Forward: time.Since(t0), FwdWait: waited, FwdBytes: bytes}
}

// pipeBackward is Backward's expert-parallel part on the chunked path:
// dY [S, D] (gated, plan order) goes where the forward's rows went (fp32),
// the experts' weight gradients accumulate chunk by chunk, and the input
// gradients come back into dX [S, D].
func (st *State) pipeBackward(dw, w Weights, dm Dims, sc *Scratch) {
	t0 := time.Now()
	pp := &st.pp
	d, h, s, el := dm.D, dm.H, st.Plan.Slots(), pp.el
	r := pp.rows()
	sc.dYL = grow(sc.dYL, r*d)
	sc.dXL = grow(sc.dXL, r*d)
	sc.dHact = grow(sc.dHact, r*h)
	sc.dHpre = grow(sc.dHpre, r*h)
	waited, bytes := pp.run(st.Ex, sc.dY[:s*d], sc.dX[:s*d], sc.dYL, sc.dXL, st.planOff, FP32, FP32, func(i, lo, hi int) {
		Experts{D: d, H: h}.Backward(sc.dXL[lo*d:], dw.W1, dw.W2, sc.dHact[lo*h:], sc.dHpre[lo*h:], sc.dYL[lo*d:],
			st.XL[lo*d:], st.Hpre[lo*h:], st.Hact[lo*h:], w.W1, w.W2, pp.offs[i*(el+1):(i+1)*(el+1)])
	})
	t := &pp.timing
	t.Backward, t.BwdWait, t.BwdBytes = time.Since(t0), waited, bytes
	if pp.opt.Chunks == AutoChunks {
		pp.tune.record(t.Chunks, t.Forward+t.Backward)
	}
}
