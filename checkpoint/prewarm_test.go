package checkpoint

import "testing"

// Prewarm fills the page-cache writer's pool of bounce buffers for the
// shards asked (bounded by the pool), and taking one after it does not
// allocate.
func TestPrewarmFillsBouncePool(t *testing.T) {
	drain := func() {
		for len(bounceBufs) > 0 {
			if b := <-bounceBufs; len(b) != bufferedWriteBytes {
				t.Fatalf("pooled bounce buffer of %d bytes, want %d", len(b), bufferedWriteBytes)
			}
		}
	}
	drain()
	Prewarm(2)
	if got, want := len(bounceBufs), min(2, cap(bounceBufs)); got != want {
		t.Fatalf("after Prewarm(2): %d pooled buffers, want %d", got, want)
	}
	allocs := testing.AllocsPerRun(1, func() {
		putBounceBuf(getBounceBuf())
	})
	if allocs != 0 {
		t.Fatalf("taking a prewarmed buffer allocated %v times", allocs)
	}
	Prewarm(1000) // more than the pool holds: it fills the pool and stops
	if got := len(bounceBufs); got != cap(bounceBufs) {
		t.Fatalf("after Prewarm(1000): %d pooled buffers, want the pool's %d", got, cap(bounceBufs))
	}
	drain()
}
