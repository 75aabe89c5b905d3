package cuda

import (
	"fmt"
	"sync"
	"time"
	"unsafe"
)

// cublasLt is cuBLASLt's function table.
var cublasLt struct {
	once sync.Once
	err  error
	path string

	create, destroy, getVersion                 uintptr
	descCreate, descSet, descDestroy            uintptr
	layoutCreate, layoutDestroy                 uintptr
	prefCreate, prefSet, prefDestroy, heuristic uintptr
	matmul                                      uintptr
}

func loadBlasLt() error {
	l := &cublasLt
	l.once.Do(func() {
		libs := []string{"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so"}
		l.path, l.err = loadLibrary("cuBLASLt (libcublasLt.so)", "cublas", libs, map[string]*uintptr{
			"cublasLtCreate": &l.create, "cublasLtDestroy": &l.destroy, "cublasLtGetVersion": &l.getVersion,
			"cublasLtMatmulDescCreate": &l.descCreate, "cublasLtMatmulDescSetAttribute": &l.descSet,
			"cublasLtMatmulDescDestroy":  &l.descDestroy,
			"cublasLtMatrixLayoutCreate": &l.layoutCreate, "cublasLtMatrixLayoutDestroy": &l.layoutDestroy,
			"cublasLtMatmulPreferenceCreate": &l.prefCreate, "cublasLtMatmulPreferenceSetAttribute": &l.prefSet,
			"cublasLtMatmulPreferenceDestroy": &l.prefDestroy, "cublasLtMatmulAlgoGetHeuristic": &l.heuristic,
			"cublasLtMatmul": &l.matmul,
		})
	})
	return l.err
}

// BlasError is a failed cuBLASLt call.
type BlasError struct {
	Call   string
	Status int
}

var blasStatusNames = map[int]string{
	1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
	8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
	14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR",
}

func (e *BlasError) Error() string {
	name := blasStatusNames[e.Status]
	if name == "" {
		name = "CUBLAS_STATUS_UNKNOWN"
	}
	return fmt.Sprintf("cublasLt: %s: %s (%d)", e.Call, name, e.Status)
}

//go:uintptrescapes
func blasCheck(name string, fn uintptr, args ...uintptr) error {
	if r := int32(call(fn, args...)); r != 0 {
		return &BlasError{Call: name, Status: int(r)}
	}
	return nil
}

// DType is an element type of GEMM operands (cudaDataType values).
type DType int

const (
	F32  DType = 0  // CUDA_R_32F
	BF16 DType = 14 // CUDA_R_16BF
)

// Size is the element size in bytes.
func (t DType) Size() int {
	if t == BF16 {
		return 2
	}
	return 4
}

func (t DType) String() string {
	if t == BF16 {
		return "bf16"
	}
	return "f32"
}

// cuBLASLt enum values used here (cublasLt.h).
const (
	computeF32           = 68 // CUBLAS_COMPUTE_32F: fp32 accumulation, no TF32
	descComputeType      = 0
	descScaleType        = 1
	descTransA           = 3
	descTransB           = 4
	prefMaxWorkspace     = 1
	prefReductionMask    = 3
	prefAlignA           = 5
	prefAlignB           = 6
	prefAlignC           = 7
	prefAlignD           = 8
	heuristicResultBytes = 96 // sizeof(cublasLtMatmulHeuristicResult_t)
	blasWorkspaceBytes   = 32 << 20
)

// GemmSpec is one matrix product in moetrain's row-major convention (as
// tensor.Gemm): C[m,n] = alpha·op(A)·op(B) + beta·C, op(A) [m,k], op(B)
// [k,n], leading dimensions in elements. AB is A's and B's element type, CD
// C's (and the output's); accumulation is fp32 (CUBLAS_COMPUTE_32F, no
// TF32), so an F32 product matches a float32 CPU GEMM up to summation order.
type GemmSpec struct {
	TransA, TransB bool
	M, N, K        int
	LDA, LDB, LDC  int
	AB, CD         DType
}

// stored is the row-major shape of A and B as stored, before op: A is
// ar×ac (m×k, or k×m with TransA), B br×bc (k×n, or n×k with TransB).
func (g GemmSpec) stored() (ar, ac, br, bc int) {
	ar, ac, br, bc = g.M, g.K, g.K, g.N
	if g.TransA {
		ar, ac = g.K, g.M
	}
	if g.TransB {
		br, bc = g.N, g.K
	}
	return ar, ac, br, bc
}

// gemmKey adds the operands' alignments, which the chosen algorithm needs.
type gemmKey struct {
	GemmSpec
	alignA, alignB, alignC int
}

