package cuda

import (
	"fmt"
	"sync"
	"unsafe"
)

// driver is the CUDA driver API's function table.
var driver struct {
	once sync.Once
	err  error
	path string

	cuInit, cuDriverGetVersion, cuGetErrorName, cuGetErrorString            uintptr
	cuDeviceGetCount, cuDeviceGet, cuDeviceGetName, cuDeviceGetAttribute    uintptr
	cuDeviceTotalMem, cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRelease   uintptr
	cuCtxSetCurrent, cuCtxSynchronize                                       uintptr
	cuMemAlloc, cuMemFree, cuMemGetInfo                                     uintptr
	cuMemcpyHtoD, cuMemcpyDtoH, cuMemcpyDtoDAsync                           uintptr
	cuMemsetD8Async, cuMemsetD32Async                                       uintptr
	cuStreamCreate, cuStreamDestroy, cuStreamSynchronize, cuStreamWaitEvent uintptr
	cuEventCreate, cuEventRecord, cuEventSynchronize, cuEventElapsedTime    uintptr
	cuEventDestroy                                                          uintptr
	cuModuleLoadDataEx, cuModuleGetFunction, cuModuleUnload, cuLaunchKernel uintptr
	cuFuncSetAttribute, cuFuncGetAttribute                                  uintptr
}

// loadDriver loads libcuda.so.1 and cuInit(0)s it once per process.
func loadDriver() error {
	d := &driver
	d.once.Do(func() {
		d.path, d.err = loadLibrary("the CUDA driver (libcuda.so.1)", "", []string{"libcuda.so.1", "libcuda.so"}, map[string]*uintptr{
			"cuInit": &d.cuInit, "cuDriverGetVersion": &d.cuDriverGetVersion,
			"cuGetErrorName": &d.cuGetErrorName, "cuGetErrorString": &d.cuGetErrorString,
			"cuDeviceGetCount": &d.cuDeviceGetCount, "cuDeviceGet": &d.cuDeviceGet,
			"cuDeviceGetName": &d.cuDeviceGetName, "cuDeviceGetAttribute": &d.cuDeviceGetAttribute,
			"cuDeviceTotalMem_v2": &d.cuDeviceTotalMem, "cuDevicePrimaryCtxRetain": &d.cuDevicePrimaryCtxRetain,
			"cuDevicePrimaryCtxRelease_v2": &d.cuDevicePrimaryCtxRelease,
			"cuCtxSetCurrent":              &d.cuCtxSetCurrent, "cuCtxSynchronize": &d.cuCtxSynchronize,
			"cuMemAlloc_v2": &d.cuMemAlloc, "cuMemFree_v2": &d.cuMemFree, "cuMemGetInfo_v2": &d.cuMemGetInfo,
			"cuMemcpyHtoD_v2": &d.cuMemcpyHtoD, "cuMemcpyDtoH_v2": &d.cuMemcpyDtoH, "cuMemcpyDtoDAsync_v2": &d.cuMemcpyDtoDAsync,
			"cuMemsetD8Async": &d.cuMemsetD8Async, "cuMemsetD32Async": &d.cuMemsetD32Async,
			"cuStreamCreate": &d.cuStreamCreate, "cuStreamDestroy_v2": &d.cuStreamDestroy,
			"cuStreamSynchronize": &d.cuStreamSynchronize, "cuStreamWaitEvent": &d.cuStreamWaitEvent,
			"cuEventCreate": &d.cuEventCreate, "cuEventRecord": &d.cuEventRecord,
			"cuEventSynchronize": &d.cuEventSynchronize, "cuEventElapsedTime": &d.cuEventElapsedTime,
			"cuEventDestroy_v2":  &d.cuEventDestroy,
			"cuModuleLoadDataEx": &d.cuModuleLoadDataEx, "cuModuleGetFunction": &d.cuModuleGetFunction,
			"cuModuleUnload": &d.cuModuleUnload, "cuLaunchKernel": &d.cuLaunchKernel,
			"cuFuncSetAttribute": &d.cuFuncSetAttribute, "cuFuncGetAttribute": &d.cuFuncGetAttribute,
		})
		if d.err != nil {
			return
		}
		if r := call(d.cuInit, 0); r != 0 {
			d.err = driverError("cuInit", r)
		}
	})
	return d.err
}

// loadLibrary opens the first of names that loads (openLibrary: what names
// the library in errors, sub its folder in Python wheels) and resolves table
// in it. It returns the path it opened, also when a symbol is missing.
func loadLibrary(what, sub string, names []string, table map[string]*uintptr) (string, error) {
	lib, path, err := openLibrary(what, sub, names...)
	if err != nil {
		return "", err
	}
	return path, symbols(lib, path, table)
}

// Error is a failed CUDA driver call.
type Error struct {
	Call string // the driver function
	Code int    // CUresult
	Name string // e.g. CUDA_ERROR_OUT_OF_MEMORY
	Msg  string
}

func (e *Error) Error() string {
	return fmt.Sprintf("cuda: %s: %s (%d): %s", e.Call, e.Name, e.Code, e.Msg)
}

// driverError wraps the CUresult r of call (nil for CUDA_SUCCESS).
func driverError(callName string, r uintptr) error {
	if r == 0 {
		return nil
	}
	e := &Error{Call: callName, Code: int(int32(r)), Name: "CUDA_ERROR_UNKNOWN", Msg: "unknown error"}
	var p uintptr
	if driver.cuGetErrorName != 0 && call(driver.cuGetErrorName, r, uintptr(unsafe.Pointer(&p))) == 0 {
		e.Name = goString(p)
	}
	if driver.cuGetErrorString != 0 && call(driver.cuGetErrorString, r, uintptr(unsafe.Pointer(&p))) == 0 {
		e.Msg = goString(p)
	}
	return e
}

// check calls fn with args and wraps a failure.
//
//go:uintptrescapes
func check(name string, fn uintptr, args ...uintptr) error {
	return driverError(name, call(fn, args...))
}

// goString copies the NUL-terminated C string at p.
func goString(p uintptr) string {
	if p == 0 {
		return ""
	}
	ptr := *(*unsafe.Pointer)(unsafe.Pointer(&p))
	n := 0
	for *(*byte)(unsafe.Add(ptr, n)) != 0 && n < 1<<16 {
		n++
	}
	return string(unsafe.Slice((*byte)(ptr), n))
}

// cString returns s NUL-terminated.
func cString(s string) []byte {
	b := make([]byte, len(s)+1)
	copy(b, s)
	return b
}
