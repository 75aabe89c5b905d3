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
// FlashAttention-2 structure. A block is 8 warps; each warp owns 16 rows of
// the block's 128-row tile (queries in the forward and dQ kernels, keys in
// the dK/dV kernel) and loops over the other side's 64-row tiles, which are
// double-buffered in shared memory: the copy of tile i+1 (cp.async, zero
// filled past the sequence and past D) runs while tile i is computed, one
// barrier per tile. Tiles are [rows][DMAX+8] bf16 (the padding puts the 8
// rows of each ldmatrix on distinct banks). Scores stay in the mma
// accumulator layout, which is reused as the A fragments of the next product
// (P·V, dS·K, Pᵀ·dO, dSᵀ·Q), so P and dS are rounded to bf16 there; row sums
// use P unrounded. Exponentials are exp2 with scale·log2(e) folded in.
// Masks are evaluated only on tiles that need them (the causal diagonal,
// partial tiles, segments); a warp skips the tiles it sees nothing of.
// Blocks are numbered longest-first (most tiles first) over all heads.
// The backward is deterministic (no atomics): one kernel per key tile for
// dK, dV, one per query tile for dQ, each recomputing P from lse.
#include "common.cuh"

namespace {

constexpr int kRows = 128;   // the block's own rows (8 warps × 16)
constexpr int kCols = 64;    // rows of the other side's tiles
constexpr int kThreads = 256;
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

// ex2 is 2^x (ex2.approx.ftz: 2^-inf = 0, subnormal results flush to 0).
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// 16-byte global → shared copy, asynchronous (cp.async.cg, L2 only); with
// valid false it writes 16 zero bytes and reads nothing (src must still be a
// mapped address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// cp_async_wait0 waits for every cp.async this thread issued (other threads'
// copies need a barrier after it).
__device__ __forceinline__ void cp_async_wait0() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// cp_tile starts copying rows [0, nrows) × cols [0, D) (D a multiple of 8,
// nrows >= 1) of a head at src (row stride stride) into dst [ROWS][DMAX+8],
// zero filling the rest of rows [0, ROWS) × cols [0, DMAX). The block's 256
// threads each copy ROWS·DMAX/8/256 16-byte chunks. No commit, no barrier.
template <int DMAX, int ROWS>
__device__ __forceinline__ void cp_tile(__nv_bfloat16* dst, const __nv_bfloat16* __restrict__ src, long long stride,
                                        int nrows, int D) {
  constexpr int LD = DMAX + 8, CH = DMAX / 8; // 8-element chunks per row
  static_assert(ROWS * CH % kThreads == 0, "tile chunks");
#pragma unroll
  for (int i = 0; i < ROWS * CH / kThreads; ++i) {
    const int idx = threadIdx.x + i * kThreads, r = idx / CH, c = (idx % CH) * 8;
    const bool ok = r < nrows && c < D;
    cp_async16(dst + r * LD + c, ok ? src + r * stride + c : src, ok);
  }
}

// cp_pair starts copying the kCols-row tiles at row r1 (of n) of two heads,
// a and b (K and V, or Q and dO; row strides as, bs), into At and Bt like
// cp_tile, and commits the group. Returns the tile's rows, min(kCols, n − r1).
template <int DMAX>
__device__ __forceinline__ int cp_pair(__nv_bfloat16* At, const __nv_bfloat16* a, long long as, __nv_bfloat16* Bt,
                                       const __nv_bfloat16* b, long long bs, int r1, int n, int D) {
  const int nr = min(kCols, n - r1);
  cp_tile<DMAX, kCols>(At, a + (long long)r1 * as, as, nr, D);
  cp_tile<DMAX, kCols>(Bt, b + (long long)r1 * bs, bs, nr, D);
  cp_async_commit();
  return nr;
}

// next_stage steps the double-buffered pipeline of tiles As, Bs ([2][kCols]
// [DMAX+8] each): it waits until the tiles of stage st are in shared memory
// for every thread (the barrier also means every warp is done with stage
// st ^ 1), then, when more, starts copying the next tiles, rows r1.. of a
// and b, into stage st ^ 1 (cp_pair). Returns their rows (0 without more).
template <int DMAX>
__device__ __forceinline__ int next_stage(int st, bool more, __nv_bfloat16* As, const __nv_bfloat16* a, long long as,
                                          __nv_bfloat16* Bs, const __nv_bfloat16* b, long long bs, int r1, int n, int D) {
  constexpr int TL = kCols * (DMAX + 8);
  cp_async_wait0();
  __syncthreads();
  return more ? cp_pair<DMAX>(As + (st ^ 1) * TL, a, as, Bs + (st ^ 1) * TL, b, bs, r1, n, D) : 0;
}

// Fragment addresses in a [rows][LD] tile T (rows r0.., columns c0..) for
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

// A fragments of the warp's 16 rows (r0..) of tile T over the first nks
// 16-column slices (the rest zero), each register XORed with flip.
template <int DMAX>
__device__ __forceinline__ void load_afrags(unsigned (&f)[DMAX / 16][4], const __nv_bfloat16* T, int r0, int nks,
                                            unsigned flip, int lane) {
#pragma unroll
  for (int kk = 0; kk < DMAX / 16; ++kk) {
    if (kk < nks) {
      ldsm_x4(f[kk], a_frag<DMAX + 8>(T, r0, kk * 16, lane));
#pragma unroll
      for (int i = 0; i < 4; ++i) f[kk][i] ^= flip;
    } else {
      f[kk][0] = f[kk][1] = f[kk][2] = f[kk][3] = 0u;
    }
  }
}

// acc (16 × 8·NT, accumulator layout, NT n-tiles) += A·Bᵀ over the first
// nks 16-column slices: A the warp's 16 rows, as fragments af (AREG) or read
// from tile TA at rows ra.. (XORed with flip); B the 8·NT rows rb.. of tile
// TB (each row an n index).
template <int DMAX, int NT, bool AREG>
__device__ __forceinline__ void mma_abt(float (&acc)[NT][4], const unsigned (&af)[DMAX / 16][4],
                                        const __nv_bfloat16* TA, int ra, unsigned flip, const __nv_bfloat16* TB, int rb,
                                        int nks, int lane) {
  static_assert(NT % 2 == 0, "NT");
  constexpr int LD = DMAX + 8;
#pragma unroll
  for (int kk = 0; kk < DMAX / 16; ++kk) {
    if (kk >= nks) break;
    unsigned a[4];
    if (AREG) {
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = af[kk][i];
    } else {
      ldsm_x4(a, a_frag<LD>(TA, ra, kk * 16, lane));
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] ^= flip;
    }
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      unsigned b[4];
      ldsm_x4(b, b_frag<LD>(TB, rb + np * 16, kk * 16, lane));
      mma_bf16(acc[2 * np], a, b[0], b[1]);
      mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// bwd_products sets s = A·Bᵀ and dp = A2·B2ᵀ (the backward's scores and
// dP, or their transposes) over NT n-tiles: A, A2 the warp's 16 rows ra.. of
// tiles TA, TA2 (fragments af, af2 with AREG), B, B2 rows rb.. of TB, TB2.
template <int DMAX, int NT, bool AREG>
__device__ __forceinline__ void bwd_products(float (&s)[NT][4], float (&dp)[NT][4], const unsigned (&af)[DMAX / 16][4],
                                             const unsigned (&af2)[DMAX / 16][4], const __nv_bfloat16* TA,
                                             const __nv_bfloat16* TA2, int ra, const __nv_bfloat16* TB,
                                             const __nv_bfloat16* TB2, int rb, int nks, int lane) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
  mma_abt<DMAX, NT, AREG>(s, af, TA, ra, 0u, TB, rb, nks, lane);
  mma_abt<DMAX, NT, AREG>(dp, af2, TA2, ra, 0u, TB2, rb, nks, lane);
}

// acc (16 × DMAX, DMAX/8 n-tiles) += P·X: P the warp's 16 × 8·NT
// accumulator tile (rounded to bf16 as A fragments), X a [rows][DMAX+8]
// tile whose rows rx.. are P's columns, over the first nks 16-column slices
// of X.
template <int DMAX, int NT>
__device__ __forceinline__ void mma_px(float (&acc)[DMAX / 8][4], const float (&p)[NT][4], const __nv_bfloat16* X, int rx,
                                       int nks, int lane) {
  constexpr int LD = DMAX + 8;
#pragma unroll
  for (int kc = 0; kc < NT / 2; ++kc) {
    unsigned a[4];
    a[0] = pack_bf16(p[2 * kc][0], p[2 * kc][1]);
    a[1] = pack_bf16(p[2 * kc][2], p[2 * kc][3]);
    a[2] = pack_bf16(p[2 * kc + 1][0], p[2 * kc + 1][1]);
    a[3] = pack_bf16(p[2 * kc + 1][2], p[2 * kc + 1][3]);
#pragma unroll
    for (int dt = 0; dt < DMAX / 16; ++dt) {
      if (dt >= nks) break;
      unsigned b[4];
      ldsm_x4_trans(b, bt_frag<LD>(X, rx + kc * 16, dt * 16, lane));
      mma_bf16(acc[2 * dt], a, b[0], b[1]);
      mma_bf16(acc[2 * dt + 1], a, b[2], b[3]);
    }
  }
}

// store_pair writes the pair (a, b) to row[c], row[c + 1]: fp32 rows are
// added to (the product rounded before the add, no fma, so the result is
// init + what a zero init gets, bitwise); bf16 rows are overwritten with the
// rounded values (the mixed-precision model's dQKV, whose products read bf16
// and which nothing else writes: no fp32 buffer, clearing or cast).
__device__ __forceinline__ void store_pair(float* row, int c, float a, float b) {
  row[c] += a;
  row[c + 1] += b;
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* row, int c, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(row + c) = __floats2bfloat162_rn(a, b);
}

// emit_rows writes mul·acc, the warp's 16 × DMAX accumulator tile, to
// gradient rows with store_pair: row r (0..15 within the warp) goes to
// dst + (row0 + r)·stride if row0 + r < nrows.
template <int DMAX, typename G>
__device__ __forceinline__ void emit_rows(G* dst, long long stride, int row0, int nrows, int D,
                                          const float (&acc)[DMAX / 8][4], float mul, int lane) {
  const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = row0 + g + 8 * hr;
    if (r >= nrows) continue;
    G* row = dst + r * stride;
#pragma unroll
    for (int n = 0; n < DMAX / 8; ++n) {
      const int c = n * 8 + 2 * t4; // D is a multiple of 8: c < D implies c + 1 < D
      if (c < D) store_pair(row, c, __fmul_rn(acc[n][hr * 2], mul), __fmul_rn(acc[n][hr * 2 + 1], mul));
    }
  }
}

