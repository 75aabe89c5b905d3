// Package ops wraps each CUDA kernel of cuda/kernels in a Go function with
// its launch configuration, one file per kernel family, llm.c style: flat
// device buffers in, flat device buffers out, sizes as ints. Every wrapper
// has a test against its CPU reference in package tensor or moe (skipped
// where no CUDA driver is present).
//
// It must not hold model state or allocate per call: package gpu owns the
// buffers and the order of operations.
package ops

import (
	"fmt"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/cuda/kernels"
)

// Ops launches kernels into one context's stream. Use from one goroutine at
// a time.
type Ops struct {
	C *cuda.Context
	K *kernels.Set
	S cuda.Stream
	// SMs is the GPU's multiprocessor count (grid sizing).
	SMs       int
	fns       map[string]cuda.Function
	sharedSet map[string]int // dynamic shared-memory limit set per kernel
	// Prof, when set, times every launch by kernel family.
	Prof *Profile
}

// New loads every kernel into c and launches onto c's stream.
func New(c *cuda.Context) (*Ops, error) {
	k, err := kernels.Load(c)
	if err != nil {
		return nil, err
	}
	return &Ops{C: c, K: k, S: c.Stream(), SMs: c.Info().SMs, fns: map[string]cuda.Function{}, sharedSet: map[string]int{}}, nil
}

// OnStream returns Ops that launch the same kernels into s, unprofiled (a
// profile times one stream). It shares o's caches: use both from one
// goroutine.
func (o *Ops) OnStream(s cuda.Stream) *Ops {
	c := *o
	c.S, c.Prof = s, nil
	return &c
}

// launch queues kernel name over grid×block with shared bytes of dynamic
// shared memory.
func (o *Ops) launch(name string, grid, block int, shared int, args ...any) error {
	return o.launch3(name, cuda.Dim3{X: grid}, cuda.Dim3{X: block}, shared, args...)
}

// launch3 is launch with 3-D grid and block shapes.
func (o *Ops) launch3(name string, grid, block cuda.Dim3, shared int, args ...any) error {
	f, ok := o.fns[name]
	if !ok {
		var err error
		if f, err = o.K.Get(name); err != nil {
			return err
		}
		o.fns[name] = f
	}
	// A launch above 48 KiB of dynamic shared memory needs the kernel's
	// limit raised to it first (once per kernel and larger size).
	if shared > 48<<10 && shared > o.sharedSet[name] {
		if err := o.C.SetMaxDynamicShared(f, shared); err != nil {
			return fmt.Errorf("gpu/ops: %s: %d bytes of shared memory: %w", name, shared, err)
		}
		o.sharedSet[name] = shared
	}
	if o.Prof != nil {
		return o.Prof.Span(Family(name), name, func() error { return o.C.Launch(f, grid, block, shared, o.S, args...) })
	}
	return o.C.Launch(f, grid, block, shared, o.S, args...)
}

// gridFor is the number of blocks of block threads that covers n elements
// with one element per thread, capped at a few waves of the GPU (kernels
// loop with a grid stride past that).
func (o *Ops) gridFor(n, block int) int {
	g := (n + block - 1) / block
	return max(1, min(g, 32*max(o.SMs, 1)))
}

// Fill sets n floats at x to v.
func (o *Ops) Fill(x cuda.DevicePtr, v float32, n int) error {
	if n == 0 {
		return nil
	}
	return o.launch("fill_f32", o.gridFor(n, 256), 256, 0, x, v, n)
}

// Axpy: y += a·x over n floats.
func (o *Ops) Axpy(y, x cuda.DevicePtr, a float32, n int) error {
	if n == 0 {
		return nil
	}
	return o.launch("axpy_f32", o.gridFor(n, 256), 256, 0, y, x, a, n)
}

// errf prefixes a wrapper's argument errors.
func errf(op, format string, args ...any) error {
	return fmt.Errorf("gpu/ops: %s: %s", op, fmt.Sprintf(format, args...))
}
