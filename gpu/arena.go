package gpu

import "github.com/moetrain/moetrain/cuda"

// arena is a set of device buffers allocated together and freed together
// (a model's parameters, or its activations for one largest batch).
type arena struct {
	d    *Device
	bufs []arenaBuf
	err  error
}

type arenaBuf struct {
	p     cuda.DevicePtr
	bytes int
}

// alloc returns a buffer of bytes; after the first failure it returns 0 and
// the failure stays in a.err, so a block of allocations checks once.
func (a *arena) alloc(bytes int) cuda.DevicePtr {
	if a.err != nil {
		return 0
	}
	p, err := a.d.alloc(max(bytes, 1))
	if err != nil {
		a.err = err
		return 0
	}
	a.bufs = append(a.bufs, arenaBuf{p, max(bytes, 1)})
	return p
}

func (a *arena) f32(n int) cuda.DevicePtr { return a.alloc(4 * n) }
func (a *arena) i32(n int) cuda.DevicePtr { return a.alloc(4 * n) }
func (a *arena) f64(n int) cuda.DevicePtr { return a.alloc(8 * n) }

// free releases every buffer.
func (a *arena) free() {
	for _, b := range a.bufs {
		a.d.free(b.p, b.bytes)
	}
	a.bufs = nil
}
