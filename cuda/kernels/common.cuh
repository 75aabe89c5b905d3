// Shared helpers of moetrain's kernels. Every kernel is extern "C" so the Go
// side finds it by name; sizes are 32-bit ints; pointers are to device
// memory. A change here rebuilds every kernel's PTX (scripts/build-ptx.sh).
#pragma once
#include <cuda_bf16.h>

// Element types: each templated kernel is instantiated for float (suffix
// _f32) and, where mixed precision uses it, __nv_bfloat16 (suffix _bf16).
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// warp_sum and warp_max reduce over the 32 lanes of a full warp; every lane
// gets the result. The order of additions is fixed, so results are
// deterministic.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// block_sum reduces v over a block of blockDim.x threads (a multiple of 32,
// at most 1024) in a fixed order; every thread gets the result. shared must
// hold 32 floats; the call ends with a barrier so shared may be reused.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = lane < nw ? shared[lane] : 0.f;
  t = warp_sum(t);
  __syncthreads();
  return t;
}
__device__ __forceinline__ float block_max(float v, float* shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = lane < nw ? shared[lane] : -INFINITY;
  t = warp_max(t);
  __syncthreads();
  return t;
}
