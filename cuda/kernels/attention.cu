// Causal / segment-masked multi-head attention, flash-attention style, fp32:
// forward (online softmax, writes o and lse), the row dot d = Σ dO∘O, and a
// deterministic backward (no atomics) in two kernels, one per key tile for
// dK, dV and one per query tile for dQ, each recomputing P = exp(S − lse).
// Semantics are those of tensor.AttentionForward / AttentionBackward
// (tensor/attention*.go):
//   - rows: q row (b·Tq + t)·qs + h·D, k (b·Tk + j)·ks + h·D, v likewise with
//     vs, o / dO (b·Tq + t)·os + h·D; dq, dk, dv share the layouts of q, k, v;
//     lse and d are [(b·H + h)·Tq + t];
//   - key j is visible to query t iff (!causal || kpos0 + j <= qpos0 + t) and
//     (no segments || qseg[b·Tq + t] == kseg[b·Tk + j]);
//   - a query row with no visible key gets o = 0 and lse = -inf, and adds
//     nothing in the backward;
//   - the backward ACCUMULATES into dq, dk, dv (+=);
//   - scale multiplies q·k (the caller resolves 0 to 1/sqrt(D)).
//
// Tiling: 64 query rows × 64 key rows per step, 256 threads as a 16×16 grid
// (ty = tid/16, tx = tid%16). For a score tile a thread owns query rows
// ty·4 + i and key columns tx + 16·j (i, j < 4); for an output tile rows
// ty·4 + i and head columns jj·16·W + tx·W + w (W floats, vector loads).
// Tiles live in shared memory with row stride DMAX + 4 floats, which keeps
// the strided float4 reads of a quarter warp on distinct banks. DMAX (32,
// 64 or 128) bounds the head size at compile time; columns in [D, DMAX) and
// rows past the end are zero-filled so every loop runs over whole tiles.
// Exponentials are base 2 with the scale folded into log2(e)·scale.
#include "common.cuh"

namespace {

constexpr int kTile = 64;       // rows per query tile and per key tile
constexpr int kThreads = 256;   // threads per block (16×16)
constexpr int kLdP = kTile + 4; // row stride of the 64×64 score tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// W: floats per vector load of an output row chunk; NJ: chunks per thread.
template <int DMAX> struct Cols {
  static constexpr int W = DMAX >= 64 ? 4 : 2;
  static constexpr int NJ = DMAX / (16 * W);
  static constexpr int N = NJ * W; // output columns per thread
  static constexpr int LD = DMAX + 4;
  static_assert(NJ * 16 * W == DMAX, "DMAX must be 32, 64 or 128");
};

template <int W> __device__ __forceinline__ void ld_vec(const float* p, float* o);
template <> __device__ __forceinline__ void ld_vec<4>(const float* p, float* o) {
  float4 t = *reinterpret_cast<const float4*>(p);
  o[0] = t.x; o[1] = t.y; o[2] = t.z; o[3] = t.w;
}
template <> __device__ __forceinline__ void ld_vec<2>(const float* p, float* o) {
  float2 t = *reinterpret_cast<const float2*>(p);
  o[0] = t.x; o[1] = t.y;
}

// load_tile copies rows [0, nrows) × cols [0, D) of a head's rows (src points
// at row 0, head column 0; stride in floats) into dst [64][DMAX+4], zeroing
// rows >= nrows and cols in [D, DMAX). Consecutive threads take consecutive
// columns (coalesced). No barrier.
template <int DMAX>
__device__ __forceinline__ void load_tile(float* dst, const float* __restrict__ src, long long stride, int nrows, int D) {
  constexpr int LD = Cols<DMAX>::LD;
  for (int idx = threadIdx.x; idx < kTile * DMAX; idx += kThreads) {
    int r = idx / DMAX, c = idx % DMAX;
    dst[r * LD + c] = (r < nrows && c < D) ? src[r * stride + c] : 0.f;
  }
}

// tile_dot adds A·Bᵀ into acc for the thread's 4×4 score entries: rows
// ty·4 + i of A, rows tx + 16·j of B, both [64][DMAX+4] in shared memory,
// over the first D columns rounded up to 4 (the rest of each row is zero).
// Each step is 8 float4 loads and 64 FMAs, so the loop is left rolled
// (small PTX, quick JIT).
template <int DMAX>
__device__ __forceinline__ void tile_dot(float (&acc)[4][4], const float* A, const float* B, int D, int ty, int tx) {
  constexpr int LD = Cols<DMAX>::LD;
#pragma unroll 2
  for (int d = 0; d < D; d += 4) {
    float4 a[4], b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = *reinterpret_cast<const float4*>(A + (ty * 4 + i) * LD + d);
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = *reinterpret_cast<const float4*>(B + (tx + 16 * j) * LD + d);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        acc[i][j] = fmaf(a[i].x, b[j].x, acc[i][j]);
        acc[i][j] = fmaf(a[i].y, b[j].y, acc[i][j]);
        acc[i][j] = fmaf(a[i].z, b[j].z, acc[i][j]);
        acc[i][j] = fmaf(a[i].w, b[j].w, acc[i][j]);
      }
  }
}

