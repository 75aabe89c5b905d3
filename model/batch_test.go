package model

import (
	"math"
	"slices"
	"testing"
)

func maxAbs(x []float32) float64 {
	m := 0.0
	for _, v := range x {
		m = math.Max(m, math.Abs(float64(v)))
	}
	return m
}

// closeSlices reports the first element of a and b differing by more than
// tol·max|a| (different B·T changes GEMM blocking and so float32 rounding).
func closeSlices(t *testing.T, what string, a, b []float32, tol float64) {
	t.Helper()
	scale := maxAbs(a)
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > tol*scale {
			t.Fatalf("%s[%d]: %v vs %v (scale %v)", what, i, a[i], b[i], scale)
		}
	}
}

// TestPaddingChangesNothing: appending padding tokens (target -1) after the
// real tokens of every row changes neither the loss nor any gradient.
func TestPaddingChangesNothing(t *testing.T) {
	cfg := tinyConfig()
	const b, real, padded = 2, 5, 8
	in := randomInput(cfg, b, real, 11)
	pad := Input{B: b, T: padded}
	for r := 0; r < b; r++ {
		pad.Tokens = append(pad.Tokens, in.Tokens[r*real:(r+1)*real]...)
		pad.Targets = append(pad.Targets, in.Targets[r*real:(r+1)*real]...)
		pad.Pos = append(pad.Pos, in.Pos[r*real:(r+1)*real]...)
		for j := real; j < padded; j++ {
			pad.Tokens = append(pad.Tokens, int32(j+r))
			pad.Targets = append(pad.Targets, -1)
			pad.Pos = append(pad.Pos, int32(j))
		}
	}
	m, _ := New(cfg, 2)
	r1, err := m.ForwardBackward(in)
	if err != nil {
		t.Fatal(err)
	}
	g1 := slices.Clone(m.Grads)
	r2, err := m.ForwardBackward(pad)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Targets != r2.Targets {
		t.Fatalf("counted targets %d vs %d", r1.Targets, r2.Targets)
	}
	for _, c := range []struct {
		name string
		a, b float64
	}{{"loss", r1.Loss, r2.Loss}, {"ce", r1.CE, r2.CE}, {"aux", r1.Aux, r2.Aux}} {
		if math.Abs(c.a-c.b) > 1e-6*math.Abs(c.a) {
			t.Fatalf("%s: %v unpadded vs %v padded", c.name, c.a, c.b)
		}
	}
	for _, e := range m.Layout.Entries {
		closeSlices(t, e.Name+" grad", e.Slice(g1), e.Slice(m.Grads), 1e-5)
	}
}

// TestVaryingBatchShapes: a batch after a larger one gives bitwise the same
// loss and gradients as on a fresh model (activations are reused, not stale).
func TestVaryingBatchShapes(t *testing.T) {
	cfg := tinyConfig()
	small := randomInput(cfg, 2, 5, 21)
	big := randomInput(cfg, 3, 8, 22)
	fresh, _ := New(cfg, 3)
	want, err := fresh.ForwardBackward(small)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := New(cfg, 3)
	if _, err := m.ForwardBackward(big); err != nil {
		t.Fatal(err)
	}
	got, err := m.ForwardBackward(small)
	if err != nil {
		t.Fatal(err)
	}
	if got != want || !slices.Equal(m.Grads, fresh.Grads) {
		t.Fatalf("after a larger batch: %+v, fresh model: %+v (grads equal: %v)", got, want, slices.Equal(m.Grads, fresh.Grads))
	}
}

// TestSegmentsIsolateDocuments: two documents packed in one row with Seg and
// restarting Pos get the same per-token losses as each in its own row.
func TestSegmentsIsolateDocuments(t *testing.T) {
	cfg := tinyConfig()
	m, _ := New(cfg, 4)
	src := randomInput(cfg, 1, 8, 31)
	packed := Input{B: 1, T: 8, Tokens: src.Tokens, Targets: src.Targets,
		Pos: []int32{0, 1, 2, 0, 1, 2, 3, 4}, Seg: []int32{0, 0, 0, 1, 1, 1, 1, 1}}
	if _, err := m.Forward(packed, false); err != nil {
		t.Fatal(err)
	}
	lp := slices.Clone(m.acts.Losses[:8])
	// Separately: doc A (3 tokens) padded to 5, and doc B (5 tokens).
	sep := Input{B: 2, T: 5,
		Tokens:  append(append(slices.Clone(src.Tokens[:3]), 0, 0), src.Tokens[3:]...),
		Targets: append(append(slices.Clone(src.Targets[:3]), -1, -1), src.Targets[3:]...),
		Pos:     []int32{0, 1, 2, 3, 4, 0, 1, 2, 3, 4}}
	if _, err := m.Forward(sep, false); err != nil {
		t.Fatal(err)
	}
	ls := m.acts.Losses[:10]
	want := append(slices.Clone(ls[:3]), ls[5:]...)
	for i := range lp {
		if math.Abs(float64(lp[i]-want[i])) > 1e-5 {
			t.Fatalf("token %d: packed loss %v, separate %v", i, lp[i], want[i])
		}
	}
}

func TestInputValidate(t *testing.T) {
	cfg := tinyConfig()
	m, _ := New(cfg, 1)
	good := randomInput(cfg, 1, 4, 1)
	bad := []Input{
		{B: 1, T: 9, Tokens: make([]int32, 9), Targets: make([]int32, 9), Pos: make([]int32, 9)},
		{B: 1, T: 4, Tokens: []int32{0, 1, 2, 99}, Targets: good.Targets, Pos: good.Pos},
		{B: 1, T: 4, Tokens: good.Tokens, Targets: good.Targets, Pos: []int32{0, 1, 2, 8}},
		{B: 1, T: 4, Tokens: good.Tokens[:3], Targets: good.Targets, Pos: good.Pos},
	}
	for i, in := range bad {
		if _, err := m.Forward(in, false); err == nil {
			t.Errorf("case %d: bad input accepted", i)
		}
	}
}
