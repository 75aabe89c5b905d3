package ops

// Router kernels (cuda/kernels/router_*.cu): from router logits [N, E] to
// moe.Routing's Probs, Experts and Gates, the aux-loss and z-loss
// statistics, and back to dlogits, matching package moe (moe/router.go,
// moe/grouped.go, moe/score.go, moe/aux.go) in the order moe.Forward and
// moe.Backward use them.
//
// Buffers are row-major device arrays: logits, probs, dlogits, dprobs
// float32 [N, E]; experts int32 [N, K]; gates, dgates float32 [N, K]; bias
// float32 [E] (0 = none); mask uint8 [N], nonzero = counted (a Go []bool's
// bytes; 0 = every token). Statistics are float64 arrays (counts included,
// exact below 2^53) so that a caller may all-reduce one buffer:
//
//	aux stats [2E+1]  SlotSum[E], ProbSum[E], Count   (RouterAuxStats)
//	aux fin   [2E+2]  F[E], P[E], Value, Count        (RouterAuxFinish)
//	z         [3]     Sum, Count, Value               (RouterZLoss)
//	lse       [N]     logsumexp per token             (RouterZLoss)
//
// Everything stays on the device; the host copies back what it reports
// (the aux Value at fin[2E], the z-loss Value at z[2]: 8 bytes each).

import (
	"fmt"
	"math"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/moe"
)

// Router kernel limits: E and K beyond them are rejected.
const (
	RouterMaxExperts = 256
	RouterMaxTopK    = 16
	// routerMaxElems bounds N·E and N·K so that the kernels' 32-bit token
	// loops cannot overflow.
	routerMaxElems = 1 << 30
)

// RouterKind is a router's selection rule; its values are the kernel's.
type RouterKind int

const (
	RouterTopK         RouterKind = iota // moe.TopK
	RouterMoGE                           // moe.MoGE
	RouterGroupLimited                   // moe.GroupLimited
)

// RouterSpec is what the selection kernel needs of a moe.Router.
type RouterSpec struct {
	Kind       RouterKind
	Groups     int // moge, group_limited: expert groups (consecutive blocks)
	TopKGroups int // group_limited: groups kept per token
}

// RouterSpecOf maps a moe router (value or pointer, as moe.New builds them)
// to its spec; other Router implementations are an error.
func RouterSpecOf(r moe.Router) (RouterSpec, error) {
	switch v := r.(type) {
	case moe.TopK, *moe.TopK:
		return RouterSpec{Kind: RouterTopK}, nil
	case moe.MoGE:
		return RouterSpec{Kind: RouterMoGE, Groups: v.Groups}, nil
	case *moe.MoGE:
		return RouterSpec{Kind: RouterMoGE, Groups: v.Groups}, nil
	case moe.GroupLimited:
		return RouterSpec{Kind: RouterGroupLimited, Groups: v.Groups, TopKGroups: v.TopKGroups}, nil
	case *moe.GroupLimited:
		return RouterSpec{Kind: RouterGroupLimited, Groups: v.Groups, TopKGroups: v.TopKGroups}, nil
	}
	return RouterSpec{}, fmt.Errorf("gpu/ops: router %T has no GPU kernel (known: moe.TopK, moe.MoGE, moe.GroupLimited)", r)
}

// check applies moe.New's rules for e experts and top-k.
func (s RouterSpec) check(op string, e, k int) error {
	switch s.Kind {
	case RouterTopK:
		return nil
	case RouterMoGE:
		if s.Groups < 1 || e%s.Groups != 0 || k%s.Groups != 0 {
			return errf(op, "moge: groups = %d must divide experts = %d and top_k = %d", s.Groups, e, k)
		}
		return nil
	case RouterGroupLimited:
		if s.Groups < 1 || e%s.Groups != 0 {
			return errf(op, "group_limited: groups = %d must divide experts = %d", s.Groups, e)
		}
		if s.TopKGroups < 1 || s.TopKGroups > s.Groups {
			return errf(op, "group_limited: topk_groups = %d must be in [1, groups = %d]", s.TopKGroups, s.Groups)
		}
		if k > s.TopKGroups*(e/s.Groups) {
			return errf(op, "group_limited: top_k = %d exceeds the %d experts of topk_groups = %d groups", k, s.TopKGroups*(e/s.Groups), s.TopKGroups)
		}
		return nil
	}
	return errf(op, "unknown router kind %d", s.Kind)
}

