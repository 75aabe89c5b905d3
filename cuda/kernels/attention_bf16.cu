// Attention on bf16 tensor cores (mma.sync m16n8k16, fp32 accumulation):
// q, k, v, o and dO in bf16; lse, d and the gradients dq, dk, dv in fp32
// (the gradients use the element strides of q, k, v and are ADDED to).
// Masks, layouts and the no-visible-key rule are those of attention.cu
// (tensor.AttentionForward / AttentionBackward): key j is visible to query t
// iff (!causal || kpos0 + j <= qpos0 + t) and (no segments || qseg[b·Tq + t]
// == kseg[b·Tk + j]); a row that sees no key gets o = 0, lse = -inf and adds
// nothing in the backward; lse[(b·H + h)·Tq + t] = log Σ exp(scale·q·k).
//
// Requirements (checked by the Go wrapper): D <= DMAX (64 or 128), D, the
// row strides and the buffer addresses multiples of 8 elements / 16 bytes,
// so tile rows move as 16-byte vectors.
//
// Block: 4 warps over 64-row tiles, 16 rows per warp; the other side's
// 64-row tiles in shared memory (row stride DMAX + 8 elements: ldmatrix rows
// land on distinct banks). Scores stay in the mma accumulator layout, which
// is reused as the A fragments of the next product (P·V, dS·K, Pᵀ·dO,
// dSᵀ·Q), so P and dS are rounded to bf16 there; row sums use P unrounded.
// The backward is deterministic (no atomics): one kernel per key tile for
// dK, dV, one per query tile for dQ, each recomputing P from lse.
#include "common.cuh"

namespace {

constexpr int kTile = 64;
constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_trans(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c += a·b for one m16n8k16 tile (a row-major 16×16, b column-major 16×8).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); // .x (low half) = lo
  return *reinterpret_cast<unsigned*>(&v);
}

// load_tile_bf16 copies rows [0, nrows) × cols [0, D) (D a multiple of 8)
// of a head into dst [64][DMAX+8] as 16-byte vectors, zeroing the rest of
// rows [0, 64) × cols [0, DMAX). No barrier.
template <int DMAX>
__device__ __forceinline__ void load_tile_bf16(__nv_bfloat16* dst, const __nv_bfloat16* __restrict__ src, long long stride,
                                               int nrows, int D) {
  constexpr int LD = DMAX + 8, CH = DMAX / 8; // 8-element chunks per row
  for (int idx = threadIdx.x; idx < kTile * CH; idx += kThreads) {
    const int r = idx / CH, c = (idx % CH) * 8;
    uint4 x = make_uint4(0, 0, 0, 0);
    if (r < nrows && c < D) x = *reinterpret_cast<const uint4*>(src + r * stride + c);
    *reinterpret_cast<uint4*>(dst + r * LD + c) = x;
  }
}