// Tile numbering: blockIdx.x = i·BH + bh over BH = gridDim.x / ntiles
// (b, h) pairs, so the first blocks are tile i = 0 of every head. Returns
// the pair; i in *tile.
__device__ __forceinline__ int block_tile(int ntiles, int* tile) {
  const int bh_count = gridDim.x / ntiles;
  *tile = blockIdx.x / bh_count;
  return blockIdx.x % bh_count;
}

// QueryTile is the block's tile of the forward and dQ kernels: query rows
// t0..t0+nq−1 of head h of sequence b. Query tiles run last-first (the
// longest causal rows first).
struct QueryTile {
  int b, h, t0, nq;
};
__device__ __forceinline__ QueryTile query_tile(int Tq, int H) {
  const int nqt = (Tq + kRows - 1) / kRows;
  int i;
  const int bh = block_tile(nqt, &i), t0 = (nqt - 1 - i) * kRows;
  return {bh / H, bh % H, t0, min(kRows, Tq - t0)};
}

// KVStages are the two stages of K and V tiles ([2][kCols][DMAX+8] each)
// and of their key segment ids ([2][kCols]) of the forward and dQ kernels,
// placed in shared memory at base, after the block's own tiles.
struct KVStages {
  __nv_bfloat16 *K, *V;
  int* ids;
};
template <int DMAX> __device__ __forceinline__ KVStages kv_stages(__nv_bfloat16* base) {
  constexpr int TL = kCols * (DMAX + 8);
  return {base, base + 2 * TL, reinterpret_cast<int*>(base + 4 * TL)};
}