// The thread's output columns: chunk jj, element w.
template <int DMAX> __device__ __forceinline__ int out_col(int jj, int w, int tx) {
  return jj * 16 * Cols<DMAX>::W + tx * Cols<DMAX>::W + w;
}

// tile_mm adds P·X into acc: acc[i][·] += Σ_c P[row(i)][c] · X[c][cols], P a
// [64][kLdP] tile, X [64][DMAX+4]. TRANS_P reads P transposed (P[c][row(i)],
// for Pᵀ·X); rows are ty·4 + i either way.
template <int DMAX, bool TRANS_P>
__device__ __forceinline__ void tile_mm(float (&acc)[4][Cols<DMAX>::N], const float* P, const float* X, int ty, int tx) {
  constexpr int LD = Cols<DMAX>::LD, W = Cols<DMAX>::W, NJ = Cols<DMAX>::NJ;
#pragma unroll 2
  for (int c0 = 0; c0 < kTile; c0 += 4) {
    float p[4][4]; // p[i][cc] = P(row i, column c0 + cc)
    if (TRANS_P) {
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        float4 t = *reinterpret_cast<const float4*>(P + (c0 + cc) * kLdP + ty * 4);
        p[0][cc] = t.x; p[1][cc] = t.y; p[2][cc] = t.z; p[3][cc] = t.w;
      }
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float4 t = *reinterpret_cast<const float4*>(P + (ty * 4 + i) * kLdP + c0);
        p[i][0] = t.x; p[i][1] = t.y; p[i][2] = t.z; p[i][3] = t.w;
      }
    }
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) {
      float x[Cols<DMAX>::N];
#pragma unroll
      for (int jj = 0; jj < NJ; ++jj) ld_vec<W>(X + (c0 + cc) * LD + out_col<DMAX>(jj, 0, tx), x + jj * W);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int n = 0; n < Cols<DMAX>::N; ++n) acc[i][n] = fmaf(p[i][cc], x[n], acc[i][n]);
    }
  }
}

// visible_bits returns bit i·4 + j set iff key j0 + tx + 16·j is visible to
// query t0 + ty·4 + i (both in range, causal, same segment). qsr[i] is the
// query's segment id, kss the key tile's (shared), used when seg.
__device__ __forceinline__ unsigned visible_bits(int t0, int j0, int Tq, int Tk, bool causal, int qpos0, int kpos0,
                                                 bool seg, const int (&qsr)[4], const int* kss, int ty, int tx) {
  unsigned vis = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int t = t0 + ty * 4 + i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int c = tx + 16 * j, jk = j0 + c;
      bool v = t < Tq && jk < Tk && (!causal || kpos0 + jk <= qpos0 + t) && (!seg || qsr[i] == kss[c]);
      vis |= (unsigned)v << (i * 4 + j);
    }
  }
  return vis;
}

// ---------------------------------------------------------------- forward

