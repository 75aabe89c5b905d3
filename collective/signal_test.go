package collective

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// A wake left in the channel by an earlier use must not complete the next
// one: wait treats it as a hint and goes back to waiting.
func TestSignalStaleWake(t *testing.T) {
	var s signal
	s.init()
	s.fire()
	if err := s.wait(context.Background()); err != nil {
		t.Fatalf("fired signal: %v", err)
	}
	s.reset()
	if s.done() {
		t.Fatal("done after reset")
	}
	s.wake <- struct{}{} // the late send of the earlier use's fire
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait after a stale wake = %v, want the deadline", err)
	}
	s.fire()
	s.fire() // a second fire with the wake still pending must not block
	if err := s.wait(context.Background()); err != nil {
		t.Fatalf("fired after a stale wake: %v", err)
	}
}

// One signal, used over and over by a waiter and a firer: every wait
// returns only after its fire, and what the firer wrote before firing is
// seen (the race detector checks the ordering).
func TestSignalReuse(t *testing.T) {
	var s signal
	s.init()
	var val int
	var wg sync.WaitGroup
	next := make(chan int)
	wg.Go(func() {
		for i := range next {
			val = i
			s.fire()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 1; i <= 2000; i++ {
		next <- i
		if err := s.wait(ctx); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if val != i {
			t.Fatalf("round %d: waiter saw %d", i, val)
		}
		s.reset()
	}
	close(next)
	wg.Wait()
}