// tile_kseg is the segment id of key j + tid of sequence b for a tile of nk
// keys from j (0 past them).
__device__ __forceinline__ int tile_kseg(const int* __restrict__ kseg, int b, int Tk, int j, int nk, int tid) {
  return tid < nk ? kseg[(long long)b * Tk + j + tid] : 0;
}

// ------------------------------------------------------------- forward

// Grid (ceil(Tq/128)·H·B), block 256, shared 2·(128 + 4·64)·(DMAX+8) + 8·64
// bytes: the Q tile, two stages of K and V tiles and of the key tile's
// segment ids. Query tiles run last-first (longest causal rows first).
// QREG: Q fragments stay in registers (else re-read from shared per tile).
// A negative scale is applied by negating Q (exact), so the max is taken
// over raw scores with c2 = |scale|·log2(e) > 0.
template <int DMAX, bool QREG, bool FULL>
__device__ __forceinline__ void attn_fwd_bf16(__nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                              const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                              const __nv_bfloat16* __restrict__ v, const int* __restrict__ qseg,
                                              const int* __restrict__ kseg, int Tq, int Tk, int H, int D, int qs, int ks,
                                              int vs, int os, int causal, int qpos0, int kpos0, float scale) {
  static_assert(DMAX % 16 == 0 && DMAX <= 128, "DMAX");
  constexpr int LD = DMAX + 8, NKS = DMAX / 16, NDT = DMAX / 8, TL = kCols * LD;
  extern __shared__ __align__(16) unsigned char attn_bf16_smem[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(attn_bf16_smem); // [128][LD]
  const auto [Ks, Vs, kss] = kv_stages<DMAX>(Qs + kRows * LD);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const auto [b, h, t0, nq] = query_tile(Tq, H);
  const bool seg = qseg != nullptr;
  const float c2 = fabsf(scale) * kLog2e;
  const unsigned flip = scale < 0.f ? 0x80008000u : 0u; // negates both bf16 halves
  const int nks = FULL ? NKS : (D + 15) / 16; // 16-wide slices of the head that hold data

  const int tw = t0 + warp * 16; // the warp's first row
  const bool wrows = tw < Tq;
  // Keys [0, jend) are visible to some row of the block, [0, wjend) to some
  // row of the warp.
  const int jend = key_end(t0 + nq, Tk, causal, qpos0, kpos0);
  const int wjend = key_end(min(tw + 16, Tq), Tk, causal, qpos0, kpos0);
  const int nkt = (jend + kCols - 1) / kCols;

  int qsr[2]; // segment ids of this thread's rows (accumulator rows g, g + 8)
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int t = tw + g + 8 * hr;
    qsr[hr] = (seg && t < Tq) ? qseg[(long long)b * Tq + t] : 0;
  }

  const __nv_bfloat16* kb = k + (long long)b * Tk * ks + (long long)h * D;
  const __nv_bfloat16* vb = v + (long long)b * Tk * vs + (long long)h * D;
  if (nkt > 0) { // Q and the first K, V tile: one cp.async group
    cp_tile<DMAX, kRows>(Qs, q + ((long long)b * Tq + t0) * qs + (long long)h * D, qs, nq, D);
    const int nk = cp_pair<DMAX>(Ks, kb, ks, Vs, vb, vs, 0, Tk, D);
    if (seg && tid < kCols) kss[tid] = tile_kseg(kseg, b, Tk, 0, nk, tid);
  }

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}; // running max (log2 units), per-lane partial sums
  float o[NDT][4];
