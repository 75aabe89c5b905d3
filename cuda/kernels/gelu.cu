// Exact GELU, x·Φ(x) with Φ the standard normal CDF (tensor/gelu.go), not
// the tanh approximation. Φ is CUDA's normcdff (5 ulp over the whole range,
// so relative accuracy holds in the negative tail too, where erfcf(−x·√½)
// would amplify the rounding of its argument by ~x²).
//
// Flat lengths are 64-bit. The activation (forward in/out, backward in) is
// T = float (_f32) or __nv_bfloat16 (_bf16, computed in float); gradients
// are float. Grid-stride over 4-element chunks when every pointer is aligned
// to its chunk, then a scalar tail.
#include "common.cuh"
#include <stdint.h>

static __device__ __forceinline__ bool gelu_aligned(const void* p, unsigned bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

static __device__ __forceinline__ void gelu_load4(const float* p, float v[4]) {
  float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}
static __device__ __forceinline__ void gelu_load4(const __nv_bfloat16* p, float v[4]) {
  uint2 q = *reinterpret_cast<const uint2*>(p);
  v[0] = __uint_as_float(q.x << 16); v[1] = __uint_as_float(q.x & 0xffff0000u);
  v[2] = __uint_as_float(q.y << 16); v[3] = __uint_as_float(q.y & 0xffff0000u);
}
static __device__ __forceinline__ void gelu_store4(float* p, const float v[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
static __device__ __forceinline__ void gelu_store4(__nv_bfloat16* p, const float v[4]) {
  uint2 q;
  q.x = (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[0])) | ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[1])) << 16);
  q.y = (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[2])) | ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[3])) << 16);
  *reinterpret_cast<uint2*>(p) = q;
}

static __device__ __forceinline__ float gelu_cdf(float x) { return normcdff(x); }

// gelu_cdf_fast is Φ(x) = (1 + erf(x/√2))/2 through erff: a few instructions
// where normcdff takes tens, with an absolute error near 1e-7 that loses
// relative accuracy only deep in the negative tail (Φ < 1e-5, where x·Φ(x)
// is below bf16's resolution of the values around it). The bf16 kernels,
// whose outputs round to 8 bits anyway, use it; the fp32 ones keep normcdff.
static __device__ __forceinline__ float gelu_cdf_fast(float x) { return 0.5f * (1.f + erff(x * 0.70710678118654752f)); }

static __device__ __forceinline__ float gelu_grad_fast(float x) {
  return gelu_cdf_fast(x) + x * (0.3989422804014327f * __expf(-0.5f * x * x));
}

// gelu_grad is dGELU/dx = Φ(x) + x·φ(x).
static __device__ __forceinline__ float gelu_grad(float x) {
  return gelu_cdf(x) + x * (0.3989422804014327f * expf(-0.5f * x * x));
}

// gelu_fwd: out[i] = in[i]·Φ(in[i]) for i < n. out may alias in.
template <typename T>
__device__ __forceinline__ void gelu_fwd(T* out, const T* in, long long n) {
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  long long n4 = (gelu_aligned(out, 4 * sizeof(T)) && gelu_aligned(in, 4 * sizeof(T))) ? n >> 2 : 0;
  for (long long k = tid; k < n4; k += stride) {
    float v[4];
    gelu_load4(in + 4 * k, v);
    constexpr bool fast = sizeof(T) == 2;  // bf16 activations
#pragma unroll
    for (int c = 0; c < 4; c++) v[c] = v[c] * (fast ? gelu_cdf_fast(v[c]) : gelu_cdf(v[c]));
    gelu_store4(out + 4 * k, v);
  }
  for (long long i = n4 * 4 + tid; i < n; i += stride) {
    float x = to_f32(in[i]);
    out[i] = from_f32<T>(x * (sizeof(T) == 2 ? gelu_cdf_fast(x) : gelu_cdf(x)));
  }
}

// gelu_bwd ACCUMULATES, like tensor.GELUBackward: din[i] += dout[i]·GELU'(in[i]).
template <typename T>
__device__ __forceinline__ void gelu_bwd(float* din, const float* dout, const T* in, long long n) {
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  long long n4 = (gelu_aligned(din, 16) && gelu_aligned(dout, 16) && gelu_aligned(in, 4 * sizeof(T))) ? n >> 2 : 0;
  for (long long k = tid; k < n4; k += stride) {
    float x[4], g[4], d[4];
    gelu_load4(in + 4 * k, x);
    gelu_load4(dout + 4 * k, g);
    gelu_load4(din + 4 * k, d);
#pragma unroll
    for (int c = 0; c < 4; c++) d[c] += g[c] * gelu_grad(x[c]);
    gelu_store4(din + 4 * k, d);
  }
  for (long long i = n4 * 4 + tid; i < n; i += stride) din[i] += dout[i] * gelu_grad(to_f32(in[i]));
}

// gelu_bwd_bf16_bf16 OVERWRITES din[i] = bf16(dout[i]·GELU'(in[i])) with every
// array bf16: the mixed-precision backward, whose expert products consume
// the bf16 gradient directly (no fp32 buffer to clear, accumulate and cast).
extern "C" __global__ void gelu_bwd_bf16_bf16(__nv_bfloat16* din, const __nv_bfloat16* dout, const __nv_bfloat16* in, long long n) {
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  long long n4 = (gelu_aligned(din, 8) && gelu_aligned(dout, 8) && gelu_aligned(in, 8)) ? n >> 2 : 0;
  for (long long k = tid; k < n4; k += stride) {
    float x[4], g[4];
    gelu_load4(in + 4 * k, x);
    gelu_load4(dout + 4 * k, g);
#pragma unroll
    for (int c = 0; c < 4; c++) g[c] *= gelu_grad_fast(x[c]);
    gelu_store4(din + 4 * k, g);
  }
  for (long long i = n4 * 4 + tid; i < n; i += stride)
    din[i] = __float2bfloat16_rn(__bfloat162float(dout[i]) * gelu_grad_fast(__bfloat162float(in[i])));
}

extern "C" __global__ void gelu_fwd_f32(float* out, const float* in, long long n) { gelu_fwd(out, in, n); }
extern "C" __global__ void gelu_fwd_bf16(__nv_bfloat16* out, const __nv_bfloat16* in, long long n) { gelu_fwd(out, in, n); }
extern "C" __global__ void gelu_bwd_f32(float* din, const float* dout, const float* in, long long n) { gelu_bwd(din, dout, in, n); }
extern "C" __global__ void gelu_bwd_bf16(float* din, const float* dout, const __nv_bfloat16* in, long long n) { gelu_bwd(din, dout, in, n); }
