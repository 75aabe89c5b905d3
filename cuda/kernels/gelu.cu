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
  constexpr bool fast = sizeof(T) == 2;  // bf16 activations
  map4(out, in, n, [](float x) { return x * (fast ? gelu_cdf_fast(x) : gelu_cdf(x)); });
}

// gelu_bwd ACCUMULATES, like tensor.GELUBackward: din[i] += dout[i]·GELU'(in[i]).
template <typename T>
__device__ __forceinline__ void gelu_bwd(float* din, const float* dout, const T* in, long long n) {
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  long long n4 = (is_aligned(din, 16) && is_aligned(dout, 16) && is_aligned(in, 4 * sizeof(T))) ? n >> 2 : 0;
  for (long long k = tid; k < n4; k += stride) {
    float x[4], g[4], d[4];
    load4(in + 4 * k, x);
    load4(dout + 4 * k, g);
    load4(din + 4 * k, d);
#pragma unroll
    for (int c = 0; c < 4; c++) d[c] += g[c] * gelu_grad(x[c]);
    store4(din + 4 * k, d);
  }
  for (long long i = n4 * 4 + tid; i < n; i += stride) din[i] += dout[i] * gelu_grad(to_f32(in[i]));
}

// gelu_bwd_bf16_bf16 OVERWRITES din[i] = bf16(dout[i]·GELU'(in[i])) with every
// array bf16: the mixed-precision backward, whose expert products consume
// the bf16 gradient directly (no fp32 buffer to clear, accumulate and cast).
extern "C" __global__ void gelu_bwd_bf16_bf16(__nv_bfloat16* din, const __nv_bfloat16* dout, const __nv_bfloat16* in, long long n) {
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  long long n4 = (is_aligned(din, 8) && is_aligned(dout, 8) && is_aligned(in, 8)) ? n >> 2 : 0;
  for (long long k = tid; k < n4; k += stride) {
    float x[4], g[4];
    load4(in + 4 * k, x);
    load4(dout + 4 * k, g);
#pragma unroll
    for (int c = 0; c < 4; c++) g[c] *= gelu_grad_fast(x[c]);
    store4(din + 4 * k, g);
  }
  for (long long i = n4 * 4 + tid; i < n; i += stride)
    din[i] = __float2bfloat16_rn(__bfloat162float(dout[i]) * gelu_grad_fast(__bfloat162float(in[i])));
}

extern "C" __global__ void gelu_fwd_f32(float* out, const float* in, long long n) { gelu_fwd(out, in, n); }
extern "C" __global__ void gelu_fwd_bf16(__nv_bfloat16* out, const __nv_bfloat16* in, long long n) { gelu_fwd(out, in, n); }
extern "C" __global__ void gelu_bwd_f32(float* din, const float* dout, const float* in, long long n) { gelu_bwd(din, dout, in, n); }
extern "C" __global__ void gelu_bwd_bf16(float* din, const float* dout, const __nv_bfloat16* in, long long n) { gelu_bwd(din, dout, in, n); }
