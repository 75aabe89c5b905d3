package sp

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/tensor"
)

// Algorithm is a sequence-parallel attention schedule.
type Algorithm int

const (
	// Ring rotates K,V (and in the backward dK,dV) around the ring.
	Ring Algorithm = iota + 1
	// TokenRing keeps K,V home; queries travel one way, results the other.
	TokenRing
)

// Algorithms lists the valid names, as ParseAlgorithm reads them, in
// Algorithm order (Ring first).
var Algorithms = []string{"ring", "tokenring"}

func (a Algorithm) String() string {
	if a >= Ring && int(a) <= len(Algorithms) {
		return Algorithms[a-1]
	}
	return fmt.Sprintf("algorithm(%d)", int(a))
}

// ParseAlgorithm reads "ring" or "tokenring" (case-insensitive).
func ParseAlgorithm(s string) (Algorithm, error) {
	if i := slices.Index(Algorithms, strings.ToLower(strings.TrimSpace(s))); i >= 0 {
		return Algorithm(i + 1), nil
	}
	return 0, fmt.Errorf("sp: algorithm %q: want one of %s", s, strings.Join(Algorithms, ", "))
}

// Forward computes causal attention of this rank's local queries against the
// whole sequence, whose K,V are spread over comm's members in zigzag order
// (see the package comment): o gets the output rows (OStride layout), lse the
// log-sum-exp per (sequence, head, local row), [Batch][Heads][2·Chunk]. Every
// member of comm must call it with the same alg and shape; comm's rank is the
// SP rank. With comm nil or of one member it is plain causal attention over
// the local rows (which are then the whole sequence in order).
//
// It is a collective: the members' calls on comm must come in the same order,
// and not concurrently with other Sub calls on comm (each call derives fresh
// sub-communicators for its message streams). Every wait ends with ctx (or
// comm's default timeout); an error names the algorithm, pass, step, message
// and peer. A failure is not broadcast: the other members fail at their own
// deadlines. Nothing retries on comm after a failure: the caller's step
// fails and the job is aborted (docs/control-plane.md#failure-handling).
//
// For the model: pass the local slices of a fused QKV buffer with strides 3C
// (C = Heads·HeadDim); position embeddings use Positions; Shard/Gather move
// whole-sequence tensors to and from the zigzag layout.
func Forward(ctx context.Context, comm *collective.Comm, alg Algorithm, o, lse, q, k, v []float32, s LocalShape) error {
	return forward(ctx, comm, alg, false, o, lse, q, k, v, s)
}

// Backward accumulates into dq, dk, dv the gradients of Forward's attention
// given do (the gradient of o), the forward inputs, the forward's output o and
// its lse. Same contract as Forward. It reads o only to form
// D = rowsum(dO∘O); the travelling data are (q, do, lse, D) or (K, V, dK, dV).
func Backward(ctx context.Context, comm *collective.Comm, alg Algorithm, dq, dk, dv, do, q, k, v, o, lse []float32, s LocalShape) error {
	return backward(ctx, comm, alg, false, dq, dk, dv, do, q, k, v, o, lse, s)
}

func spSize(comm *collective.Comm) (p, rank int) {
	if comm == nil {
		return 1, 0
	}
	return comm.Size(), comm.Rank()
}

func checkAlg(alg Algorithm) error {
	if alg != Ring && alg != TokenRing {
		return fmt.Errorf("sp: unknown algorithm %d (want ring or tokenring)", int(alg))
	}
	return nil
}

// fullShape is the kernel shape of the local rows as one causal block, used
// when SP = 1 (rank 0 holds chunks 0 and 1: the sequence in order).
func fullShape(s LocalShape) tensor.AttnShape {
	return tensor.AttnShape{Batch: s.Batch, Tq: 2 * s.Chunk, Tk: 2 * s.Chunk, Heads: s.Heads, HeadDim: s.HeadDim,
		QStride: s.QStride, KStride: s.KStride, VStride: s.VStride, OStride: s.OStride, Causal: true, Scale: s.Scale}
}