// Grid (ceil(Tq/64), H, B), block 128, shared 2·(3·64·(DMAX+8)) + 4·64
// bytes: Q, K, V tiles and the key tile's segment ids. Query tiles run
// last-first (longest causal rows first).
template <int DMAX>
__device__ __forceinline__ void attn_fwd_bf16(__nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                              const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                              const __nv_bfloat16* __restrict__ v, const int* __restrict__ qseg,
                                              const int* __restrict__ kseg, int Tq, int Tk, int H, int D, int qs, int ks,
                                              int vs, int os, int causal, int qpos0, int kpos0, float scale) {
  static_assert(DMAX % 16 == 0 && DMAX <= 128, "DMAX");
  constexpr int LD = DMAX + 8, NKS = DMAX / 16, NDT = DMAX / 8;
  extern __shared__ __align__(16) unsigned char attn_bf16_smem[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(attn_bf16_smem);
  __nv_bfloat16* Ks = Qs + kTile * LD;
  __nv_bfloat16* Vs = Ks + kTile * LD;
  int* kss = reinterpret_cast<int*>(Vs + kTile * LD);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int t0 = qt * kTile, nq = min(kTile, Tq - t0);
  const bool seg = qseg != nullptr;
  const float c2 = scale * kLog2e;
  const int nks = (D + 15) / 16; // 16-wide slices of the head that hold data

  // This thread's two query rows (accumulator rows g and g + 8 of its warp).
  int qsr[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int t = t0 + warp * 16 + g + 8 * hr;
    qsr[hr] = (seg && t < Tq) ? qseg[(long long)b * Tq + t] : 0;
  }

  load_tile_bf16<DMAX>(Qs, q + ((long long)b * Tq + t0) * qs + (long long)h * D, qs, nq, D);
  __syncthreads();
  unsigned qf[NKS][4]; // A fragments of the warp's 16 rows
#pragma unroll
  for (int kk = 0; kk < NKS; ++kk)
    if (kk < nks)
      ldsm_x4(qf[kk], Qs + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + kk * 16 + (lane >> 4) * 8);

  const __nv_bfloat16* kb = k + (long long)b * Tk * ks + (long long)h * D;
  const __nv_bfloat16* vb = v + (long long)b * Tk * vs + (long long)h * D;
  int jend = Tk;
  if (causal) jend = max(0, min(Tk, qpos0 + t0 + nq - kpos0));
  const int nkt = (jend + kTile - 1) / kTile;

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float o[NDT][4];
#pragma unroll
  for (int n = 0; n < NDT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  for (int kt = 0; kt < nkt; ++kt) {
    const int j0 = kt * kTile, nk = min(kTile, Tk - j0);
    load_tile_bf16<DMAX>(Ks, kb + (long long)j0 * ks, ks, nk, D);
    load_tile_bf16<DMAX>(Vs, vb + (long long)j0 * vs, vs, nk, D);
    if (seg && tid < kTile) kss[tid] = tid < nk ? kseg[(long long)b * Tk + j0 + tid] : 0;
    __syncthreads(); // K, V, key ids visible (Q fragments were read before)

    // Bit nt·4 + hr·2 + e: key j0 + nt·8 + 2·t4 + e visible to row g + 8·hr.
    unsigned vis = 0;
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int t = t0 + warp * 16 + g + 8 * hr;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = nt * 8 + 2 * t4 + e, j = j0 + c;
          const bool ok = t < Tq && j < Tk && (!causal || kpos0 + j <= qpos0 + t) && (!seg || qsr[hr] == kss[c]);
          vis |= (unsigned)ok << (nt * 4 + hr * 2 + e);
        }
    }
    if (seg && !__syncthreads_or(vis != 0)) continue; // ends the kss reads too

    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < NKS; ++kk) {
      if (kk >= nks) break;
#pragma unroll
      for (int np = 0; np < 4; ++np) { // key n-tiles 2np, 2np+1
        unsigned bf[4];
        ldsm_x4(bf, Ks + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
        mma_bf16(s[2 * np], qf[kk], bf[0], bf[1]);
        mma_bf16(s[2 * np + 1], qf[kk], bf[2], bf[3]);
      }
    }

    // Online softmax for rows g (regs 0, 1) and g + 8 (regs 2, 3); a row's
    // 16 key columns of each n-tile are spread over the 4 lanes of a quad.
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][hr * 2 + e];
          x = (vis >> (nt * 4 + hr * 2 + e)) & 1u ? x * c2 : -INFINITY;
          mx = fmaxf(mx, x);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mn = fmaxf(m[hr], mx);
      float alpha = 1.f, sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][hr * 2 + e];
          x = mn == -INFINITY ? 0.f : exp2f(x - mn);
          sum += x;
        }
      if (mn != -INFINITY) alpha = exp2f(m[hr] - mn);
      m[hr] = mn;
      l[hr] = l[hr] * alpha + sum; // per-lane partial, reduced at the end
#pragma unroll
      for (int n = 0; n < NDT; ++n) {
        o[n][hr * 2] *= alpha;
        o[n][hr * 2 + 1] *= alpha;
      }
    }

    // O += P·V, P's accumulator layout reused as A fragments (16 keys per
    // k-step: n-tiles 2kc, 2kc+1).
