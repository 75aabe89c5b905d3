//go:build linux

package cuda

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ebitengine/purego"
)

// libraryDirs lists where NVIDIA libraries are looked for after the dynamic
// loader's own search (LD_LIBRARY_PATH, the ld.so cache): the CUDA toolkit's
// usual homes and Python wheels' nvidia/* folders, where PyTorch installs
// cuBLAS. MOETRAIN_CUDA_LIB (a colon-separated list of folders) comes first.
func libraryDirs(sub string) []string {
	var dirs []string
	if env := os.Getenv("MOETRAIN_CUDA_LIB"); env != "" {
		dirs = append(dirs, filepath.SplitList(env)...)
	}
	dirs = append(dirs, "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64")
	globs := []string{"/usr/local/cuda-*/lib64", "/usr/local/cuda-*/targets/*/lib"}
	if sub != "" {
		globs = append(globs,
			"/opt/*/.venv/lib/python3*/site-packages/nvidia/"+sub+"/lib",
			"/usr/local/lib/python3*/dist-packages/nvidia/"+sub+"/lib",
			"/usr/local/lib/python3*/site-packages/nvidia/"+sub+"/lib",
			"/usr/lib/python3*/dist-packages/nvidia/"+sub+"/lib")
	}
	for _, g := range globs {
		m, _ := filepath.Glob(g)
		sort.Sort(sort.Reverse(sort.StringSlice(m))) // newest version first
		dirs = append(dirs, m...)
	}
	return dirs
}

// openLibrary dlopens the first of names that loads, trying the loader's
// search and then each directory of libraryDirs(sub). The error names the
// library and every place tried.
func openLibrary(what, sub string, names ...string) (uintptr, string, error) {
	var tried []string
	var firstErr error
	for _, n := range names {
		h, err := purego.Dlopen(n, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err == nil {
			return h, n, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		tried = append(tried, n)
	}
	for _, d := range libraryDirs(sub) {
		for _, n := range names {
			p := filepath.Join(d, n)
			if _, err := os.Stat(p); err != nil {
				continue
			}
			h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL)
			if err == nil {
				return h, p, nil
			}
			tried = append(tried, p)
			firstErr = err
		}
	}
	return 0, "", fmt.Errorf("%s not found (tried %s; set MOETRAIN_CUDA_LIB to its folder): %v", what, strings.Join(tried, ", "), firstErr)
}

// symbols resolves each name into its *uintptr; the error names the first
// missing symbol and the library.
func symbols(lib uintptr, libName string, table map[string]*uintptr) error {
	for name, p := range table {
		addr, err := purego.Dlsym(lib, name)
		if err != nil || addr == 0 {
			return fmt.Errorf("%s has no symbol %s (library too old?)", libName, name)
		}
		*p = addr
	}
	return nil
}

// call invokes the C function fn. Pointers converted to uintptr in a call
// to call (or check, blasCheck) escape to the heap and stay alive for the
// call, so C never writes into a goroutine stack that may have moved.
//
//go:uintptrescapes
func call(fn uintptr, args ...uintptr) uintptr {
	r, _, _ := purego.SyscallN(fn, args...)
	return r
}
