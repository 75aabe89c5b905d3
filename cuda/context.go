package cuda

import (
	"fmt"
	"runtime"
	"unsafe"
)

// DevicePtr is an address in device memory.
type DevicePtr uintptr

// Add returns p advanced by bytes.
func (p DevicePtr) Add(bytes int) DevicePtr { return p + DevicePtr(bytes) }

// Context is the primary context of one GPU with the stream the trainer's
// work goes to. Use from one goroutine at a time.
type Context struct {
	dev     int32
	ordinal int
	ctx     uintptr
	stream  Stream
	info    DeviceInfo
	args    *launchArgs
}

// DeviceInfo describes a GPU.
type DeviceInfo struct {
	Ordinal        int
	Name           string
	Major, Minor   int // compute capability
	SMs            int
	TotalMem       int64
	MaxSharedOptin int // bytes of shared memory a block may opt in to
	Driver         int // driver API version, e.g. 13000
	Library        string
}

// Device attribute numbers (CUdevice_attribute).
const (
	attrMaxSharedPerBlockOptin = 97
	attrSMCount                = 16
	attrCCMajor                = 75
	attrCCMinor                = 76
)

// DeviceCount loads the driver and returns how many GPUs it sees.
func DeviceCount() (int, error) {
	if err := loadDriver(); err != nil {
		return 0, err
	}
	var n int32
	if err := check("cuDeviceGetCount", driver.cuDeviceGetCount, uintptr(unsafe.Pointer(&n))); err != nil {
		return 0, err
	}
	return int(n), nil
}

// Open loads the driver, retains GPU ordinal's primary context and creates
// the context's stream. The error names what is missing on machines without
// a driver or GPU.
func Open(ordinal int) (*Context, error) {
	n, err := DeviceCount()
	if err != nil {
		return nil, err
	}
	if ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("cuda: GPU %d requested, the driver sees %d", ordinal, n)
	}
	c := &Context{ordinal: ordinal}
	if err := check("cuDeviceGet", driver.cuDeviceGet, uintptr(unsafe.Pointer(&c.dev)), uintptr(ordinal)); err != nil {
		return nil, err
	}
	if err := check("cuDevicePrimaryCtxRetain", driver.cuDevicePrimaryCtxRetain, uintptr(unsafe.Pointer(&c.ctx)), uintptr(c.dev)); err != nil {
		return nil, err
	}
	if err := c.readInfo(); err != nil {
		return nil, err
	}
	s, err := c.NewStream()
	if err != nil {
		return nil, err
	}
	c.stream = s
	return c, nil
}

func (c *Context) readInfo() error {
	in := DeviceInfo{Ordinal: c.ordinal, Library: driver.path}
	var name [256]byte
	if err := check("cuDeviceGetName", driver.cuDeviceGetName, uintptr(unsafe.Pointer(&name[0])), 256, uintptr(c.dev)); err != nil {
		return err
	}
	in.Name = goString(uintptr(unsafe.Pointer(&name[0])))
	attr := func(a int) (int, error) {
		var v int32
		err := check("cuDeviceGetAttribute", driver.cuDeviceGetAttribute, uintptr(unsafe.Pointer(&v)), uintptr(a), uintptr(c.dev))
		return int(v), err
	}
	var err error
	if in.Major, err = attr(attrCCMajor); err != nil {
		return err
	}
	if in.Minor, err = attr(attrCCMinor); err != nil {
		return err
	}
	if in.SMs, err = attr(attrSMCount); err != nil {
		return err
	}
	if in.MaxSharedOptin, err = attr(attrMaxSharedPerBlockOptin); err != nil {
		return err
	}
	var total uint64
	if err := check("cuDeviceTotalMem", driver.cuDeviceTotalMem, uintptr(unsafe.Pointer(&total)), uintptr(c.dev)); err != nil {
		return err
	}
	in.TotalMem = int64(total)
	var v int32
	if err := check("cuDriverGetVersion", driver.cuDriverGetVersion, uintptr(unsafe.Pointer(&v))); err != nil {
		return err
	}
	in.Driver = int(v)
	c.info = in
	return nil
}

