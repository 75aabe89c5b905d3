package ops

import (
	"fmt"

	"github.com/moetrain/moetrain/cuda"
)

// Token and position embeddings (cuda/kernels/embedding.cu,
// tensor/embedding.go, model.EmbedForward/EmbedBackward). Ids are int32 on
// the device; tables and their gradients are float32.

// EmbeddingForward sets out[i,:] = table[ids[i],:] for n ids, rows of width
// c, from a table of vocab rows (tensor.EmbeddingForward). An id outside
// [0, vocab) gives a NaN row.
func (o *Ops) EmbeddingForward(out, ids, table cuda.DevicePtr, n, c, vocab int) error {
	return o.embeddingForward("EmbeddingForward", "embedding_fwd_f32", out, ids, table, 0, 0, n, c, vocab, 0)
}

// EmbeddingForwardBF16 is EmbeddingForward writing bf16 out.
func (o *Ops) EmbeddingForwardBF16(out, ids, table cuda.DevicePtr, n, c, vocab int) error {
	return o.embeddingForward("EmbeddingForwardBF16", "embedding_fwd_bf16", out, ids, table, 0, 0, n, c, vocab, 0)
}

// EmbedForward sets out[i,:] = tok[ids[i],:] + posTable[pos[i],:] for n
// tokens, rows of width d (model.EmbedForward, no scratch needed); tok has
// vocab rows and posTable npos. An id or position out of range gives a NaN
// row.
func (o *Ops) EmbedForward(out, ids, pos, tok, posTable cuda.DevicePtr, n, d, vocab, npos int) error {
	if posTable == 0 || pos == 0 || npos < 1 {
		return errf("EmbedForward", "position table %#x, positions %#x, npos %d", uintptr(posTable), uintptr(pos), npos)
	}
	return o.embeddingForward("EmbedForward", "embedding_fwd_f32", out, ids, tok, pos, posTable, n, d, vocab, npos)
}

// EmbedForwardBF16 is EmbedForward writing bf16 out (the float32 sum
// rounded once).
func (o *Ops) EmbedForwardBF16(out, ids, pos, tok, posTable cuda.DevicePtr, n, d, vocab, npos int) error {
	if posTable == 0 || pos == 0 || npos < 1 {
		return errf("EmbedForwardBF16", "position table %#x, positions %#x, npos %d", uintptr(posTable), uintptr(pos), npos)
	}
	return o.embeddingForward("EmbedForwardBF16", "embedding_fwd_bf16", out, ids, tok, pos, posTable, n, d, vocab, npos)
}

func (o *Ops) embeddingForward(op, kernel string, out, ids, table, pos, posTable cuda.DevicePtr, n, d, vocab, npos int) error {
	if n < 0 || d < 1 || vocab < 1 {
		return errf(op, "n=%d d=%d vocab=%d", n, d, vocab)
	}
	if err := elementwiseCheck(op, n, out, ids, table); err != nil || n == 0 {
		return err
	}
	return o.launch(kernel, o.gridFor(n*((d+3)/4), 256), 256, 0, out, ids, table, pos, posTable, n, d, vocab, npos)
}

// EmbeddingIndex prepares a deterministic EmbeddingBackward for ids (each in
// [0, vocab)), on the host, without allocating: order[:len(ids)] gets the
// positions sorted by id, stably (equal ids in increasing position),
// unique[:u] the distinct ids in increasing order and starts[:u+1] their
// runs in order (id unique[b] is at positions order[starts[b]:starts[b+1]],
// starts[u] = len(ids)). order and unique need len(ids) elements, starts
// len(ids)+1. It is an LSD radix sort, one pass per significant byte of the
// largest id.
func EmbeddingIndex(ids []int32, vocab int, order, unique, starts []int32) (u int, err error) {
	n := len(ids)
	if len(order) < n || len(unique) < n || len(starts) < n+1 {
		return 0, fmt.Errorf("gpu/ops: EmbeddingIndex: %d ids need order and unique of %d and starts of %d, have %d, %d, %d",
			n, n, n+1, len(order), len(unique), len(starts))
	}
	var hi int32
	for i, id := range ids {
		if id < 0 || int(id) >= vocab {
			return 0, fmt.Errorf("gpu/ops: EmbeddingIndex: ids[%d] = %d outside [0, %d)", i, id, vocab)
		}
		hi = max(hi, id)
	}
	src, dst := order[:n], unique[:n]
	for i := range src {
		src[i] = int32(i)
	}
	var count [256]int32
	for shift := uint(0); shift < 32 && hi>>shift > 0; shift += 8 {
		count = [256]int32{}
		for _, p := range src {
			count[(ids[p]>>shift)&255]++
		}
		var sum int32
		for b, c := range count {
			count[b] = sum
			sum += c
		}
		for _, p := range src {
			b := (ids[p] >> shift) & 255
			dst[count[b]] = p
			count[b]++
		}
		src, dst = dst, src
	}
	if n > 0 && &src[0] != &order[0] {
		copy(order[:n], src)
	}
	for k := 0; k < n; k++ {
		id := ids[order[k]]
		if k == 0 || id != unique[u-1] {
			unique[u] = id
			starts[u] = int32(k)
			u++
		}
	}
	starts[u] = int32(n)
	return u, nil
}

// EmbeddingBackward ACCUMULATES dtable[ids[i],:] += dout[i,:] for n rows of
// width c (tensor.EmbeddingBackward), with order, unique and starts (int32
// on the device) and u from EmbeddingIndex(ids, vocab, …). Each distinct id's
// rows are added in increasing i by one block, so the result is bitwise the
// CPU's, with no atomics. For model.EmbedBackward call it once for the token
// table (index of ids) and once for the position table (index of pos).
func (o *Ops) EmbeddingBackward(dtable, order, unique, starts, dout cuda.DevicePtr, u, n, c, vocab int) error {
	const op = "EmbeddingBackward"
	if n < 0 || c < 1 || vocab < 1 || u < 0 || u > n || (n > 0 && u == 0) {
		return errf(op, "n=%d c=%d vocab=%d u=%d", n, c, vocab, u)
	}
	if err := elementwiseCheck(op, n, dtable, order, unique, starts, dout); err != nil || n == 0 {
		return err
	}
	return o.launch("embedding_bwd_f32", u, elementwiseRowBlock(c), 0, dtable, order, unique, starts, dout, u, c, vocab)
}