#pragma unroll
  for (int n = 0; n < NDT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  unsigned qf[NKS][4]; // the warp's Q fragments (QREG)
  int knext = 0;       // next tile's key segment id (threads < 64)

#pragma unroll 1
  for (int kt = 0; kt < nkt; ++kt) {
    const int st = kt & 1, j0 = kt * kCols;
    // Tile kt (and Q) in shared for all; tile kt+1 on its way to stage st^1.
    const int nk1 = next_stage<DMAX>(st, kt + 1 < nkt, Ks, kb, ks, Vs, vb, vs, j0 + kCols, Tk, D);
    if (seg && tid < kCols) knext = tile_kseg(kseg, b, Tk, j0 + kCols, nk1, tid);
    if (QREG && kt == 0) load_afrags<DMAX>(qf, Qs, warp * 16, nks, flip, lane);

    if (wrows && j0 < wjend) { // warp-uniform
      const __nv_bfloat16* Kt = Ks + st * TL;
      const __nv_bfloat16* Vt = Vs + st * TL;
      float s[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
      mma_abt<DMAX, 8, QREG>(s, qf, Qs, warp * 16, flip, Kt, 0, nks, lane);

      // Masks: past Tk, the causal diagonal, segments (warp-uniform test).
      bool any = true;
      if (seg || j0 + kCols > Tk || (causal && kpos0 + j0 + kCols - 1 > qpos0 + tw)) {
        const int* kst = kss + st * kCols;
        bool vis = false;
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int t = tw + g + 8 * hr, lim = qpos0 + t - kpos0 - j0; // causal: column c visible iff c <= lim
#pragma unroll
          for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int c = nt * 8 + 2 * t4 + e;
              const bool ok = t < Tq && j0 + c < Tk && (!causal || c <= lim) && (!seg || qsr[hr] == kst[c]);
              if (!ok) s[nt][hr * 2 + e] = -INFINITY;
              vis |= ok;
            }
        }
        any = __any_sync(0xffffffffu, vis);
      }

      if (any) {
        // Online softmax for rows g (regs 0, 1) and g + 8 (regs 2, 3); a
        // row's 16 key columns of each n-tile are spread over a quad.
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          float mx = -INFINITY;
#pragma unroll
          for (int nt = 0; nt < 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][hr * 2], s[nt][hr * 2 + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float mn = fmaxf(m[hr], mx * c2);
          const float ms = mn == -INFINITY ? 0.f : mn; // all masked so far: p = 2^-inf = 0
          const float alpha = ex2(m[hr] - ms);
          m[hr] = mn;
          float sum = 0.f;
#pragma unroll
          for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              float& x = s[nt][hr * 2 + e];
              x = ex2(fmaf(x, c2, -ms));
              sum += x;
            }
          l[hr] = l[hr] * alpha + sum; // per-lane partial, reduced at the end
#pragma unroll
          for (int n = 0; n < NDT; ++n) {
            o[n][hr * 2] *= alpha;
            o[n][hr * 2 + 1] *= alpha;
          }
        }
        mma_px<DMAX, 8>(o, s, Vt, 0, nks, lane); // O += P·V
      }
    }
    // Tile kt+1's key ids go to stage st^1, last read in iteration kt-1.
    if (seg && tid < kCols && kt + 1 < nkt) kss[(st ^ 1) * kCols + tid] = knext;
  }
  cp_async_wait0(); // nothing in flight at exit

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float L = l[hr];
    L += __shfl_xor_sync(0xffffffffu, L, 1);
    L += __shfl_xor_sync(0xffffffffu, L, 2);
    const int t = tw + g + 8 * hr;
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

// Both backward kernels recompute P = 2^(c2·s − lse2) with c2 = scale·
// log2(e) and lse2 = lse·log2(e), where a row with lse = -inf (it sees no
// key) or past Tq gets lse2 = +inf: its P is 0 without a mask. dS is
// P∘(dP − d) unscaled; the scale multiplies dK and dQ once at the end.

// bwd_row: lse2, d and the segment id of query row t of (b, h).
__device__ __forceinline__ void bwd_row(const float* __restrict__ lse, const float* __restrict__ d,
                                        const int* __restrict__ qseg, int b, int h, int H, int Tq, int t, float& l2,
                                        float& dr, int& id) {
  l2 = INFINITY;
  dr = 0.f;
  id = 0;
  if (t < Tq) {
    const long long li = ((long long)b * H + h) * Tq + t;
    const float x = lse[li];
    l2 = x == -INFINITY ? INFINITY : x * kLog2e;
    dr = d[li];
    if (qseg != nullptr) id = qseg[(long long)b * Tq + t];
  }
}

