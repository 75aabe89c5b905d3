package moe

import (
	"fmt"
	"math"

	"github.com/moetrain/moetrain/tensor"
)

// Exchange is the communication of a sharded MoE layer; a nil Exchange is the
// whole layer on one rank. With expert parallelism (EP members, each holding
// E/EP consecutive experts) the layer dispatches every kept slot's row to the
// member owning its expert with an all-to-all-v and combines the outputs back
// the same way; with tensor parallelism (each expert's hidden dimension split)
// it sums the partial expert outputs, and in the backward the partial input
// gradients, over the tensor-parallel group.
//
// Calls block until done. After a failure an implementation keeps the first
// error (reported by its owner, see model.Comms) and every later call returns
// at once without touching its buffers, so a failed step unwinds instead of
// waiting on peers that have gone.
type Exchange interface {
	// EP is the expert-parallel group's size and this rank's index in it.
	EP() (size, rank int)
	// AllToAllV sends send's consecutive blocks of sendCounts[j] elements to
	// member j and receives recvCounts[j] elements from member j into recv's
	// consecutive blocks, over the expert-parallel group.
	AllToAllV(send []float32, sendCounts []int, recv []float32, recvCounts []int)
	// AllToAllVStart starts the same exchange and returns the wait for it;
	// several may be in flight at once.
	AllToAllVStart(send []float32, sendCounts []int, recv []float32, recvCounts []int) (wait func())
	// TP is the tensor-parallel group's size and this rank's index in it.
	TP() (size, rank int)
	// SumTP adds x element-wise over the tensor-parallel group, in place.
	SumTP(x []float32)
}

// Failer is implemented by an Exchange that keeps a first error, as
// model.Comms does (its Err fails the step): the dispatch reports through it
// row counts from a peer that it cannot use (*CountError). Without it the
// bad counts are still never used: they count as zero rows, and the row
// exchange then fails on the member's rows if it sends any.
type Failer interface {
	Fail(err error)
}

// CountError reports an expert-parallel member that sent a row count this
// rank cannot use: not a finite non-negative integer of at most maxCount,
// or (over the member's counts) more rows than it routes, or not the rows a
// static split fixes.
type CountError struct {
	Member int     // the sender's index in the expert-parallel group
	Expert int     // the global expert the count is for; -1: the member's total
	Count  float64 // what it sent (the total for Expert -1)
	Reason string
}

func (e *CountError) Error() string {
	if e.Expert < 0 {
		return fmt.Sprintf("expert-parallel member %d sent row counts that sum to %v: %s", e.Member, e.Count, e.Reason)
	}
	return fmt.Sprintf("expert-parallel member %d sent a row count of %v for expert %d: %s", e.Member, e.Count, e.Expert, e.Reason)
}

// maxCount bounds one received row count: float32 holds every integer up
// to 2^24 exactly, and dispatch sends no more.
const maxCount = 1 << 24

func tpOf(ex Exchange) int {
	if ex == nil {
		return 1
	}
	n, _ := ex.TP()
	return n
}

// dispatch is the expert-parallel routing of one layer's rows: which rows go
// to which member and, on the receiving side, how the rows received from
// every member are regrouped so that each local expert's rows are contiguous
// (one GEMM per expert).
type dispatch struct {
	ep, el       int
	sendRows     []int   // [EP] rows to member j (plan order: experts of j are contiguous)
	recvRows     []int   // [EP] rows from member j
	counts       []int   // [EP·El] rows from member j for local expert x
	offsets      []int   // [El+1] local expert row offsets in expert-major order
	perm         []int32 // [R] expert-major row r is received row perm[r]
	inv          []int32 // [R] received row i is expert-major row inv[i]
	sendC, recvC []float32
	sendN, recvN []int
	countN       []int     // [EP] El: the count exchange's split
	base         []int     // [EP·El] first received row of (member, expert)
	buf          []float32 // received rows in member order
}

// rows is the number of rows this member's local experts process.
func (dp *dispatch) rows() int { return dp.offsets[dp.el] }

