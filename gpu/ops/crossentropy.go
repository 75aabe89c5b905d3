package ops

import "github.com/moetrain/moetrain/cuda"

// Softmax cross-entropy (cuda/kernels/crossentropy.cu,
// tensor/crossentropy.go).

// crossentropyBlock is the block size for rows of v logits (one block per
// row).
func crossentropyBlock(v int) int {
	if v >= 4096 {
		return 512
	}
	return 128
}

// CrossEntropy computes per-row softmax cross-entropy for logits [n,v] and
// int32 targets[n] like tensor.CrossEntropy: targets[i] < 0 marks row i
// ignored (losses[i] = 0, dlogits row zeroed); otherwise losses[i] =
// −log softmax(logits[i,:])[targets[i]] and, when dlogits is non-zero,
// dlogits[i,:] is OVERWRITTEN with scale·(softmax − onehot(targets[i])).
// dlogits may alias logits (the gradient replaces the logits). A target >= v
// gives a NaN loss and NaN dlogits row (the CPU panics).
//
// sum, when non-zero, receives two float64 on the device (8-byte aligned):
// sum[0] = Σ losses over rows with targets >= 0, summed in double in a fixed
// order, and sum[1] = the number of such rows. The host reads it once per
// step, after the backward has been queued.
func (o *Ops) CrossEntropy(losses, dlogits, logits, targets cuda.DevicePtr, n, v int, scale float32, sum cuda.DevicePtr) error {
	return o.crossEntropy("CrossEntropy", "crossentropy_fwd_f32", losses, dlogits, logits, targets, n, v, scale, sum)
}

// CrossEntropyBF16 is CrossEntropy with bf16 logits and dlogits (losses and
// sum unchanged).
func (o *Ops) CrossEntropyBF16(losses, dlogits, logits, targets cuda.DevicePtr, n, v int, scale float32, sum cuda.DevicePtr) error {
	return o.crossEntropy("CrossEntropyBF16", "crossentropy_fwd_bf16", losses, dlogits, logits, targets, n, v, scale, sum)
}

func (o *Ops) crossEntropy(op, kernel string, losses, dlogits, logits, targets cuda.DevicePtr, n, v int, scale float32, sum cuda.DevicePtr) error {
	if n < 0 || v < 1 {
		return errf(op, "n=%d v=%d", n, v)
	}
	if err := elementwiseCheck(op, n, losses, logits, targets); err != nil {
		return err
	}
	if sum != 0 {
		if err := elementwiseCheck64(op, "sum", sum); err != nil {
			return err
		}
	}
	if n > 0 {
		if err := o.launch(kernel, n, crossentropyBlock(v), 0, losses, dlogits, logits, targets, n, v, scale); err != nil {
			return err
		}
	}
	if sum == 0 {
		return nil
	}
	return o.launch("crossentropy_sum", 1, 1024, 0, sum, losses, targets, n)
}
