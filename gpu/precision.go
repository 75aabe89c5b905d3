package gpu

import "github.com/moetrain/moetrain/cuda"

// mm is a matrix product whose A and B are in the model's precision (bf16
// weights and activations in mixed precision, else fp32); C is fp32 when
// out32, else in the model's precision. Accumulation is fp32. site names the
// product in the profile.
func (m *Model) mm(site string, transA, transB bool, rows, cols, inner int, a cuda.DevicePtr, lda int, b cuda.DevicePtr, ldb int, beta float32, c cuda.DevicePtr, ldc int, out32 bool) error {
	cd := m.act
	if out32 {
		cd = cuda.F32
	}
	return m.dev.gemmT(site, transA, transB, rows, cols, inner, a, lda, b, ldb, beta, c, ldc, m.act, cd)
}

// mmResidual is mm with an fp32 output out = op(A)·op(B) + res (res only
// read).
func (m *Model) mmResidual(site string, transA, transB bool, rows, cols, inner int, a cuda.DevicePtr, lda int, b cuda.DevicePtr, ldb int, res, out cuda.DevicePtr, ldc int) error {
	return m.dev.gemmTo(site, transA, transB, rows, cols, inner, a, lda, b, ldb, 1, res, out, ldc, m.act, cuda.F32)
}

// mmOn is mm queued on lane l.
func (m *Model) mmOn(l *lane, transA, transB bool, rows, cols, inner int, a cuda.DevicePtr, lda int, b cuda.DevicePtr, ldb int, beta float32, c cuda.DevicePtr, ldc int, out32 bool) error {
	cd := m.act
	if out32 {
		cd = cuda.F32
	}
	return m.dev.gemmOn(l, transA, transB, rows, cols, inner, a, lda, b, ldb, beta, c, ldc, m.act, cd)
}

// lowp writes n fp32 values of src into dst in the model's precision: a
// bf16 cast in mixed precision; in fp32 dst and src are the same buffer
// and nothing runs.
func (m *Model) lowp(dst, src cuda.DevicePtr, n int) error {
	if !m.bf16 {
		if dst != src {
			return m.dev.C.CopyDevice(m.dev.Ops.S, dst, src, 4*n)
		}
		return nil
	}
	return m.dev.Ops.CastF32ToBF16(dst, src, n)
}

// refreshWeights casts the fp32 parameters to the bf16 copy the products
// read when the copy is stale (mixed precision; a no-op in fp32).
func (m *Model) refreshWeights() error {
	if !m.bf16 || m.weightsFresh {
		return nil
	}
	if err := m.dev.Ops.CastF32ToBF16(m.params16, m.params, m.Layout.Total); err != nil {
		return err
	}
	m.weightsFresh = true
	return nil
}

// ParamsWritten tells the model that its device parameters were written
// through ParamsPtr (other than by Update), so its bf16 weight copy is
// recast before the next forward.
func (m *Model) ParamsWritten() { m.weightsFresh = false }

// Update applies optimizer step t of opt to the model's parameters with its
// gradients (as AdamW.Update), refreshing the bf16 weight copy in the same
// pass in mixed precision.
func (m *Model) Update(opt *AdamW, t int, lr, gradScale float64) (float64, error) {
	p16 := cuda.DevicePtr(0)
	if m.bf16 {
		p16 = m.params16
	}
	s, err := opt.update(m.params, p16, m.grads, t, lr, gradScale)
	if err != nil {
		m.weightsFresh = false
		return s, err
	}
	m.weightsFresh = m.bf16
	return s, nil
}