// Shared memory: Q tile, K-then-V tile ([64][DMAX+4] each), P tile
// [64][68], key segment ids [64]: 4·(2·64·(DMAX+4) + 64·68 + 64) bytes.
// Grid (ceil(Tq/64), H, B), block 256. Query tiles run last-first, so the
// longest causal rows start first.
template <int DMAX>
__device__ __forceinline__ void attn_fwd_f32(float* __restrict__ out, float* __restrict__ lse,
                                             const float* __restrict__ q, const float* __restrict__ k,
                                             const float* __restrict__ v, const int* __restrict__ qseg,
                                             const int* __restrict__ kseg, int Tq, int Tk, int H, int D, int qs,
                                             int ks, int vs, int os, int causal, int qpos0, int kpos0, float scale) {
  using C = Cols<DMAX>;
  constexpr int LD = C::LD;
  extern __shared__ __align__(16) float attn_smem[];
  float* Qs = attn_smem;
  float* KVs = Qs + kTile * LD;
  float* Ps = KVs + kTile * LD;
  int* kss = reinterpret_cast<int*>(Ps + kTile * kLdP);

  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int t0 = qt * kTile, nq = min(kTile, Tq - t0);
  const bool seg = qseg != nullptr;
  const float c2 = scale * kLog2e;

  int qsr[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int t = t0 + ty * 4 + i;
    qsr[i] = (seg && t < Tq) ? qseg[(long long)b * Tq + t] : 0;
  }
  load_tile<DMAX>(Qs, q + ((long long)b * Tq + t0) * qs + (long long)h * D, qs, nq, D);
  const float* kb = k + (long long)b * Tk * ks + (long long)h * D;
  const float* vb = v + (long long)b * Tk * vs + (long long)h * D;

  // Keys past key_end are invisible to every row of the tile by causality.
  const int nkt = (key_end(t0 + nq, Tk, causal, qpos0, kpos0) + kTile - 1) / kTile;

  float m[4], l[4], acc[4][C::N];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int n = 0; n < C::N; ++n) acc[i][n] = 0.f;
  }

  for (int kt = 0; kt < nkt; ++kt) {
    const int j0 = kt * kTile, nk = min(kTile, Tk - j0);
    load_tile<DMAX>(KVs, kb + (long long)j0 * ks, ks, nk, D);
    if (seg && tid < kTile) kss[tid] = tid < nk ? kseg[(long long)b * Tk + j0 + tid] : 0;
    __syncthreads(); // K tile, key ids (and Q on the first pass) visible
    const unsigned vis = visible_bits(t0, j0, Tq, Tk, causal, qpos0, kpos0, seg, qsr, kss, ty, tx);
    // With segments a tile may be fully masked anywhere: skip it, block-wide
    // (the barrier also ends every read of kss before the next pass).
    if (seg && !__syncthreads_or(vis != 0)) continue;

    float s[4][4] = {};
    tile_dot<DMAX>(s, Qs, KVs, D, ty, tx);

#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[i][j] = (vis >> (i * 4 + j)) & 1u ? s[i][j] * c2 : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      // The row's 16 owners are the 16 lanes of one half warp.
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float mn = fmaxf(m[i], mx);
      float alpha = 1.f, sum = 0.f;
      if (mn != -INFINITY) { // else nothing visible so far: p = 0, no rescale
        alpha = exp2f(m[i] - mn);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          s[i][j] = exp2f(s[i][j] - mn);
          sum += s[i][j];
        }
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) s[i][j] = 0.f;
      }
      m[i] = mn;
      l[i] = l[i] * alpha + sum; // per-thread partial, reduced at the end
#pragma unroll
      for (int n = 0; n < C::N; ++n) acc[i][n] *= alpha;