// dK, dV for the 128 keys j0.. of (b, h), warp w owning keys j0 + 16w..:
// per query tile of 64 (increasing order) Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, then
// dV += Pᵀ·dO, dK += dSᵀ·Q. Grid (ceil(Tk/128)·H·B), key tiles first-first
// (they see the most queries), block 256. Shared: K, V [128][LD], two
// stages of Q, dO [64][LD] and of lse2, d, query segment ids [64]:
// 2·(2·128 + 4·64)·(DMAX+8) + 24·64 bytes. KVREG: K, V fragments stay in
// registers.
template <int DMAX, bool KVREG, int NT, bool FULL, typename G>
__device__ __forceinline__ void attn_bwd_dkv_bf16(G* dk, G* dv, const __nv_bfloat16* __restrict__ dout,
                                                  const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                                  const __nv_bfloat16* __restrict__ v, const float* __restrict__ lse,
                                                  const float* __restrict__ d, const int* __restrict__ qseg,
                                                  const int* __restrict__ kseg, int Tq, int Tk, int H, int D, int qs,
                                                  int ks, int vs, int os, int causal, int qpos0, int kpos0, float scale) {
  constexpr int LD = DMAX + 8, NKS = DMAX / 16, NDT = DMAX / 8, TL = kCols * LD;
  extern __shared__ __align__(16) unsigned char attn_bf16_smem[];
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(attn_bf16_smem); // [128][LD]
  __nv_bfloat16* Vs = Ks + kRows * LD;                                    // [128][LD]
  __nv_bfloat16* Qs = Vs + kRows * LD;                                    // [2][64][LD]
  __nv_bfloat16* dOs = Qs + 2 * TL;                                       // [2][64][LD]
  float* l2s = reinterpret_cast<float*>(dOs + 2 * TL);                    // [2][64]
  float* dds = l2s + 2 * kCols;                                           // [2][64]
  int* qss = reinterpret_cast<int*>(dds + 2 * kCols);                     // [2][64]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int nkb = (Tk + kRows - 1) / kRows;
  int kb;
  const int bh = block_tile(nkb, &kb), h = bh % H, b = bh / H;
  const int j0 = kb * kRows, nk = min(kRows, Tk - j0);
  const bool seg = qseg != nullptr;
  const float c2 = scale * kLog2e;
  const int nks = FULL ? NKS : (D + 15) / 16;
  const int jw = j0 + warp * 16; // the warp's first key
  const bool wrows = jw < Tk;

  int ksr[2]; // segment ids of this thread's keys (accumulator rows g, g + 8)
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int j = jw + g + 8 * hr;
    ksr[hr] = (seg && j < Tk) ? kseg[(long long)b * Tk + j] : 0;
  }

  const int nqt = (Tq + kCols - 1) / kCols;
  const int qt0 = first_query_tile(j0, kCols, nqt, Tq, causal, qpos0, kpos0);
  const __nv_bfloat16* qb = q + (long long)b * Tq * qs + (long long)h * D;
  const __nv_bfloat16* ob = dout + (long long)b * Tq * os + (long long)h * D;
  if (qt0 < nqt) { // K, V and the first query tile: one cp.async group
    cp_tile<DMAX, kRows>(Ks, k + ((long long)b * Tk + j0) * ks + (long long)h * D, ks, nk, D);
    cp_tile<DMAX, kRows>(Vs, v + ((long long)b * Tk + j0) * vs + (long long)h * D, vs, nk, D);
    const int t0 = qt0 * kCols;
    cp_pair<DMAX>(Qs, qb, qs, dOs, ob, os, t0, Tq, D);
    if (tid < kCols) bwd_row(lse, d, qseg, b, h, H, Tq, t0 + tid, l2s[tid], dds[tid], qss[tid]);
  }

  float dka[NDT][4], dva[NDT][4];
#pragma unroll
  for (int n = 0; n < NDT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.f;
  unsigned kf[NKS][4], vf[NKS][4]; // the warp's K, V fragments (KVREG)
  float nl2 = 0.f, nd = 0.f;       // next tile's row values (threads < 64)
  int nid = 0;

#pragma unroll 1
  for (int qt = qt0; qt < nqt; ++qt) {
    const int st = (qt - qt0) & 1, t0 = qt * kCols;
    // Tile qt (and K, V) in shared for all; tile qt+1 on its way to stage st^1.
    const int nq1 = next_stage<DMAX>(st, qt + 1 < nqt, Qs, qb, qs, dOs, ob, os, t0 + kCols, Tq, D);
    if (nq1 > 0 && tid < kCols) bwd_row(lse, d, qseg, b, h, H, Tq, t0 + kCols + tid, nl2, nd, nid);
    if (KVREG && qt == qt0) {
      load_afrags<DMAX>(kf, Ks, warp * 16, nks, 0u, lane);
      load_afrags<DMAX>(vf, Vs, warp * 16, nks, 0u, lane);
    }

    // The warp's keys jw.. are seen by query t iff qpos0 + t >= kpos0 + j:
    // skip tiles (and chunks) whose last query precedes the warp's first key.
    if (wrows && !(causal && qpos0 + t0 + kCols - 1 < kpos0 + jw)) { // warp-uniform
      const __nv_bfloat16* Qt = Qs + st * TL;
      const __nv_bfloat16* dOt = dOs + st * TL;
      const float* l2t = l2s + st * kCols;
      const float* ddt = dds + st * kCols;
      const int* qst = qss + st * kCols;
      // Masks: past Tq or Tk, the causal diagonal, segments.
      const bool need = seg || t0 + kCols > Tq || jw + 16 > Tk || (causal && qpos0 + t0 < kpos0 + jw + 15);
#pragma unroll
      for (int ch = 0; ch < 8 / NT; ++ch) { // query columns c0.. of the tile
        const int c0 = ch * NT * 8;
        if (t0 + c0 >= Tq) break;
        if (causal && qpos0 + t0 + c0 + NT * 8 - 1 < kpos0 + jw) continue;
        float sT[NT][4], dpT[NT][4]; // Sᵀ, dPᵀ: rows = keys, columns = queries
        bwd_products<DMAX, NT, KVREG>(sT, dpT, kf, vf, Ks, Vs, warp * 16, Qt, dOt, c0, nks, lane);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int c = c0 + nt * 8 + 2 * t4;
          const float2 lq = *reinterpret_cast<const float2*>(l2t + c);
          const float2 dq2 = *reinterpret_cast<const float2*>(ddt + c);
#pragma unroll
          for (int hr = 0; hr < 2; ++hr) {
            float& s0 = sT[nt][hr * 2];
            float& s1 = sT[nt][hr * 2 + 1];
            s0 = ex2(fmaf(s0, c2, -lq.x));
            s1 = ex2(fmaf(s1, c2, -lq.y));
            dpT[nt][hr * 2] = s0 * (dpT[nt][hr * 2] - dq2.x);
            dpT[nt][hr * 2 + 1] = s1 * (dpT[nt][hr * 2 + 1] - dq2.y);
          }
        }
        bool any = true;
        if (need) {
          bool vis = false;
#pragma unroll
          for (int hr = 0; hr < 2; ++hr) {
            const int j = jw + g + 8 * hr, lo = kpos0 + j - qpos0 - t0; // causal: column c visible iff c >= lo
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int c = c0 + nt * 8 + 2 * t4 + e;
                const bool ok = t0 + c < Tq && j < Tk && (!causal || c >= lo) && (!seg || ksr[hr] == qst[c]);
                if (!ok) sT[nt][hr * 2 + e] = dpT[nt][hr * 2 + e] = 0.f;
                vis |= ok;
              }
          }
          any = __any_sync(0xffffffffu, vis);
        }
        if (any) {
          mma_px<DMAX, NT>(dva, sT, dOt, c0, nks, lane); // dV += Pᵀ·dO
          mma_px<DMAX, NT>(dka, dpT, Qt, c0, nks, lane); // dK += dSᵀ·Q
        }
      }
    }
    // Tile qt+1's row values go to stage st^1, last read in iteration qt-1.
    if (tid < kCols && qt + 1 < nqt) {
      l2s[(st ^ 1) * kCols + tid] = nl2;
      dds[(st ^ 1) * kCols + tid] = nd;
      qss[(st ^ 1) * kCols + tid] = nid;
    }
  }
  cp_async_wait0();

  emit_rows<DMAX>(dk + (long long)b * Tk * ks + (long long)h * D, ks, jw, Tk, D, dka, scale, lane);
  emit_rows<DMAX>(dv + (long long)b * Tk * vs + (long long)h * D, vs, jw, Tk, D, dva, 1.f, lane);
}

