package ops

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/tensor"
)

// ewIDs draws n ids in [0, vocab); with ignore, each is first given a one
// in five chance to be −1 instead (an ignored target).
func ewIDs(rng *rand.Rand, n, vocab int, ignore bool) []int32 {
	ids := make([]int32, n)
	for i := range ids {
		if ignore && rng.IntN(5) == 0 {
			ids[i] = -1
		} else {
			ids[i] = int32(rng.IntN(vocab))
		}
	}
	return ids
}

// ewIndex is EmbeddingIndex into fresh slices, failing the test on error.
func ewIndex(t testing.TB, ids []int32, vocab int) (order, unique, starts []int32, u int) {
	t.Helper()
	n := len(ids)
	order, unique, starts = make([]int32, n), make([]int32, n), make([]int32, n+1)
	u, err := EmbeddingIndex(ids, vocab, order, unique, starts)
	if err != nil {
		t.Fatal(err)
	}
	return order, unique[:u], starts[:u+1], u
}

// TestEmbeddingIndex runs on the CPU: against a stable sort, for vocabularies
// needing one to four radix passes, and without allocating.
func TestEmbeddingIndex(t *testing.T) {
	rng := rand.New(rand.NewPCG(29, 30))
	for _, vocab := range []int{1, 7, 300, 70000, 1<<24 + 5, math.MaxInt32} {
		for _, n := range []int{0, 1, 3, 37, 1000} {
			ids := ewIDs(rng, n, vocab, false)
			if n > 2 {
				ids[n-1] = int32(vocab - 1) // the widest id
			}
			order, unique, starts, u := ewIndex(t, ids, vocab)
			want := make([]int32, n)
			for i := range want {
				want[i] = int32(i)
			}
			slices.SortStableFunc(want, func(a, b int32) int { return int(ids[a]) - int(ids[b]) })
			if !slices.Equal(order, want) {
				t.Fatalf("vocab %d n %d: order %v, want %v", vocab, n, order, want)
			}
			if starts[0] != 0 || int(starts[u]) != n {
				t.Fatalf("vocab %d n %d: starts %v", vocab, n, starts)
			}
			for b := 0; b < u; b++ {
				if b > 0 && unique[b] <= unique[b-1] {
					t.Fatalf("vocab %d n %d: unique not increasing: %v", vocab, n, unique)
				}
				if starts[b] >= starts[b+1] {
					t.Fatalf("vocab %d n %d: empty run %d: %v", vocab, n, b, starts)
				}
				for k := starts[b]; k < starts[b+1]; k++ {
					if ids[order[k]] != unique[b] {
						t.Fatalf("vocab %d n %d: position %d in the run of %d has id %d", vocab, n, order[k], unique[b], ids[order[k]])
					}
				}
			}
		}
	}
	ids := ewIDs(rng, 4096, 50000, false)
	order, unique, starts := make([]int32, 4096), make([]int32, 4096), make([]int32, 4097)
	if a := testing.AllocsPerRun(5, func() { EmbeddingIndex(ids, 50000, order, unique, starts) }); a != 0 {
		t.Errorf("EmbeddingIndex allocates %v times", a)
	}
	if _, err := EmbeddingIndex(ids, 50000, order[:4095], unique, starts); err == nil {
		t.Error("short order accepted")
	}
	if _, err := EmbeddingIndex(ids, 50000, order, unique, starts[:4096]); err == nil {
		t.Error("short starts accepted")
	}
	if _, err := EmbeddingIndex([]int32{0, -1}, 5, order, unique, starts); err == nil {
		t.Error("negative id accepted")
	}
	if _, err := EmbeddingIndex([]int32{0, 5}, 5, order, unique, starts); err == nil {
		t.Error("id = vocab accepted")
	}
}

func TestEmbeddingForward(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(31, 32))
	const vocab, npos = 50, 40
	for _, c := range ewRowCases(false) {
		n, d, off := c.n, c.d, c.off
		ids, pos := ewIDs(rng, n, vocab, false), ewIDs(rng, n, npos, false)
		tok, ptab := randn(rng, vocab*d, 1), randn(rng, npos*d, 1)
		dids, dpos := upload(t, o, ids), upload(t, o, pos)
		dtok, dptab := uploadAt(t, o, tok, off), uploadAt(t, o, ptab, off)

		want := make([]float32, n*d)
		tensor.EmbeddingForward(want, ids, tok, d)
		out := poisonedAt(t, o, n*d, off)
		if err := o.EmbeddingForward(out, dids, dtok, n, d, vocab); err != nil {
			t.Fatal(err)
		}
		if i := testkit.FirstBitDiff(download[float32](t, o, out, n*d), want); i >= 0 {
			t.Fatalf("n=%d d=%d off=%d: EmbeddingForward differs at %d", n, d, off, i)
		}

		// model.EmbedForward: tok[ids] + pos[pos], added in float32.
		scratch := make([]float32, n*d)
		tensor.EmbeddingForward(scratch, pos, ptab, d)
		tensor.AddInPlace(want, scratch)
		out = poisonedAt(t, o, n*d, off)
		if err := o.EmbedForward(out, dids, dpos, dtok, dptab, n, d, vocab, npos); err != nil {
			t.Fatal(err)
		}
		if i := testkit.FirstBitDiff(download[float32](t, o, out, n*d), want); i >= 0 {
			t.Fatalf("n=%d d=%d off=%d: EmbedForward differs at %d", n, d, off, i)
		}
		outH := poisonedBF16At(t, o, n*d, off)
		if err := o.EmbedForwardBF16(outH, dids, dpos, dtok, dptab, n, d, vocab, npos); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(download[uint16](t, o, outH, n*d), bf16Encode(want)) {
			t.Fatalf("n=%d d=%d off=%d: EmbedForwardBF16 is not the rounded float sum", n, d, off)
		}
		outH = poisonedBF16At(t, o, n*d, off)
		if err := o.EmbeddingForwardBF16(outH, dids, dtok, n, d, vocab); err != nil {
			t.Fatal(err)
		}
		gather := make([]float32, n*d)
		tensor.EmbeddingForward(gather, ids, tok, d)
		if !slices.Equal(download[uint16](t, o, outH, n*d), bf16Encode(gather)) {
			t.Fatalf("n=%d d=%d off=%d: EmbeddingForwardBF16 is not the rounded gather", n, d, off)
		}
	}
}