// dispatch sends the plan-order rows [S, d] of p to the members owning their
// experts and writes the rows this member's experts receive, expert-major,
// into *out ([R, d], grown as needed; rows() gives R). The per-expert row
// counts travel alongside. With static, every member routes the same number
// of tokens n and the router's groups give every member exactly n·k/EP rows
// of every other (MoGE with one or more groups per member): the row
// exchange's sizes are known, so it starts together with the count exchange
// instead of after it. A member whose counts break that (another token count)
// makes the exchange fail with a size mismatch, not wrong numbers.
//
// Received counts are checked before anything is sized from them
// (takeCounts): a member's bad ones are reported to ex (Failer) as a
// *CountError naming it and count as zero rows, so the layer never panics
// on them, and allocates for a member at most the n·k rows it can send when
// the exchange reports uniform tokens (else maxCount per count).
func (dp *dispatch) dispatch(ex Exchange, p *Plan, out *[]float32, rows []float32, d int, static bool, n, k int) {
	ep, me := ex.EP()
	e := p.E
	el := e / ep
	dp.ep, dp.el = ep, el
	dp.sendRows = growInt(dp.sendRows, ep)
	dp.recvRows = growInt(dp.recvRows, ep)
	dp.counts = growInt(dp.counts, ep*el)
	dp.offsets = growInt(dp.offsets, el+1)
	dp.sendC = grow(dp.sendC, e)
	dp.recvC = grow(dp.recvC, e)
	dp.sendN = growInt(dp.sendN, ep)
	dp.recvN = growInt(dp.recvN, ep)
	dp.countN = growInt(dp.countN, ep)
	cN := dp.countN
	for j := 0; j < ep; j++ {
		dp.sendRows[j] = p.Offsets[(j+1)*el] - p.Offsets[j*el]
		cN[j] = el
		for x := 0; x < el; x++ {
			dp.sendC[j*el+x] = float32(p.Counts[j*el+x]) // < 2^24 rows: exact
		}
	}
	var r int
	if static {
		for j := 0; j < ep; j++ {
			dp.recvRows[j] = n * k / ep
			dp.sendN[j], dp.recvN[j] = dp.sendRows[j]*d, dp.recvRows[j]*d
		}
		r = n * k
		dp.buf = grow(dp.buf, r*d)
		waitCounts := ex.AllToAllVStart(dp.sendC, cN, dp.recvC, cN)
		waitRows := ex.AllToAllVStart(rows, dp.sendN, dp.buf[:r*d], dp.recvN)
		waitCounts()
		waitRows()
		dp.takeCounts(ex, me, n*k/ep, n*k/ep)
	} else {
		ex.AllToAllV(dp.sendC, cN, dp.recvC, cN)
		// Every member routes n tokens when the exchange says so (a
		// member's rows here are then at most its n·k slots); otherwise
		// only each count is bounded.
		most := el * maxCount
		if u, ok := ex.(interface{ UniformTokens() bool }); ok && u.UniformTokens() {
			most = n * k
		}
		dp.takeCounts(ex, me, -1, most)
		for j := 0; j < ep; j++ {
			dp.recvRows[j] = 0
			for _, c := range dp.counts[j*el : (j+1)*el] {
				dp.recvRows[j] += c
			}
			r += dp.recvRows[j]
			dp.sendN[j], dp.recvN[j] = dp.sendRows[j]*d, dp.recvRows[j]*d
		}
		dp.buf = grow(dp.buf, r*d)
		ex.AllToAllV(rows, dp.sendN, dp.buf[:r*d], dp.recvN)
	}
	dp.regroup(r)
	*out = grow(*out, r*d)
	tensor.GatherRows((*out)[:r*d], dp.buf, dp.perm[:r], d)
}

// takeCounts sets counts from the received counts recvC, which must be,
// per member, finite non-negative integers of at most maxCount that sum to
// want (want >= 0) and to at most most. A member whose counts are not gets
// zeros, and the first such is reported to ex as a *CountError; after a
// failed exchange (ex's Err, if it has one) every member gets zeros. me is
// this rank's index in the group (its experts' numbers).
func (dp *dispatch) takeCounts(ex Exchange, me, want, most int) {
	ep, el := dp.ep, dp.el
	failed := false
	if e, ok := ex.(interface{ Err() error }); ok && e.Err() != nil {
		failed = true // recvC is unspecified: nothing to check
	}
	var first error
	for j := 0; j < ep; j++ {
		cs := dp.counts[j*el : (j+1)*el]
		err := error(nil)
		if !failed {
			err = checkCounts(cs, dp.recvC[j*el:(j+1)*el], j, me*el, want, most)
		}
		if failed || err != nil {
			clear(cs)
			if first == nil {
				first = err
			}
		}
	}
	if first != nil {
		if f, ok := ex.(Failer); ok {
			f.Fail(first)
		}
	}
}

