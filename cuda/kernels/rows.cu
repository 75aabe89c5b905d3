// Row movement of the MoE layer: gathering token rows into the plan's
// expert-major slot order, combining expert outputs back per token with
// their gates, and the backward's pieces (row dots, scaling rows by gates,
// slot gradients back to the [N, K] choices). Rows are d contiguous
// elements; one warp handles one row (a token or a slot) at a time, so
// nothing needs atomics and every result is deterministic.
//
// The combine is per token rather than a scatter: out[t] += Σ_j g_tj·y[s_tj]
// over t's kept choices j (slot s_tj) in increasing slot order, the order in which
// tensor.ScatterAddRows accumulates a token's rows, with separately rounded
// products and sums (no FMA contraction), so float results equal the CPU's
// (Go does not fuse multiply-adds on amd64 by default).
//
// Element type T is float (_f32) or __nv_bfloat16 (_bf16); arithmetic is in
// float, gates and dot outputs are float. Rows move as 16-byte vectors when
// the row length allows it and the base pointers are 16-byte aligned (tested
// per launch), else element by element. Wrappers launch kThreads-thread blocks.
#include "common.cuh"

namespace rows_detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxK = 32;  // choices per token the combine supports
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<size_t>(p) & 15) == 0; }

// Elements per 16-byte vector.
template <typename T> struct Vec { static constexpr int N = 16 / sizeof(T); };