// routerDims checks n tokens over e experts.
func routerDims(op string, n, e int) error {
	if n < 0 || e < 1 || e > RouterMaxExperts {
		return errf(op, "n = %d, e = %d: need n >= 0 and 1 <= e <= %d", n, e, RouterMaxExperts)
	}
	if n > routerMaxElems/e {
		return errf(op, "n = %d tokens of %d experts: more than %d elements", n, e, routerMaxElems)
	}
	return nil
}

// routerTopK checks n tokens over e experts with k choices each.
func routerTopK(op string, n, e, k int) error {
	if err := routerDims(op, n, e); err != nil {
		return err
	}
	if k < 1 || k > e || k > RouterMaxTopK {
		return errf(op, "top_k = %d: need 1 <= top_k <= min(e = %d, %d)", k, e, RouterMaxTopK)
	}
	return nil
}

// routerSelectArgs checks n tokens over e experts with k choices each
// (routerTopK), then spec's rules for e and k (RouterSpec.check).
func routerSelectArgs(op string, n, e, k int, spec RouterSpec) error {
	if err := routerTopK(op, n, e, k); err != nil {
		return err
	}
	return spec.check(op, e, k)
}

// routerPtrs errors when a required buffer is null.
func routerPtrs(op string, names string, ps ...cuda.DevicePtr) error {
	for _, p := range ps {
		if p == 0 {
			return errf(op, "null buffer among (%s)", names)
		}
	}
	return nil
}

// RouterScores writes probs [n, e] = softmax or sigmoid of logits [n, e]
// (moe's scoreForward). probs must not alias logits.
func (o *Ops) RouterScores(probs, logits cuda.DevicePtr, n, e int, score moe.Score) error {
	const op = "RouterScores"
	if err := routerDims(op, n, e); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if err := routerPtrs(op, "probs, logits", probs, logits); err != nil {
		return err
	}
	switch score {
	case moe.Softmax:
		return o.launch("router_softmax_f32", o.gridFor(n*32, 256), 256, 0, probs, logits, n, e)
	case moe.Sigmoid:
		return o.launch("router_sigmoid_f32", o.gridFor(n*e, 256), 256, 0, probs, logits, n*e)
	}
	return errf(op, "unknown score %d", score)
}

// RouterScoresBackward ACCUMULATES into dlogits [n, e] the gradient through
// the scores given dprobs and the forward's probs (moe's scoreBackward).
func (o *Ops) RouterScoresBackward(dlogits, dprobs, probs cuda.DevicePtr, n, e int, score moe.Score) error {
	const op = "RouterScoresBackward"
	if err := routerDims(op, n, e); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if err := routerPtrs(op, "dlogits, dprobs, probs", dlogits, dprobs, probs); err != nil {
		return err
	}
	switch score {
	case moe.Softmax:
		return o.launch("router_softmax_backward_f32", o.gridFor(n*32, 256), 256, 0, dlogits, dprobs, probs, n, e)
	case moe.Sigmoid:
		return o.launch("router_sigmoid_backward_f32", o.gridFor(n*e, 256), 256, 0, dlogits, dprobs, probs, n*e)
	}
	return errf(op, "unknown score %d", score)
}

// routerSelectBlock is the selection kernel's block size and dynamic shared
// bytes: each thread keeps its top lists (cap entries of index and key) in
// shared memory; blocks shrink so that they fit the 48 KiB default.
func routerSelectBlock(spec RouterSpec, k int) (threads, shared int) {
	entries := k
	if spec.Kind == RouterGroupLimited {
		entries = k + 2 + spec.TopKGroups
	}
	per := entries * 8
	threads = max(1, min(64, (48<<10)/per))
	return threads, threads * per
}

