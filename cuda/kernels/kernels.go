// Package kernels holds moetrain's CUDA kernels: their CUDA C source (one
// concern per .cu file, shared helpers in common.cuh), the PTX that
// scripts/build-ptx.sh generates from it for each target architecture, and
// Load, which JIT-loads the PTX for the GPU at hand. The PTX is committed
// and embedded, so building moetrain needs no CUDA toolkit; each PTX file's
// first line stamps the hash of the sources it came from
// (TestPTXMatchesSources).
//
// It must not hold launch logic or shapes: package gpu/ops wraps each
// kernel with its launch configuration.
package kernels

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/moetrain/moetrain/cuda"
)

//go:embed ptx
var ptxFS embed.FS

// Archs are the compute capabilities PTX is generated for, oldest first.
var Archs = []int{80, 90}

// Set is every kernel loaded into one context, by extern "C" name.
type Set struct {
	Arch    int
	modules []*cuda.Module
	fns     map[string]cuda.Function
}

// ArchFor picks the newest generated architecture a GPU of compute
// capability major.minor can run (PTX is forward compatible), or an error
// for GPUs older than the oldest target.
func ArchFor(major, minor int) (int, error) {
	cc := major*10 + minor
	best := 0
	for _, a := range Archs {
		if a <= cc {
			best = a
		}
	}
	if best == 0 {
		return 0, fmt.Errorf("kernels: GPU compute capability %d.%d is older than the oldest target sm_%d", major, minor, Archs[0])
	}
	return best, nil
}

// Modules lists the kernel modules (the .cu files' names) that have PTX
// for arch.
func Modules(arch int) []string {
	suffix := fmt.Sprintf(".sm_%d.ptx", arch)
	ents, _ := fs.ReadDir(ptxFS, "ptx")
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), suffix) {
			out = append(out, strings.TrimSuffix(e.Name(), suffix))
		}
	}
	sort.Strings(out)
	return out
}

// PTX returns module name's PTX for arch.
func PTX(name string, arch int) ([]byte, error) {
	b, err := ptxFS.ReadFile(path.Join("ptx", fmt.Sprintf("%s.sm_%d.ptx", name, arch)))
	if err != nil {
		return nil, fmt.Errorf("kernels: no PTX for %s at sm_%d", name, arch)
	}
	return b, nil
}

// Load JIT-loads every module for c's GPU and indexes its kernels.
func Load(c *cuda.Context) (*Set, error) {
	info := c.Info()
	arch, err := ArchFor(info.Major, info.Minor)
	if err != nil {
		return nil, err
	}
	s := &Set{Arch: arch, fns: map[string]cuda.Function{}}
	for _, name := range Modules(arch) {
		src, err := PTX(name, arch)
		if err != nil {
			return nil, err
		}
		m, err := c.LoadModule(name, src)
		if err != nil {
			return nil, err
		}
		s.modules = append(s.modules, m)
		for _, k := range entries(src) {
			f, err := m.Function(k)
			if err != nil {
				return nil, err
			}
			if _, dup := s.fns[k]; dup {
				return nil, fmt.Errorf("kernels: kernel %s defined twice (second in %s)", k, name)
			}
			s.fns[k] = f
		}
	}
	return s, nil
}

// Get returns the kernel called name.
func (s *Set) Get(name string) (cuda.Function, error) {
	f, ok := s.fns[name]
	if !ok {
		return cuda.Function{}, fmt.Errorf("kernels: no kernel %q in the loaded PTX (sm_%d)", name, s.Arch)
	}
	return f, nil
}

// entries lists the .entry names (kernels) of a PTX module.
func entries(ptx []byte) []string {
	var out []string
	for _, line := range strings.Split(string(ptx), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, ".visible .entry ") && !strings.HasPrefix(line, ".entry ") {
			continue
		}
		name := line[strings.Index(line, ".entry ")+len(".entry "):]
		if i := strings.IndexAny(name, "( "); i >= 0 {
			name = name[:i]
		}
		out = append(out, name)
	}
	return out
}
