// Package tensor holds moetrain's float32 kernels on flat slices with explicit
// dimensions: GEMM (assembly micro-kernels with a pure-Go reference), norms,
// softmax, GELU, cross-entropy, embeddings and blockwise causal attention, each
// with forward and backward, plus the per-process thread budget.
//
// Contracts shared by every kernel here:
//   - Row-major layouts; sizes and strides are passed explicitly and checked
//     only as far as slice bounds (callers own shape validation).
//   - Backward kernels accumulate (+=) into their gradient outputs, so callers
//     zero gradient buffers once per step, llm.c style.
//   - Work is partitioned over outputs, never by splitting a reduction across
//     threads, so results are bitwise identical for any thread count.
//   - Each optimised kernel has a naive reference beside it (suffix Ref) used
//     by the property tests.
//
// The package imports nothing of the project. It must not hold model state,
// know the model's layout or communicate: callers pass buffers and sizes, and
// the thread count must never change a result.
package tensor