// RouterSelect is the Select of the moe router that spec stands for
// (moe.TopK, MoGE or GroupLimited): experts [n, k] and gates [n, k] from
// probs [n, e], bit for bit the CPU's (the same experts in the same order,
// ties to the earlier-scanned expert, the same float32 gates). bias [e]
// (0 = none) steers the choice only. One thread per token.
func (o *Ops) RouterSelect(experts, gates, probs, bias cuda.DevicePtr, n, e, k int, spec RouterSpec) error {
	const op = "RouterSelect"
	if err := routerSelectArgs(op, n, e, k, spec); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if err := routerPtrs(op, "experts, gates, probs", experts, gates, probs); err != nil {
		return err
	}
	groups, tg := 1, 0
	switch spec.Kind {
	case RouterMoGE:
		groups = spec.Groups
	case RouterGroupLimited:
		groups, tg = spec.Groups, spec.TopKGroups
	}
	threads, shared := routerSelectBlock(spec, k)
	return o.launch("router_select_f32", o.gridFor(n, threads), threads, shared,
		experts, gates, probs, bias, n, e, k, int(spec.Kind), groups, tg)
}

// RouterBackward ACCUMULATES into dprobs [n, e] the gradient through the
// gates given dgates [n, k] and the forward's probs, experts and gates (the
// router's Backward: renormalised gates for topk and group_limited, the
// scores themselves for moge).
func (o *Ops) RouterBackward(dprobs, dgates, probs, experts, gates cuda.DevicePtr, n, e, k int, spec RouterSpec) error {
	const op = "RouterBackward"
	if err := routerSelectArgs(op, n, e, k, spec); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if err := routerPtrs(op, "dprobs, dgates, probs, experts, gates", dprobs, dgates, probs, experts, gates); err != nil {
		return err
	}
	renorm := 1
	if spec.Kind == RouterMoGE {
		renorm = 0
	}
	return o.launch("router_backward_f32", o.gridFor(n, 128), 128, 0, dprobs, dgates, probs, experts, gates, n, e, k, renorm)
}

// routerStatBlocks splits n tokens into at most 128 blocks of chunk tokens
// (at least 128 each): a function of n alone, so sums do not depend on the
// GPU, and the final reduces stay short.
func routerStatBlocks(n int) (blocks, chunk int) {
	if n <= 0 {
		return 0, 0
	}
	chunk = max(128, (n+127)/128)
	return (n + chunk - 1) / chunk, chunk
}

// RouterAuxScratchBytes is the scratch RouterAuxStats needs for n tokens
// and e experts (at most 128·(12e+4) bytes whatever n).
func RouterAuxScratchBytes(n, e int) int {
	b, _ := routerStatBlocks(n)
	return b*e*12 + b*4
}

// RouterAuxStats is moe.Aux.Accumulate: stats [2e+1] float64 = SlotSum[e],
// ProbSum[e], Count over the counted tokens (mask, 0 = all) of probs [n, e]
// and experts [n, k], deterministically. scratch holds
// RouterAuxScratchBytes(n, e) bytes. n = 0 writes zeros.
func (o *Ops) RouterAuxStats(stats, scratch, probs, experts, mask cuda.DevicePtr, n, e, k int) error {
	const op = "RouterAuxStats"
	if err := routerTopK(op, n, e, k); err != nil {
		return err
	}
	if err := routerPtrs(op, "stats", stats); err != nil {
		return err
	}
	b, chunk := routerStatBlocks(n)
	pprob := scratch
	pslot := scratch.Add(b * e * 8)
	pcount := scratch.Add(b * e * 12)
	if b > 0 {
		if err := routerPtrs(op, "scratch, probs, experts", scratch, probs, experts); err != nil {
			return err
		}
		if err := o.launch("router_aux_partial", b, 256, 0, pprob, pslot, pcount, probs, experts, mask, n, e, k, chunk); err != nil {
			return err
		}
	}
	return o.launch("router_aux_reduce", 1, 256, 0, stats, pprob, pslot, pcount, e, b)
}

