package model

import (
	"github.com/moetrain/moetrain/moe"
	"github.com/moetrain/moetrain/tensor"
)

// Comms is the communication of a sharded model (Model.Comms; nil = the
// serial model, every call site then does nothing). The layers keep their
// math; a parallel plan only adds these exchanges at fixed points:
//
//   - tensor parallelism: SumTP after the row-parallel projections (attention
//     output, expert output) and, in the backward, on the input gradients of
//     the column-parallel ones; GatherTP for the vocab-parallel
//     cross-entropy's per-row statistics;
//   - expert parallelism: the moe.Exchange all-to-all-v of dispatch and
//     combine;
//   - sequence parallelism: Attention / AttentionBackward over the sequence
//     split in zigzag chunks across the SP group;
//   - every layout: SumTokens over the ranks that hold the step's other
//     tokens (the DP×SP plane at this rank's tp), so that the loss
//     normalisation, the aux loss and the z-loss use global statistics.
//
// Calls block until done and have deadlines. After the first failure Err
// returns it and every later call returns at once without touching its
// buffers, so Forward/Backward unwind and report it instead of hanging.
type Comms interface {
	moe.Exchange // includes TP() and SumTP
	// GatherTP all-gathers len(send) elements from every TP member into
	// recv [TP·len(send)], member order.
	GatherTP(send, recv []float32)
	// SumTokens adds x element-wise over the ranks holding the step's other
	// tokens, in place.
	SumTokens(x []float32)
	// SP is the sequence-parallel degree (1: whole sequences per rank).
	SP() int
	// Attention computes causal attention of the local rows against the
	// whole sequence (zigzag layout over the SP group): s describes the
	// local rows (Tq = Tk = 2·chunk) with this rank's heads.
	Attention(o, lse, q, k, v []float32, s tensor.AttnShape)
	// AttentionBackward accumulates dq, dk, dv given do, the forward's inputs,
	// output o and lse.
	AttentionBackward(dq, dk, dv, do, q, k, v, o, lse []float32, s tensor.AttnShape)
	// UniformTokens reports that every rank routes the same number of
	// tokens each step (fixed-shape batches), which lets a MoGE router's
	// static split size the expert-parallel exchange in advance.
	UniformTokens() bool
	// Err is the first failure (nil if none).
	Err() error
}

// staticSplit reports whether layer dispatches of this step may use the
// router's static split (see moe.State.StaticSplit).
func staticSplit(c Comms, r moe.Router) bool {
	if c == nil || !c.UniformTokens() {
		return false
	}
	g, ok := r.(moe.MoGE)
	ep, _ := c.EP()
	return ok && ep > 1 && g.Groups%ep == 0 && g.Opts.CapacityFactor == 0
}

func tpOf(c Comms) (size, rank int) {
	if c == nil {
		return 1, 0
	}
	return c.TP()
}

func spOf(c Comms) int {
	if c == nil {
		return 1
	}
	return c.SP()
}

func sumTP(c Comms, x []float32) {
	if c != nil {
		if n, _ := c.TP(); n > 1 {
			c.SumTP(x)
		}
	}
}

// stats64 carries float64 statistics through a float32 reduction as a
// (hi, lo) pair, keeping about 48 bits of each summand.
type stats64 []float32

func (s stats64) put(i int, x float64) {
	hi := float32(x)
	s[2*i], s[2*i+1] = hi, float32(x-float64(hi))
}

func (s stats64) get(i int) float64 { return float64(s[2*i]) + float64(s[2*i+1]) }