#pragma unroll
    for (int kc = 0; kc < 4; ++kc) {
      unsigned pa[4];
      pa[0] = pack_bf16(s[2 * kc][0], s[2 * kc][1]);
      pa[1] = pack_bf16(s[2 * kc][2], s[2 * kc][3]);
      pa[2] = pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]);
      pa[3] = pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3]);
#pragma unroll
      for (int dp = 0; dp < NKS; ++dp) { // head n-tiles 2dp, 2dp+1
        if (dp >= nks) break;
        unsigned bf[4];
        ldsm_x4_trans(bf, Vs + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8);
        mma_bf16(o[2 * dp], pa, bf[0], bf[1]);
        mma_bf16(o[2 * dp + 1], pa, bf[2], bf[3]);
      }
    }
    __syncthreads(); // K, V reads done before the next tile overwrites them
  }

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float L = l[hr];
    L += __shfl_xor_sync(0xffffffffu, L, 1);
    L += __shfl_xor_sync(0xffffffffu, L, 2);
    const int t = t0 + warp * 16 + g + 8 * hr;
    if (t >= Tq) continue;
    const float inv = L > 0.f ? 1.f / L : 0.f;
    __nv_bfloat16* orow = out + ((long long)b * Tq + t) * os + (long long)h * D;
#pragma unroll
    for (int n = 0; n < NDT; ++n) {
      const int c = n * 8 + 2 * t4; // even; D is a multiple of 8, so c + 1 < D too
      if (c < D)
        *reinterpret_cast<__nv_bfloat162*>(orow + c) = __floats2bfloat162_rn(o[n][hr * 2] * inv, o[n][hr * 2 + 1] * inv);
    }
    if (t4 == 0) lse[((long long)b * H + h) * Tq + t] = L > 0.f ? m[hr] * kLn2 + logf(L) : -INFINITY;
  }
}


// ------------------------------------------------------------- backward

// Fragment addresses in a [64][DMAX+8] tile T (rows r0.., columns c0..) for
// ldsm_x4, lane by lane:
//   a_frag: A operand (16 rows × 16 columns, row-major), rows r0..r0+15;
//   b_frag: B operands of two n-tiles whose n index is T's row (rows
//           r0..r0+15) and k index T's column: regs 0,1 tile r0, 2,3 r0+8;
//   bt_frag (with ldsm_x4_trans): B operands of two n-tiles whose n index is
//           T's column (c0..c0+15) and k index T's row (r0..r0+15).
template <int LD>
__device__ __forceinline__ const __nv_bfloat16* a_frag(const __nv_bfloat16* T, int r0, int c0, int lane) {
  return T + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + c0 + (lane >> 4) * 8;
}
template <int LD>
__device__ __forceinline__ const __nv_bfloat16* b_frag(const __nv_bfloat16* T, int r0, int c0, int lane) {
  return T + (r0 + (lane & 7) + (lane >> 4) * 8) * LD + c0 + ((lane >> 3) & 1) * 8;
}
template <int LD>
__device__ __forceinline__ const __nv_bfloat16* bt_frag(const __nv_bfloat16* T, int r0, int c0, int lane) {
  return T + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + c0 + (lane >> 4) * 8;
}

