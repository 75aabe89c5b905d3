// Package gpu trains moetrain's reference MoE decoder on one NVIDIA GPU:
// the model of package model (same configuration, parameter layout,
// initialisation and semantics) with its forward and backward as a
// sequence of cuBLASLt products and gpu/ops kernels over flat device
// buffers, and AdamW on the device. Package train drives it when
// train.device = "cuda".
//
// It must not hold host-side training logic (sampling, schedules,
// checkpoint formats): those stay in train, which copies parameters and
// optimizer state to and from the device around checkpoints.
package gpu
