// MoE dispatch plan on the GPU: the router's N·K choices grouped by expert,
// with a capacity and a drop policy, exactly as moe.Plan.BuildCapacity does
// on the CPU (every integer output is equal, Gate is copied bit for bit).
//
// Slots are expert-major; within an expert they follow the flat choice order
// i = t·K + j. A choice's "rank" below is its position among its expert's
// routed choices in that order. The kernels run in this order on one stream
// (gpu/ops PlanBuild launches them):
//   plan_histogram  per chunk of kChunk choices: choices per expert;
//   plan_routed     per expert: exclusive scan over the chunks (in place),
//                   Routed and Counts = min(Routed, capacity);
//   plan_assign     per chunk: offsets (scan over experts), each choice's
//                   rank (chunk base + rank inside the chunk, found with
//                   warp match/popc), then slot = Offsets[x] + rank when
//                   rank < Counts[x]; with the probability policy, choices
//                   of an over-capacity expert go to a per-expert list;
//   plan_rank       probability policy: each listed choice's rank by
//                   (score desc, flat index asc), keep = rank < capacity;
//   plan_kept       probability policy: kept choices get their slots by a
//                   scan of the keep flags in flat order.
// Nothing uses float atomics; integer atomics only count, so every output is
// deterministic. Choices whose expert is outside [0, E) are treated as
// dropped (SlotOf −1, not counted in Routed); the CPU plan would panic.
#include "common.cuh"

namespace plan_detail {

constexpr int kThreads = 256;               // block size of every plan kernel
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 8;                   // choices per thread and chunk
constexpr int kChunk = kThreads * kItems;   // choices per chunk: gpu/ops planChunk
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ unsigned lanemask_lt() { return (1u << (threadIdx.x & 31)) - 1u; }

// block_scan_excl returns the exclusive prefix sum of v over the block's
// threads in thread order and sets total to the block's sum. Every thread
// of the block must call it (blockDim.x a multiple of 32); sh holds 32 ints.
// It ends with a barrier, so sh may be reused at once.
__device__ __forceinline__ int block_scan_excl(int v, int* sh, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  int inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    int u = __shfl_up_sync(kFull, inc, o);
    if (lane >= o) inc += u;
  }
  if (lane == 31) sh[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    int t = lane < nw ? sh[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int u = __shfl_up_sync(kFull, t, o);
      if (lane >= o) t += u;
    }
    if (lane < nw) sh[lane] = t;  // inclusive sums of the warps' totals
  }
  __syncthreads();
  const int base = warp > 0 ? sh[warp - 1] : 0;
  total = sh[nw - 1];
  __syncthreads();
  return base + inc - v;
}

// expert_of reads choice i's expert, −1 past the end or when out of range.
__device__ __forceinline__ int expert_of(const int* experts, int i, int nk, int e) {
  if (i >= nk) return -1;
  const int x = experts[i];
  return (x >= 0 && x < e) ? x : -1;
}

}  // namespace plan_detail
using namespace plan_detail;

// plan_histogram: hist[p·E + x] = choices of expert x in chunk p (choices
// [p·kChunk, (p+1)·kChunk)). Grid: one block per chunk; kThreads threads;
// dynamic shared memory E ints.
extern "C" __global__ void __launch_bounds__(kThreads)
    plan_histogram(const int* __restrict__ experts, int* __restrict__ hist, int nk, int e) {
  extern __shared__ int s_hist[];
  for (int x = threadIdx.x; x < e; x += kThreads) s_hist[x] = 0;
  __syncthreads();
  const int base = blockIdx.x * kChunk;
  // Same trip count for every lane, so the warp is whole at the match.
  for (int j = threadIdx.x; j < kChunk; j += kThreads) {
    const int x = expert_of(experts, base + j, nk, e);
    const unsigned peers = __match_any_sync(kFull, x);
    if (x >= 0 && (peers & lanemask_lt()) == 0) atomicAdd(&s_hist[x], __popc(peers));
  }
  __syncthreads();
  for (int x = threadIdx.x; x < e; x += kThreads) hist[(size_t)blockIdx.x * e + x] = s_hist[x];
}