// acc (16 × 64, accumulator layout, 8 n-tiles) += A·Bᵀ over the first nks
// 16-column slices, A the warp's 16 rows of tile TA (rows ra..), B the 64
// rows of tile TB (each row an n index).
template <int DMAX>
__device__ __forceinline__ void mma_abt(float (&acc)[8][4], const __nv_bfloat16* TA, int ra, const __nv_bfloat16* TB,
                                        int nks, int lane) {
  constexpr int LD = DMAX + 8;
#pragma unroll
  for (int kk = 0; kk < DMAX / 16; ++kk) {
    if (kk >= nks) break;
    unsigned a[4];
    ldsm_x4(a, a_frag<LD>(TA, ra, kk * 16, lane));
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      unsigned b[4];
      ldsm_x4(b, b_frag<LD>(TB, np * 16, kk * 16, lane));
      mma_bf16(acc[2 * np], a, b[0], b[1]);
      mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// acc (16 × DMAX, DMAX/8 n-tiles) += P·X: P the warp's 16 × 64 accumulator
// tile (rounded to bf16 as A fragments), X a [64][DMAX+8] tile whose rows
// are P's columns, over the first nks 16-column slices of X.
template <int DMAX>
__device__ __forceinline__ void mma_px(float (&acc)[DMAX / 8][4], const float (&p)[8][4], const __nv_bfloat16* X, int nks,
                                       int lane) {
  constexpr int LD = DMAX + 8;
#pragma unroll
  for (int kc = 0; kc < 4; ++kc) {
    unsigned a[4];
    a[0] = pack_bf16(p[2 * kc][0], p[2 * kc][1]);
    a[1] = pack_bf16(p[2 * kc][2], p[2 * kc][3]);
    a[2] = pack_bf16(p[2 * kc + 1][0], p[2 * kc + 1][1]);
    a[3] = pack_bf16(p[2 * kc + 1][2], p[2 * kc + 1][3]);
#pragma unroll
    for (int dt = 0; dt < DMAX / 16; ++dt) {
      if (dt >= nks) break;
      unsigned b[4];
      ldsm_x4_trans(b, bt_frag<LD>(X, kc * 16, dt * 16, lane));
      mma_bf16(acc[2 * dt], a, b[0], b[1]);
      mma_bf16(acc[2 * dt + 1], a, b[2], b[3]);
    }
  }
}

// add_rows adds the warp's 16 × DMAX accumulator tile to fp32 rows: row r
// (0..15 within the warp) goes to dst + (row0 + r)·stride if row0 + r < nrows.
template <int DMAX>
__device__ __forceinline__ void add_rows(float* dst, long long stride, int row0, int nrows, int D,
                                         const float (&acc)[DMAX / 8][4], int lane) {
  const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = row0 + g + 8 * hr;
    if (r >= nrows) continue;
    float* row = dst + r * stride;
#pragma unroll
    for (int n = 0; n < DMAX / 8; ++n) {
      const int c = n * 8 + 2 * t4; // D is a multiple of 8: c < D implies c + 1 < D
      if (c < D) {
        row[c] += acc[n][hr * 2];
        row[c + 1] += acc[n][hr * 2 + 1];
      }
    }
  }
}

// Shared memory of both backward kernels: Q, dO, K, V tiles (bf16
// [64][DMAX+8] each), then lse·log2(e), d, query and key segment ids [64]
// each: 2·4·64·(DMAX+8) + 4·4·64 bytes.
template <int DMAX> struct BwdSmemBF16 {
  __nv_bfloat16 *Qs, *dOs, *Ks, *Vs;
  float *lse2, *dd;
  int *qss, *kss;
  __device__ __forceinline__ BwdSmemBF16(unsigned char* base) {
    constexpr int T = kTile * (DMAX + 8);
    Qs = reinterpret_cast<__nv_bfloat16*>(base);
    dOs = Qs + T;
    Ks = dOs + T;
    Vs = Ks + T;
    lse2 = reinterpret_cast<float*>(Vs + T);
    dd = lse2 + kTile;
    qss = reinterpret_cast<int*>(dd + kTile);
    kss = qss + kTile;
  }
};

// dK, dV for key tile blockIdx.x of (b, h) = (blockIdx.z, blockIdx.y), warp
// w owning keys j0 + 16w..: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ per query tile (in
// increasing order), then dV += Pᵀ·dO, dK += dSᵀ·Q. Grid (ceil(Tk/64), H,
// B), block 128.
template <int DMAX>
__device__ __forceinline__ void attn_bwd_dkv_bf16(float* dk, float* dv, const __nv_bfloat16* __restrict__ dout,
                                                  const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                                  const __nv_bfloat16* __restrict__ v, const float* __restrict__ lse,
                                                  const float* __restrict__ d, const int* __restrict__ qseg,
                                                  const int* __restrict__ kseg, int Tq, int Tk, int H, int D, int qs,
                                                  int ks, int vs, int os, int causal, int qpos0, int kpos0, float scale) {
  constexpr int NDT = DMAX / 8;
  extern __shared__ __align__(16) unsigned char attn_bf16_smem[];
  BwdSmemBF16<DMAX> sm(attn_bf16_smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int h = blockIdx.y, b = blockIdx.z;
  const int j0 = blockIdx.x * kTile, nk = min(kTile, Tk - j0);
  const bool seg = qseg != nullptr;
  const float c2 = scale * kLog2e;
  const int nks = (D + 15) / 16;

  load_tile_bf16<DMAX>(sm.Ks, k + ((long long)b * Tk + j0) * ks + (long long)h * D, ks, nk, D);
  load_tile_bf16<DMAX>(sm.Vs, v + ((long long)b * Tk + j0) * vs + (long long)h * D, vs, nk, D);
  int ksr[2]; // this thread's key rows (accumulator rows g, g + 8 of its warp)
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int j = j0 + warp * 16 + g + 8 * hr;
    ksr[hr] = (seg && j < Tk) ? kseg[(long long)b * Tk + j] : 0;
  }

  const int nqt = (Tq + kTile - 1) / kTile;
  int qt0 = 0;
  if (causal) { // queries before tstart see none of these keys
    const int tstart = max(0, kpos0 + j0 - qpos0);
    qt0 = tstart >= Tq ? nqt : tstart / kTile;
  }

  float dka[NDT][4], dva[NDT][4];
#pragma unroll
  for (int n = 0; n < NDT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.f;

  for (int qt = qt0; qt < nqt; ++qt) {
    const int t0 = qt * kTile, nq = min(kTile, Tq - t0);
    load_tile_bf16<DMAX>(sm.Qs, q + ((long long)b * Tq + t0) * qs + (long long)h * D, qs, nq, D);
    load_tile_bf16<DMAX>(sm.dOs, dout + ((long long)b * Tq + t0) * os + (long long)h * D, os, nq, D);
    if (tid < kTile) {
      const bool ok = tid < nq;
      const long long li = ((long long)b * H + h) * Tq + t0 + tid;
      sm.lse2[tid] = ok ? lse[li] * kLog2e : -INFINITY;
      sm.dd[tid] = ok ? d[li] : 0.f;
      sm.qss[tid] = (ok && seg) ? qseg[(long long)b * Tq + t0 + tid] : 0;
    }
    __syncthreads(); // query side (and K, V on the first pass) visible

    // Bit nt·4 + hr·2 + e: query t0 + nt·8 + 2·t4 + e sees key row g + 8·hr.
    unsigned vis = 0;
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int j = j0 + warp * 16 + g + 8 * hr;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = nt * 8 + 2 * t4 + e, t = t0 + c;
          const bool ok = t < Tq && j < Tk && (!causal || kpos0 + j <= qpos0 + t) && (!seg || ksr[hr] == sm.qss[c]) &&
                          sm.lse2[c] != -INFINITY;
          vis |= (unsigned)ok << (nt * 4 + hr * 2 + e);
        }
    }
    if (seg && !__syncthreads_or(vis != 0)) continue; // ends the lse2, qss reads too

    float st[8][4], dpt[8][4]; // Sᵀ, dPᵀ: rows = keys, columns = queries
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.f;
    mma_abt<DMAX>(st, sm.Ks, warp * 16, sm.Qs, nks, lane);
    mma_abt<DMAX>(dpt, sm.Vs, warp * 16, sm.dOs, nks, lane);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = nt * 8 + 2 * t4 + e, x = hr * 2 + e;
          const bool on = (vis >> (nt * 4 + x)) & 1u;
          const float p = on ? exp2f(st[nt][x] * c2 - sm.lse2[c]) : 0.f;
          st[nt][x] = p;
          dpt[nt][x] = on ? scale * p * (dpt[nt][x] - sm.dd[c]) : 0.f;
        }
    mma_px<DMAX>(dva, st, sm.dOs, nks, lane);  // dV += Pᵀ·dO
    mma_px<DMAX>(dka, dpt, sm.Qs, nks, lane);  // dK += dSᵀ·Q
    __syncthreads(); // tile reads done before the next pass overwrites them
  }

  const int r0 = j0 + warp * 16;
  add_rows<DMAX>(dk + (long long)b * Tk * ks + (long long)h * D, ks, r0, Tk, D, dka, lane);
  add_rows<DMAX>(dv + (long long)b * Tk * vs + (long long)h * D, vs, r0, Tk, D, dva, lane);
}

