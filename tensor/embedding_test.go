package tensor

import "testing"

// The embedding is a gather of table rows and its backward a scatter-add
// without scale, bit for bit: TestGatherScatterRows checks those against
// naive references (repeated ids, every thread count).
func TestEmbedding(t *testing.T) {
	r := newRNG(50)
	for _, vocab := range []int{1, 7, 300} {
		for _, c := range []int{1, 5, 64} {
			n := 3*vocab + 2
			ids := make([]int32, n)
			for i := range ids {
				ids[i] = int32(r.IntN(vocab))
			}
			table, dout := randVec(r, vocab*c, 1), randVec(r, n*c, 1)
			out, want := make([]float32, n*c), make([]float32, n*c)
			EmbeddingForward(out, ids, table, c)
			GatherRows(want, table, ids, c)
			checkBitwise(t, "forward "+sizeName(vocab, c), out, want)
			got := randVec(r, vocab*c, 1)
			want = append([]float32(nil), got...)
			EmbeddingBackward(got, ids, dout, c)
			ScatterAddRows(want, dout, ids, nil, c)
			checkBitwise(t, "backward "+sizeName(vocab, c), got, want)
		}
	}
}

func TestEmbeddingGradient(t *testing.T) {
	r := newRNG(51)
	vocab, c := 5, 3
	ids := []int32{4, 0, 4, 2, 4}
	table := randVec(r, vocab*c, 1)
	g := randVec(r, len(ids)*c, 1) // loss = Σ g∘out
	want := numGrad(func(tb []float64) float64 {
		s := 0.0
		for i, id := range ids {
			for j := 0; j < c; j++ {
				s += float64(g[i*c+j]) * tb[int(id)*c+j]
			}
		}
		return s
	}, to64(table), 1e-6)
	base := randVec(r, vocab*c, 1)
	got := append([]float32(nil), base...)
	EmbeddingBackward(got, ids, g, c)
	checkClose(t, "dtable", sub(got, base), want, 1e-6, 1e-5)
}