// RouterAuxFinish is moe.Aux.Finish for k choices per token: fin [2e+2]
// float64 = F[e], P[e], Value, Count from stats [2e+1] (RouterAuxStats's,
// or their all-reduced sum over ranks). fin must not alias stats. The aux
// loss is fin[2e].
func (o *Ops) RouterAuxFinish(fin, stats cuda.DevicePtr, e, k int) error {
	const op = "RouterAuxFinish"
	if err := routerTopK(op, 0, e, k); err != nil {
		return err
	}
	if err := routerPtrs(op, "fin, stats", fin, stats); err != nil {
		return err
	}
	return o.launch("router_aux_finish", 1, 32, 0, fin, stats, e, k)
}

// RouterAuxBackward is moe.AuxBackward: ACCUMULATES coef·e·F_i/Count into
// dprobs [n, e] for every counted token (mask, 0 = all), F and Count from
// fin (RouterAuxFinish's layout, possibly of global statistics); nothing
// when Count is 0 or coef is 0.
func (o *Ops) RouterAuxBackward(dprobs, fin, mask cuda.DevicePtr, n, e int, coef float64) error {
	const op = "RouterAuxBackward"
	if err := routerDims(op, n, e); err != nil {
		return err
	}
	if n == 0 || coef == 0 {
		return nil
	}
	if err := routerPtrs(op, "dprobs, fin", dprobs, fin); err != nil {
		return err
	}
	// The kernel's double parameter travels as its 8 bytes.
	return o.launch("router_aux_backward", o.gridFor(n*e, 256), 256, 0, dprobs, fin, mask, n, e, math.Float64bits(coef))
}

// RouterZLossScratchBytes is the scratch RouterZLoss needs for n tokens (at
// most 2 KiB whatever n).
func RouterZLossScratchBytes(n int) int {
	b, _ := routerStatBlocks(n)
	return b * 16
}

// RouterZLoss is moe.ZLoss.Forward: lse [n] float64 (every token) and z [3]
// float64 = Sum of lse² over the counted tokens (mask, 0 = all), Count and
// Value = Sum/Count, from logits [n, e], deterministically. scratch holds
// RouterZLossScratchBytes(n) bytes. n = 0 writes zeros to z.
func (o *Ops) RouterZLoss(lse, z, scratch, logits, mask cuda.DevicePtr, n, e int) error {
	const op = "RouterZLoss"
	if err := routerDims(op, n, e); err != nil {
		return err
	}
	if err := routerPtrs(op, "z", z); err != nil {
		return err
	}
	b, chunk := routerStatBlocks(n)
	if b > 0 {
		if err := routerPtrs(op, "lse, scratch, logits", lse, scratch, logits); err != nil {
			return err
		}
		if err := o.launch("router_zloss_partial", b, 256, 0, lse, scratch, logits, mask, n, e, chunk); err != nil {
			return err
		}
	}
	return o.launch("router_zloss_reduce", 1, 32, 0, z, scratch, b)
}

// RouterZLossFinish is moe.ZLoss.Finish: z[2] = z[0]/z[1] (0 without
// counted tokens), after a caller all-reduced z[0:2] over ranks.
func (o *Ops) RouterZLossFinish(z cuda.DevicePtr) error {
	if err := routerPtrs("RouterZLossFinish", "z", z); err != nil {
		return err
	}
	return o.launch("router_zloss_finish", 1, 32, 0, z)
}

// RouterZLossBackward is moe.ZLoss.Backward: ACCUMULATES coef·2·lse_t/Count
// ·softmax(logits_t) into dlogits [n, e] for every counted token (mask, 0 =
// all), lse and Count (z[1]) from RouterZLoss; nothing when Count or coef
// is 0.
func (o *Ops) RouterZLossBackward(dlogits, logits, lse, z, mask cuda.DevicePtr, n, e int, coef float64) error {
	const op = "RouterZLossBackward"
	if err := routerDims(op, n, e); err != nil {
		return err
	}
	if n == 0 || coef == 0 {
		return nil
	}
	if err := routerPtrs(op, "dlogits, logits, lse, z", dlogits, logits, lse, z); err != nil {
		return err
	}
	return o.launch("router_zloss_backward", o.gridFor(n*e, 256), 256, 0, dlogits, logits, lse, z, mask, n, e, math.Float64bits(coef))
}