// dQ for query tile gridDim.x−1−blockIdx.x of (b, h), warp w owning rows
// t0 + 16w..: S = Q·Kᵀ and dP = dO·Vᵀ per visible key tile (in increasing
// order), then dQ += dS·K. Grid (ceil(Tq/64), H, B), block 128.
template <int DMAX>
__device__ __forceinline__ void attn_bwd_dq_bf16(float* dq, const __nv_bfloat16* __restrict__ dout,
                                                 const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                                 const __nv_bfloat16* __restrict__ v, const float* __restrict__ lse,
                                                 const float* __restrict__ d, const int* __restrict__ qseg,
                                                 const int* __restrict__ kseg, int Tq, int Tk, int H, int D, int qs, int ks,
                                                 int vs, int os, int causal, int qpos0, int kpos0, float scale) {
  constexpr int NDT = DMAX / 8;
  extern __shared__ __align__(16) unsigned char attn_bf16_smem[];
  BwdSmemBF16<DMAX> sm(attn_bf16_smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int t0 = qt * kTile, nq = min(kTile, Tq - t0);
  const bool seg = qseg != nullptr;
  const float c2 = scale * kLog2e;
  const int nks = (D + 15) / 16;

  load_tile_bf16<DMAX>(sm.Qs, q + ((long long)b * Tq + t0) * qs + (long long)h * D, qs, nq, D);
  load_tile_bf16<DMAX>(sm.dOs, dout + ((long long)b * Tq + t0) * os + (long long)h * D, os, nq, D);
  float l2[2], dr[2]; // this thread's rows g, g + 8 of its warp
  int qsr[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int t = t0 + warp * 16 + g + 8 * hr;
    const long long li = ((long long)b * H + h) * Tq + t;
    l2[hr] = t < Tq ? lse[li] * kLog2e : -INFINITY;
    dr[hr] = t < Tq ? d[li] : 0.f;
    qsr[hr] = (seg && t < Tq) ? qseg[(long long)b * Tq + t] : 0;
  }
  int jend = Tk;
  if (causal) jend = max(0, min(Tk, qpos0 + t0 + nq - kpos0));
  const int nkt = (jend + kTile - 1) / kTile;

  float dqa[NDT][4];
#pragma unroll
  for (int n = 0; n < NDT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dqa[n][e] = 0.f;

  for (int kt = 0; kt < nkt; ++kt) {
    const int j0 = kt * kTile, nk = min(kTile, Tk - j0);
    load_tile_bf16<DMAX>(sm.Ks, k + ((long long)b * Tk + j0) * ks + (long long)h * D, ks, nk, D);
    load_tile_bf16<DMAX>(sm.Vs, v + ((long long)b * Tk + j0) * vs + (long long)h * D, vs, nk, D);
    if (seg && tid < kTile) sm.kss[tid] = tid < nk ? kseg[(long long)b * Tk + j0 + tid] : 0;
    __syncthreads(); // key side (and Q, dO on the first pass) visible

    unsigned vis = 0; // bit nt·4 + hr·2 + e: key j0 + nt·8 + 2·t4 + e, row g + 8·hr
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int t = t0 + warp * 16 + g + 8 * hr;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = nt * 8 + 2 * t4 + e, j = j0 + c;
          const bool ok = t < Tq && j < Tk && (!causal || kpos0 + j <= qpos0 + t) && (!seg || qsr[hr] == sm.kss[c]) &&
                          l2[hr] != -INFINITY;
          vis |= (unsigned)ok << (nt * 4 + hr * 2 + e);
        }
    }
    if (seg && !__syncthreads_or(vis != 0)) continue; // ends the kss reads too

    float s[8][4], dp[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
    mma_abt<DMAX>(s, sm.Qs, warp * 16, sm.Ks, nks, lane);
    mma_abt<DMAX>(dp, sm.dOs, warp * 16, sm.Vs, nks, lane);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int x = hr * 2 + e;
          const bool on = (vis >> (nt * 4 + x)) & 1u;
          const float p = on ? exp2f(s[nt][x] * c2 - l2[hr]) : 0.f;
          dp[nt][x] = on ? scale * p * (dp[nt][x] - dr[hr]) : 0.f;
        }
    mma_px<DMAX>(dqa, dp, sm.Ks, nks, lane); // dQ += dS·K
    __syncthreads(); // tile reads done before the next pass overwrites them
  }

  add_rows<DMAX>(dq + (long long)b * Tq * qs + (long long)h * D, qs, t0 + warp * 16, Tq, D, dqa, lane);
}

} // namespace