#pragma unroll
      for (int j = 0; j < 4; ++j) Ps[(ty * 4 + i) * kLdP + tx + 16 * j] = s[i][j];
    }
    __syncthreads(); // P visible; K reads done
    load_tile<DMAX>(KVs, vb + (long long)j0 * vs, vs, nk, D);
    __syncthreads(); // V visible
    tile_mm<DMAX, false>(acc, Ps, KVs, ty, tx);
    __syncthreads(); // P, V reads done before the next pass overwrites them
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float L = l[i];
    L += __shfl_xor_sync(0xffffffffu, L, 8);
    L += __shfl_xor_sync(0xffffffffu, L, 4);
    L += __shfl_xor_sync(0xffffffffu, L, 2);
    L += __shfl_xor_sync(0xffffffffu, L, 1);
    const int t = t0 + ty * 4 + i;
    if (t < Tq) {
      // L >= 1 whenever a key is visible (the row max contributes exp(0)).
      const float inv = L > 0.f ? 1.f / L : 0.f;
      float* orow = out + ((long long)b * Tq + t) * os + (long long)h * D;
#pragma unroll
      for (int jj = 0; jj < C::NJ; ++jj)
#pragma unroll
        for (int w = 0; w < C::W; ++w) {
          int n = out_col<DMAX>(jj, w, tx);
          if (n < D) orow[n] = acc[i][jj * C::W + w] * inv;
        }
      if (tx == 0) lse[((long long)b * H + h) * Tq + t] = L > 0.f ? m[i] * kLn2 + logf(L) : -INFINITY;
    }
  }
}

// --------------------------------------------------------------- backward

// Shared memory of both backward kernels: Q, dO, K, V tiles ([64][DMAX+4]
// each), a P / dS tile [64][68], lse·log2(e), d, query and key segment ids
// [64] each: 4·(4·64·(DMAX+4) + 64·68 + 4·64) bytes.
template <int DMAX> struct BwdSmem {
  float *Qs, *dOs, *Ks, *Vs, *Ps, *lse2, *dd;
  int *qss, *kss;
  __device__ __forceinline__ BwdSmem(float* base) {
    constexpr int T = kTile * Cols<DMAX>::LD;
    Qs = base;
    dOs = Qs + T;
    Ks = dOs + T;
    Vs = Ks + T;
    Ps = Vs + T;
    lse2 = Ps + kTile * kLdP;
    dd = lse2 + kTile;
    qss = reinterpret_cast<int*>(dd + kTile);
    kss = qss + kTile;
  }
};

// load_q_side loads query rows [t0, t0+nq) of (b, h): Q, dO, lse (scaled to
// base 2; -inf past Tq, so those rows see nothing), d, segment ids. No barrier.
template <int DMAX>
__device__ __forceinline__ void load_q_side(BwdSmem<DMAX>& sm, const float* __restrict__ q, const float* __restrict__ dout,
                                            const float* __restrict__ lse, const float* __restrict__ d,
                                            const int* __restrict__ qseg, int b, int h, int t0, int nq, int Tq, int H, int D,
                                            int qs, int os) {
  load_tile<DMAX>(sm.Qs, q + ((long long)b * Tq + t0) * qs + (long long)h * D, qs, nq, D);
  load_tile<DMAX>(sm.dOs, dout + ((long long)b * Tq + t0) * os + (long long)h * D, os, nq, D);
  const int tid = threadIdx.x;
  if (tid < kTile) {
    const bool ok = tid < nq;
    const long long li = ((long long)b * H + h) * Tq + t0 + tid;
    sm.lse2[tid] = ok ? lse[li] * kLog2e : -INFINITY;
    sm.dd[tid] = ok ? d[li] : 0.f;
    sm.qss[tid] = (ok && qseg != nullptr) ? qseg[(long long)b * Tq + t0 + tid] : 0;
  }
}

// load_k_side loads key rows [j0, j0+nk) of (b, h): K, V, segment ids.
template <int DMAX>
__device__ __forceinline__ void load_k_side(BwdSmem<DMAX>& sm, const float* __restrict__ k, const float* __restrict__ v,
                                            const int* __restrict__ kseg, int b, int h, int j0, int nk, int Tk, int D,
                                            int ks, int vs) {
  load_tile<DMAX>(sm.Ks, k + ((long long)b * Tk + j0) * ks + (long long)h * D, ks, nk, D);
  load_tile<DMAX>(sm.Vs, v + ((long long)b * Tk + j0) * vs + (long long)h * D, vs, nk, D);
  const int tid = threadIdx.x;
  if (tid < kTile) sm.kss[tid] = (tid < nk && kseg != nullptr) ? kseg[(long long)b * Tk + j0 + tid] : 0;
}