// dQ for the 128 queries t0.. of (b, h), warp w owning rows t0 + 16w..: per
// visible key tile of 64 (increasing order) S = Q·Kᵀ, dP = dO·Vᵀ, then
// dQ += dS·K. Grid (ceil(Tq/128)·H·B), query tiles last-first, block 256.
// Shared: Q, dO [128][LD], two stages of K, V [64][LD] and of key segment
// ids [64]: 2·(2·128 + 4·64)·(DMAX+8) + 8·64 bytes. QREG: Q, dO fragments
// stay in registers.
template <int DMAX, bool QREG, int NT, bool FULL, typename G>
__device__ __forceinline__ void attn_bwd_dq_bf16(G* dq, const __nv_bfloat16* __restrict__ dout,
                                                 const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                                 const __nv_bfloat16* __restrict__ v, const float* __restrict__ lse,
                                                 const float* __restrict__ d, const int* __restrict__ qseg,
                                                 const int* __restrict__ kseg, int Tq, int Tk, int H, int D, int qs, int ks,
                                                 int vs, int os, int causal, int qpos0, int kpos0, float scale) {
  constexpr int LD = DMAX + 8, NKS = DMAX / 16, NDT = DMAX / 8, TL = kCols * LD;
  extern __shared__ __align__(16) unsigned char attn_bf16_smem[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(attn_bf16_smem); // [128][LD]
  __nv_bfloat16* dOs = Qs + kRows * LD;                                   // [128][LD]
  const auto [Ks, Vs, kss] = kv_stages<DMAX>(dOs + kRows * LD);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const auto [b, h, t0, nq] = query_tile(Tq, H);
  const bool seg = qseg != nullptr;
  const float c2 = scale * kLog2e;
  const int nks = FULL ? NKS : (D + 15) / 16;
  const int tw = t0 + warp * 16;
  const bool wrows = tw < Tq;

  float l2[2], dr[2]; // this thread's rows g, g + 8 of its warp
  int qsr[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) bwd_row(lse, d, qseg, b, h, H, Tq, tw + g + 8 * hr, l2[hr], dr[hr], qsr[hr]);

  const int jend = key_end(t0 + nq, Tk, causal, qpos0, kpos0);
  const int wjend = key_end(min(tw + 16, Tq), Tk, causal, qpos0, kpos0);
  const int nkt = (jend + kCols - 1) / kCols;
  const __nv_bfloat16* kb = k + (long long)b * Tk * ks + (long long)h * D;
  const __nv_bfloat16* vb = v + (long long)b * Tk * vs + (long long)h * D;
  if (nkt > 0) { // Q, dO and the first K, V tile: one cp.async group
    cp_tile<DMAX, kRows>(Qs, q + ((long long)b * Tq + t0) * qs + (long long)h * D, qs, nq, D);
    cp_tile<DMAX, kRows>(dOs, dout + ((long long)b * Tq + t0) * os + (long long)h * D, os, nq, D);
    const int nk = cp_pair<DMAX>(Ks, kb, ks, Vs, vb, vs, 0, Tk, D);
    if (seg && tid < kCols) kss[tid] = tile_kseg(kseg, b, Tk, 0, nk, tid);
  }

  float dqa[NDT][4];
#pragma unroll
  for (int n = 0; n < NDT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dqa[n][e] = 0.f;
  unsigned qf[NKS][4], of[NKS][4]; // the warp's Q, dO fragments (QREG)
  int knext = 0;

#pragma unroll 1
  for (int kt = 0; kt < nkt; ++kt) {
    const int st = kt & 1, j0 = kt * kCols;
    // Tile kt (and Q, dO) in shared for all; tile kt+1 on its way to stage st^1.
    const int nk1 = next_stage<DMAX>(st, kt + 1 < nkt, Ks, kb, ks, Vs, vb, vs, j0 + kCols, Tk, D);
    if (seg && tid < kCols) knext = tile_kseg(kseg, b, Tk, j0 + kCols, nk1, tid);
    if (QREG && kt == 0) {
      load_afrags<DMAX>(qf, Qs, warp * 16, nks, 0u, lane);
      load_afrags<DMAX>(of, dOs, warp * 16, nks, 0u, lane);
    }

    if (wrows && j0 < wjend) { // warp-uniform
      const __nv_bfloat16* Kt = Ks + st * TL;
      const __nv_bfloat16* Vt = Vs + st * TL;
      const int* kst = kss + st * kCols;
      // Masks: past Tk or Tq, the causal diagonal, segments.
      const bool need = seg || j0 + kCols > Tk || tw + 16 > Tq || (causal && kpos0 + j0 + kCols - 1 > qpos0 + tw);
#pragma unroll
      for (int ch = 0; ch < 8 / NT; ++ch) { // key columns c0.. of the tile
        const int c0 = ch * NT * 8;
        if (j0 + c0 >= wjend) break; // no row of the warp sees these keys or later ones
        float s[NT][4], dp[NT][4];
        bwd_products<DMAX, NT, QREG>(s, dp, qf, of, Qs, dOs, warp * 16, Kt, Vt, c0, nks, lane);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int hr = 0; hr < 2; ++hr)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int x = hr * 2 + e;
              dp[nt][x] = ex2(fmaf(s[nt][x], c2, -l2[hr])) * (dp[nt][x] - dr[hr]); // dS (unscaled)
            }
        bool any = true;
        if (need) {
          bool vis = false;
#pragma unroll
          for (int hr = 0; hr < 2; ++hr) {
            const int t = tw + g + 8 * hr, lim = qpos0 + t - kpos0 - j0; // causal: column c visible iff c <= lim
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int c = c0 + nt * 8 + 2 * t4 + e;
                const bool ok = t < Tq && j0 + c < Tk && (!causal || c <= lim) && (!seg || qsr[hr] == kst[c]);
                if (!ok) dp[nt][hr * 2 + e] = 0.f;
                vis |= ok;
              }
          }
          any = __any_sync(0xffffffffu, vis);
        }
        if (any) mma_px<DMAX, NT>(dqa, dp, Kt, c0, nks, lane); // dQ += dS·K
      }
    }
    if (seg && tid < kCols && kt + 1 < nkt) kss[(st ^ 1) * kCols + tid] = knext;
  }
  cp_async_wait0();

  emit_rows<DMAX>(dq + (long long)b * Tq * qs + (long long)h * D, qs, tw, Tq, D, dqa, scale, lane);
}

} // namespace

