// Router selection and its backward: probs [n, e] (+ bias [e]) -> experts
// [n, k] int32 and gates [n, k] float32, and dgates -> dprobs, matching
// moe.TopK, moe.MoGE and moe.GroupLimited bit for bit: one thread per token
// runs the CPU's own insertion scans (pushTop/scanTop), so the experts'
// order, the tie rules (the earlier-scanned expert first) and even NaN keys
// behave as on the CPU, and the gates are the same float32 operations.
#include "common.cuh"

// Router kinds (gpu/ops RouterKind).
#define ROUTER_TOPK 0
#define ROUTER_MOGE 1
#define ROUTER_GROUP_LIMITED 2

// TopList is a descending top list of capacity cap, moe's ex[:filled]. Its
// entries live in shared memory, entry j of this thread at idx[j*stride] and
// key[j*stride] (stride = blockDim.x: the threads' lists interleave, so
// threads reading the same entry hit different banks). key caches each
// entry's selection key, which the CPU recomputes as the same float.
struct TopList {
  int* idx;
  float* key;
  int stride, cap, filled;

  // push is moe.pushTop, and with the full-list threshold test first it is
  // one step of moe.scanTop: insert i with key v after every entry whose
  // key is >= v, dropping the last entry when full; skip i when the list is
  // full and v is not > the last key (also when v or that key is NaN).
  __device__ __forceinline__ void push(int i, float v) {
    if (filled == cap && !(v > key[(cap - 1) * stride])) return;
    int j = filled;
    if (filled < cap)
      filled++;
    else
      j = cap - 1;
    while (j > 0 && v > key[(j - 1) * stride]) {
      idx[j * stride] = idx[(j - 1) * stride];
      key[j * stride] = key[(j - 1) * stride];
      j--;
    }
    idx[j * stride] = i;
    key[j * stride] = v;
  }
};

// scan_top is moe.scanTop: push experts lo..hi-1 in index order with key
// p[i] + b[i] (p[i] without bias).
__device__ __forceinline__ void scan_top(TopList& l, const float* __restrict__ p, const float* __restrict__ b, int lo,
                                         int hi) {
  for (int i = lo; i < hi; i++) l.push(i, b ? p[i] + b[i] : p[i]);
}

// router_select_f32: one thread per token (any blockDim.x), dynamic shared
// memory of cap·blockDim.x·8 bytes with cap = k (topk, moge) or
// k + 2 + topk_groups (group_limited: the token's list, a group's top two,
// the kept groups). bias may be null. The wrapper has checked the shapes
// against moe's rules (groups divide e, and k for moge; topk_groups in
// [1, groups] and k <= topk_groups·e/groups), so every list fills.
extern "C" __global__ void router_select_f32(int* __restrict__ experts, float* __restrict__ gates,
                                             const float* __restrict__ probs, const float* __restrict__ bias, int n,
                                             int e, int k, int kind, int groups, int topk_groups) {
  extern __shared__ int router_select_smem[];
  const int T = blockDim.x;
  const int cap = kind == ROUTER_GROUP_LIMITED ? k + 2 + topk_groups : k;
  int* sidx = router_select_smem + threadIdx.x;
  float* skey = reinterpret_cast<float*>(router_select_smem + cap * T) + threadIdx.x;
  const int gs = e / groups;
  for (long long t = (long long)blockIdx.x * T + threadIdx.x; t < n; t += (long long)gridDim.x * T) {
    const float* p = probs + t * e;
    int* ex = experts + t * k;
    float* g = gates + t * k;
    if (kind == ROUTER_MOGE) {
      // The top k/groups inside each group, group by group; gates are the
      // chosen scores themselves.
      const int kg = k / groups;
      for (int grp = 0; grp < groups; grp++) {
        TopList l{sidx + grp * kg * T, skey + grp * kg * T, T, kg, 0};
        scan_top(l, p, bias, grp * gs, (grp + 1) * gs);
      }
      for (int j = 0; j < k; j++) {
        const int x = sidx[j * T];
        ex[j] = x;
        g[j] = p[x];
      }
      continue;
    }
    TopList l{sidx, skey, T, k, 0};
    if (kind == ROUTER_GROUP_LIMITED) {
      // Group score: the sum of the group's two best keys (its best alone
      // for one-expert groups); keep the topk_groups best groups (ties to
      // the lower group), then scan the kept groups in ascending order.
      TopList keep{sidx + (k + 2) * T, skey + (k + 2) * T, T, topk_groups, 0};
      for (int grp = 0; grp < groups; grp++) {
        TopList top{sidx + k * T, skey + k * T, T, min(2, gs), 0};
        scan_top(top, p, bias, grp * gs, (grp + 1) * gs);
        float s = top.key[0];
        if (gs > 1) s += top.key[T];
        keep.push(grp, s);
      }
      // moe.sortInt32: the kept groups ascending (distinct, the list full).
      for (int a = 1; a < topk_groups; a++) {
        const int v = keep.idx[a * T];
        int j = a;
        while (j > 0 && keep.idx[(j - 1) * T] > v) {
          keep.idx[j * T] = keep.idx[(j - 1) * T];
          j--;
        }
        keep.idx[j * T] = v;
      }
      for (int a = 0; a < topk_groups; a++) {
        const int grp = keep.idx[a * T];
        scan_top(l, p, bias, grp * gs, (grp + 1) * gs);
      }
    } else {
      scan_top(l, p, bias, 0, e);
    }
    // moe.normalizeGates: the float32 sum in list order, then p / sum.
    float sum = 0.f;
    for (int j = 0; j < k; j++) sum += p[sidx[j * T]];
    for (int j = 0; j < k; j++) {
      const int x = sidx[j * T];
      ex[j] = x;
      g[j] = p[x] / sum;
    }
  }
}

// router_backward_f32 ACCUMULATES into dprobs [n, e] the gradient through
// the gates, given dgates [n, k], one thread per token. renorm != 0 is
// moe.normalizedBackward (topk, group_limited): with S = Σ p_chosen,
// dp_j += (dg_j − Σ dg·g) / S; renorm == 0 is MoGE: dp_j += dg_j. Products
// are rounded one at a time as in Go. Experts must come from
// router_select_f32 (distinct within a row); an entry outside [0, e) is
// skipped rather than written out of bounds.
extern "C" __global__ void router_backward_f32(float* __restrict__ dprobs, const float* __restrict__ dgates,
                                               const float* __restrict__ probs, const int* __restrict__ experts,
                                               const float* __restrict__ gates, int n, int e, int k, int renorm) {
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n; t += (long long)gridDim.x * blockDim.x) {
    const int* ex = experts + t * k;
    const float* dg = dgates + t * k;
    float* dp = dprobs + t * e;
    if (!renorm) {
      for (int j = 0; j < k; j++) {
        const int x = ex[j];
        if ((unsigned)x < (unsigned)e) dp[x] += dg[j];
      }
      continue;
    }
    const float* p = probs + t * e;
    const float* g = gates + t * k;
    float sum = 0.f, dot = 0.f;
    for (int j = 0; j < k; j++) {
      const int x = ex[j];
      if ((unsigned)x < (unsigned)e) sum += p[x];
      dot = __fadd_rn(dot, __fmul_rn(dg[j], g[j]));
    }
    for (int j = 0; j < k; j++) {
      const int x = ex[j];
      if ((unsigned)x < (unsigned)e) dp[x] += (dg[j] - dot) / sum;
    }
  }
}