// TestEmbeddingForwardBadIDs: an id or position out of range gives a NaN
// row; the other rows are untouched by it.
func TestEmbeddingForwardBadIDs(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(33, 34))
	for _, d := range []int{5, 64} {
		const vocab, npos = 10, 4
		ids, pos := []int32{1, vocab, -1, 2}, []int32{0, 1, 2, npos}
		tok, ptab := randn(rng, vocab*d, 1), randn(rng, npos*d, 1)
		out := poisoned(t, o, 4*d)
		if err := o.EmbedForward(out, upload(t, o, ids), upload(t, o, pos), upload(t, o, tok), upload(t, o, ptab), 4, d, vocab, npos); err != nil {
			t.Fatal(err)
		}
		got := download[float32](t, o, out, 4*d)
		for j := 0; j < d; j++ {
			if got[j] != tok[d+j]+ptab[j] {
				t.Fatalf("d=%d: good row column %d = %g", d, j, got[j])
			}
			for i := 1; i < 4; i++ {
				if !math.IsNaN(float64(got[i*d+j])) {
					t.Fatalf("d=%d: bad row %d column %d = %g, want NaN", d, i, j, got[i*d+j])
				}
			}
		}
	}
}

func TestEmbeddingBackward(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(35, 36))
	for _, vocab := range []int{7, 300} { // many repeats, then few
		for _, c := range ewRowCases(false) {
			n, d, off := c.n, c.d, c.off
			ids := ewIDs(rng, n, vocab, false)
			dout := randn(rng, n*d, 1)
			table0 := randn(rng, vocab*d, 1) // backward accumulates
			order, unique, starts, u := ewIndex(t, ids, vocab)
			dord, duniq, dstarts := upload(t, o, order), upload(t, o, unique), upload(t, o, starts)
			ddout := uploadAt(t, o, dout, off)
			want := append([]float32(nil), table0...)
			tensor.EmbeddingBackward(want, ids, dout, d)
			for run := 0; run < 2; run++ {
				dtab := uploadAt(t, o, table0, off)
				if err := o.EmbeddingBackward(dtab, dord, duniq, dstarts, ddout, u, n, d, vocab); err != nil {
					t.Fatal(err)
				}
				// Same additions in the same order as the CPU: bitwise.
				if i := testkit.FirstBitDiff(download[float32](t, o, dtab, vocab*d), want); i >= 0 {
					t.Fatalf("vocab %d n=%d d=%d off=%d run %d: dtable differs at %d", vocab, n, d, off, run, i)
				}
			}
		}
	}
}

func TestEmbeddingBadSizes(t *testing.T) {
	o := &Ops{}
	p := cuda.DevicePtr(1 << 20)
	wantErrors(t, map[string]error{
		"fwd d=0":       o.EmbeddingForward(p, p, p, 3, 0, 10),
		"fwd vocab=0":   o.EmbeddingForward(p, p, p, 3, 4, 0),
		"fwd n<0":       o.EmbeddingForward(p, p, p, -3, 4, 10),
		"fwd null ids":  o.EmbeddingForwardBF16(p, 0, p, 3, 4, 10),
		"embed no pos":  o.EmbedForward(p, p, 0, p, p, 3, 4, 10, 5),
		"embed npos=0":  o.EmbedForwardBF16(p, p, p, p, p, 3, 4, 10, 0),
		"bwd u>n":       o.EmbeddingBackward(p, p, p, p, p, 4, 3, 4, 10),
		"bwd u=0":       o.EmbeddingBackward(p, p, p, p, p, 0, 3, 4, 10),
		"bwd c=0":       o.EmbeddingBackward(p, p, p, p, p, 2, 3, 0, 10),
		"bwd null dout": o.EmbeddingBackward(p, p, p, p, 0, 2, 3, 4, 10),
	})
	if err := o.EmbeddingBackward(0, 0, 0, 0, 0, 0, 0, 4, 10); err != nil {
		t.Errorf("empty: %v", err)
	}
}
