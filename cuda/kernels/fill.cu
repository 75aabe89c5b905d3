// Filling and copying buffers: what tests and the trainer need besides the
// driver's memset.
#include "common.cuh"

// fill_f32 sets x[i] = v for i < n.
extern "C" __global__ void fill_f32(float* x, float v, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] = v;
}

// axpy_f32: y[i] += a*x[i] for i < n.
extern "C" __global__ void axpy_f32(float* y, const float* x, float a, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) y[i] += a * x[i];
}
