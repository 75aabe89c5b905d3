// RMSNorm over rows of width d (tensor/rmsnorm.go). The activations (in, and
// out of the forward) are T = float (_f32) or __nv_bfloat16 (_bf16, computed
// in float); weight, rstd and gradients are float. Row sums are accumulated
// in double like the CPU reference. Rows use 4-element chunks when d is a
// multiple of 4 and every pointer is aligned to its chunk, else scalars.
//
// Backward is deterministic without atomics: rmsnorm_bwd_* gives each block
// RMSNORM_ROWS consecutive rows and writes that block's dweight partial sums
// to its own scratch row; rmsnorm_dweight_reduce then adds the partial rows
// in a fixed order into dweight.
#include "common.cuh"
#include <stdint.h>

// RMSNORM_ROWS is the rows per block of the backward; Go's rmsnormRows must
// match (it sizes the scratch).
#define RMSNORM_ROWS 32

static __device__ __forceinline__ bool rms_aligned(const void* p, unsigned bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

static __device__ __forceinline__ void rms_load4(const float* p, float v[4]) {
  float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}
static __device__ __forceinline__ void rms_load4(const __nv_bfloat16* p, float v[4]) {
  uint2 q = *reinterpret_cast<const uint2*>(p);
  v[0] = __uint_as_float(q.x << 16); v[1] = __uint_as_float(q.x & 0xffff0000u);
  v[2] = __uint_as_float(q.y << 16); v[3] = __uint_as_float(q.y & 0xffff0000u);
}
static __device__ __forceinline__ void rms_store4(float* p, const float v[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
static __device__ __forceinline__ void rms_store4(__nv_bfloat16* p, const float v[4]) {
  uint2 q;
  q.x = (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[0])) | ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[1])) << 16);
  q.y = (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[2])) | ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[3])) << 16);
  *reinterpret_cast<uint2*>(p) = q;
}

// rms_block_sum_f64 is common.cuh's block_sum in double (same contract).
static __device__ __forceinline__ double rms_block_sum_f64(double v, double* sh) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum_f64(v);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  double t = lane < nw ? sh[lane] : 0.0;
  t = warp_sum_f64(t);
  __syncthreads();
  return t;
}

// rmsnorm_fwd: one block per row i < n (grid n, blockDim a multiple of 32):
// rstd[i] = 1/sqrt(mean_j in[i,j]² + eps), out[i,j] = in[i,j]·rstd[i]·w[j].
// out must not alias in (out is written while other threads still read in).
template <typename T, typename TO = T>
__device__ __forceinline__ void rmsnorm_fwd(TO* out, float* rstd, const T* in, const float* w, int n, int d, float eps) {
  __shared__ double sh[32];
  int i = blockIdx.x;
  if (i >= n) return;  // whole block
  const T* x = in + (size_t)i * d;
  TO* o = out + (size_t)i * d;
  bool vec = (d & 3) == 0 && rms_aligned(in, 4 * sizeof(T)) && rms_aligned(out, 4 * sizeof(TO)) && rms_aligned(w, 16);
  int d4 = vec ? d >> 2 : 0;
  double ss = 0.0;
  for (int k = threadIdx.x; k < d4; k += blockDim.x) {
    float v[4];
    rms_load4(x + 4 * k, v);
#pragma unroll
    for (int c = 0; c < 4; c++) ss += (double)v[c] * v[c];
  }
  for (int j = 4 * d4 + threadIdx.x; j < d; j += blockDim.x) {
    float v = to_f32(x[j]);
    ss += (double)v * v;
  }
  ss = rms_block_sum_f64(ss, sh);
  float r = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
  if (threadIdx.x == 0) rstd[i] = r;
  for (int k = threadIdx.x; k < d4; k += blockDim.x) {
    float v[4], g[4];
    rms_load4(x + 4 * k, v);
    rms_load4(w + 4 * k, g);
#pragma unroll
    for (int c = 0; c < 4; c++) v[c] = v[c] * r * g[c];
    rms_store4(o + 4 * k, v);
  }
  for (int j = 4 * d4 + threadIdx.x; j < d; j += blockDim.x) o[j] = from_f32<TO>(to_f32(x[j]) * r * w[j]);
}