// bucket is the key whose algorithm k borrows: M and K rounded up to the
// next of 128, 192, 256, 384, 512, ... (powers of two and the midpoints
// between them). Expert products change their row count (and the weight
// gradients their inner size) with every step's routing; the heuristic's
// choice for one size serves the sizes near it, and asking it again for
// each size costs host time while the GPU waits (docs/gpu.md, "Algorithm
// choice").
func (k gemmKey) bucket() gemmKey {
	k.M, k.K = sizeBucket(k.M), sizeBucket(k.K)
	k.LDA, k.LDB = 0, 0 // leading dimensions do not change the choice
	return k
}

// sizeBucket rounds v up to 128 or to the next power of two or 1.5 times
// a power of two.
func sizeBucket(v int) int {
	if v <= 128 {
		return 128
	}
	p := 128
	for p < v {
		if p+p/2 >= v {
			return p + p/2
		}
		p *= 2
	}
	return p
}

type gemmPlan struct {
	desc, a, b, c uintptr
	algo          [heuristicResultBytes]byte
	// borrowed: algo is the bucket's, not searched for this exact shape.
	borrowed bool
}

// BlasLt is a cuBLASLt handle bound to a Context, with a workspace per
// stream and caches of descriptors per GEMM shape and of algorithms per
// shape bucket.
type BlasLt struct {
	c      *Context
	handle uintptr
	ws     map[Stream]DevicePtr
	plans  map[gemmKey]*gemmPlan
	algos  map[gemmKey][heuristicResultBytes]byte
	// noBucket: buckets whose own shape got no algorithm (their shapes
	// are searched one by one).
	noBucket map[gemmKey]bool
	// Library is the path of the loaded cuBLASLt.
	Library string
	// PlansMade counts the algorithm searches (one per new shape bucket and
	// alignment) and PlanTime is the host time they took.
	PlansMade int
	PlanTime  time.Duration
}

// NewBlasLt loads cuBLASLt and creates a handle; the error names the
// library when it is missing.
func (c *Context) NewBlasLt() (*BlasLt, error) {
	if err := loadBlasLt(); err != nil {
		return nil, err
	}
	b := &BlasLt{c: c, ws: map[Stream]DevicePtr{}, plans: map[gemmKey]*gemmPlan{},
		algos: map[gemmKey][heuristicResultBytes]byte{}, noBucket: map[gemmKey]bool{}, Library: cublasLt.path}
	err := c.do(func() error {
		return blasCheck("cublasLtCreate", cublasLt.create, uintptr(unsafe.Pointer(&b.handle)))
	})
	if err != nil {
		return nil, err
	}
	if _, err := b.workspace(c.Stream()); err != nil {
		return nil, err
	}
	return b, nil
}

// workspace is s's workspace: products queued on different streams may run
// at once, so each stream has its own.
func (b *BlasLt) workspace(s Stream) (DevicePtr, error) {
	if w, ok := b.ws[s]; ok {
		return w, nil
	}
	w, err := b.c.Alloc(blasWorkspaceBytes)
	if err != nil {
		return 0, fmt.Errorf("cublasLt: workspace for stream %#x: %w", uintptr(s), err)
	}
	b.ws[s] = w
	return w, nil
}

// Version is cuBLASLt's version number (e.g. 130000).
func (b *BlasLt) Version() int { return int(call(cublasLt.getVersion)) }

// alignment is the largest power of two (≤ 256) dividing p.
func alignment(p DevicePtr) int {
	a := 256
	for a > 1 && uintptr(p)%uintptr(a) != 0 {
		a >>= 1
	}
	return a
}

// Gemm queues C = alpha·op(A)·op(B) + beta·C (row-major, see GemmSpec) on s.
func (b *BlasLt) Gemm(s Stream, g GemmSpec, alpha float32, A, B DevicePtr, beta float32, C DevicePtr) error {
	return b.GemmTo(s, g, alpha, A, B, beta, C, C)
}

