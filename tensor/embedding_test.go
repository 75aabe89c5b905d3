package tensor

import "testing"

func TestEmbedding(t *testing.T) {
	r := newRNG(50)
	for _, vocab := range []int{1, 7, 300} {
		for _, c := range []int{1, 5, 64} {
			n := 3*vocab + 2
			ids := make([]int32, n)
			for i := range ids {
				ids[i] = int32(r.IntN(vocab))
			}
			table := randVec(r, vocab*c, 1)
			out := make([]float32, n*c)
			EmbeddingForward(out, ids, table, c)
			for i, id := range ids {
				checkBitwise(t, "forward", out[i*c:(i+1)*c], table[int(id)*c:(int(id)+1)*c])
			}
			dout := randVec(r, n*c, 1)
			base := randVec(r, vocab*c, 1)
			want := append([]float32(nil), base...)
			for i, id := range ids {
				for j := 0; j < c; j++ {
					want[int(id)*c+j] += dout[i*c+j]
				}
			}
			withThreads(t, []int{1, 2, 3}, func(th int) {
				got := append([]float32(nil), base...)
				EmbeddingBackward(got, ids, dout, c)
				checkBitwise(t, "backward "+sizeName(vocab, c, th), got, want)
			})
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