// Per DMAX: FREG, KVREG, QREG keep the warp's A fragments in registers
// (Q in the forward, K and V in dK/dV, Q and dO in dQ; else re-read from
// shared per tile); NT is the backward kernels' chunk of the other side's
// tile in 8-column n-tiles (8: all 64 columns at once; 2: 16 at a time, so
// fewer registers live); *_MIN the blocks per SM asked of ptxas. Each
// kernel holds two copies of its body: heads of DMAX−15..DMAX columns
// (FULL: every 16-column slice holds data, no slice tests) and smaller ones.
#define ATTN_BF16_KERNELS(DM, FREG, FWD_MIN, KVREG, DKV_NT, DKV_MIN, QREG, DQ_NT, DQ_MIN)                          \
  extern "C" __global__ void __launch_bounds__(kThreads, FWD_MIN) attention_fwd_bf16_d##DM(                        \
      __nv_bfloat16* out, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,      \
      const int* qseg, const int* kseg, int Tq, int Tk, int H, int D, int qs, int ks, int vs, int os, int causal,   \
      int qpos0, int kpos0, float scale) {                                                                         \
    if (D > DM - 16)                                                                                               \
      attn_fwd_bf16<DM, FREG, true>(out, lse, q, k, v, qseg, kseg, Tq, Tk, H, D, qs, ks, vs, os, causal, qpos0,     \
                                    kpos0, scale);                                                                 \
    else                                                                                                           \
      attn_fwd_bf16<DM, FREG, false>(out, lse, q, k, v, qseg, kseg, Tq, Tk, H, D, qs, ks, vs, os, causal, qpos0,    \
                                     kpos0, scale);                                                                \
  }                                                                                                                \
  ATTN_BF16_BWD_KERNELS(DM, , float, KVREG, DKV_NT, DKV_MIN, QREG, DQ_NT, DQ_MIN)                                 \
  ATTN_BF16_BWD_KERNELS(DM, _out, __nv_bfloat16, KVREG, DKV_NT, DKV_MIN, QREG, DQ_NT, DQ_MIN)

