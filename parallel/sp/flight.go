package sp

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/moetrain/moetrain/collective"
)

// flight tracks the asynchronous messages of one call, so that a failure
// releases every buffer still lent to the transport before returning. In
// compute-only mode (sim) no message is sent and every operation completes at
// once: the algorithm does exactly its local work.
type flight struct {
	ctx  context.Context
	what string // algorithm and pass, for errors
	sim  bool
	mu   sync.Mutex // all: a relay goroutine starts messages too
	all  []*req
}

// req is one message in flight; what names the op and peer.
type req struct {
	r    *collective.Request
	what string
}

func (f *flight) send(c *collective.Comm, buf []float32, peer int, format string, args ...any) *req {
	if f.sim {
		return &req{}
	}
	return f.add(c.SendAsync(buf, peer), fmt.Sprintf(format, args...)+fmt.Sprintf(" (send %d floats to sp rank %d)", len(buf), peer))
}

func (f *flight) recv(c *collective.Comm, buf []float32, peer int, format string, args ...any) *req {
	if f.sim {
		return &req{}
	}
	return f.add(c.RecvAsync(buf, peer), fmt.Sprintf(format, args...)+fmt.Sprintf(" (receive %d floats from sp rank %d)", len(buf), peer))
}

// add tracks the started message r, described by what.
func (f *flight) add(r *collective.Request, what string) *req {
	q := &req{r: r, what: what}
	f.mu.Lock()
	f.all = append(f.all, q)
	f.mu.Unlock()
	return q
}

// wait completes r (nil or already waited: no-op) under the call's context.
func (f *flight) wait(r *req) error { return f.waitCtx(f.ctx, r) }

// waitCtx is wait under ctx (a relay's, cancelled when the call returns).
// Each req is waited by the goroutine that started it, or after that
// goroutine has finished.
func (f *flight) waitCtx(ctx context.Context, r *req) error {
	if r == nil || r.r == nil {
		return nil
	}
	err := r.r.Wait(ctx)
	r.r = nil
	if err != nil {
		return fmt.Errorf("sp %s: %s: %w", f.what, r.what, err)
	}
	return nil
}

// drain waits for every message not yet waited for, in start order, and
// returns the first error.
func (f *flight) drain() error {
	var first error
	f.mu.Lock()
	all := slices.Clone(f.all)
	f.mu.Unlock()
	for _, r := range all {
		if err := f.wait(r); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// abandon cancels and waits out every message not yet waited for; after it
// no buffer of the call is used by the transport.
func (f *flight) abandon() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f.mu.Lock()
	all := slices.Clone(f.all)
	f.mu.Unlock()
	for _, r := range all {
		if r.r != nil {
			_ = r.r.Wait(ctx)
			r.r = nil
		}
	}
}

// streams returns n fresh sub-communicators of all of c's members, one per
// message stream of an algorithm, so streams never match each other's
// messages and leftovers of a failed call cannot reach the next one. Every
// member derives the same groups because every member makes the same calls.
func streams(c *collective.Comm, sim bool, n int) ([]*collective.Comm, error) {
	out := make([]*collective.Comm, n)
	if sim {
		return out, nil
	}
	all := make([]int, c.Size())
	for i := range all {
		all[i] = i
	}
	for i := range out {
		s, err := c.Sub(all)
		if err != nil {
			return nil, fmt.Errorf("sp: message streams: %w", err)
		}
		out[i] = s
	}
	return out, nil
}
