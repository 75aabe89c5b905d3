package gpu

import (
	"fmt"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/gpu/ops"
)

// Device is one GPU with its kernels, cuBLASLt handle and a tally of the
// memory this package allocated on it.
type Device struct {
	C    *cuda.Context
	Ops  *ops.Ops
	Blas *cuda.BlasLt

	// lanes run the experts' products side by side (lanes.go); fork is
	// the event they start from; optLane runs the optimizer beside the
	// backward (overlap.go).
	lanes   []lane
	optLane *lane
	fork    cuda.Event

	allocated, peak int64
}

// Open opens GPU ordinal: the driver, the kernels and cuBLASLt. The error
// names what is missing (library, GPU) in one line.
func Open(ordinal int) (*Device, error) {
	c, err := cuda.Open(ordinal)
	if err != nil {
		return nil, err
	}
	o, err := ops.New(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	b, err := c.NewBlasLt()
	if err != nil {
		c.Close()
		return nil, err
	}
	d := &Device{C: c, Ops: o, Blas: b}
	n, err := lanesFromEnv()
	if err == nil {
		err = d.openLanes(n)
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Close releases cuBLASLt and the context.
func (d *Device) Close() error {
	if d == nil {
		return nil
	}
	var err error
	all := d.lanes
	if d.optLane != nil {
		all = append(all, *d.optLane)
	}
	for _, l := range all {
		d.C.DestroyStream(l.s)
		d.C.DestroyEvent(l.done)
	}
	if d.fork != 0 {
		d.C.DestroyEvent(d.fork)
	}
	if d.Blas != nil {
		err = d.Blas.Close()
	}
	if e := d.C.Close(); err == nil {
		err = e
	}
	return err
}

// String describes the GPU and the libraries in use.
func (d *Device) String() string {
	in := d.C.Info()
	return fmt.Sprintf("%s (sm_%d%d, %d SMs, %.0f GiB; driver %d; %s)", in.Name, in.Major, in.Minor, in.SMs,
		float64(in.TotalMem)/(1<<30), in.Driver, d.Blas.Library)
}

// alloc allocates bytes and counts them.
func (d *Device) alloc(bytes int) (cuda.DevicePtr, error) {
	p, err := d.C.Alloc(bytes)
	if err != nil {
		return 0, err
	}
	d.allocated += int64(bytes)
	d.peak = max(d.peak, d.allocated)
	return p, nil
}

func (d *Device) free(p cuda.DevicePtr, bytes int) {
	if p != 0 {
		d.C.Free(p)
		d.allocated -= int64(bytes)
	}
}

// Allocated is the device memory this package holds now and at most, in
// bytes (cuBLASLt's workspace and the driver's own not included).
func (d *Device) Allocated() (now, peak int64) { return d.allocated, d.peak }

// gemmT is tensor.Gemm on the device: C[m,n] = op(A)·op(B) + beta·C,
// row-major, leading dimensions in elements, A and B of type ab and C of
// type cd, fp32 accumulation whatever the types.
func (d *Device) gemmT(site string, transA, transB bool, m, n, k int, a cuda.DevicePtr, lda int, b cuda.DevicePtr, ldb int, beta float32, c cuda.DevicePtr, ldc int, ab, cd cuda.DType) error {
	return d.gemmTo(site, transA, transB, m, n, k, a, lda, b, ldb, beta, c, c, ldc, ab, cd)
}

// gemmTo is gemmT writing out = op(A)·op(B) + beta·c (out laid out as c;
// c only read unless it is out).
func (d *Device) gemmTo(site string, transA, transB bool, m, n, k int, a cuda.DevicePtr, lda int, b cuda.DevicePtr, ldb int, beta float32, c, out cuda.DevicePtr, ldc int, ab, cd cuda.DType) error {
	g := cuda.GemmSpec{TransA: transA, TransB: transB, M: m, N: n, K: k, LDA: lda, LDB: ldb, LDC: ldc, AB: ab, CD: cd}
	if k == 0 {
		if beta != 0 && c != out {
			return fmt.Errorf("gpu: %s: empty product onto a separate residual", site)
		}
		if beta == 0 && m > 0 && n > 0 {
			// An empty sum: C = 0 (rows of ldc, only the first n written).
			for i := 0; i < m; i++ {
				if err := d.C.Zero(d.Ops.S, out.Add(i*ldc*cd.Size()), n*cd.Size()); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if d.Ops.Prof != nil {
		return d.Ops.Prof.Span("gemm", "gemm."+site, func() error { return d.Blas.GemmTo(d.Ops.S, g, 1, a, b, beta, c, out) })
	}
	return d.Blas.GemmTo(d.Ops.S, g, 1, a, b, beta, c, out)
}
