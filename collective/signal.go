package collective

import (
	"context"
	"sync/atomic"
)

// signal is the completion of a receive or a queued frame. Unlike a closed
// channel it can be reset and used again, so that the objects it belongs to
// can be recycled instead of allocated per message.
//
// fire marks it and wakes a goroutine blocked in wait. A wake can outlive
// the use it was meant for (fire stores fired, the waiter sees it and
// returns, the object is reset, and only then does fire's send land): a
// waiter therefore treats a wake as a hint and checks fired again.
type signal struct {
	fired atomic.Bool
	wake  chan struct{} // capacity 1
}

func (s *signal) init() { s.wake = make(chan struct{}, 1) }

// fire completes the signal. Whatever the waiter is to read must be written
// before.
func (s *signal) fire() {
	s.fired.Store(true)
	select {
	case s.wake <- struct{}{}:
	default: // a wake is pending already
	}
}

func (s *signal) done() bool { return s.fired.Load() }

// reset readies a fired signal for its next use; nobody may be waiting.
func (s *signal) reset() {
	s.fired.Store(false)
	select {
	case <-s.wake:
	default:
	}
}

// wait returns nil once the signal has fired, or ctx's error if ctx ends
// first.
func (s *signal) wait(ctx context.Context) error {
	for !s.fired.Load() {
		select {
		case <-s.wake:
		case <-ctx.Done():
			if s.fired.Load() {
				return nil
			}
			return ctx.Err()
		}
	}
	return nil
}