// Info describes the context's GPU.
func (c *Context) Info() DeviceInfo { return c.info }

// Stream is the context's default work stream.
func (c *Context) Stream() Stream { return c.stream }

// do runs fn with the context current on a locked OS thread.
func (c *Context) do(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := check("cuCtxSetCurrent", driver.cuCtxSetCurrent, c.ctx); err != nil {
		return err
	}
	return fn()
}

// Close releases the stream and the primary context. Memory still allocated
// goes with the context once no one else retains it.
func (c *Context) Close() error {
	if c == nil || c.ctx == 0 {
		return nil
	}
	err := c.do(func() error {
		if c.stream != 0 {
			if err := check("cuStreamDestroy", driver.cuStreamDestroy, uintptr(c.stream)); err != nil {
				return err
			}
		}
		return nil
	})
	if e := check("cuDevicePrimaryCtxRelease", driver.cuDevicePrimaryCtxRelease, uintptr(c.dev)); err == nil {
		err = e
	}
	c.ctx, c.stream = 0, 0
	return err
}

// Synchronize waits for all of the context's work.
func (c *Context) Synchronize() error {
	return c.do(func() error { return check("cuCtxSynchronize", driver.cuCtxSynchronize) })
}

// MemInfo returns free and total device memory in bytes.
func (c *Context) MemInfo() (free, total int64, err error) {
	var f, t uint64
	err = c.do(func() error {
		return check("cuMemGetInfo", driver.cuMemGetInfo, uintptr(unsafe.Pointer(&f)), uintptr(unsafe.Pointer(&t)))
	})
	return int64(f), int64(t), err
}

// Alloc allocates bytes of device memory (at least one byte, 256-byte
// aligned). The error says how much was asked and how much is free.
func (c *Context) Alloc(bytes int) (DevicePtr, error) {
	if bytes < 0 {
		return 0, fmt.Errorf("cuda: alloc of %d bytes", bytes)
	}
	var p DevicePtr
	err := c.do(func() error {
		return check("cuMemAlloc", driver.cuMemAlloc, uintptr(unsafe.Pointer(&p)), uintptr(max(bytes, 1)))
	})
	if err != nil {
		free, total, _ := c.MemInfo()
		return 0, fmt.Errorf("%w (asked %d bytes, %d of %d free)", err, bytes, free, total)
	}
	return p, nil
}

// Free releases memory from Alloc; 0 is ignored.
func (c *Context) Free(p DevicePtr) error {
	if p == 0 {
		return nil
	}
	return c.do(func() error { return check("cuMemFree", driver.cuMemFree, uintptr(p)) })
}

// CopyIn copies src to device memory at dst after the stream's work so far
// and returns when the copy is done.
func CopyIn[T any](c *Context, dst DevicePtr, src []T) error {
	if len(src) == 0 {
		return nil
	}
	n := len(src) * int(unsafe.Sizeof(src[0]))
	return c.afterStream(func() error {
		return check("cuMemcpyHtoD", driver.cuMemcpyHtoD, uintptr(dst), uintptr(unsafe.Pointer(&src[0])), uintptr(n))
	})
}

// CopyOut copies device memory at src into dst once the stream's work so
// far is done.
func CopyOut[T any](c *Context, dst []T, src DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	n := len(dst) * int(unsafe.Sizeof(dst[0]))
	return c.afterStream(func() error {
		return check("cuMemcpyDtoH", driver.cuMemcpyDtoH, uintptr(unsafe.Pointer(&dst[0])), uintptr(src), uintptr(n))
	})
}

// afterStream runs fn in the context once the stream's work so far is done.
func (c *Context) afterStream(fn func() error) error {
	return c.do(func() error {
		if err := check("cuStreamSynchronize", driver.cuStreamSynchronize, uintptr(c.stream)); err != nil {
			return err
		}
		return fn()
	})
}

