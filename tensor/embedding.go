package tensor

// EmbeddingForward sets out[i,:] = table[ids[i],:] for i < len(ids), rows of
// width c.
func EmbeddingForward(out []float32, ids []int32, table []float32, c int) {
	GatherRows(out, table, ids, c)
}

// EmbeddingBackward accumulates dtable[ids[i],:] += dout[i,:] for
// i < len(ids). Repeated ids are summed in increasing i for any thread count
// (the work is partitioned over columns of dtable).
func EmbeddingBackward(dtable []float32, ids []int32, dout []float32, c int) {
	ScatterAddRows(dtable, dout, ids, nil, c)
}