// plan_routed turns expert x's column of hist into its exclusive scan over
// the chunks (the rank of the chunk's first choice of x), and writes
// routed[x] (all choices of x) and counts[x] (kept: routed[x] when capacity
// < 0, else min(routed[x], capacity)). Grid: one block per expert.
extern "C" __global__ void __launch_bounds__(kThreads)
    plan_routed(int* __restrict__ hist, int* __restrict__ routed, int* __restrict__ counts, int chunks, int e,
                int capacity) {
  __shared__ int sh[32];
  const int x = blockIdx.x;
  int carry = 0;
  for (int p0 = 0; p0 < chunks; p0 += kThreads) {
    const int p = p0 + threadIdx.x;
    const int v = p < chunks ? hist[(size_t)p * e + x] : 0;
    int tot;
    const int ex = block_scan_excl(v, sh, tot);
    if (p < chunks) hist[(size_t)p * e + x] = carry + ex;
    carry += tot;
  }
  if (threadIdx.x == 0) {
    routed[x] = carry;
    counts[x] = capacity < 0 ? carry : min(carry, capacity);
  }
}

// plan_assign: grid one block per chunk, kThreads threads, dynamic shared
// memory (kWarps + 2)·E + 32 ints. Every block scans counts and routed over
// the experts (block 0 also writes offsets [E+1] and roff [E], the start of each
// expert's list). Warp w of the block owns choices [chunk start + w·32·kItems,
// +32·kItems) and walks them 32 at a time in order, so a choice's rank is
// hist (chunk base) + the earlier warps' counts + its warp's running count.
// Kept choices (rank < counts[x]) get slot offsets[x] + rank, except under
// by_score for an expert over capacity: its choices go to list/lscore at
// roff[x] + rank for plan_rank and plan_kept. Dropped choices get −1.
extern "C" __global__ void __launch_bounds__(kThreads)
    plan_assign(const int* __restrict__ experts, const float* __restrict__ gates, const float* __restrict__ probs,
                const int* __restrict__ hist, const int* __restrict__ routed, const int* __restrict__ counts,
                int* __restrict__ offsets, int* __restrict__ token, float* __restrict__ gate,
                int* __restrict__ slot_of, int* __restrict__ roff, int* __restrict__ list,
                float* __restrict__ lscore, int nk, int k, int e, int by_score) {
  // All shared memory is dynamic (no static part), so the wrapper may opt
  // in to the GPU's whole per-block maximum for large E.
  extern __shared__ int smem[];
  int* s_off = smem;                  // [E] first slot of each expert
  int* s_roff = smem + e;             // [E] first list entry of each expert
  int* s_wc = smem + 2 * e;           // [kWarps][E] per-warp counts, then bases
  int* sh = smem + (kWarps + 2) * e;  // [32] scan scratch
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;

  int carry = 0, rcarry = 0;
  for (int x0 = 0; x0 < e; x0 += kThreads) {
    const int x = x0 + tid;
    const int c = x < e ? counts[x] : 0;
    const int r = x < e ? routed[x] : 0;
    int tc, tr;
    const int oc = block_scan_excl(c, sh, tc);
    const int orr = block_scan_excl(r, sh, tr);
    if (x < e) {
      s_off[x] = carry + oc;
      s_roff[x] = rcarry + orr;
      if (blockIdx.x == 0) {
        offsets[x] = carry + oc;
        roff[x] = rcarry + orr;
      }
    }
    carry += tc;
    rcarry += tr;
  }
  if (blockIdx.x == 0 && tid == 0) offsets[e] = carry;

  int* wc = s_wc + w * e;  // this warp's row
  for (int x = lane; x < e; x += 32) wc[x] = 0;
  __syncwarp();
  const int sub = blockIdx.x * kChunk + w * (32 * kItems);
  int xs[kItems], rk[kItems];
#pragma unroll
  for (int s = 0; s < kItems; s++) {
    const int x = expert_of(experts, sub + s * 32 + lane, nk, e);
    const unsigned peers = __match_any_sync(kFull, x);
    const int before = __popc(peers & lanemask_lt());
    const int prior = x >= 0 ? wc[x] : 0;
    __syncwarp();  // every lane has read wc before the group's last lane adds
    if (x >= 0 && before == __popc(peers) - 1) wc[x] = prior + __popc(peers);
    __syncwarp();
    xs[s] = x;
    rk[s] = prior + before;
  }
  __syncthreads();
  // Per expert: warp bases = chunk base + earlier warps' counts.
  for (int x = tid; x < e; x += kThreads) {
    int run = hist[(size_t)blockIdx.x * e + x];
    for (int v = 0; v < kWarps; v++) {
      const int t = s_wc[v * e + x];
      s_wc[v * e + x] = run;
      run += t;
    }
  }
  __syncthreads();
#pragma unroll
  for (int s = 0; s < kItems; s++) {
    const int i = sub + s * 32 + lane;
    if (i >= nk) continue;
    const int x = xs[s];
    if (x < 0) {
      slot_of[i] = -1;
      continue;
    }
    const int r = wc[x] + rk[s];
    const int cnt = counts[x];
    if (by_score && routed[x] > cnt) {
      const int q = s_roff[x] + r;
      list[q] = i;
      lscore[q] = probs[(size_t)(i / k) * e + x];
    } else if (r < cnt) {
      const int slot = s_off[x] + r;
      slot_of[i] = slot;
      token[slot] = i / k;
      gate[slot] = gates[i];
    } else {
      slot_of[i] = -1;
    }
  }
}

