package parallel

import (
	"context"
	"fmt"
	"sync"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/parallel/sp"
	"github.com/moetrain/moetrain/tensor"
)

// Comms is one rank's communication for the sharded model (it implements
// model.Comms and moe.Exchange): a communicator per mesh axis the layers use,
// each a no-op at degree 1. Errors are sticky: the first failure is kept
// (Err), names the axis and the operation, and every later call returns at
// once, so a failed step unwinds on this rank while its peers fail at their
// own deadlines (or at once, from the transport's abort).
//
// Not safe for concurrent use: one model's forward/backward drives it.
type Comms struct {
	alg    sp.Algorithm
	tp     *collective.Comm
	ep     *collective.Comm
	sp     *collective.Comm
	tokens *collective.Comm

	uniform bool

	mu  sync.Mutex
	ctx context.Context
	err error
}

// NewComms derives rank's tensor-, expert-, sequence-parallel and plane
// communicators from world (whose ranks are the mesh's). alg is the
// sequence-parallel attention algorithm (ignored at SP = 1).
func NewComms(world *collective.Comm, m Mesh, rank int, alg sp.Algorithm) (*Comms, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if world.Size() != m.World() {
		return nil, fmt.Errorf("parallel: world communicator has %d ranks, mesh %v needs %d", world.Size(), m, m.World())
	}
	c := &Comms{alg: alg, ctx: context.Background()}
	for _, ax := range []struct {
		axis Axis
		dst  **collective.Comm
	}{{AxisTP, &c.tp}, {AxisEP, &c.ep}, {AxisSP, &c.sp}, {AxisPlane, &c.tokens}} {
		sub, err := world.Sub(m.Group(ax.axis, rank))
		if err != nil {
			return nil, fmt.Errorf("parallel: %v group of rank %d: %w", ax.axis, rank, err)
		}
		*ax.dst = sub
	}
	if m.SP > 1 {
		if _, err := sp.ParseAlgorithm(alg.String()); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Begin starts a step: ctx cancels its collectives (each also carries its
// communicator's deadline) and the previous step's error is cleared.
func (c *Comms) Begin(ctx context.Context) {
	c.mu.Lock()
	c.ctx, c.err = ctx, nil
	c.mu.Unlock()
}

// Err is the first failure since Begin.
func (c *Comms) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *Comms) failed() bool { return c.Err() != nil }

// Fail records err as the step's failure over the expert-parallel group
// (moe.Failer: a peer's row counts the dispatch cannot use), so the step
// ends with an error naming the peer instead of dropping its rows.
func (c *Comms) Fail(err error) { c.fail(AxisEP, "expert dispatch", c.ep, err) }

func (c *Comms) fail(axis Axis, op string, g *collective.Comm, err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("%s over the %v group %v: %w", op, axis, g.WorldRanks(), err)
	}
	c.mu.Unlock()
}

// SetUniformTokens declares that every rank's batches have the same shape
// each step (fixed-length windows), see model.Comms.UniformTokens.
func (c *Comms) SetUniformTokens(u bool) { c.uniform = u }

// UniformTokens reports what SetUniformTokens declared (default false).
func (c *Comms) UniformTokens() bool { return c.uniform }

// Plane is the communicator over the ranks holding the step's other tokens
// (AxisPlane): dense gradients reduce over it.
func (c *Comms) Plane() *collective.Comm { return c.tokens }

// TP is the tensor-parallel group's size and this rank's index in it.
func (c *Comms) TP() (int, int) { return c.tp.Size(), c.tp.Rank() }

// EP is the expert-parallel group's size and this rank's index in it.
func (c *Comms) EP() (int, int) { return c.ep.Size(), c.ep.Rank() }

// SP is the sequence-parallel degree.
func (c *Comms) SP() int { return c.sp.Size() }

// SumTP adds x over the tensor-parallel group.
func (c *Comms) SumTP(x []float32) {
	if c.tp.Size() == 1 || c.failed() {
		return
	}
	if err := c.tp.AllReduce(c.ctx, x, collective.Sum); err != nil {
		c.fail(AxisTP, "all-reduce", c.tp, err)
	}
}

// GatherTP all-gathers send from every tensor-parallel member into recv.
func (c *Comms) GatherTP(send, recv []float32) {
	if c.failed() {
		return
	}
	if c.tp.Size() == 1 {
		copy(recv, send)
		return
	}
	if err := c.tp.AllGather(c.ctx, send, recv); err != nil {
		c.fail(AxisTP, "all-gather", c.tp, err)
	}
}

// SumTokens adds x over the DP·SP plane.
func (c *Comms) SumTokens(x []float32) {
	if c.tokens.Size() == 1 || c.failed() {
		return
	}
	if err := c.tokens.AllReduce(c.ctx, x, collective.Sum); err != nil {
		c.fail(AxisPlane, "all-reduce", c.tokens, err)
	}
}

// AllToAllV is the expert-parallel dispatch/combine exchange.
func (c *Comms) AllToAllV(send []float32, sendCounts []int, recv []float32, recvCounts []int) {
	if c.failed() {
		return
	}
	if err := c.ep.AllToAllV(c.ctx, send, sendCounts, recv, recvCounts); err != nil {
		c.fail(AxisEP, "all-to-all-v", c.ep, err)
	}
}

// AllToAllVStart starts the expert-parallel exchange; the returned wait
// records its failure like the synchronous calls.
func (c *Comms) AllToAllVStart(send []float32, sendCounts []int, recv []float32, recvCounts []int) func() {
	if c.failed() {
		return func() {}
	}
	rq := c.ep.AllToAllVAsync(send, sendCounts, recv, recvCounts)
	return func() {
		if err := rq.Wait(c.ctx); err != nil {
			c.fail(AxisEP, "all-to-all-v", c.ep, err)
		}
	}
}

func localShape(s tensor.AttnShape) sp.LocalShape {
	return sp.LocalShape{Batch: s.Batch, Chunk: s.Tq / 2, Heads: s.Heads, HeadDim: s.HeadDim,
		QStride: s.QStride, KStride: s.KStride, VStride: s.VStride, OStride: s.OStride, Scale: s.Scale}
}

// Attention runs sequence-parallel causal attention with the job's
// algorithm over the zigzag-sharded sequence.
func (c *Comms) Attention(o, lse, q, k, v []float32, s tensor.AttnShape) {
	if c.failed() {
		return
	}
	if err := sp.Forward(c.ctx, c.sp, c.alg, o, lse, q, k, v, localShape(s)); err != nil {
		c.fail(AxisSP, "attention forward", c.sp, err)
	}
}

// AttentionBackward is Attention's backward.
func (c *Comms) AttentionBackward(dq, dk, dv, do, q, k, v, o, lse []float32, s tensor.AttnShape) {
	if c.failed() {
		return
	}
	if err := sp.Backward(c.ctx, c.sp, c.alg, dq, dk, dv, do, q, k, v, o, lse, localShape(s)); err != nil {
		c.fail(AxisSP, "attention backward", c.sp, err)
	}
}

var _ model.Comms = (*Comms)(nil)