// rmsnorm_bwd: block b handles rows [b·ROWS, min((b+1)·ROWS, n)) in order
// (grid ceil(n/ROWS), blockDim a multiple of 32) and ACCUMULATES
//
//	din[i,j] += r·(dout[i,j]·w[j] − in[i,j]·r²·(Σ_k dout[i,k]·w[k]·in[i,k])/d),  r = rstd[i]
//
// When partial is non-null it also writes partial[b·d + j] = Σ_i dout[i,j]·
// in[i,j]·r over its rows (summed in row order in shared memory, which needs
// d floats of dynamic shared memory). din must not alias dout or in.
template <typename T>
__device__ __forceinline__ void rmsnorm_bwd(float* din, float* partial, const float* dout, const T* in, const float* w,
                                            const float* rstd, int n, int d) {
  extern __shared__ float sdw[];
  __shared__ double sh[32];
  int r0 = blockIdx.x * RMSNORM_ROWS, r1 = min(r0 + RMSNORM_ROWS, n);
  bool vec = (d & 3) == 0 && rms_aligned(din, 16) && rms_aligned(dout, 16) && rms_aligned(in, 4 * sizeof(T)) &&
             rms_aligned(w, 16) && (partial == nullptr || rms_aligned(partial, 16));
  int d4 = vec ? d >> 2 : 0;
  // Each column of sdw belongs to the one thread that updates it (the same
  // chunk/scalar split in every loop below), so only the write-out needs a
  // barrier.
  if (partial != nullptr) {
    for (int k = threadIdx.x; k < d4; k += blockDim.x) {
#pragma unroll
      for (int c = 0; c < 4; c++) sdw[4 * k + c] = 0.f;
    }
    for (int j = 4 * d4 + threadIdx.x; j < d; j += blockDim.x) sdw[j] = 0.f;
  }
  for (int i = r0; i < r1; i++) {
    const float* g = dout + (size_t)i * d;
    const T* x = in + (size_t)i * d;
    float* dx = din + (size_t)i * d;
    float r = rstd[i];
    double dot = 0.0;
    for (int k = threadIdx.x; k < d4; k += blockDim.x) {
      float gv[4], xv[4], wv[4];
      rms_load4(g + 4 * k, gv);
      rms_load4(x + 4 * k, xv);
      rms_load4(w + 4 * k, wv);
#pragma unroll
      for (int c = 0; c < 4; c++) dot += (double)gv[c] * (double)wv[c] * (double)xv[c];
    }
    for (int j = 4 * d4 + threadIdx.x; j < d; j += blockDim.x) dot += (double)g[j] * (double)w[j] * (double)to_f32(x[j]);
    dot = rms_block_sum_f64(dot, sh);
    float coef = (float)(dot / (double)d) * r * r;
    for (int k = threadIdx.x; k < d4; k += blockDim.x) {
      float gv[4], xv[4], wv[4], dv[4];
      rms_load4(g + 4 * k, gv);
      rms_load4(x + 4 * k, xv);
      rms_load4(w + 4 * k, wv);
      rms_load4(dx + 4 * k, dv);
#pragma unroll
      for (int c = 0; c < 4; c++) dv[c] += r * (gv[c] * wv[c] - xv[c] * coef);
      rms_store4(dx + 4 * k, dv);
      if (partial != nullptr) {
#pragma unroll
        for (int c = 0; c < 4; c++) sdw[4 * k + c] += gv[c] * xv[c] * r;
      }
    }
    for (int j = 4 * d4 + threadIdx.x; j < d; j += blockDim.x) {
      float gv = g[j], xv = to_f32(x[j]);
      dx[j] += r * (gv * w[j] - xv * coef);
      if (partial != nullptr) sdw[j] += gv * xv * r;
    }
  }
  if (partial != nullptr) {
    // Same ownership as above, so no barrier is needed before the copy.
    float* p = partial + (size_t)blockIdx.x * d;
    for (int k = threadIdx.x; k < d4; k += blockDim.x) {
#pragma unroll
      for (int c = 0; c < 4; c++) p[4 * k + c] = sdw[4 * k + c];
    }
    for (int j = 4 * d4 + threadIdx.x; j < d; j += blockDim.x) p[j] = sdw[j];
  }
}

extern "C" __global__ void rmsnorm_fwd_f32(float* out, float* rstd, const float* in, const float* w, int n, int d, float eps) {
  rmsnorm_fwd(out, rstd, in, w, n, d, eps);
}
// rmsnorm_fwd_f32_bf16: fp32 rows in (the residual stream), bf16 out (the
// next product's operand) — mixed precision's norm in one pass.
extern "C" __global__ void rmsnorm_fwd_f32_bf16(__nv_bfloat16* out, float* rstd, const float* in, const float* w, int n, int d,
                                                float eps) {
  rmsnorm_fwd(out, rstd, in, w, n, d, eps);
}
extern "C" __global__ void rmsnorm_fwd_bf16(__nv_bfloat16* out, float* rstd, const __nv_bfloat16* in, const float* w, int n, int d,
                                            float eps) {
  rmsnorm_fwd(out, rstd, in, w, n, d, eps);
}
extern "C" __global__ void rmsnorm_bwd_f32(float* din, float* partial, const float* dout, const float* in, const float* w,
                                           const float* rstd, int n, int d) {
  rmsnorm_bwd(din, partial, dout, in, w, rstd, n, d);
}
extern "C" __global__ void rmsnorm_bwd_bf16(float* din, float* partial, const float* dout, const __nv_bfloat16* in,
                                            const float* w, const float* rstd, int n, int d) {
  rmsnorm_bwd(din, partial, dout, in, w, rstd, n, d);
}

// rmsnorm_dweight_reduce: dweight[j] += Σ_b partial[b·d + j] over b < nb, for
// j < d. Block (32, 8), grid ceil(d/32): thread (x, y) sums b = y, y+8, …
// in order for column blockIdx.x·32 + x, then row y = 0 adds the eight
// sums in order (a fixed order, so bitwise reproducible).
extern "C" __global__ void rmsnorm_dweight_reduce(float* dweight, const float* partial, int nb, int d) {
  __shared__ float s[8][33];
  int j = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.f;
  if (j < d) {
    for (int b = threadIdx.y; b < nb; b += 8) acc += partial[(size_t)b * d + j];
  }
  s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < d) {
    float t = 0.f;
#pragma unroll
    for (int y = 0; y < 8; y++) t += s[y][threadIdx.x];
    dweight[j] += t;
  }
}
