package gpu

import "github.com/moetrain/moetrain/cuda"

// mm is a matrix product whose A and B are in the model's precision (bf16
// weights and activations in mixed precision, else fp32); C is fp32 when
// out32, else in the model's precision. Accumulation is fp32.
func (m *Model) mm(transA, transB bool, rows, cols, inner int, a cuda.DevicePtr, lda int, b cuda.DevicePtr, ldb int, beta float32, c cuda.DevicePtr, ldc int, out32 bool) error {
	cd := m.act
	if out32 {
		cd = cuda.F32
	}
	return m.dev.gemmT(transA, transB, rows, cols, inner, a, lda, b, ldb, beta, c, ldc, m.act, cd)
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
// read (mixed precision; a no-op in fp32).
func (m *Model) refreshWeights() error {
	if !m.bf16 {
		return nil
	}
	return m.dev.Ops.CastF32ToBF16(m.params16, m.params, m.Layout.Total)
}
