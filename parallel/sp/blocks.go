package sp

import (
	"github.com/moetrain/moetrain/tensor"
)

// geom is one call's geometry. Internally a rank's rows are packed chunk-major,
// [2][Batch][Chunk][Width] with no padding, and its statistics
// [2][Batch][Heads][Chunk], so that one chunk of all sequences is a contiguous
// tensor.AttnShape{Batch, Tq: Chunk} operand and a rank's block is one message.
type geom struct {
	B, c, H, D, W int
	scale         float32
	P, rank       int
}

func newGeom(s LocalShape, p, rank int) *geom {
	return &geom{B: s.Batch, c: s.Chunk, H: s.Heads, D: s.HeadDim, W: s.Width(), scale: s.Scale, P: p, rank: rank}
}

func (g *geom) rowsChunk() int { return g.B * g.c * g.W }
func (g *geom) statChunk() int { return g.B * g.H * g.c }

// rows returns chunk j (0 or 1) of a packed row block.
func (g *geom) rows(buf []float32, j int) []float32 {
	n := g.rowsChunk()
	return buf[j*n : (j+1)*n]
}

// stats returns chunk j of a packed statistics block.
func (g *geom) stats(buf []float32, j int) []float32 {
	n := g.statChunk()
	return buf[j*n : (j+1)*n]
}

// shape is the kernel shape of one (query chunk, key chunk) pair; diag pairs
// cover the same positions, so QPos0 = KPos0 and causality is within the pair.
func (g *geom) shape(diag bool) tensor.AttnShape {
	return tensor.AttnShape{Batch: g.B, Tq: g.c, Tk: g.c, Heads: g.H, HeadDim: g.D,
		QStride: g.W, KStride: g.W, VStride: g.W, OStride: g.W, Causal: diag, Scale: g.scale}
}

// pairKind says how key chunk ka is visible to query chunk qa under causal
// masking: chunk pairs are fully visible, diagonal or fully masked.
type pairKind int

const (
	masked pairKind = iota
	diagonal
	full
)

func kind(qa, ka int) pairKind {
	switch {
	case ka < qa:
		return full
	case ka == qa:
		return diagonal
	}
	return masked
}

// visible lists, for query chunk qj (local index) of rank qr, the local key
// chunks of rank kr it attends to, in a fixed order, with their kinds.
func (g *geom) visible(qr, qj, kr int) (kjs [2]int, kinds [2]pairKind, n int) {
	qa := chunkID(g.P, qr, qj)
	for kj := range 2 {
		if k := kind(qa, chunkID(g.P, kr, kj)); k != masked {
			kjs[n], kinds[n] = kj, k
			n++
		}
	}
	return kjs, kinds, n
}

// With zigzag chunks every pair of distinct ranks has exactly two fully
// visible chunk pairs: both query chunks against kr's first chunk (kr < qr),
// or qr's second chunk against both of kr's (kr > qr); a rank against itself
// has one full pair and two diagonal ones.

func chunkID(p, rank, j int) int {
	a, b := ChunkIDs(p, rank)
	if j == 0 {
		return a
	}
	return b
}

// fwdScratch holds one partial result of a chunk pair before it is merged.
type fwdScratch struct{ o, lse []float32 }

func (g *geom) newFwdScratch() *fwdScratch {
	return &fwdScratch{o: make([]float32, g.rowsChunk()), lse: make([]float32, g.statChunk())}
}

// forwardChunk computes query chunk q (packed, one chunk) of rank qr against
// key block kv = [k | v] of rank kr into (o, lse), merging the visible pairs.
// It reports false (leaving o, lse untouched) if nothing is visible.
func (g *geom) forwardChunk(o, lse, q, k, v []float32, qr, qj, kr int, scr *fwdScratch) bool {
	kjs, kinds, n := g.visible(qr, qj, kr)
	for i := range n {
		sh := g.shape(kinds[i] == diagonal)
		kc, vc := g.rows(k, kjs[i]), g.rows(v, kjs[i])
		if i == 0 {
			tensor.AttentionForward(o, lse, q, kc, vc, sh)
			continue
		}
		tensor.AttentionForward(scr.o, scr.lse, q, kc, vc, sh)
		tensor.AttentionMerge(o, lse, scr.o, scr.lse, sh)
	}
	return n > 0
}

// backwardChunk accumulates the gradients of query chunk qj of rank qr
// against rank kr's keys: dq (one chunk) and dk, dv (kr's packed blocks).
// q, do, lse, d are the query chunk's operands.
func (g *geom) backwardChunk(dq, dk, dv, do, q, k, v, lse, d []float32, qr, qj, kr int) {
	kjs, kinds, n := g.visible(qr, qj, kr)
	for i := range n {
		kj := kjs[i]
		tensor.AttentionBackward(dq, g.rows(dk, kj), g.rows(dv, kj), do, q, g.rows(k, kj), g.rows(v, kj),
			lse, d, g.shape(kinds[i] == diagonal))
	}
}

// pack copies user rows (layout of LocalShape, given stride) into a packed
// block of two chunks.
func (g *geom) pack(dst, src []float32, stride int) {
	for j := range 2 {
		for b := range g.B {
			for t := range g.c {
				d := dst[((j*g.B+b)*g.c+t)*g.W:][:g.W]
				copy(d, src[((b*2+j)*g.c+t)*stride:][:g.W])
			}
		}
	}
}

// unpack writes (add = false) or adds a packed block back into user rows.
func (g *geom) unpack(dst, src []float32, stride int, add bool) {
	for j := range 2 {
		for b := range g.B {
			for t := range g.c {
				s := src[((j*g.B+b)*g.c+t)*g.W:][:g.W]
				d := dst[((b*2+j)*g.c+t)*stride:][:g.W]
				if add {
					for i, x := range s {
						d[i] += x
					}
				} else {
					copy(d, s)
				}
			}
		}
	}
}

// packStats copies user statistics [B][H][2c] into [2][B][H][c].
func (g *geom) packStats(dst, src []float32) {
	for j := range 2 {
		for bh := range g.B * g.H {
			copy(dst[(j*g.B*g.H+bh)*g.c:][:g.c], src[bh*2*g.c+j*g.c:][:g.c])
		}
	}
}

func (g *geom) unpackStats(dst, src []float32) {
	for j := range 2 {
		for bh := range g.B * g.H {
			copy(dst[bh*2*g.c+j*g.c:][:g.c], src[(j*g.B*g.H+bh)*g.c:][:g.c])
		}
	}
}

// addTo adds src into dst element-wise.
func addTo(dst, src []float32) {
	for i, x := range src {
		dst[i] += x
	}
}

// merge folds a partial result (o2, lse2) of one query chunk into (o, lse).
func (g *geom) merge(o, lse, o2, lse2 []float32) {
	tensor.AttentionMerge(o, lse, o2, lse2, g.shape(false))
}
