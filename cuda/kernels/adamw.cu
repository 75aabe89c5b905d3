// AdamW step over a range of a flat parameter buffer (optim/adamw.go), fused
// with the sum of squares of the raw gradient, in one pass.
//
// The element math is the CPU's, operation for operation, with explicit
// round-to-nearest intrinsics so that nvcc does not fuse multiply-adds: the
// updated params and moments match optim.AdamW.Update bitwise wherever Go
// does not fuse either (amd64).
//
// Block b owns elements [b·CHUNK, min((b+1)·CHUNK, n)) and writes its Σg² to
// partial[b]; elementwise_sum_f64 (elementwise.cu) adds the partials in a
// fixed order. The partition depends only on n, so the sum is bitwise
// reproducible on any GPU.
#include "common.cuh"

// ADAMW_CHUNK must equal ELEMENTWISE_CHUNK and Go's elementwiseChunk (the
// scratch of partial sums is sized by it).
#define ADAMW_CHUNK 8192

struct AdamWHyper {
  float b1, b2, ob1, ob2, decay, step, invSqrtBc2, eps, gs;
};

// adamw_one updates one element; ss accumulates g² of the raw gradient.
static __device__ __forceinline__ void adamw_one(float& p, float g0, float& m, float& v, const AdamWHyper& h, double& ss) {
  ss += (double)g0 * (double)g0;
  float gi = __fmul_rn(g0, h.gs);
  float mi = __fadd_rn(__fmul_rn(h.b1, m), __fmul_rn(h.ob1, gi));
  float vi = __fadd_rn(__fmul_rn(h.b2, v), __fmul_rn(__fmul_rn(h.ob2, gi), gi));
  m = mi;
  v = vi;
  float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), h.invSqrtBc2), h.eps);
  p = __fsub_rn(__fmul_rn(p, h.decay), __fdiv_rn(__fmul_rn(h.step, mi), denom));
}

// adamw_update_f32 updates p, m, v over i < n from gradient g (each pointer
// already offset to the range's start), grid ceil(n/CHUNK), blockDim a
// multiple of 32 (fixed, for reproducible sums):
//
//	gi = g·gs;  m = β1·m + (1−β1)·gi;  v = β2·v + (1−β2)·gi²
//	p  = p·decay − step·m / (sqrt(v)·invSqrtBc2 + eps)
//
// with decay = 1 − lr·wd, step = lr/(1−β1^t), invSqrtBc2 = 1/sqrt(1−β2^t)
// computed on the host as the CPU does. gs = float(gradScale·c), where c is
// 1, or, when norm is non-null and maxNorm > 0, optim.ClipScale(*norm,
// maxNorm) evaluated here in double (so clipping needs no host round trip).
// When partial is non-null, partial[blockIdx.x] = Σ g² over the block's
// elements (before gs), in double. When p16 is non-null it receives the
// updated p rounded to bf16 (the mixed-precision weight copy, written in the
// same pass instead of a separate cast over every parameter).
extern "C" __global__ void adamw_update_f32(float* p, __nv_bfloat16* p16, const float* g, float* m, float* v, double* partial, const double* norm,
                                            long long n, float b1, float b2, float ob1, float ob2, float decay, float step,
                                            float invSqrtBc2, float eps, double gradScale, double maxNorm) {
  __shared__ double sh[32];
  double gsd = gradScale;
  if (norm != nullptr && maxNorm > 0.0) {
    double nr = *norm;
    if (nr > maxNorm) gsd *= maxNorm / (nr + 1e-6);
  }
  AdamWHyper h{b1, b2, ob1, ob2, decay, step, invSqrtBc2, eps, (float)gsd};
  long long lo = (long long)blockIdx.x * ADAMW_CHUNK;
  long long hi = min(lo + (long long)ADAMW_CHUNK, n);
  double ss = 0.0;
  bool vec = is_aligned(p, 16) && is_aligned(g, 16) && is_aligned(m, 16) && is_aligned(v, 16);
  long long m4 = vec ? (hi - lo) >> 2 : 0;  // lo is a multiple of 4
  for (long long k = threadIdx.x; k < m4; k += blockDim.x) {
    long long i = lo + 4 * k;
    float4 pp = *reinterpret_cast<float4*>(p + i);
    float4 gg = *reinterpret_cast<const float4*>(g + i);
    float4 mm = *reinterpret_cast<float4*>(m + i);
    float4 vv = *reinterpret_cast<float4*>(v + i);
    adamw_one(pp.x, gg.x, mm.x, vv.x, h, ss);
    adamw_one(pp.y, gg.y, mm.y, vv.y, h, ss);
    adamw_one(pp.z, gg.z, mm.z, vv.z, h, ss);
    adamw_one(pp.w, gg.w, mm.w, vv.w, h, ss);
    *reinterpret_cast<float4*>(p + i) = pp;
    *reinterpret_cast<float4*>(m + i) = mm;
    *reinterpret_cast<float4*>(v + i) = vv;
    if (p16 != nullptr) {
      p16[i] = __float2bfloat16_rn(pp.x);
      p16[i + 1] = __float2bfloat16_rn(pp.y);
      p16[i + 2] = __float2bfloat16_rn(pp.z);
      p16[i + 3] = __float2bfloat16_rn(pp.w);
    }
  }
  for (long long i = lo + 4 * m4 + threadIdx.x; i < hi; i += blockDim.x) {
    float pp = p[i], mm = m[i], vv = v[i];
    adamw_one(pp, g[i], mm, vv, h, ss);
    p[i] = pp;
    m[i] = mm;
    v[i] = vv;
    if (p16 != nullptr) p16[i] = __float2bfloat16_rn(pp);
  }
  if (partial == nullptr) return;  // uniform across the block
  ss = block_sum_f64(ss, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = ss;
}