// GemmTo queues D = alpha·op(A)·op(B) + beta·C on s, D laid out as C (a
// residual added on the way: C is only read). D may be C; otherwise the two
// must not overlap.
func (b *BlasLt) GemmTo(s Stream, g GemmSpec, alpha float32, A, B DevicePtr, beta float32, C, D DevicePtr) error {
	if g.M < 0 || g.N < 0 || g.K < 0 {
		return fmt.Errorf("cublasLt: gemm %dx%dx%d: negative size", g.M, g.N, g.K)
	}
	if g.M == 0 || g.N == 0 {
		return nil
	}
	if g.K == 0 { // C = beta·C: cuBLASLt refuses k = 0
		if beta == 0 {
			return fmt.Errorf("cublasLt: gemm with k = 0 and beta = 0 (clear C instead)")
		}
		if beta == 1 {
			return nil
		}
		return fmt.Errorf("cublasLt: gemm with k = 0 and beta = %g unsupported", beta)
	}
	ws, err := b.workspace(s)
	if err != nil {
		return err
	}
	key := gemmKey{GemmSpec: g, alignA: alignment(A), alignB: alignment(B), alignC: min(alignment(C), alignment(D))}
	p, ok := b.plans[key]
	if !ok && len(b.plans) >= maxPlans {
		// Expert products vary their sizes with the routing, so the cache
		// is bounded: past maxPlans shapes it starts over.
		b.dropPlans()
	}
	if !ok {
		if p, err = b.plan(key); err != nil {
			return err
		}
		b.plans[key] = p
	}
	// Column-major view: C^T[n,m] = op(B)^T·op(A)^T, so cuBLASLt's A is our
	// B and its B our A.
	run := func() error {
		return b.c.do(func() error {
			return blasCheck("cublasLtMatmul", cublasLt.matmul, b.handle, p.desc,
				uintptr(unsafe.Pointer(&alpha)), uintptr(B), p.b, uintptr(A), p.a,
				uintptr(unsafe.Pointer(&beta)), uintptr(C), p.c, uintptr(D), p.c,
				uintptr(unsafe.Pointer(&p.algo[0])), uintptr(ws), blasWorkspaceBytes, uintptr(s))
		})
	}
	err = run()
	if err != nil && p.borrowed {
		// The bucket's algorithm does not take this shape: search for it.
		if err = b.search(key, p); err != nil {
			return b.shapeError(key, err)
		}
		err = run()
	}
	return err
}

func (b *BlasLt) shapeError(key gemmKey, err error) error {
	g := key.GemmSpec
	return fmt.Errorf("cublasLt: gemm transA=%v transB=%v m=%d n=%d k=%d lda=%d ldb=%d ldc=%d %s->%s: %w",
		g.TransA, g.TransB, g.M, g.N, g.K, g.LDA, g.LDB, g.LDC, g.AB, g.CD, err)
}

// plan creates the descriptors of key's product and takes its bucket's
// algorithm: the one the heuristic picks for the bucket's own shape
// (searchBucket), so that the choice depends on the bucket alone, not on
// which size of it came first (a run resumed from a checkpoint then picks
// what the uninterrupted run picked). Where that search fails, the exact
// shape gets its own. The error names the shape.
func (b *BlasLt) plan(key gemmKey) (*gemmPlan, error) {
	p, err := b.descriptors(key.GemmSpec)
	if err == nil {
		bk := key.bucket()
		algo, ok := b.algos[bk]
		if !ok && !b.noBucket[bk] {
			if algo, err = b.searchBucket(key); err == nil {
				b.algos[bk], ok = algo, true
			} else {
				b.noBucket[bk], err = true, nil
			}
		}
		if ok {
			p.algo, p.borrowed = algo, true
		} else {
			err = b.search(key, p)
		}
	}
	if err != nil {
		b.destroyPlan(p) // what was created before the failure
		return nil, b.shapeError(key, err)
	}
	return p, nil
}

// descriptors creates g's matmul descriptor and matrix layouts (no
// algorithm). On failure the plan returned holds what was created.
func (b *BlasLt) descriptors(g GemmSpec) (*gemmPlan, error) {
	p := &gemmPlan{}
	err := b.c.do(func() error {
		if err := blasCheck("cublasLtMatmulDescCreate", cublasLt.descCreate, uintptr(unsafe.Pointer(&p.desc)), computeF32, uintptr(F32)); err != nil {
			return err
		}
		// cuBLASLt's op(A') is op(B)^T: no transpose when B is not transposed.
		opA, opB := int32(0), int32(0)
		if g.TransB {
			opA = 1
		}
		if g.TransA {
			opB = 1
		}
		if err := blasCheck("cublasLtMatmulDescSetAttribute", cublasLt.descSet, p.desc, descTransA, uintptr(unsafe.Pointer(&opA)), 4); err != nil {
			return err
		}
		if err := blasCheck("cublasLtMatmulDescSetAttribute", cublasLt.descSet, p.desc, descTransB, uintptr(unsafe.Pointer(&opB)), 4); err != nil {
			return err
		}
		// Stored (pre-op) column-major shapes: our row-major X[r,c] with
		// leading dimension ld is column-major [c, r] with the same ld (B
		// stored k×n row-major is col-major n×k).
		ar, ac, br, bc := g.stored()
		if err := blasCheck("cublasLtMatrixLayoutCreate", cublasLt.layoutCreate, uintptr(unsafe.Pointer(&p.b)), uintptr(g.AB), uintptr(bc), uintptr(br), uintptr(g.LDB)); err != nil {
			return err
		}
		if err := blasCheck("cublasLtMatrixLayoutCreate", cublasLt.layoutCreate, uintptr(unsafe.Pointer(&p.a)), uintptr(g.AB), uintptr(ac), uintptr(ar), uintptr(g.LDA)); err != nil {
			return err
		}
		return blasCheck("cublasLtMatrixLayoutCreate", cublasLt.layoutCreate, uintptr(unsafe.Pointer(&p.c)), uintptr(g.CD), uintptr(g.N), uintptr(g.M), uintptr(g.LDC))
	})
	return p, err
}