// checkCounts converts member's received counts rc (for the experts from
// expert0 on) into cs, or returns why it cannot (see takeCounts).
func checkCounts(cs []int, rc []float32, member, expert0, want, most int) error {
	sum := 0
	for x, c := range rc {
		bad := func(why string) error {
			return &CountError{Member: member, Expert: expert0 + x, Count: float64(c), Reason: why}
		}
		switch v := float64(c); {
		case math.IsNaN(v):
			return bad("not a number")
		case math.IsInf(v, 0):
			return bad("infinite")
		case v < 0:
			return bad("negative")
		case v > maxCount:
			return bad(fmt.Sprintf("more than %d", maxCount))
		case v != math.Trunc(v):
			return bad("not an integer")
		}
		cs[x] = int(c)
		sum += cs[x]
	}
	switch {
	case want >= 0 && sum != want:
		return &CountError{Member: member, Expert: -1, Count: float64(sum), Reason: fmt.Sprintf("a static split fixes %d rows per member", want)}
	case sum > most:
		return &CountError{Member: member, Expert: -1, Count: float64(sum), Reason: fmt.Sprintf("more than the %d rows a member can send here", most)}
	}
	return nil
}

// regroup builds the expert-major order of r received rows (member-major,
// then expert, as they arrive).
func (dp *dispatch) regroup(r int) {
	ep, el := dp.ep, dp.el
	dp.perm = growInt32(dp.perm, r)
	dp.inv = growInt32(dp.inv, r)
	dp.base = growInt(dp.base, ep*el)
	base := dp.base
	at := 0
	for j := 0; j < ep; j++ {
		for x := 0; x < el; x++ {
			base[j*el+x] = at
			at += dp.counts[j*el+x]
		}
	}
	k := 0
	for x := 0; x < el; x++ {
		dp.offsets[x] = k
		for j := 0; j < ep; j++ {
			for i := 0; i < dp.counts[j*el+x] && k < r && base[j*el+x]+i < r; i++ {
				dp.perm[k] = int32(base[j*el+x] + i)
				dp.inv[base[j*el+x]+i] = int32(k)
				k++
			}
		}
	}
	for ; k < r; k++ { // counts inconsistent with r: only after a failed exchange
		dp.perm[k], dp.inv[k] = 0, 0
	}
	dp.offsets[el] = r
}

// forward sends rows [S, d] (plan order) the way the last dispatch went and
// writes the received rows, expert-major, into out [R, d] (the backward's
// output gradients follow their forward rows).
func (dp *dispatch) forward(ex Exchange, out, rows []float32, d int) {
	r := dp.rows()
	dp.buf = grow(dp.buf, r*d)
	for j := 0; j < dp.ep; j++ {
		dp.sendN[j], dp.recvN[j] = dp.sendRows[j]*d, dp.recvRows[j]*d
	}
	ex.AllToAllV(rows, dp.sendN, dp.buf[:r*d], dp.recvN)
	tensor.GatherRows(out[:r*d], dp.buf, dp.perm[:r], d)
}

// backward is forward's inverse: local rows [R, d] (expert-major) go back to
// the members that sent them, arriving in plan order in out [S, d].
func (dp *dispatch) backward(ex Exchange, out, local []float32, d int) {
	r := dp.rows()
	dp.buf = grow(dp.buf, r*d)
	tensor.GatherRows(dp.buf[:r*d], local, dp.inv[:r], d)
	for j := 0; j < dp.ep; j++ {
		dp.sendN[j], dp.recvN[j] = dp.recvRows[j]*d, dp.sendRows[j]*d
	}
	ex.AllToAllV(dp.buf[:r*d], dp.sendN, out, dp.recvN)
}

func growInt(s []int, n int) []int {
	if cap(s) < n {
		return make([]int, n)
	}
	return s[:n]
}