// bwd_scores computes, for the thread's 4×4 entries of the tiles in shared
// memory (query rows t0.., key rows j0..), p = P = exp(scale·q·k − lse) and
// ds = dS = scale·P·(dO·v − d), both exactly 0 where invisible (visible_bits,
// also masking rows with lse = -inf: no visible key in the forward, they add
// nothing). With segments it returns false, block-wide, when no entry of the
// tile is visible (a barrier: the caller skips the tile), else true.
template <int DMAX>
__device__ __forceinline__ bool bwd_scores(float (&p)[4][4], float (&ds)[4][4], const BwdSmem<DMAX>& sm, int t0, int j0,
                                           int Tq, int Tk, bool causal, int qpos0, int kpos0, bool seg, int D, float c2,
                                           float scale, int ty, int tx) {
  int qsr[4];
  unsigned rowok = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    qsr[i] = sm.qss[ty * 4 + i];
    rowok |= (sm.lse2[ty * 4 + i] != -INFINITY ? 0xfu : 0u) << (i * 4);
  }
  const unsigned vis = rowok & visible_bits(t0, j0, Tq, Tk, causal, qpos0, kpos0, seg, qsr, sm.kss, ty, tx);
  if (seg && !__syncthreads_or(vis != 0)) return false;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) p[i][j] = ds[i][j] = 0.f;
  tile_dot<DMAX>(p, sm.Qs, sm.Ks, D, ty, tx);
  tile_dot<DMAX>(ds, sm.dOs, sm.Vs, D, ty, tx);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float l2 = sm.lse2[ty * 4 + i], dr = sm.dd[ty * 4 + i];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const bool on = (vis >> (i * 4 + j)) & 1u;
      const float pe = on ? exp2f(p[i][j] * c2 - l2) : 0.f;
      p[i][j] = pe;
      ds[i][j] = on ? scale * pe * (ds[i][j] - dr) : 0.f;
    }
  }
  return true;
}

// ps_product stores the thread's 4×4 entries x into the shared score tile
// ps ([64][kLdP]) and adds Ps·X (TRANS_P: Psᵀ·X) into acc (tile_mm), with a
// barrier before the product and one after it (ps and X free again).
template <int DMAX, bool TRANS_P>
__device__ __forceinline__ void ps_product(float (&acc)[4][Cols<DMAX>::N], float* ps, const float (&x)[4][4],
                                           const float* X, int ty, int tx) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) ps[(ty * 4 + i) * kLdP + tx + 16 * j] = x[i][j];
  __syncthreads();
  tile_mm<DMAX, TRANS_P>(acc, ps, X, ty, tx);
  __syncthreads();
}

// add_rows adds acc, the thread's rows ty·4 + i and output columns of a
// 64-row tile, into rows r0.. of dst (row stride stride; rows past nrows
// and columns past D skipped).
template <int DMAX>
__device__ __forceinline__ void add_rows(float* dst, long long stride, int r0, int nrows, int D,
                                         const float (&acc)[4][Cols<DMAX>::N], int ty, int tx) {
  using C = Cols<DMAX>;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = r0 + ty * 4 + i;
    if (r >= nrows) continue;
    float* row = dst + (long long)r * stride;
#pragma unroll
    for (int jj = 0; jj < C::NJ; ++jj)
#pragma unroll
      for (int w = 0; w < C::W; ++w) {
        const int n = out_col<DMAX>(jj, w, tx);
        if (n < D) row[n] += acc[i][jj * C::W + w];
      }
  }
}