// searchBucket asks the heuristic for the algorithm of key's bucket shape
// (M and K at the bucket's size, rows packed: each leading dimension its
// row's length) with key's alignments.
func (b *BlasLt) searchBucket(key gemmKey) ([heuristicResultBytes]byte, error) {
	rep := key.bucket()
	g := &rep.GemmSpec
	_, ac, _, bc := g.stored()
	g.LDA, g.LDB, g.LDC = ac, bc, g.N
	p, err := b.descriptors(*g)
	defer b.destroyPlan(p)
	if err != nil {
		return p.algo, err
	}
	err = b.search(rep, p)
	return p.algo, err
}

// search asks the heuristic for p's algorithm (key's shape and alignments).
func (b *BlasLt) search(key gemmKey, p *gemmPlan) error {
	start := time.Now()
	defer func() { b.PlansMade++; b.PlanTime += time.Since(start) }()
	return b.c.do(func() error {
		var pref uintptr
		if err := blasCheck("cublasLtMatmulPreferenceCreate", cublasLt.prefCreate, uintptr(unsafe.Pointer(&pref))); err != nil {
			return err
		}
		defer call(cublasLt.prefDestroy, pref)
		ws := uint64(blasWorkspaceBytes)
		if err := blasCheck("cublasLtMatmulPreferenceSetAttribute", cublasLt.prefSet, pref, prefMaxWorkspace, uintptr(unsafe.Pointer(&ws)), 8); err != nil {
			return err
		}
		// No in-place (atomic) split-K reductions: results stay bitwise
		// reproducible run to run.
		mask := uint32(2 | 4)
		if err := blasCheck("cublasLtMatmulPreferenceSetAttribute", cublasLt.prefSet, pref, prefReductionMask, uintptr(unsafe.Pointer(&mask)), 4); err != nil {
			return err
		}
		for _, al := range []struct {
			attr uintptr
			v    uint32
		}{{prefAlignA, uint32(key.alignB)}, {prefAlignB, uint32(key.alignA)}, {prefAlignC, uint32(key.alignC)}, {prefAlignD, uint32(key.alignC)}} {
			v := al.v
			if err := blasCheck("cublasLtMatmulPreferenceSetAttribute", cublasLt.prefSet, pref, al.attr, uintptr(unsafe.Pointer(&v)), 4); err != nil {
				return err
			}
		}
		var res [heuristicResultBytes]byte
		var found int32
		if err := blasCheck("cublasLtMatmulAlgoGetHeuristic", cublasLt.heuristic, b.handle, p.desc, p.b, p.a, p.c, p.c, pref, 1,
			uintptr(unsafe.Pointer(&res[0])), uintptr(unsafe.Pointer(&found))); err != nil {
			return err
		}
		if found < 1 {
			return fmt.Errorf("no algorithm")
		}
		p.algo, p.borrowed = res, false
		return nil
	})
}

// maxPlans bounds the cache of GEMM plans (four descriptors each).
const maxPlans = 4096

// destroyPlan releases p's descriptors (those created: zero ones are
// skipped). The context must be current or reachable through b.c.do.
func (b *BlasLt) destroyPlan(p *gemmPlan) {
	b.c.do(func() error {
		for _, l := range []uintptr{p.a, p.b, p.c} {
			if l != 0 {
				call(cublasLt.layoutDestroy, l)
			}
		}
		if p.desc != 0 {
			call(cublasLt.descDestroy, p.desc)
		}
		return nil
	})
}

// dropPlans releases every cached plan and forgets the algorithms.
func (b *BlasLt) dropPlans() {
	for k, p := range b.plans {
		b.destroyPlan(p)
		delete(b.plans, k)
	}
	clear(b.algos)
	clear(b.noBucket)
}

// Close releases the cached descriptors, the workspace and the handle.
func (b *BlasLt) Close() error {
	if b == nil || b.handle == 0 {
		return nil
	}
	err := b.c.do(func() error {
		for _, p := range b.plans {
			call(cublasLt.layoutDestroy, p.a)
			call(cublasLt.layoutDestroy, p.b)
			call(cublasLt.layoutDestroy, p.c)
			call(cublasLt.descDestroy, p.desc)
		}
		return blasCheck("cublasLtDestroy", cublasLt.destroy, b.handle)
	})
	b.plans, b.algos, b.noBucket = nil, nil, nil
	for _, w := range b.ws {
		b.c.Free(w)
	}
	b.ws = nil
	b.handle = 0
	return err
}
