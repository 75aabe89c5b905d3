// Package sp is sequence parallelism for attention: each sequence is split
// over the SP ranks of a communicator in zigzag order, and causal attention
// over the whole sequence is computed by ring attention (K,V rotate) or
// TokenRing (queries travel one way, partial results come straight back).
// Both have a forward and a backward pass; both equal full causal attention
// within float32 re-association.
//
// Zigzag layout. A sequence of T tokens is cut into 2·SP chunks of
// Chunk = T/(2·SP) tokens; rank i holds chunks i and 2·SP−1−i, so every rank
// has the same amount of causal work. A rank's local rows are
// [Batch][2·Chunk] rows: local row t < Chunk is token i·Chunk+t, local row
// Chunk+t is token (2·SP−1−i)·Chunk+t. Per-row statistics (lse, and D in
// the backward) are [Batch][Heads][2·Chunk], the layout tensor's attention
// kernels use for Tq = 2·Chunk.
//
// The algorithms are described in docs/algorithms/tokenring.md. The package
// works on tensor shapes and a collective.Comm only: it must not import the
// model, and it holds no state between calls (each call derives its own
// message streams).
package sp

import (
	"fmt"
)

// LocalShape describes one rank's share of an attention call. Row t of
// sequence b of q starts at (b·2·Chunk + t)·QStride (k, v, o likewise);
// head h of a row is [h·HeadDim, (h+1)·HeadDim), so a fused QKV buffer works
// (q, k, v slices of it at offsets 0, C, 2C with stride 3C). Gradients use the
// layouts of their forward tensors (dq of q, and so on; do of o).
type LocalShape struct {
	Batch int // sequences
	Chunk int // tokens per zigzag chunk; a rank holds 2·Chunk rows per sequence
	Heads int
	// HeadDim is the size of one head.
	HeadDim int
	// Strides in floats between consecutive rows; 0 means Heads·HeadDim.
	QStride, KStride, VStride, OStride int
	// Scale multiplies q·k; 0 means 1/sqrt(HeadDim).
	Scale float32
}

// Width is the number of floats of one row's heads, Heads·HeadDim.
func (s LocalShape) Width() int { return s.Heads * s.HeadDim }

// Rows is the number of local rows, Batch·2·Chunk.
func (s LocalShape) Rows() int { return s.Batch * 2 * s.Chunk }

// StatLen is the length of the lse and D buffers, Batch·Heads·2·Chunk.
func (s LocalShape) StatLen() int { return s.Batch * s.Heads * 2 * s.Chunk }

func (s LocalShape) withDefaults() LocalShape {
	w := s.Width()
	for _, p := range []*int{&s.QStride, &s.KStride, &s.VStride, &s.OStride} {
		if *p == 0 {
			*p = w
		}
	}
	return s
}

// validate checks sizes, strides and buffer lengths (named by what).
func (s LocalShape) validate(bufs map[string]bufSpec) error {
	if s.Batch < 0 || s.Chunk < 0 {
		return fmt.Errorf("sp: local shape: negative Batch %d or Chunk %d", s.Batch, s.Chunk)
	}
	if s.Heads <= 0 || s.HeadDim <= 0 {
		return fmt.Errorf("sp: local shape: Heads %d and HeadDim %d must be positive", s.Heads, s.HeadDim)
	}
	w, rows := s.Width(), s.Rows()
	for _, name := range []string{"q", "k", "v", "o", "do", "dq", "dk", "dv", "lse"} {
		b, ok := bufs[name]
		if !ok {
			continue
		}
		if b.stride == 0 { // per-row statistics
			if b.have < s.StatLen() {
				return fmt.Errorf("sp: local shape: %s has %d floats, want Batch·Heads·2·Chunk = %d", name, b.have, s.StatLen())
			}
			continue
		}
		if b.stride < w {
			return fmt.Errorf("sp: local shape: %s stride %d < Heads·HeadDim = %d", name, b.stride, w)
		}
		if rows > 0 {
			if need := (rows-1)*b.stride + w; b.have < need {
				return fmt.Errorf("sp: local shape: %s has %d floats, %d rows with stride %d need %d", name, b.have, rows, b.stride, need)
			}
		}
	}
	return nil
}