// ld/st move V elements at p to/from floats: V == 1 is one element, else one
// 16-byte vector (p must be aligned).
template <int V> __device__ __forceinline__ void ld(float* f, const float* p) {
  if constexpr (V == 1) {
    f[0] = *p;
  } else {
    const float4 q = *reinterpret_cast<const float4*>(p);
    f[0] = q.x, f[1] = q.y, f[2] = q.z, f[3] = q.w;
  }
}
template <int V> __device__ __forceinline__ void st(float* p, const float* f) {
  if constexpr (V == 1) {
    *p = f[0];
  } else {
    *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  }
}
__device__ __forceinline__ unsigned bf16_bits(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
template <int V> __device__ __forceinline__ void ld(float* f, const __nv_bfloat16* p) {
  if constexpr (V == 1) {
    f[0] = __bfloat162float(*p);
  } else {
    const uint4 q = *reinterpret_cast<const uint4*>(p);
    const unsigned w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {  // element 2i is the low half (little endian)
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
}
template <int V> __device__ __forceinline__ void st(__nv_bfloat16* p, const float* f) {
  if constexpr (V == 1) {
    *p = __float2bfloat16_rn(f[0]);
  } else {
    unsigned w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = bf16_bits(f[2 * i]) | (bf16_bits(f[2 * i + 1]) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// Warp-per-row iteration: this warp's first row and the stride.
__device__ __forceinline__ int first_row() { return blockIdx.x * kWarps + (threadIdx.x >> 5); }
__device__ __forceinline__ int row_stride() { return gridDim.x * kWarps; }

template <typename T>
__device__ __forceinline__ void gather(T* __restrict__ dst, const T* __restrict__ src, const int* __restrict__ idx,
                                       int rows, int d) {
  const int lane = threadIdx.x & 31;
  const bool vec = (size_t)d * sizeof(T) % 16 == 0 && aligned16(dst) && aligned16(src);
  for (int r = first_row(); r < rows; r += row_stride()) {
    const T* s = src + (size_t)idx[r] * d;
    T* o = dst + (size_t)r * d;
    if (vec) {
      const int nv = (int)((size_t)d * sizeof(T) / 16);
      const uint4* s4 = reinterpret_cast<const uint4*>(s);
      uint4* o4 = reinterpret_cast<uint4*>(o);
      for (int c = lane; c < nv; c += 32) o4[c] = s4[c];
    } else {
      for (int c = lane; c < d; c += 32) o[c] = s[c];
    }
  }
}

// combine_cols adds the m slots ord[0..m) of y, weighted by g, to one
// input row irow and writes the sums to orow (irow may be orow), V elements
// per step, slots in the given order for every element.
template <typename T, int V>
__device__ __forceinline__ void combine_cols(T* orow, const T* irow, const T* __restrict__ y, const int* ord,
                                             const float* g, int m, int d, int lane) {
  const int nc = d / V;
  for (int c = lane; c < nc; c += 32) {
    float acc[V];
    ld<V>(acc, irow + (size_t)c * V);
    for (int q = 0; q < m; q++) {
      float yv[V];
      ld<V>(yv, y + (size_t)ord[q] * d + (size_t)c * V);
      const float gq = g[q];
#pragma unroll
      for (int v = 0; v < V; v++) acc[v] = __fadd_rn(acc[v], __fmul_rn(gq, yv[v]));
    }
    st<V>(orow + (size_t)c * V, acc);
  }
}

template <typename T>
__device__ __forceinline__ void combine(T* out, const T* res, const T* __restrict__ y, const int* __restrict__ slot_of,
                                        const float* __restrict__ gates, int n, int k, int d) {
  __shared__ int s_ord[kWarps][kMaxK];
  __shared__ float s_g[kWarps][kMaxK];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  constexpr int V = Vec<T>::N;
  const bool vec = d % V == 0 && aligned16(out) && aligned16(y) && (res == nullptr || aligned16(res));
  for (int t = first_row(); t < n; t += row_stride()) {
    // Lane j < k holds choice j's slot; its rank among the token's kept
    // slots orders them ascending (slots are distinct).
    const int s = lane < k ? slot_of[(size_t)t * k + lane] : -1;
    const float g = (s >= 0 && gates != nullptr) ? gates[(size_t)t * k + lane] : 1.f;
    int rank = 0;
    for (int j = 0; j < k; j++) {
      const int sj = __shfl_sync(kFull, s, j);
      rank += (sj >= 0 && sj < s) ? 1 : 0;
    }
    const int m = __popc(__ballot_sync(kFull, s >= 0));
    if (s >= 0) {
      s_ord[w][rank] = s;
      s_g[w][rank] = g;
    }
    __syncwarp();
    if (m > 0 || res != nullptr) { // with res every row is written
      T* orow = out + (size_t)t * d;
      const T* irow = res != nullptr ? res + (size_t)t * d : orow;
      if (vec) {
        combine_cols<T, V>(orow, irow, y, s_ord[w], s_g[w], m, d, lane);
      } else {
        combine_cols<T, 1>(orow, irow, y, s_ord[w], s_g[w], m, d, lane);
      }
    }
    __syncwarp();  // s_ord/s_g are read before the next token overwrites them
  }
}

template <typename T, int V>
__device__ __forceinline__ float dot_cols(const T* __restrict__ a, const T* __restrict__ b, int d, int lane) {
  float acc = 0.f;
  const int nc = d / V;
  for (int c = lane; c < nc; c += 32) {
    float av[V], bv[V];
    ld<V>(av, a + (size_t)c * V);
    ld<V>(bv, b + (size_t)c * V);
#pragma unroll
    for (int v = 0; v < V; v++) acc = fmaf(av[v], bv[v], acc);
  }
  return acc;
}

template <typename T>
__device__ __forceinline__ void rowdot(float* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b,
                                       int n, int d) {
  const int lane = threadIdx.x & 31;
  constexpr int V = Vec<T>::N;
  const bool vec = d % V == 0 && aligned16(a) && aligned16(b);
  for (int r = first_row(); r < n; r += row_stride()) {
    const T* ar = a + (size_t)r * d;
    const T* br = b + (size_t)r * d;
    float acc = vec ? dot_cols<T, V>(ar, br, d, lane) : dot_cols<T, 1>(ar, br, d, lane);
    acc = warp_sum(acc);
    if (lane == 0) out[r] = acc;
  }
}

template <typename T, int V>
__device__ __forceinline__ void scale_cols(T* __restrict__ x, float g, int d, int lane) {
  const int nc = d / V;
  for (int c = lane; c < nc; c += 32) {
    float v[V];
    ld<V>(v, x + (size_t)c * V);
#pragma unroll
    for (int i = 0; i < V; i++) v[i] = __fmul_rn(v[i], g);
    st<V>(x + (size_t)c * V, v);
  }
}

template <typename T>
__device__ __forceinline__ void scale(T* __restrict__ x, const float* __restrict__ gate, int rows, int d) {
  const int lane = threadIdx.x & 31;
  constexpr int V = Vec<T>::N;
  const bool vec = d % V == 0 && aligned16(x);
  for (int r = first_row(); r < rows; r += row_stride()) {
    const float g = gate[r];
    T* xr = x + (size_t)r * d;
    if (vec) {
      scale_cols<T, V>(xr, g, d, lane);
    } else {
      scale_cols<T, 1>(xr, g, d, lane);
    }
  }
}

}  // namespace rows_detail
using namespace rows_detail;

// The row kernels, each for T = float (suffix _f32) and __nv_bfloat16 (_bf16):
//   rows_gather:  dst[i, :] = src[idx[i], :] for i < rows (idx in range of
//                 src);
//   rows_combine: out[t, :] = r[t, :] + Σ gates[t·k+j]·y[s, :] over the
//                 choices j < k of token t < n with slot s = slot_of[t·k+j]
//                 ≥ 0, in increasing s (gates null: weight 1), where r is
//                 res, or out itself when res is null (then tokens with no
//                 kept slot are left untouched). k ≤ kMaxK. res, when given,
//                 must not overlap out;
//   rows_dot:     out[i] = Σ_j a[i, j]·b[i, j] for i < n (float out, fixed
//                 order);
//   rows_scale:   x[i, :] *= gate[i] for i < rows, in place.
#define ROWS_KERNELS(T, SUF)                                                                                         \
  extern "C" __global__ void __launch_bounds__(kThreads)                                                             \
      rows_gather##SUF(T* dst, const T* src, const int* idx, int rows, int d) {                                      \
    gather(dst, src, idx, rows, d);                                                                                  \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(kThreads) rows_combine##SUF(                                          \
      T* out, const T* res, const T* y, const int* slot_of, const float* gates, int n, int k, int d) {               \
    combine(out, res, y, slot_of, gates, n, k, d);                                                                   \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(kThreads) rows_dot##SUF(float* out, const T* a, const T* b, int n,    \
                                                                      int d) {                                       \
    rowdot(out, a, b, n, d);                                                                                         \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(kThreads) rows_scale##SUF(T* x, const float* gate, int rows, int d) { \
    scale(x, gate, rows, d);                                                                                         \
  }

ROWS_KERNELS(float, _f32)
ROWS_KERNELS(__nv_bfloat16, _bf16)

// rows_dgates_f32: dgates[i] = dslot[slot_of[i]], or 0 where the choice was
// dropped (slot_of[i] < 0), for i < nk. One thread per choice, grid stride.
extern "C" __global__ void __launch_bounds__(kThreads)
    rows_dgates_f32(float* dgates, const float* dslot, const int* slot_of, int nk) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < nk; i += gridDim.x * blockDim.x) {
    const int s = slot_of[i];
    dgates[i] = s >= 0 ? dslot[s] : 0.f;
  }
}

// rows_gather_dot_scale_bf16 is the mixed-precision backward of the combine
// in one pass per slot s < rows (one warp a slot): r = src[idx[s], :] (fp32,
// the gradient of the layer output at the slot's token), dot[s] = Σ r·y[s, :]
// (fp32 rows: the gate's gradient), and dst[s, :] = bf16(gate[s]·r) (the
// expert outputs' gradient, operand of the experts' products). Replaces a
// gather, a row dot, a row scaling and a cast over fp32 [S, d] buffers.
extern "C" __global__ void __launch_bounds__(rows_detail::kThreads)
    rows_gather_dot_scale_bf16(__nv_bfloat16* dst, float* dot, const float* src, const int* idx, const float* y,
                               const float* gate, int rows, int d) {
  const int lane = threadIdx.x & 31;
  const int warp = (int)((blockIdx.x * (unsigned)blockDim.x + threadIdx.x) >> 5);
  const int nw = (int)((gridDim.x * (unsigned)blockDim.x) >> 5);
  for (int s = warp; s < rows; s += nw) {
    const float* r = src + (long long)idx[s] * d;
    const float* yr = y + (long long)s * d;
    __nv_bfloat16* o = dst + (long long)s * d;
    const float g = gate[s];
    float acc = 0.f;
    for (int j = lane; j < d; j += 32) {
      const float v = r[j];
      acc += v * yr[j];
      o[j] = __float2bfloat16_rn(g * v);
    }
    acc = warp_sum(acc);
    if (lane == 0) dot[s] = acc;
  }
}
