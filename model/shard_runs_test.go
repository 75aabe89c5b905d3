package model

import (
	"math/rand/v2"
	"testing"
)

// Runs covers a random box of a random tensor exactly: every local element
// maps to the global element a naive index walk gives, in order, and no two
// consecutive runs could have been one (they are maximal).
func TestEntryRunsMatchNaiveWalk(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	for trial := range 300 {
		nd := 1 + rng.IntN(4)
		g, shape, start := make([]int, nd), make([]int, nd), make([]int, nd)
		for i := range nd {
			g[i] = 1 + rng.IntN(5)
			shape[i] = 1 + rng.IntN(g[i])
			if rng.IntN(3) == 0 { // often span the whole dimension
				shape[i] = g[i]
			}
			start[i] = rng.IntN(g[i] - shape[i] + 1)
		}
		e := Entry{Shape: shape, Global: g, Start: start}
		// Naive: global offset of every local element, in row-major order.
		var want []int
		idx := make([]int, nd)
		for range e.Size() {
			off := 0
			for i := range nd {
				off = off*g[i] + start[i] + idx[i]
			}
			want = append(want, off)
			for i := nd - 1; i >= 0; i-- {
				if idx[i]++; idx[i] < shape[i] {
					break
				}
				idx[i] = 0
			}
		}
		var got []int
		prevEnd, prevGlobalEnd := -1, -1
		e.Runs(func(local, global, n int) {
			if local != len(got) {
				t.Fatalf("trial %d: run at local %d, want %d", trial, local, len(got))
			}
			if local == prevEnd && global == prevGlobalEnd {
				t.Fatalf("trial %d: run at local %d continues the previous one: not maximal", trial, local)
			}
			for k := range n {
				got = append(got, global+k)
			}
			prevEnd, prevGlobalEnd = local+n, global+n
		})
		if len(got) != len(want) {
			t.Fatalf("trial %d (shape %v in %v at %v): runs cover %d elements, want %d", trial, shape, g, start, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("trial %d (shape %v in %v at %v): element %d maps to %d, want %d", trial, shape, g, start, i, got[i], want[i])
			}
		}
	}
}
