// Softmax cross-entropy over rows of v logits (tensor/crossentropy.go). One
// block per row: a single pass over the logits keeps a per-thread running
// maximum and sum of exponentials (online softmax), the block combines them,
// and a second pass writes dlogits. Logits and dlogits are T = float (_f32)
// or __nv_bfloat16 (_bf16), computed in float; losses are float. Rows use
// 4-element chunks when v is a multiple of 4 and the pointers are aligned to
// a chunk, else scalars.
//
// crossentropy_sum then adds the losses of the non-ignored rows in double.
#include "common.cuh"

// ce_push adds z to a running (max m, Σ exp(· − m) s). −inf logits add
// nothing (and never make exp(−inf − (−inf)) = NaN); NaN propagates into s.
static __device__ __forceinline__ void ce_push(float z, float& m, float& s) {
  if (z > m) {
    s = s * expf(m - z) + 1.f;
    m = z;
  } else if (z != -INFINITY) {
    s += expf(z - m);
  }
}

// crossentropy_fwd: grid n, blockDim a multiple of 32 (at most 1024). For
// row i with t = targets[i]:
//   t < 0:  losses[i] = 0, dlogits row zeroed (if dlogits is non-null);
//   t >= v: losses[i] = NaN and a NaN dlogits row (the CPU panics there);
//   else    losses[i] = max + log Σ exp(x − max) − x[t] (combined in double)
//           and dlogits[i,:] = scale·(softmax(x) − onehot(t)), OVERWRITTEN.
// dlogits may alias logits: x[t] is read before the block's first barrier
// and every element is read and then written by the same thread after the
// last one.
template <typename T>
__device__ __forceinline__ void crossentropy_fwd(float* losses, T* dlogits, const T* logits, const int* targets, int n, int v,
                                                 float scale) {
  __shared__ float sh[32];
  int i = blockIdx.x;
  if (i >= n) return;  // whole block
  int t = targets[i];
  T* dx = dlogits != nullptr ? dlogits + (size_t)i * v : nullptr;
  if (t < 0 || t >= v) {
    float fill = t < 0 ? 0.f : __int_as_float(0x7fc00000);
    if (threadIdx.x == 0) losses[i] = fill;
    if (dx != nullptr) {
      for (int j = threadIdx.x; j < v; j += blockDim.x) dx[j] = from_f32<T>(fill);
    }
    return;  // whole block: t is the same for every thread
  }
  const T* x = logits + (size_t)i * v;
  float xt = threadIdx.x == 0 ? to_f32(x[t]) : 0.f;
  bool vec = (v & 3) == 0 && is_aligned(logits, 4 * sizeof(T)) && (dlogits == nullptr || is_aligned(dlogits, 4 * sizeof(T)));
  int v4 = vec ? v >> 2 : 0;
  float m = -INFINITY, s = 0.f;
  for (int k = threadIdx.x; k < v4; k += blockDim.x) {
    float z[4];
    load4(x + 4 * k, z);
#pragma unroll
    for (int c = 0; c < 4; c++) ce_push(z[c], m, s);
  }
  for (int j = 4 * v4 + threadIdx.x; j < v; j += blockDim.x) ce_push(to_f32(x[j]), m, s);
  float mx = block_max(m, sh);
  float part = m == -INFINITY ? 0.f : s * expf(m - mx);
  float sum = block_sum(part, sh);
  if (threadIdx.x == 0) losses[i] = (float)((double)mx + log((double)sum) - (double)xt);
  if (dx == nullptr) return;
  float a = scale / sum;
  for (int k = threadIdx.x; k < v4; k += blockDim.x) {
    float z[4];
    load4(x + 4 * k, z);
#pragma unroll
    for (int c = 0; c < 4; c++) {
      z[c] = expf(z[c] - mx) * a;
      if (4 * k + c == t) z[c] -= scale;
    }
    store4(dx + 4 * k, z);
  }
  for (int j = 4 * v4 + threadIdx.x; j < v; j += blockDim.x) {
    float e = expf(to_f32(x[j]) - mx) * a;
    if (j == t) e -= scale;
    dx[j] = from_f32<T>(e);
  }
}

extern "C" __global__ void crossentropy_fwd_f32(float* losses, float* dlogits, const float* logits, const int* targets, int n,
                                                int v, float scale) {
  crossentropy_fwd(losses, dlogits, logits, targets, n, v, scale);
}
extern "C" __global__ void crossentropy_fwd_bf16(float* losses, __nv_bfloat16* dlogits, const __nv_bfloat16* logits,
                                                 const int* targets, int n, int v, float scale) {
  crossentropy_fwd(losses, dlogits, logits, targets, n, v, scale);
}

// crossentropy_sum: out[0] = Σ losses[i] over rows with targets[i] >= 0 (in
// double), out[1] = the number of such rows. One block, blockDim a multiple
// of 32: thread t takes rows t, t+blockDim, … in order, then the block
// reduces in a fixed order.
extern "C" __global__ void crossentropy_sum(double* out, const float* losses, const int* targets, int n) {
  __shared__ double sh[32];
  double s = 0.0, c = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    if (targets[i] >= 0) {
      s += (double)losses[i];
      c += 1.0;
    }
  }
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  s = warp_sum_f64(s);
  c = warp_sum_f64(c);
  if (lane == 0) sh[warp] = s;
  __syncthreads();
  if (warp == 0) {
    double ts = warp_sum_f64(lane < nw ? sh[lane] : 0.0);
    if (lane == 0) out[0] = ts;
  }
  __syncthreads();
  if (lane == 0) sh[warp] = c;
  __syncthreads();
  if (warp == 0) {
    double tc = warp_sum_f64(lane < nw ? sh[lane] : 0.0);
    if (lane == 0) out[1] = tc;
  }
}
