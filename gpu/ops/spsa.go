package ops

import "github.com/moetrain/moetrain/cuda"

// SPSA's perturbation and update (cuda/kernels/spsa.cu): spsa.Perturb and
// spsa.ApplyTerms on the device, bit for bit.

// SPSAPerturb sets dst[i] = src[i] + h·z[i] over n floats, z the Rademacher
// direction with seed s (spsa.Perturb). dst and src may be the same buffer.
func (o *Ops) SPSAPerturb(dst, src cuda.DevicePtr, s uint64, h float32, n int) error {
	if err := elementwiseCheck("SPSAPerturb", n, dst, src); err != nil || n == 0 {
		return err
	}
	return o.launch("spsa_perturb_f32", o.gridFor(n, 256), 256, 0, dst, src, s, h, int64(n))
}

// SPSAApply adds Σₖ coefs[k]·z_k over n floats at p (spsa.ApplyTerms):
// seeds holds k uint64 seeds and coefs k floats, both on the device.
func (o *Ops) SPSAApply(p, seeds, coefs cuda.DevicePtr, k, n int) error {
	if k < 0 {
		return errf("SPSAApply", "%d terms", k)
	}
	if k == 0 {
		return nil
	}
	if err := elementwiseCheck("SPSAApply", n, p, seeds, coefs); err != nil || n == 0 {
		return err
	}
	return o.launch("spsa_apply_f32", o.gridFor(n, 256), 256, 0, p, seeds, coefs, int32(k), int64(n))
}
