package ops

import (
	"math"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/moe"
)

// Launch shapes of cuda/kernels/plan.cu: its kThreads and kChunk.
const (
	planThreads = 256
	planChunk   = 2048
	planWarps   = planThreads / 32
)

// PlanWorkBytes is the scratch PlanBuild needs for n tokens, e experts and
// k choices: per-chunk expert histograms, and for the probability policy
// each over-capacity expert's choices, their scores and keep flags.
func PlanWorkBytes(n, e, k int) int {
	nk := n * k
	chunks := (nk + planChunk - 1) / planChunk
	return 4 * max(1, chunks*e+e+3*nk)
}

// PlanBuild builds the dispatch plan of a routing on the device, exactly as
// moe.Plan.BuildCapacity does on the CPU. Inputs: experts [N, K] int32,
// gates [N, K] float32 and probs [N, E] float32 router scores (read only by
// the probability policy with a capacity; may be 0 otherwise); capacity < 0
// is dropless. Outputs, moe.Plan's fields (int32 unless said):
//
//	routed   [E]    choices per expert before the capacity (Plan.Routed)
//	counts   [E]    kept slots per expert
//	offsets  [E+1]  exclusive prefix sums of counts
//	token    [N·K]  token of each kept slot: first S = offsets[E] written
//	slotGate [N·K]  float32 gate of each kept slot (Plan.Gate), first S
//	slotOf   [N·K]  slot of choice t·K+j, −1 when dropped
//
// work is scratch of PlanWorkBytes(N, E, K) bytes. Every integer output
// equals the CPU plan's, slotGate is copied bit for bit, and the result is
// deterministic. Choices whose expert is outside [0, E) are dropped (the
// CPU plan would panic); scores must not be NaN.
//
// Everything stays on the device and nothing is synchronised: the caller
// copies offsets (E+1 int32) back once per layer to size the expert GEMMs;
// S = offsets[E] and Dropped = N·K − S.
//
// Kernels: plan_histogram, plan_routed, plan_assign, and for the
// probability policy with a capacity plan_rank and plan_kept.
func (o *Ops) PlanBuild(routed, counts, offsets, token, slotGate, slotOf, work, experts, gates, probs cuda.DevicePtr, n, e, k, capacity int, policy moe.DropPolicy) error {
	const op = "PlanBuild"
	if n < 0 || e < 1 || k < 1 || k > e {
		return errf(op, "n=%d e=%d k=%d: need n >= 0 and 1 <= k <= e", n, e, k)
	}
	nk := n * k
	if nk > math.MaxInt32-planChunk || n*e > math.MaxInt32 || int64(PlanWorkBytes(n, e, k)) > math.MaxInt32 {
		return errf(op, "n=%d e=%d k=%d: too large for 32-bit indices", n, e, k)
	}
	byScore := capacity >= 0 && policy == moe.DropProbability
	if routed == 0 || counts == 0 || offsets == 0 {
		return errf(op, "nil routed, counts or offsets")
	}
	if nk == 0 {
		if err := o.C.Zero(o.S, routed, 4*e); err != nil {
			return err
		}
		if err := o.C.Zero(o.S, counts, 4*e); err != nil {
			return err
		}
		return o.C.Zero(o.S, offsets, 4*(e+1))
	}
	if token == 0 || slotGate == 0 || slotOf == 0 || work == 0 || experts == 0 || gates == 0 {
		return errf(op, "nil token, slotGate, slotOf, work, experts or gates")
	}
	if byScore && probs == 0 {
		return errf(op, "the probability drop policy with capacity %d needs probs", capacity)
	}
	assignShared := 4 * (e*(planWarps+2) + 32) // plan_assign's, all dynamic
	if limit := max(48<<10, o.C.Info().MaxSharedOptin); assignShared > limit {
		return errf(op, "%d experts need %d bytes of shared memory, the GPU allows %d", e, assignShared, limit)
	}
	if assignShared > 48<<10 {
		// launch opts a kernel in above 48 KiB only if its first launch
		// needed it; E varies between calls, so opt in here (to the whole
		// maximum: plan_assign has no static shared memory).
		f, err := o.K.Get("plan_assign")
		if err != nil {
			return err
		}
		if err := o.C.SetMaxDynamicShared(f, o.C.Info().MaxSharedOptin); err != nil {
			return err
		}
	}
	chunks := (nk + planChunk - 1) / planChunk
	hist := work
	roff := hist.Add(4 * chunks * e)
	list := roff.Add(4 * e)
	keep := list.Add(4 * nk)
	lscore := keep.Add(4 * nk)
	capArg := min(max(capacity, -1), math.MaxInt32)
	if err := o.launch("plan_histogram", chunks, planThreads, 4*e, experts, hist, nk, e); err != nil {
		return err
	}
	if err := o.launch("plan_routed", e, planThreads, 0, hist, routed, counts, chunks, e, capArg); err != nil {
		return err
	}
	bs := 0
	if byScore {
		bs = 1
	}
	if err := o.launch("plan_assign", chunks, planThreads, assignShared,
		experts, gates, probs, hist, routed, counts, offsets, token, slotGate, slotOf, roff, list, lscore,
		nk, k, e, bs); err != nil {
		return err
	}
	if !byScore {
		return nil
	}
	// Enough blocks per expert to fill the GPU when few experts are over
	// capacity, never more than an expert's list can use.
	y := min((nk+planThreads-1)/planThreads, max(1, (4*max(o.SMs, 1)+e-1)/e))
	if err := o.launch3("plan_rank", cuda.Dim3{X: e, Y: y}, cuda.Dim3{X: planThreads}, 0,
		routed, counts, roff, lscore, keep); err != nil {
		return err
	}
	return o.launch("plan_kept", e, planThreads, 0,
		routed, counts, offsets, roff, list, keep, gates, token, slotGate, slotOf, k)
}
