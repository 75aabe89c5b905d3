package cuda

import (
	"fmt"
	"math"
	"unsafe"
)

// Module is a loaded PTX module.
type Module struct {
	c    *Context
	h    uintptr
	name string
	// jitLog is the JIT's error-log buffer: a field of the heap-allocated
	// Module, so its address (handed to the driver inside an options
	// array, where //go:uintptrescapes does not reach) cannot move.
	jitLog []byte
}

// Function is a kernel of a loaded module.
type Function struct {
	h    uintptr
	Name string
}

// JIT options (CUjit_option).
const (
	jitErrorLogBuffer     = 5
	jitErrorLogBufferSize = 6
)

// LoadModule JIT-compiles ptx (NUL-terminated here) for the context's GPU;
// name labels errors, which carry the JIT's log.
func (c *Context) LoadModule(name string, ptx []byte) (*Module, error) {
	img := make([]byte, len(ptx)+1)
	copy(img, ptx)
	m := &Module{c: c, name: name, jitLog: make([]byte, 8192)}
	logBuf := m.jitLog
	opts := [2]int32{jitErrorLogBuffer, jitErrorLogBufferSize}
	vals := [2]uintptr{uintptr(unsafe.Pointer(&logBuf[0])), uintptr(len(logBuf))}
	err := c.do(func() error {
		return check("cuModuleLoadDataEx", driver.cuModuleLoadDataEx, uintptr(unsafe.Pointer(&m.h)),
			uintptr(unsafe.Pointer(&img[0])), 2, uintptr(unsafe.Pointer(&opts[0])), uintptr(unsafe.Pointer(&vals[0])))
	})
	if err != nil {
		return nil, fmt.Errorf("cuda: module %s: %w: %s", name, err, goString(uintptr(unsafe.Pointer(&logBuf[0]))))
	}
	return m, nil
}

// Function looks up the kernel called name (its extern "C" name).
func (m *Module) Function(name string) (Function, error) {
	f := Function{Name: name}
	cn := cString(name)
	err := m.c.do(func() error {
		return check("cuModuleGetFunction", driver.cuModuleGetFunction, uintptr(unsafe.Pointer(&f.h)), m.h, uintptr(unsafe.Pointer(&cn[0])))
	})
	if err != nil {
		return Function{}, fmt.Errorf("cuda: module %s: kernel %s: %w", m.name, name, err)
	}
	return f, nil
}

// Unload releases the module.
func (m *Module) Unload() error {
	return m.c.do(func() error { return check("cuModuleUnload", driver.cuModuleUnload, m.h) })
}

// SetMaxDynamicShared lets f's launches ask for up to bytes of dynamic
// shared memory (above 48 KiB needs it).
func (c *Context) SetMaxDynamicShared(f Function, bytes int) error {
	return c.do(func() error {
		return check("cuFuncSetAttribute", driver.cuFuncSetAttribute, f.h, 8, uintptr(bytes))
	})
}

// Dim3 is a grid or block shape; zero components count as 1.
type Dim3 struct{ X, Y, Z int }

func (d Dim3) norm() (x, y, z uintptr) {
	one := func(v int) uintptr {
		if v < 1 {
			return 1
		}
		return uintptr(v)
	}
	return one(d.X), one(d.Y), one(d.Z)
}

// launchArgs holds a launch's parameter values and the pointers to them
// that cuLaunchKernel reads (one per Context, which is single-goroutine).
type launchArgs struct {
	vals [32]uint64
	ptrs [32]uintptr
}

// Launch queues f on s over grid×block threads with shared bytes of dynamic
// shared memory. args are the kernel's parameters in order, each one of
// DevicePtr (8 bytes), int (passed as a 32-bit int, which it must fit),
// int32, uint32, float32 (4 bytes), int64 or uint64 (8 bytes): their sizes
// must match the kernel's parameters.
func (c *Context) Launch(f Function, grid, block Dim3, shared int, s Stream, args ...any) error {
	if len(args) > 32 {
		return fmt.Errorf("cuda: launch %s: %d parameters (at most 32)", f.Name, len(args))
	}
	if c.args == nil {
		c.args = new(launchArgs)
	}
	a := c.args
	for i, v := range args {
		switch x := v.(type) {
		case DevicePtr:
			a.vals[i] = uint64(x)
		case int:
			if x < math.MinInt32 || x > math.MaxInt32 {
				return fmt.Errorf("cuda: launch %s: parameter %d = %d does not fit a 32-bit int", f.Name, i, x)
			}
			a.vals[i] = uint64(uint32(int32(x)))
		case int32:
			a.vals[i] = uint64(uint32(x))
		case uint32:
			a.vals[i] = uint64(x)
		case float32:
			a.vals[i] = uint64(math.Float32bits(x))
		case int64:
			a.vals[i] = uint64(x)
		case uint64:
			a.vals[i] = x
		default:
			return fmt.Errorf("cuda: launch %s: parameter %d has unsupported type %T", f.Name, i, v)
		}
		a.ptrs[i] = uintptr(unsafe.Pointer(&a.vals[i]))
	}
	gx, gy, gz := grid.norm()
	bx, by, bz := block.norm()
	err := c.do(func() error {
		return check("cuLaunchKernel", driver.cuLaunchKernel, f.h, gx, gy, gz, bx, by, bz, uintptr(shared), uintptr(s),
			uintptr(unsafe.Pointer(&a.ptrs[0])), 0)
	})
	if err != nil {
		return fmt.Errorf("cuda: launch %s grid %v block %v shared %d: %w", f.Name, grid, block, shared, err)
	}
	return nil
}
