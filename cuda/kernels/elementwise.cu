// Elementwise kernels over flat buffers (tensor/rows.go: AddInPlace, Scale,
// SumSquares), the deterministic sum of squares behind optim.GlobalNorm, and
// the f32<->bf16 casts of mixed precision.
//
// Flat lengths are 64-bit (parameter and gradient buffers pass 2^31). Each
// elementwise kernel is a grid-stride loop over float4 (or 4×bf16) chunks
// when every pointer is aligned to a chunk, then a scalar tail; unaligned
// pointers take the scalar loop throughout (correct, slower).
#include "common.cuh"
#include <stdint.h>

// ELEMENTWISE_CHUNK is how many elements one block of elementwise_sumsq_f32
// (and adamw_update_f32) reduces. It fixes the partition of the sum whatever
// the GPU, so results are bitwise reproducible; Go's elementwiseChunk must
// match.
#define ELEMENTWISE_CHUNK 8192

static __device__ __forceinline__ bool ew_aligned(const void* p, unsigned bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

// ew_block_sum_f64 is common.cuh's block_sum in double: every thread gets
// the same sum, added in a fixed order. sh holds 32 doubles; ends with a
// barrier.
static __device__ __forceinline__ double ew_block_sum_f64(double v, double* sh) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum_f64(v);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  double t = lane < nw ? sh[lane] : 0.0;
  t = warp_sum_f64(t);
  __syncthreads();
  return t;
}

// elementwise_add_f32: dst[i] += src[i] for i < n.
extern "C" __global__ void elementwise_add_f32(float* dst, const float* src, long long n) {
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  long long n4 = (ew_aligned(dst, 16) && ew_aligned(src, 16)) ? n >> 2 : 0;
  for (long long k = tid; k < n4; k += stride) {
    float4 a = reinterpret_cast<float4*>(dst)[k];
    float4 b = reinterpret_cast<const float4*>(src)[k];
    a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
    reinterpret_cast<float4*>(dst)[k] = a;
  }
  for (long long i = n4 * 4 + tid; i < n; i += stride) dst[i] += src[i];
}

// elementwise_scale_f32: x[i] *= a for i < n.
extern "C" __global__ void elementwise_scale_f32(float* x, float a, long long n) {
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  long long n4 = ew_aligned(x, 16) ? n >> 2 : 0;
  for (long long k = tid; k < n4; k += stride) {
    float4 v = reinterpret_cast<float4*>(x)[k];
    v.x *= a; v.y *= a; v.z *= a; v.w *= a;
    reinterpret_cast<float4*>(x)[k] = v;
  }
  for (long long i = n4 * 4 + tid; i < n; i += stride) x[i] *= a;
}

// elementwise_sumsq_f32: block b writes partial[b] = Σ x[i]² (in double) over
// i in [b·CHUNK, min((b+1)·CHUNK, n)). Launch ceil(n/CHUNK) blocks of 256
// threads (any multiple of 32 works; the block size fixes the order of the
// additions, so keep it fixed for reproducibility).
extern "C" __global__ void elementwise_sumsq_f32(double* partial, const float* x, long long n) {
  __shared__ double sh[32];
  long long lo = (long long)blockIdx.x * ELEMENTWISE_CHUNK;
  long long hi = min(lo + (long long)ELEMENTWISE_CHUNK, n);
  double s = 0.0;
  long long m4 = ew_aligned(x, 16) ? (hi - lo) >> 2 : 0;  // lo is a multiple of 4
  for (long long k = threadIdx.x; k < m4; k += blockDim.x) {
    float4 v = reinterpret_cast<const float4*>(x + lo)[k];
    s += (double)v.x * v.x;
    s += (double)v.y * v.y;
    s += (double)v.z * v.z;
    s += (double)v.w * v.w;
  }
  for (long long i = lo + m4 * 4 + threadIdx.x; i < hi; i += blockDim.x) s += (double)x[i] * x[i];
  s = ew_block_sum_f64(s, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// elementwise_sum_f64: out[0] = Σ_b partial[b] over b < nb, or its square
// root when root != 0. One block (blockDim.x a multiple of 32); thread t sums
// b = t, t+blockDim, … in order, then the block reduces in a fixed order.
extern "C" __global__ void elementwise_sum_f64(double* out, const double* partial, int nb, int root) {
  __shared__ double sh[32];
  double s = 0.0;
  for (int b = threadIdx.x; b < nb; b += blockDim.x) s += partial[b];
  s = ew_block_sum_f64(s, sh);
  if (threadIdx.x == 0) out[0] = root ? sqrt(s) : s;
}

// cast_f32_to_bf16: dst[i] = bf16(src[i]), rounded to nearest even (NaN
// stays NaN).
extern "C" __global__ void cast_f32_to_bf16(__nv_bfloat16* dst, const float* src, long long n) {
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  long long n4 = (ew_aligned(dst, 8) && ew_aligned(src, 16)) ? n >> 2 : 0;
  for (long long k = tid; k < n4; k += stride) {
    float4 v = reinterpret_cast<const float4*>(src)[k];
    uint2 q;
    q.x = (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v.x)) | ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v.y)) << 16);
    q.y = (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v.z)) | ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v.w)) << 16);
    reinterpret_cast<uint2*>(dst)[k] = q;
  }
  for (long long i = n4 * 4 + tid; i < n; i += stride) dst[i] = __float2bfloat16_rn(src[i]);
}

// cast_bf16_to_f32: dst[i] = float(src[i]) (exact).
extern "C" __global__ void cast_bf16_to_f32(float* dst, const __nv_bfloat16* src, long long n) {
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  long long n4 = (ew_aligned(dst, 16) && ew_aligned(src, 8)) ? n >> 2 : 0;
  for (long long k = tid; k < n4; k += stride) {
    uint2 q = reinterpret_cast<const uint2*>(src)[k];
    float4 v;
    v.x = __uint_as_float(q.x << 16);
    v.y = __uint_as_float(q.x & 0xffff0000u);
    v.z = __uint_as_float(q.y << 16);
    v.w = __uint_as_float(q.y & 0xffff0000u);
    reinterpret_cast<float4*>(dst)[k] = v;
  }
  for (long long i = n4 * 4 + tid; i < n; i += stride) dst[i] = __bfloat162float(src[i]);
}