// CopyDevice queues a device-to-device copy of bytes on s.
func (c *Context) CopyDevice(s Stream, dst, src DevicePtr, bytes int) error {
	if bytes == 0 {
		return nil
	}
	return c.do(func() error {
		return check("cuMemcpyDtoDAsync", driver.cuMemcpyDtoDAsync, uintptr(dst), uintptr(src), uintptr(bytes), uintptr(s))
	})
}

// Memset queues setting bytes bytes at p to zero on s.
func (c *Context) Zero(s Stream, p DevicePtr, bytes int) error {
	if bytes == 0 {
		return nil
	}
	return c.do(func() error {
		return check("cuMemsetD8Async", driver.cuMemsetD8Async, uintptr(p), 0, uintptr(bytes), uintptr(s))
	})
}

// Fill32 queues setting n 32-bit words at p to bits on s (poisoning buffers
// in tests: Fill32(s, p, n, 0x7fc00000) writes NaNs).
func (c *Context) Fill32(s Stream, p DevicePtr, n int, bits uint32) error {
	if n == 0 {
		return nil
	}
	return c.do(func() error {
		return check("cuMemsetD32Async", driver.cuMemsetD32Async, uintptr(p), uintptr(bits), uintptr(n), uintptr(s))
	})
}

// Stream is a CUDA stream; 0 is the legacy default stream.
type Stream uintptr

// NewStream creates a stream that synchronises with the legacy default
// stream (flags 0).
func (c *Context) NewStream() (Stream, error) {
	var s Stream
	err := c.do(func() error { return check("cuStreamCreate", driver.cuStreamCreate, uintptr(unsafe.Pointer(&s)), 0) })
	return s, err
}

// DestroyStream releases s once its queued work is done.
func (c *Context) DestroyStream(s Stream) error {
	return c.do(func() error { return check("cuStreamDestroy", driver.cuStreamDestroy, uintptr(s)) })
}

// SyncStream waits for s's work.
func (c *Context) SyncStream(s Stream) error {
	return c.do(func() error { return check("cuStreamSynchronize", driver.cuStreamSynchronize, uintptr(s)) })
}

// Event is a CUDA event for timing and cross-stream ordering.
type Event uintptr

// NewEvent creates a timing event.
func (c *Context) NewEvent() (Event, error) {
	var e Event
	err := c.do(func() error { return check("cuEventCreate", driver.cuEventCreate, uintptr(unsafe.Pointer(&e)), 0) })
	return e, err
}

// NewSyncEvent creates an event for cross-stream ordering only (no timing,
// which makes recording and waiting cheaper).
func (c *Context) NewSyncEvent() (Event, error) {
	var e Event
	const disableTiming = 2 // CU_EVENT_DISABLE_TIMING
	err := c.do(func() error {
		return check("cuEventCreate", driver.cuEventCreate, uintptr(unsafe.Pointer(&e)), disableTiming)
	})
	return e, err
}

// Record queues e on s.
func (c *Context) Record(e Event, s Stream) error {
	return c.do(func() error { return check("cuEventRecord", driver.cuEventRecord, uintptr(e), uintptr(s)) })
}

// Wait makes s wait for e's last record.
func (c *Context) Wait(s Stream, e Event) error {
	return c.do(func() error { return check("cuStreamWaitEvent", driver.cuStreamWaitEvent, uintptr(s), uintptr(e), 0) })
}

// Elapsed waits for end and returns the milliseconds between start and end.
func (c *Context) Elapsed(start, end Event) (float32, error) {
	var ms float32
	err := c.do(func() error {
		if err := check("cuEventSynchronize", driver.cuEventSynchronize, uintptr(end)); err != nil {
			return err
		}
		return check("cuEventElapsedTime", driver.cuEventElapsedTime, uintptr(unsafe.Pointer(&ms)), uintptr(start), uintptr(end))
	})
	return ms, err
}

// DestroyEvent releases e.
func (c *Context) DestroyEvent(e Event) error {
	return c.do(func() error { return check("cuEventDestroy", driver.cuEventDestroy, uintptr(e)) })
}
