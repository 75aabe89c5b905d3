// SPSA's Rademacher directions (spsa/direction.go): element i of the
// direction with seed s is bit i%64 of mix64(s + (i/64+1)·γ), 0 → +1 and
// 1 → −1. Both kernels do what the host does element by element, with only
// additions on parameters (nothing for a fused multiply-add to change), so
// the device's parameters equal the host's bit for bit.
#include "common.cuh"

#define SPSA_GAMMA 0x9e3779b97f4a7c15ull

__device__ __forceinline__ unsigned long long spsa_mix64(unsigned long long x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

// spsa_signed is x·z exactly: x with its sign bit flipped where the
// direction's bit for the element is set.
__device__ __forceinline__ float spsa_signed(float x, unsigned long long seed, long long i) {
  unsigned long long bits = spsa_mix64(seed + (unsigned long long)(i / 64 + 1) * SPSA_GAMMA);
  unsigned int flip = (unsigned int)((bits >> (i % 64)) & 1ull) << 31;
  return __int_as_float(__float_as_int(x) ^ flip);
}

// spsa_perturb_f32: dst[i] = src[i] + h·z[i] for i < n.
extern "C" __global__ void spsa_perturb_f32(float* dst, const float* src, unsigned long long seed, float h, long long n) {
  long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = __fadd_rn(src[i], spsa_signed(h, seed, i));
}

// spsa_apply_f32: p[i] += Σₖ coefs[k]·z_k[i] for i < n, the k terms summed
// from zero in order k before the one addition to p[i] (spsa.ApplyTerms).
extern "C" __global__ void spsa_apply_f32(float* p, const unsigned long long* seeds, const float* coefs, int k, long long n) {
  long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float a = 0.f;
    for (int j = 0; j < k; j++) a = __fadd_rn(a, spsa_signed(coefs[j], seeds[j], i));
    p[i] = __fadd_rn(p[i], a);
  }
}