// forward runs alg; sim runs TokenRing's local work without messages
// (compute-only baseline of the benchmark; its results are not attention).
func forward(ctx context.Context, comm *collective.Comm, alg Algorithm, sim bool, o, lse, q, k, v []float32, s LocalShape) error {
	if err := checkAlg(alg); err != nil {
		return err
	}
	s = s.withDefaults()
	if err := cmp.Or(s.validate(map[string]bufSpec{"q": {s.QStride, len(q)}, "k": {s.KStride, len(k)}, "v": {s.VStride, len(v)},
		"o": {s.OStride, len(o)}, "lse": {0, len(lse)}}), ctx.Err()); err != nil {
		return fmt.Errorf("sp %s forward: %w", alg, err)
	}
	p, rank := spSize(comm)
	if p == 1 && !sim {
		tensor.AttentionForward(o, lse, q, k, v, fullShape(s))
		return nil
	}
	if s.Rows() == 0 {
		return nil
	}
	g := newGeom(s, p, rank)
	nr, ns := 2*g.rowsChunk(), 2*g.statChunk()
	pq, pk, pv, po, pl := make([]float32, nr), make([]float32, nr), make([]float32, nr), make([]float32, nr), make([]float32, ns)
	g.pack(pq, q, s.QStride)
	g.pack(pk, k, s.KStride)
	g.pack(pv, v, s.VStride)
	f := &flight{ctx: ctx, what: alg.String() + " forward", sim: sim}
	defer f.abandon()
	var err error
	if alg == Ring && !sim {
		err = ringForward(f, comm, g, po, pl, pq, pk, pv)
	} else {
		err = tokenRingForward(f, comm, g, po, pl, pq, pk, pv)
	}
	if err != nil {
		return err
	}
	g.unpack(o, po, s.OStride, false)
	g.unpackStats(lse, pl)
	return nil
}

func backward(ctx context.Context, comm *collective.Comm, alg Algorithm, sim bool, dq, dk, dv, do, q, k, v, o, lse []float32, s LocalShape) error {
	if err := checkAlg(alg); err != nil {
		return err
	}
	s = s.withDefaults()
	if err := cmp.Or(s.validate(map[string]bufSpec{"q": {s.QStride, len(q)}, "k": {s.KStride, len(k)}, "v": {s.VStride, len(v)},
		"o": {s.OStride, len(o)}, "do": {s.OStride, len(do)}, "dq": {s.QStride, len(dq)}, "dk": {s.KStride, len(dk)},
		"dv": {s.VStride, len(dv)}, "lse": {0, len(lse)}}), ctx.Err()); err != nil {
		return fmt.Errorf("sp %s backward: %w", alg, err)
	}
	p, rank := spSize(comm)
	if p == 1 && !sim {
		fs := fullShape(s)
		d := make([]float32, s.StatLen())
		tensor.AttentionRowDot(d, do, o, fs)
		tensor.AttentionBackward(dq, dk, dv, do, q, k, v, lse, d, fs)
		return nil
	}
	if s.Rows() == 0 {
		return nil
	}
	g := newGeom(s, p, rank)
	nr, ns := 2*g.rowsChunk(), 2*g.statChunk()
	buf := make([]float32, 7*nr+2*ns)
	cut := func(n int) []float32 { x := buf[:n:n]; buf = buf[n:]; return x }
	pq, pk, pv, pdo, pdq, pdk, pdv := cut(nr), cut(nr), cut(nr), cut(nr), cut(nr), cut(nr), cut(nr)
	pl, pd := cut(ns), cut(ns)
	g.pack(pq, q, s.QStride)
	g.pack(pk, k, s.KStride)
	g.pack(pv, v, s.VStride)
	g.pack(pdo, do, s.OStride)
	g.packStats(pl, lse)
	// D = rowsum(dO∘O) per chunk; pdq is free scratch for packed o here.
	g.pack(pdq, o, s.OStride)
	for j := range 2 {
		tensor.AttentionRowDot(g.stats(pd, j), g.rows(pdo, j), g.rows(pdq, j), g.shape(false))
	}
	clear(pdq)
	f := &flight{ctx: ctx, what: alg.String() + " backward", sim: sim}
	defer f.abandon()
	var err error
	if alg == Ring && !sim {
		err = ringBackward(f, comm, g, pdq, pdk, pdv, pdo, pq, pk, pv, pl, pd)
	} else {
		err = tokenRingBackward(f, comm, g, pdq, pdk, pdv, pdo, pq, pk, pv, pl, pd)
	}
	if err != nil {
		return err
	}
	g.unpack(dq, pdq, s.QStride, true)
	g.unpack(dk, pdk, s.KStride, true)
	g.unpack(dv, pdv, s.VStride, true)
	return nil
}
