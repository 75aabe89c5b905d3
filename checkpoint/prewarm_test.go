package checkpoint

import "testing"

// Prewarm fills the direct writer's pool with aligned blocks of the full
// size for the shards asked (bounded by the pool), and a save after it
// takes them instead of allocating.
func TestPrewarmFillsDirectPool(t *testing.T) {
	drain := func() int {
		n := 0
		for {
			select {
			case b := <-directBufs:
				if cap(b) != directBlock {
					t.Fatalf("pooled block of %d bytes, want %d", cap(b), directBlock)
				}
				n++
			default:
				return n
			}
		}
	}
	drain()
	Prewarm(2)
	if got, want := len(directBufs), min(2*(directDepth+1), cap(directBufs)); got != want {
		t.Fatalf("after Prewarm(2): %d pooled blocks, want %d", got, want)
	}
	allocs := testing.AllocsPerRun(1, func() {
		b := getDirectBuf()
		putDirectBuf(b)
	})
	if allocs != 0 {
		t.Fatalf("taking a prewarmed block allocated %v times", allocs)
	}
	Prewarm(1000)
	if got := len(directBufs); got > cap(directBufs) {
		t.Fatalf("%d pooled blocks, more than the pool's %d", got, cap(directBufs))
	}
	drain()
}