// plan_rank (probability policy): for each expert x over capacity
// (routed[x] > counts[x] = capacity > 0), keep[roff[x] + r] = 1 when list
// entry r's rank by (score desc, list position asc) is below the capacity,
// else 0. List position order is flat order, so this is moe's stable sort.
// Grid: (E, Y) blocks; block (x, y) takes tiles y, y+Y, ... of x's list and
// compares each entry with the whole list, a tile at a time in shared memory.
extern "C" __global__ void __launch_bounds__(kThreads)
    plan_rank(const int* __restrict__ routed, const int* __restrict__ counts, const int* __restrict__ roff,
              const float* __restrict__ lscore, int* __restrict__ keep) {
  __shared__ float s_score[kThreads];
  const int x = blockIdx.x;
  const int c = routed[x], cap = counts[x];
  if (c <= cap || cap == 0) return;  // not over capacity, or nothing kept (plan_kept drops all)
  const int ro = roff[x];
  const float* sc = lscore + ro;
  for (int base = blockIdx.y * kThreads; base < c; base += gridDim.y * kThreads) {
    const int r = base + threadIdx.x;
    const float si = r < c ? sc[r] : 0.f;
    int rank = 0;
    for (int jb = 0; jb < c; jb += kThreads) {
      __syncthreads();  // the previous tile is no longer read
      if (jb + threadIdx.x < c) s_score[threadIdx.x] = sc[jb + threadIdx.x];
      __syncthreads();
      const int lim = min(kThreads, c - jb);
      const int rr = r - jb;  // entry r's position relative to this tile
#pragma unroll 8
      for (int jj = 0; jj < lim; jj++) {
        const float sj = s_score[jj];
        rank += (sj > si) | ((sj == si) & (jj < rr));
      }
    }
    if (r < c) keep[ro + r] = rank < cap ? 1 : 0;
  }
}

// plan_kept (probability policy): for each expert x over capacity, gives its
// kept list entries slots offsets[x] + (kept entries before it in list
// order) and its dropped ones SlotOf −1. Grid: one block per expert.
extern "C" __global__ void __launch_bounds__(kThreads)
    plan_kept(const int* __restrict__ routed, const int* __restrict__ counts, const int* __restrict__ offsets,
              const int* __restrict__ roff, const int* __restrict__ list, const int* __restrict__ keep,
              const float* __restrict__ gates, int* __restrict__ token, float* __restrict__ gate,
              int* __restrict__ slot_of, int k) {
  __shared__ int sh[32];
  const int x = blockIdx.x;
  const int c = routed[x], cap = counts[x];
  if (c <= cap) return;
  const int off = offsets[x], ro = roff[x];
  int carry = 0;
  for (int base = 0; base < c; base += kThreads) {
    const int r = base + threadIdx.x;
    const int kf = (r < c && cap > 0) ? keep[ro + r] : 0;
    int tot;
    const int ex = block_scan_excl(kf, sh, tot);
    if (r < c) {
      const int i = list[ro + r];
      if (kf) {
        const int slot = off + carry + ex;
        slot_of[i] = slot;
        token[slot] = i / k;
        gate[slot] = gates[i];
      } else {
        slot_of[i] = -1;
      }
    }
    carry += tot;
  }
}
