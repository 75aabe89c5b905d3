package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// errInFlight is Start's refusal while an operation runs.
var errInFlight = errors.New("another save is in flight")

// Background runs one operation at a time in the background and keeps the
// result of the last one that finished for Wait, which returns a failure
// once. The asynchronous savers (AsyncWriter here, train.Checkpointer
// above it) are built on it. Its methods are safe for concurrent use.
type Background[T any] struct {
	mu     sync.Mutex
	busy   chan struct{} // closed when the running operation ends; nil when idle
	cancel context.CancelFunc
	res    T
	err    error // failure of the last finished operation, not yet returned
}

// Start runs op in a goroutine under a context derived from ctx (Cancel
// cancels it), unless an operation is running: then it returns an error
// and starts nothing. The operation counts as finished when op returns.
func (b *Background[T]) Start(ctx context.Context, op func(ctx context.Context) (T, error)) error {
	b.mu.Lock()
	if b.busy != nil {
		b.mu.Unlock()
		return errInFlight
	}
	octx, cancel := context.WithCancel(ctx)
	busy := make(chan struct{})
	b.busy, b.cancel = busy, cancel
	b.mu.Unlock()
	go func() {
		res, err := op(octx)
		cancel()
		b.mu.Lock()
		b.res, b.err = res, err
		b.busy, b.cancel = nil, nil
		b.mu.Unlock()
		close(busy)
	}()
	return nil
}

// Wait blocks until no operation runs (or ctx ends: an error naming what
// was waited for) and returns the last finished operation's result. A
// failure is returned once: the next Wait starts clean. Callers Wait before
// Start (the savers do); a Start without it overwrites a failure not yet
// returned.
func (b *Background[T]) Wait(ctx context.Context, what string) (T, error) {
	b.mu.Lock()
	busy := b.busy
	b.mu.Unlock()
	if busy != nil {
		select {
		case <-busy:
		case <-ctx.Done():
			var zero T
			return zero, fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	res, err := b.res, b.err
	b.err = nil
	return res, err
}

// Cancel cancels the running operation's context, if one runs (its error
// surfaces on Wait).
func (b *Background[T]) Cancel() {
	b.mu.Lock()
	if b.cancel != nil {
		b.cancel()
	}
	b.mu.Unlock()
}