// The backward kernels with gradients of type G (float: added to; bf16:
// overwritten), named attention_bwd_{dkv,dq}_bf16<SUF>_d<DM>.
#define ATTN_BF16_BWD_KERNELS(DM, SUF, G, KVREG, DKV_NT, DKV_MIN, QREG, DQ_NT, DQ_MIN)                               \
  extern "C" __global__ void __launch_bounds__(kThreads, DKV_MIN) attention_bwd_dkv_bf16##SUF##_d##DM(             \
      G* dk, G* dv, const __nv_bfloat16* dout, const __nv_bfloat16* q, const __nv_bfloat16* k,                       \
      const __nv_bfloat16* v, const float* lse, const float* d, const int* qseg, const int* kseg, int Tq, int Tk,    \
      int H, int D, int qs, int ks, int vs, int os, int causal, int qpos0, int kpos0, float scale) {                 \
    if (D > DM - 16)                                                                                                 \
      attn_bwd_dkv_bf16<DM, KVREG, DKV_NT, true>(dk, dv, dout, q, k, v, lse, d, qseg, kseg, Tq, Tk, H, D, qs, ks,    \
                                                 vs, os, causal, qpos0, kpos0, scale);                               \
    else                                                                                                             \
      attn_bwd_dkv_bf16<DM, KVREG, DKV_NT, false>(dk, dv, dout, q, k, v, lse, d, qseg, kseg, Tq, Tk, H, D, qs, ks,   \
                                                  vs, os, causal, qpos0, kpos0, scale);                              \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(kThreads, DQ_MIN) attention_bwd_dq_bf16##SUF##_d##DM(               \
      G* dq, const __nv_bfloat16* dout, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,     \
      const float* lse, const float* d, const int* qseg, const int* kseg, int Tq, int Tk, int H, int D, int qs,     \
      int ks, int vs, int os, int causal, int qpos0, int kpos0, float scale) {                                      \
    if (D > DM - 16)                                                                                                 \
      attn_bwd_dq_bf16<DM, QREG, DQ_NT, true>(dq, dout, q, k, v, lse, d, qseg, kseg, Tq, Tk, H, D, qs, ks, vs, os,  \
                                              causal, qpos0, kpos0, scale);                                          \
    else                                                                                                             \
      attn_bwd_dq_bf16<DM, QREG, DQ_NT, false>(dq, dout, q, k, v, lse, d, qseg, kseg, Tq, Tk, H, D, qs, ks, vs, os, \
                                               causal, qpos0, kpos0, scale);                                         \
  }

ATTN_BF16_KERNELS(64, false, 2, false, 4, 2, true, 2, 2)
ATTN_BF16_KERNELS(128, true, 1, false, 4, 1, true, 2, 1)

// attention_rowdot_bf16 is attention_rowdot_f32 (attention.cu) with dout and
// out in bf16: d[(b·H + h)·Tq + t] = Σ_i dout·out over head h of row b·Tq + t,
// in fp32, for rows = B·Tq·H rows (b, t, h), grid-stride over warps. When D
// and os are multiples of 8 and both buffers 16-byte aligned, a row is L
// lanes (the power of two >= D/8, at most 32) reading 16-byte vectors, 32/L
// rows per warp; otherwise one warp per row reads single elements. Either
// way the order of the sums is fixed.
extern "C" __global__ void attention_rowdot_bf16(float* d, const __nv_bfloat16* __restrict__ dout,
                                                 const __nv_bfloat16* __restrict__ out, int rows, int Tq, int H, int D,
                                                 int os) {
  const int lane = threadIdx.x & 31;
  const int gw = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, nw = (gridDim.x * blockDim.x) >> 5;
  const bool vec = D % 8 == 0 && os % 8 == 0 &&
                   ((reinterpret_cast<unsigned long long>(dout) | reinterpret_cast<unsigned long long>(out)) & 15) == 0;
  if (vec) {
    const int CH = D / 8; // 16-byte chunks per row
    int L = 1;
    while (L < CH && L < 32) L <<= 1;
    const int rpw = 32 / L, sub = lane / L, li = lane % L;
    for (int w0 = gw * rpw; w0 < rows; w0 += nw * rpw) { // warp-uniform
      const int w = w0 + sub;
      float acc = 0.f;
      if (w < rows) {
        const int h = w % H, bt = w / H;
        const long long off = (long long)bt * os + (long long)h * D;
        for (int c = li; c < CH; c += L) {
          const uint4 x = *reinterpret_cast<const uint4*>(dout + off + 8 * c);
          const uint4 y = *reinterpret_cast<const uint4*>(out + off + 8 * c);
          const unsigned xs[4] = {x.x, x.y, x.z, x.w}, ys[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            acc = fmaf(__uint_as_float(xs[e] << 16), __uint_as_float(ys[e] << 16), acc);
            acc = fmaf(__uint_as_float(xs[e] & 0xffff0000u), __uint_as_float(ys[e] & 0xffff0000u), acc);
          }
        }
      }
      for (int m = L >> 1; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
      if (li == 0 && w < rows) {
        const int h = w % H, bt = w / H, b = bt / Tq, t = bt % Tq;
        d[((long long)b * H + h) * Tq + t] = acc;
      }
    }
    return;
  }
  for (int w = gw; w < rows; w += nw) {
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