type bufSpec struct{ stride, have int }

// ChunkIDs returns the two chunks (of 2·sp) that rank holds, in local order.
func ChunkIDs(sp, rank int) (first, second int) { return rank, 2*sp - 1 - rank }

// Positions returns the absolute token position of each of the 2·chunk local
// rows of one sequence on rank (of sp), for position embeddings.
func Positions(sp, rank, chunk int) []int {
	a, b := ChunkIDs(sp, rank)
	pos := make([]int, 2*chunk)
	for t := range chunk {
		pos[t] = a*chunk + t
		pos[chunk+t] = b*chunk + t
	}
	return pos
}

// ChunkLen returns seqLen/(2·sp), or an error if seqLen does not split into
// 2·sp equal chunks.
func ChunkLen(seqLen, sp int) (int, error) {
	if sp < 1 {
		return 0, fmt.Errorf("sp: degree %d must be positive", sp)
	}
	if seqLen < 0 || seqLen%(2*sp) != 0 {
		return 0, fmt.Errorf("sp: sequence length %d is not a multiple of 2·SP = %d", seqLen, 2*sp)
	}
	return seqLen / (2 * sp), nil
}

// Shard copies rank's zigzag share of src, [batch][seqLen][width] rows, into
// dst, [batch][2·chunk][width] rows (both contiguous).
func Shard(dst, src []float32, batch, seqLen, width, sp, rank int) error {
	return zigzagCopy(dst, src, batch, seqLen, width, sp, rank, false)
}

// Gather copies rank's local rows src, [batch][2·chunk][width], back to their
// places in dst, [batch][seqLen][width]; calling it for every rank rebuilds
// the full tensor.
func Gather(dst, src []float32, batch, seqLen, width, sp, rank int) error {
	return zigzagCopy(src, dst, batch, seqLen, width, sp, rank, true)
}

// zigzagCopy moves rows between a local buffer and a full one; toFull picks
// the direction.
func zigzagCopy(local, full []float32, batch, seqLen, width, sp, rank int, toFull bool) error {
	c, err := ChunkLen(seqLen, sp)
	if err != nil {
		return err
	}
	if rank < 0 || rank >= sp {
		return fmt.Errorf("sp: rank %d outside 0..%d", rank, sp-1)
	}
	if batch < 0 || width < 0 {
		return fmt.Errorf("sp: negative batch %d or width %d", batch, width)
	}
	if len(full) < batch*seqLen*width || len(local) < batch*2*c*width {
		return fmt.Errorf("sp: zigzag copy: full buffer has %d floats (want %d), local %d (want %d)",
			len(full), batch*seqLen*width, len(local), batch*2*c*width)
	}
	a, z := ChunkIDs(sp, rank)
	n := c * width
	for b := range batch {
		for j, ch := range []int{a, z} {
			l := local[(b*2+j)*n:][:n]
			f := full[(b*seqLen+ch*c)*width:][:n]
			if toFull {
				copy(f, l)
			} else {
				copy(l, f)
			}
		}
	}
	return nil
}

// ShardStats copies rank's share of per-row statistics, [batch][heads][seqLen]
// (as tensor's lse), into [batch][heads][2·chunk].
func ShardStats(dst, src []float32, batch, heads, seqLen, sp, rank int) error {
	return zigzagCopy(dst, src, batch*heads, seqLen, 1, sp, rank, false)
}

// GatherStats is the inverse of ShardStats for one rank.
func GatherStats(dst, src []float32, batch, heads, seqLen, sp, rank int) error {
	return zigzagCopy(src, dst, batch*heads, seqLen, 1, sp, rank, true)
}
