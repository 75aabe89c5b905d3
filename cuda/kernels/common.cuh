// Shared helpers of moetrain's kernels. Every kernel is extern "C" so the Go
// side finds it by name; sizes are 32-bit ints; pointers are to device
// memory. A change here rebuilds every kernel's PTX (scripts/build-ptx.sh).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

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

// block_reduce combines v over a block of blockDim.x threads (a multiple of
// 32, at most 1024) with warp_op, a full-warp reduction such as warp_sum, in
// a fixed order; lanes past the last warp contribute identity. Every thread
// gets the result. shared must hold 32 elements; the call ends with a
// barrier so shared may be reused.
template <typename T, T (*warp_op)(T)>
__device__ __forceinline__ T block_reduce(T v, T* shared, T identity) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_op(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T t = lane < nw ? shared[lane] : identity;
  t = warp_op(t);
  __syncthreads();
  return t;
}
__device__ __forceinline__ float block_sum(float v, float* shared) { return block_reduce<float, warp_sum>(v, shared, 0.f); }
__device__ __forceinline__ float block_max(float v, float* shared) { return block_reduce<float, warp_max>(v, shared, -INFINITY); }
__device__ __forceinline__ double block_sum_f64(double v, double* shared) {
  return block_reduce<double, warp_sum_f64>(v, shared, 0.0);
}

// is_aligned reports whether p is a multiple of bytes (a power of two).
__device__ __forceinline__ bool is_aligned(const void* p, unsigned bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

// load4 reads the 4 elements at p (aligned to 4 elements) as floats; store4
// writes 4 floats there, rounded to nearest even for bf16. A bf16 pair packs
// into 32 bits with the lower-indexed element in the low half.
__device__ __forceinline__ void load4(const float* p, float v[4]) {
  float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float v[4]) {
  uint2 q = *reinterpret_cast<const uint2*>(p);
  v[0] = __uint_as_float(q.x << 16); v[1] = __uint_as_float(q.x & 0xffff0000u);
  v[2] = __uint_as_float(q.y << 16); v[3] = __uint_as_float(q.y & 0xffff0000u);
}
__device__ __forceinline__ void store4(float* p, const float v[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, const float v[4]) {
  uint2 q;
  q.x = (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[0])) | ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[1])) << 16);
  q.y = (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[2])) | ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[3])) << 16);
  *reinterpret_cast<uint2*>(p) = q;
}

// map4 sets dst[i] = f(src[i]) for i < n, f a float function (bf16 elements
// are widened, and rounded back to nearest even), dst may alias src. Flat
// lengths are 64-bit: a grid-stride loop over 4-element chunks when both
// pointers are aligned to a chunk, then a scalar tail.
template <typename TD, typename TS, typename F>
__device__ __forceinline__ void map4(TD* dst, const TS* src, long long n, F f) {
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  long long n4 = (is_aligned(dst, 4 * sizeof(TD)) && is_aligned(src, 4 * sizeof(TS))) ? n >> 2 : 0;
  for (long long k = tid; k < n4; k += stride) {
    float v[4];
    load4(src + 4 * k, v);
#pragma unroll
    for (int c = 0; c < 4; c++) v[c] = f(v[c]);
    store4(dst + 4 * k, v);
  }
  for (long long i = n4 * 4 + tid; i < n; i += stride) dst[i] = from_f32<TD>(f(to_f32(src[i])));
}

// Causal visibility, shared by attention.cu and attention_bf16.cu: key j is
// visible to query t only if !causal || kpos0 + j <= qpos0 + t.
//
// key_end is the end of the keys [0, key_end) that queries before t_end can
// see (Tk without causality).
__device__ __forceinline__ int key_end(int t_end, int Tk, int causal, int qpos0, int kpos0) {
  return causal ? max(0, min(Tk, qpos0 + t_end - kpos0)) : Tk;
}
// first_query_tile is the first tile of rows-row query tiles (nqt of them)
// holding a query that can see key j0 or a later one: queries before
// kpos0 + j0 − qpos0 see none of them; nqt when no tile can.
__device__ __forceinline__ int first_query_tile(int j0, int rows, int nqt, int Tq, int causal, int qpos0, int kpos0) {
  if (!causal) return 0;
  const int tstart = max(0, kpos0 + j0 - qpos0);
  return tstart >= Tq ? nqt : tstart / rows;
}
