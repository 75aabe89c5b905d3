// Elementwise kernels over flat buffers (tensor/rows.go: AddInPlace, Scale,
// SumSquares), the deterministic sum of squares behind optim.GlobalNorm, and
// the f32<->bf16 casts of mixed precision.
//
// Flat lengths are 64-bit (parameter and gradient buffers pass 2^31). Each
// elementwise kernel is a grid-stride loop over float4 (or 4×bf16) chunks
// when every pointer is aligned to a chunk, then a scalar tail; unaligned
// pointers take the scalar loop throughout (correct, slower).
#include "common.cuh"

// ELEMENTWISE_CHUNK is how many elements one block of elementwise_sumsq_f32
// (and adamw_update_f32) reduces. It fixes the partition of the sum whatever
// the GPU, so results are bitwise reproducible; Go's elementwiseChunk must
// match.
#define ELEMENTWISE_CHUNK 8192

// elementwise_add_f32: dst[i] += src[i] for i < n.
extern "C" __global__ void elementwise_add_f32(float* dst, const float* src, long long n) {
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  long long n4 = (is_aligned(dst, 16) && is_aligned(src, 16)) ? n >> 2 : 0;
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
  map4(x, x, n, [a](float v) { return v * a; });
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
  long long m4 = is_aligned(x, 16) ? (hi - lo) >> 2 : 0;  // lo is a multiple of 4
  for (long long k = threadIdx.x; k < m4; k += blockDim.x) {
    float4 v = reinterpret_cast<const float4*>(x + lo)[k];
    s += (double)v.x * v.x;
    s += (double)v.y * v.y;
    s += (double)v.z * v.z;
    s += (double)v.w * v.w;
  }
  for (long long i = lo + m4 * 4 + threadIdx.x; i < hi; i += blockDim.x) s += (double)x[i] * x[i];
  s = block_sum_f64(s, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// elementwise_sum_f64: out[0] = Σ_b partial[b] over b < nb, or its square
// root when root != 0. One block (blockDim.x a multiple of 32); thread t sums
// b = t, t+blockDim, … in order, then the block reduces in a fixed order.
extern "C" __global__ void elementwise_sum_f64(double* out, const double* partial, int nb, int root) {
  __shared__ double sh[32];
  double s = 0.0;
  for (int b = threadIdx.x; b < nb; b += blockDim.x) s += partial[b];
  s = block_sum_f64(s, sh);
  if (threadIdx.x == 0) out[0] = root ? sqrt(s) : s;
}

// cast_f32_to_bf16: dst[i] = bf16(src[i]), rounded to nearest even (NaN
// stays NaN).
extern "C" __global__ void cast_f32_to_bf16(__nv_bfloat16* dst, const float* src, long long n) {
  map4(dst, src, n, [](float v) { return v; });
}

// cast_bf16_to_f32: dst[i] = float(src[i]) (exact).
extern "C" __global__ void cast_bf16_to_f32(float* dst, const __nv_bfloat16* src, long long n) {
  map4(dst, src, n, [](float v) { return v; });
}