// dK, dV for key tile blockIdx.x of (b, h) = (blockIdx.z, blockIdx.y): walks
// the query tiles that can see it, in increasing order. Grid (ceil(Tk/64),
// H, B), block 256. Adds into dk, dv.
template <int DMAX>
__device__ __forceinline__ void attn_bwd_dkv_f32(float* dk, float* dv, const float* __restrict__ dout,
                                                 const float* __restrict__ q, const float* __restrict__ k,
                                                 const float* __restrict__ v, const float* __restrict__ lse,
                                                 const float* __restrict__ d, const int* __restrict__ qseg,
                                                 const int* __restrict__ kseg, int Tq, int Tk, int H, int D, int qs,
                                                 int ks, int vs, int os, int causal, int qpos0, int kpos0, float scale) {
  using C = Cols<DMAX>;
  extern __shared__ __align__(16) float attn_smem[];
  BwdSmem<DMAX> sm(attn_smem);
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  const int h = blockIdx.y, b = blockIdx.z;
  const int j0 = blockIdx.x * kTile, nk = min(kTile, Tk - j0);
  const bool seg = qseg != nullptr;
  const float c2 = scale * kLog2e;

  load_k_side<DMAX>(sm, k, v, kseg, b, h, j0, nk, Tk, D, ks, vs);

  const int nqt = (Tq + kTile - 1) / kTile;
  const int qt0 = first_query_tile(j0, kTile, nqt, Tq, causal, qpos0, kpos0);

  float dka[4][C::N], dva[4][C::N]; // key rows ty·4 + i
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int n = 0; n < C::N; ++n) dka[i][n] = dva[i][n] = 0.f;

  for (int qt = qt0; qt < nqt; ++qt) {
    const int t0 = qt * kTile, nq = min(kTile, Tq - t0);
    load_q_side<DMAX>(sm, q, dout, lse, d, qseg, b, h, t0, nq, Tq, H, D, qs, os);
    __syncthreads(); // query side (and key side on the first pass) visible
    float p[4][4], ds[4][4];
    // A skipped tile's barrier also ends the reads of lse2, qss.
    if (!bwd_scores<DMAX>(p, ds, sm, t0, j0, Tq, Tk, causal, qpos0, kpos0, seg, D, c2, scale, ty, tx)) continue;
    ps_product<DMAX, true>(dva, sm.Ps, p, sm.dOs, ty, tx); // dV += Pᵀ·dO
    // The last barrier ends the reads of dS and Q before the next pass.
    ps_product<DMAX, true>(dka, sm.Ps, ds, sm.Qs, ty, tx); // dK += dSᵀ·Q
  }

  add_rows<DMAX>(dk + (long long)b * Tk * ks + (long long)h * D, ks, j0, Tk, D, dka, ty, tx);
  add_rows<DMAX>(dv + (long long)b * Tk * vs + (long long)h * D, vs, j0, Tk, D, dva, ty, tx);
}

// dQ for query tile gridDim.x−1−blockIdx.x of (b, h): walks the key tiles
// it can see, in increasing order. Grid (ceil(Tq/64), H, B), block 256. Adds
// into dq.
template <int DMAX>
__device__ __forceinline__ void attn_bwd_dq_f32(float* dq, const float* __restrict__ dout, const float* __restrict__ q,
                                                const float* __restrict__ k, const float* __restrict__ v,
                                                const float* __restrict__ lse, const float* __restrict__ d,
                                                const int* __restrict__ qseg, const int* __restrict__ kseg, int Tq,
                                                int Tk, int H, int D, int qs, int ks, int vs, int os, int causal,
                                                int qpos0, int kpos0, float scale) {
  using C = Cols<DMAX>;
  extern __shared__ __align__(16) float attn_smem[];
  BwdSmem<DMAX> sm(attn_smem);
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int t0 = qt * kTile, nq = min(kTile, Tq - t0);
  const bool seg = qseg != nullptr;
  const float c2 = scale * kLog2e;

  load_q_side<DMAX>(sm, q, dout, lse, d, qseg, b, h, t0, nq, Tq, H, D, qs, os);
  const int nkt = (key_end(t0 + nq, Tk, causal, qpos0, kpos0) + kTile - 1) / kTile;

  float dqa[4][C::N]; // query rows ty·4 + i
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int n = 0; n < C::N; ++n) dqa[i][n] = 0.f;

  for (int kt = 0; kt < nkt; ++kt) {
    const int j0 = kt * kTile, nk = min(kTile, Tk - j0);
    load_k_side<DMAX>(sm, k, v, kseg, b, h, j0, nk, Tk, D, ks, vs);
    __syncthreads(); // key side (and query side on the first pass) visible
    float p[4][4], ds[4][4];
    // A skipped tile's barrier also ends the reads of kss.
    if (!bwd_scores<DMAX>(p, ds, sm, t0, j0, Tq, Tk, causal, qpos0, kpos0, seg, D, c2, scale, ty, tx)) continue;
    // The last barrier ends the reads of dS, K, V before the next pass.
    ps_product<DMAX, false>(dqa, sm.Ps, ds, sm.Ks, ty, tx); // dQ += dS·K
  }

  add_rows<DMAX>(dq + (long long)b * Tq * qs + (long long)h * D, qs, t0, Tq, D, dqa, ty, tx);
}

} // namespace

