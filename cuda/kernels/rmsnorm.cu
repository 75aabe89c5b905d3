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

// RMSNORM_ROWS is the rows per block of the backward; Go's rmsnormRows must
// match (it sizes the scratch).
#define RMSNORM_ROWS 32

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
  bool vec = (d & 3) == 0 && is_aligned(in, 4 * sizeof(T)) && is_aligned(out, 4 * sizeof(TO)) && is_aligned(w, 16);
  int d4 = vec ? d >> 2 : 0;
  double ss = 0.0;
  for (int k = threadIdx.x; k < d4; k += blockDim.x) {
    float v[4];
    load4(x + 4 * k, v);
#pragma unroll
    for (int c = 0; c < 4; c++) ss += (double)v[c] * v[c];
  }
  for (int j = 4 * d4 + threadIdx.x; j < d; j += blockDim.x) {
    float v = to_f32(x[j]);
    ss += (double)v * v;
  }
  ss = block_sum_f64(ss, sh);
  float r = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
  if (threadIdx.x == 0) rstd[i] = r;
  for (int k = threadIdx.x; k < d4; k += blockDim.x) {
    float v[4], g[4];
    load4(x + 4 * k, v);
    load4(w + 4 * k, g);
#pragma unroll
    for (int c = 0; c < 4; c++) v[c] = v[c] * r * g[c];
    store4(o + 4 * k, v);
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
  bool vec = (d & 3) == 0 && is_aligned(din, 16) && is_aligned(dout, 16) && is_aligned(in, 4 * sizeof(T)) &&
             is_aligned(w, 16) && (partial == nullptr || is_aligned(partial, 16));
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
      load4(g + 4 * k, gv);
      load4(x + 4 * k, xv);
      load4(w + 4 * k, wv);
#pragma unroll
      for (int c = 0; c < 4; c++) dot += (double)gv[c] * (double)wv[c] * (double)xv[c];
    }
    for (int j = 4 * d4 + threadIdx.x; j < d; j += blockDim.x) dot += (double)g[j] * (double)w[j] * (double)to_f32(x[j]);
    dot = block_sum_f64(dot, sh);
    float coef = (float)(dot / (double)d) * r * r;
    for (int k = threadIdx.x; k < d4; k += blockDim.x) {
      float gv[4], xv[4], wv[4], dv[4];
      load4(g + 4 * k, gv);
      load4(x + 4 * k, xv);
      load4(w + 4 * k, wv);
      load4(dx + 4 * k, dv);
#pragma unroll
      for (int c = 0; c < 4; c++) dv[c] += r * (gv[c] * wv[c] - xv[c] * coef);
      store4(dx + 4 * k, dv);
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
