// Router loss statistics: the Switch/GShard aux loss (moe.Aux) and the
// router z-loss (moe.ZLoss), forward and backward. Sums are deterministic
// without float atomics: each block sums a fixed token range in a fixed
// order into a scratch partial, and one small kernel reduces the partials
// in block order. mask (null = every token) is a uint8 per token, nonzero =
// counted (a Go []bool's bytes). Counts are kept as doubles (exact below
// 2^53) so that a stats buffer can be all-reduced as one float64 array.
#include "common.cuh"

__device__ __forceinline__ double router_warp_max_f64(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// router_aux_partial: block b (blockDim.x = 256 >= e) sums the counted
// tokens of [b·chunk, min(n, (b+1)·chunk)) into pprob[b·e + i] (Σ float64
// probs of expert i), pslot[b·e + i] (slots routed to i) and pcount[b]
// (counted tokens). Slots and counts are integer shared-memory atomics
// (order-free); the prob sums run in token order per thread and are then
// added in thread order.
extern "C" __global__ void router_aux_partial(double* __restrict__ pprob, int* __restrict__ pslot,
                                              int* __restrict__ pcount, const float* __restrict__ probs,
                                              const int* __restrict__ experts, const unsigned char* __restrict__ mask,
                                              int n, int e, int k, int chunk) {
  __shared__ int slots[256];
  __shared__ double part[256];
  __shared__ int count;
  const int tid = threadIdx.x, T = blockDim.x;
  const int t0 = blockIdx.x * chunk, t1 = min(n, t0 + chunk);
  for (int i = tid; i < e; i += T) slots[i] = 0;
  if (tid == 0) count = 0;
  __syncthreads();
  for (int t = t0 + tid; t < t1; t += T) {
    if (mask && !mask[t]) continue;
    atomicAdd(&count, 1);
    const int* ex = experts + (long long)t * k;
    for (int j = 0; j < k; j++) {
      const int x = ex[j];
      if ((unsigned)x < (unsigned)e) atomicAdd(&slots[x], 1);
    }
  }
  // rows threads per expert: thread (r, i) sums tokens t0 + r, t0 + r + rows, ...
  const int rows = T / e, r = tid / e, i = tid - r * e;
  double s = 0;
  if (r < rows)
    for (int t = t0 + r; t < t1; t += rows)
      if (!mask || mask[t]) s += (double)probs[(long long)t * e + i];
  part[tid] = s;
  __syncthreads();
  if (tid < e) {
    double acc = 0;
    for (int q = 0; q < rows; q++) acc += part[q * e + tid];
    pprob[(long long)blockIdx.x * e + tid] = acc;
    pslot[(long long)blockIdx.x * e + tid] = slots[tid];
  }
  if (tid == 0) pcount[blockIdx.x] = count;
}

// router_aux_reduce: stats = [SlotSum e][ProbSum e][Count] (float64) from
// nb partials, summed in block order; one block, any blockDim.x. nb = 0
// writes zeros.
extern "C" __global__ void router_aux_reduce(double* __restrict__ stats, const double* __restrict__ pprob,
                                             const int* __restrict__ pslot, const int* __restrict__ pcount, int e,
                                             int nb) {
  for (int i = threadIdx.x; i < e; i += blockDim.x) {
    double ps = 0;
    long long sl = 0;
    for (int b = 0; b < nb; b++) {
      ps += pprob[(long long)b * e + i];
      sl += pslot[(long long)b * e + i];
    }
    stats[i] = (double)sl;
    stats[e + i] = ps;
  }
  if (threadIdx.x == 0) {
    long long c = 0;
    for (int b = 0; b < nb; b++) c += pcount[b];
    stats[2 * e] = (double)c;
  }
}

// router_aux_finish is moe.Aux.Finish on one thread: fin = [F e][P e][Value]
// [Count] from stats = [SlotSum e][ProbSum e][Count] (this rank's or
// all-reduced): F_i = SlotSum_i / (Count·k), P_i = ProbSum_i / Count,
// Value = e·Σ F_i·P_i (in order, products rounded as in Go); all zero when
// Count is 0.
extern "C" __global__ void router_aux_finish(double* __restrict__ fin, const double* __restrict__ stats, int e, int k) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const double count = stats[2 * e];
  double v = 0;
  for (int i = 0; i < e; i++) {
    double f = 0, p = 0;
    if (count != 0) {
      f = stats[i] / (count * (double)k);
      p = stats[e + i] / count;
    }
    fin[i] = f;
    fin[e + i] = p;
    v = __dadd_rn(v, __dmul_rn(f, p));
  }
  fin[2 * e] = count != 0 ? v * (double)e : 0.0;
  fin[2 * e + 1] = count;
}