#define ATTN_F32_KERNELS(DM)                                                                                          \
  extern "C" __global__ void __launch_bounds__(kThreads) attention_fwd_f32_d##DM(                                   \
      float* out, float* lse, const float* q, const float* k, const float* v, const int* qseg, const int* kseg,     \
      int Tq, int Tk, int H, int D, int qs, int ks, int vs, int os, int causal, int qpos0, int kpos0, float scale) { \
    attn_fwd_f32<DM>(out, lse, q, k, v, qseg, kseg, Tq, Tk, H, D, qs, ks, vs, os, causal, qpos0, kpos0, scale);      \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(kThreads) attention_bwd_dkv_f32_d##DM(                               \
      float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v, const float* lse,    \
      const float* d, const int* qseg, const int* kseg, int Tq, int Tk, int H, int D, int qs, int ks, int vs,        \
      int os, int causal, int qpos0, int kpos0, float scale) {                                                      \
    attn_bwd_dkv_f32<DM>(dk, dv, dout, q, k, v, lse, d, qseg, kseg, Tq, Tk, H, D, qs, ks, vs, os, causal, qpos0,    \
                         kpos0, scale);                                                                              \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(kThreads) attention_bwd_dq_f32_d##DM(                                \
      float* dq, const float* dout, const float* q, const float* k, const float* v, const float* lse,               \
      const float* d, const int* qseg, const int* kseg, int Tq, int Tk, int H, int D, int qs, int ks, int vs,        \
      int os, int causal, int qpos0, int kpos0, float scale) {                                                      \
    attn_bwd_dq_f32<DM>(dq, dout, q, k, v, lse, d, qseg, kseg, Tq, Tk, H, D, qs, ks, vs, os, causal, qpos0, kpos0,  \
                        scale);                                                                                      \
  }

ATTN_F32_KERNELS(32)
ATTN_F32_KERNELS(64)
ATTN_F32_KERNELS(128)

// attention_rowdot_f32: d[(b·H + h)·Tq + t] = Σ_i dout[r, h·D + i]·out[r, h·D + i]
// with r = b·Tq + t (row stride os), for rows = B·Tq·H (b, t, h) triples. One
// warp per triple, grid-stride; any grid of whole warps.
extern "C" __global__ void attention_rowdot_f32(float* d, const float* __restrict__ dout, const float* __restrict__ out,
                                                int rows, int Tq, int H, int D, int os) {
  const int lane = threadIdx.x & 31;
  const int nw = (gridDim.x * blockDim.x) >> 5;
  for (int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; w < rows; w += nw) {
    const int h = w % H, bt = w / H;
    const long long off = (long long)bt * os + (long long)h * D;
    float acc = 0.f;
    for (int i = lane; i < D; i += 32) acc = fmaf(dout[off + i], out[off + i], acc);
    acc = warp_sum(acc);
    if (lane == 0) {
      const int b = bt / Tq, t = bt % Tq;
      d[((long long)b * H + h) * Tq + t] = acc;
    }
  }
}