#define ATTN_BF16_FWD(DM)                                                                                           \
  extern "C" __global__ void __launch_bounds__(kThreads) attention_fwd_bf16_d##DM(                                 \
      __nv_bfloat16* out, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,      \
      const int* qseg, const int* kseg, int Tq, int Tk, int H, int D, int qs, int ks, int vs, int os, int causal,   \
      int qpos0, int kpos0, float scale) {                                                                         \
    attn_fwd_bf16<DM>(out, lse, q, k, v, qseg, kseg, Tq, Tk, H, D, qs, ks, vs, os, causal, qpos0, kpos0, scale);    \
  }

ATTN_BF16_FWD(64)
ATTN_BF16_FWD(128)

#define ATTN_BF16_BWD(DM)                                                                                           \
  extern "C" __global__ void __launch_bounds__(kThreads) attention_bwd_dkv_bf16_d##DM(                             \
      float* dk, float* dv, const __nv_bfloat16* dout, const __nv_bfloat16* q, const __nv_bfloat16* k,               \
      const __nv_bfloat16* v, const float* lse, const float* d, const int* qseg, const int* kseg, int Tq, int Tk,    \
      int H, int D, int qs, int ks, int vs, int os, int causal, int qpos0, int kpos0, float scale) {                 \
    attn_bwd_dkv_bf16<DM>(dk, dv, dout, q, k, v, lse, d, qseg, kseg, Tq, Tk, H, D, qs, ks, vs, os, causal, qpos0,   \
                          kpos0, scale);                                                                             \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(kThreads) attention_bwd_dq_bf16_d##DM(                              \
      float* dq, const __nv_bfloat16* dout, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, \
      const float* lse, const float* d, const int* qseg, const int* kseg, int Tq, int Tk, int H, int D, int qs,     \
      int ks, int vs, int os, int causal, int qpos0, int kpos0, float scale) {                                      \
    attn_bwd_dq_bf16<DM>(dq, dout, q, k, v, lse, d, qseg, kseg, Tq, Tk, H, D, qs, ks, vs, os, causal, qpos0, kpos0, \
                         scale);                                                                                     \
  }

ATTN_BF16_BWD(64)
ATTN_BF16_BWD(128)

// attention_rowdot_bf16 is attention_rowdot_f32 (attention.cu) with dout and
// out in bf16: d[(b·H + h)·Tq + t] = Σ_i dout·out over head h of row b·Tq + t,
// in fp32. One warp per (b, t, h) of rows = B·Tq·H, grid-stride.
extern "C" __global__ void attention_rowdot_bf16(float* d, const __nv_bfloat16* __restrict__ dout,
                                                 const __nv_bfloat16* __restrict__ out, int rows, int Tq, int H, int D,
                                                 int os) {
  const int lane = threadIdx.x & 31;
  const int nw = (gridDim.x * blockDim.x) >> 5;
  for (int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; w < rows; w += nw) {
    const int h = w % H, bt = w / H;
    const long long off = (long long)bt * os + (long long)h * D;
    float acc = 0.f;
    for (int i = lane; i < D; i += 32) acc = fmaf(to_f32(dout[off + i]), to_f32(out[off + i]), acc);
    acc = warp_sum(acc);
    if (lane == 0) {
      const int b = bt / Tq, t = bt % Tq;
      d[((long long)b * H + h) * Tq + t] = acc;
    }
  }
}
