//go:build !linux

package cuda

import (
	"fmt"
	"runtime"
)

// The NVIDIA libraries are looked for on Linux only.
func openLibrary(what, sub string, names ...string) (uintptr, string, error) {
	return 0, "", fmt.Errorf("%s: GPU training needs Linux (this is %s)", what, runtime.GOOS)
}

func symbols(lib uintptr, libName string, table map[string]*uintptr) error {
	return fmt.Errorf("%s: not loaded", libName)
}

func call(fn uintptr, args ...uintptr) uintptr { panic("cuda: no library loaded") }