// router_aux_backward is moe.AuxBackward: dprobs[t, i] += float32(coef·e·F_i
// / Count) for every counted token t, with F and Count from fin
// (router_aux_finish's layout); nothing when Count is 0. e <= 256 (the
// per-expert increments sit in shared memory); any blockDim.x.
extern "C" __global__ void router_aux_backward(float* __restrict__ dprobs, const double* __restrict__ fin,
                                               const unsigned char* __restrict__ mask, int n, int e, double coef) {
  __shared__ float gs[256];
  const double count = fin[2 * e + 1];
  if (count == 0) return;
  for (int i = threadIdx.x; i < e; i += blockDim.x) gs[i] = (float)(coef * (double)e * fin[i] / count);
  __syncthreads();
  const long long total = (long long)n * e;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const long long t = idx / e;
    if (mask && !mask[t]) continue;
    dprobs[idx] += gs[idx - t * e];
  }
}

// router_zloss_partial: one warp per token over block b's tokens
// [b·chunk, min(n, (b+1)·chunk)) (blockDim.x a multiple of 32, at most
// 1024): lse[t] = max + log(Σ exp(x − max)) in float64 for every token, and
// part[2b] = Σ lse² and part[2b+1] = count over the counted ones, each warp
// in token order, then the warps in order.
extern "C" __global__ void router_zloss_partial(double* __restrict__ lse, double* __restrict__ part,
                                                const float* __restrict__ logits,
                                                const unsigned char* __restrict__ mask, int n, int e, int chunk) {
  __shared__ double wsum[32];
  __shared__ int wcnt[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int t0 = blockIdx.x * chunk, t1 = min(n, t0 + chunk);
  double acc = 0;
  int cnt = 0;
  for (int t = t0 + warp; t < t1; t += nw) {
    const float* x = logits + (long long)t * e;
    double mx = -INFINITY;
    for (int i = lane; i < e; i += 32) mx = fmax(mx, (double)x[i]);
    mx = router_warp_max_f64(mx);
    double s = 0;
    for (int i = lane; i < e; i += 32) s += exp((double)x[i] - mx);
    s = warp_sum_f64(s);
    const double l = mx + log(s);
    if (lane == 0) lse[t] = l;
    if (!mask || mask[t]) {
      acc = __dadd_rn(acc, __dmul_rn(l, l));
      cnt++;
    }
  }
  if (lane == 0) {
    wsum[warp] = acc;
    wcnt[warp] = cnt;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    int c = 0;
    for (int w = 0; w < nw; w++) {
      s += wsum[w];
      c += wcnt[w];
    }
    part[2 * blockIdx.x] = s;
    part[2 * blockIdx.x + 1] = (double)c;
  }
}

// router_zloss_reduce: z = [Sum, Count, Value = Sum/Count (0 without
// counted tokens)] from nb partials; one warp (blockDim.x = 32), lane l
// summing partials l, l+32, ... in order, then a fixed butterfly.
extern "C" __global__ void router_zloss_reduce(double* __restrict__ z, const double* __restrict__ part, int nb) {
  const int lane = threadIdx.x & 31;
  double s = 0, c = 0;
  for (int b = lane; b < nb; b += 32) {
    s += part[2 * b];
    c += part[2 * b + 1];
  }
  s = warp_sum_f64(s);
  c = warp_sum_f64(c);
  if (threadIdx.x == 0) {
    z[0] = s;
    z[1] = c;
    z[2] = c > 0 ? s / c : 0.0;
  }
}

// router_zloss_finish is moe.ZLoss.Finish: z[2] = z[0]/z[1] (0 when z[1]
// is 0), after a caller all-reduced z[0:2].
extern "C" __global__ void router_zloss_finish(double* __restrict__ z) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  z[2] = z[1] > 0 ? z[0] / z[1] : 0.0;
}

// router_zloss_backward is moe.ZLoss.Backward: dlogits[t, i] +=
// float32(c_t · exp(x − lse_t)) with c_t = coef·2·lse_t/Count for every
// counted token, Count = z[1]; nothing when Count is 0.
extern "C" __global__ void router_zloss_backward(float* __restrict__ dlogits, const float* __restrict__ logits,
                                                 const double* __restrict__ lse, const double* __restrict__ z,
                                                 const unsigned char* __restrict__ mask, int n, int e, double coef) {
  const double count = z[1];
  if (count == 0) return;
  const long long total = (long long)n * e;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const long long t = idx / e;
    if (mask && !mask[t]) continue;
    const double l = lse[t];
    const double c = coef * 2.0 * l / count;
    dlogits[idx] += (float)(c * exp((double)logits[idx] - l));
  }
}
