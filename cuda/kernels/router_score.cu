// Router scores: logits [n, e] -> probs [n, e] and back, as moe's
// scoreForward/scoreBackward (softmax over a token's e experts through
// tensor.SoftmaxForward/Backward, or the sigmoid of each logit). Row-major
// float32; the backward kernels ACCUMULATE into dlogits, like the CPU.
#include "common.cuh"

// router_softmax_f32: one warp per token (blockDim.x a multiple of 32).
// Row max first, then probs = exp(x - max) * (1 / sum), as softmaxRow; a row
// whose max is -Inf gives zeros, as on the CPU.
extern "C" __global__ void router_softmax_f32(float* __restrict__ probs, const float* __restrict__ logits, int n, int e) {
  const int lane = threadIdx.x & 31, wpb = blockDim.x >> 5;
  for (long long t = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); t < n; t += (long long)gridDim.x * wpb) {
    const float* x = logits + t * e;
    float* o = probs + t * e;
    float mx = -INFINITY;
    for (int i = lane; i < e; i += 32) mx = fmaxf(mx, x[i]);
    mx = warp_max(mx);
    if (mx == -INFINITY) {
      for (int i = lane; i < e; i += 32) o[i] = 0.f;
      continue;
    }
    float s = 0.f;
    for (int i = lane; i < e; i += 32) s += expf(x[i] - mx);
    s = warp_sum(s);
    const float inv = 1.f / s;
    for (int i = lane; i < e; i += 32) o[i] = expf(x[i] - mx) * inv;
  }
}

// router_softmax_backward_f32: one warp per token;
// dlogits += probs ∘ (dprobs − Σ dprobs·probs).
extern "C" __global__ void router_softmax_backward_f32(float* __restrict__ dlogits, const float* __restrict__ dprobs,
                                                       const float* __restrict__ probs, int n, int e) {
  const int lane = threadIdx.x & 31, wpb = blockDim.x >> 5;
  for (long long t = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); t < n; t += (long long)gridDim.x * wpb) {
    const float* y = probs + t * e;
    const float* g = dprobs + t * e;
    float* d = dlogits + t * e;
    float s = 0.f;
    for (int i = lane; i < e; i += 32) s += g[i] * y[i];
    s = warp_sum(s);
    for (int i = lane; i < e; i += 32) d[i] += y[i] * (g[i] - s);
  }
}

// router_sigmoid_f32: probs[i] = float32(1 / (1 + exp(-x))) computed in
// double, as the CPU does, over total = n·e elements.
extern "C" __global__ void router_sigmoid_f32(float* __restrict__ probs, const float* __restrict__ logits, int total) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x)
    probs[i] = (float)(1.0 / (1.0 + exp(-(double)logits[i])));
}

// router_sigmoid_backward_f32: dlogits += dprobs·p·(1 − p) over total
// elements, the products rounded one at a time as in Go (no FMA).
extern "C" __global__ void router_sigmoid_backward_f32(float* __restrict__ dlogits, const float* __restrict__ dprobs,
                                                       const float* __restrict__ probs, int total) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
    const float p = probs[i];
    dlogits[i] = __fadd_rn(dlogits[i], __fmul_rn(__fmul_rn(dprobs[i], p), 1.f - p));
  }
}
