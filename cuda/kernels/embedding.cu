// Token and position embeddings (tensor/embedding.go, model.EmbedForward).
// Tables and their gradients are float; the forward's output is T = float
// (_f32) or __nv_bfloat16 (_bf16, the sum rounded once). Rows use 4-element
// chunks when d is a multiple of 4 and the pointers are aligned to a chunk.
//
// The backward is deterministic without atomics: the host sorts the batch's
// positions by id (ops.EmbeddingIndex), and one block per distinct id adds
// that id's dout rows in increasing position into its table row, exactly
// the additions, in the order, of tensor.EmbeddingBackward.
#include "common.cuh"

// embedding_fwd: out[i,:] = table[ids[i],:] (+ ptable[pos[i],:] when ptable
// is non-null) for i < n, rows of width d; grid-stride over the output.
// An id outside [0, vocab) or a position outside [0, npos) gives a NaN row
// instead of reading out of bounds (the CPU panics there).
template <typename T>
__device__ __forceinline__ void embedding_fwd(T* out, const int* ids, const float* table, const int* pos, const float* ptable,
                                              int n, int d, int vocab, int npos) {
  const float nan = __int_as_float(0x7fc00000);
  long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
  bool vec = (d & 3) == 0 && is_aligned(out, 4 * sizeof(T)) && is_aligned(table, 16) &&
             (ptable == nullptr || is_aligned(ptable, 16));
  if (vec) {
    int d4 = d >> 2;
    long long total = (long long)n * d4;
    for (long long k = tid; k < total; k += stride) {
      int i = (int)(k / d4), j = (int)(k - (long long)i * d4) * 4;
      int id = ids[i];
      float v[4];
      if (id >= 0 && id < vocab) {
        float4 q = *reinterpret_cast<const float4*>(table + (size_t)id * d + j);
        v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
      } else {
        v[0] = v[1] = v[2] = v[3] = nan;
      }
      if (ptable != nullptr) {
        int p = pos[i];
        if (p >= 0 && p < npos) {
          float4 q = *reinterpret_cast<const float4*>(ptable + (size_t)p * d + j);
          v[0] += q.x; v[1] += q.y; v[2] += q.z; v[3] += q.w;
        } else {
          v[0] = v[1] = v[2] = v[3] = nan;
        }
      }
      store4(out + (size_t)i * d + j, v);
    }
    return;
  }
  long long total = (long long)n * d;
  for (long long k = tid; k < total; k += stride) {
    int i = (int)(k / d), j = (int)(k - (long long)i * d);
    int id = ids[i];
    float v = (id >= 0 && id < vocab) ? table[(size_t)id * d + j] : nan;
    if (ptable != nullptr) {
      int p = pos[i];
      v = (p >= 0 && p < npos) ? v + ptable[(size_t)p * d + j] : nan;
    }
    out[k] = from_f32<T>(v);
  }
}

extern "C" __global__ void embedding_fwd_f32(float* out, const int* ids, const float* table, const int* pos, const float* ptable,
                                             int n, int d, int vocab, int npos) {
  embedding_fwd(out, ids, table, pos, ptable, n, d, vocab, npos);
}
extern "C" __global__ void embedding_fwd_bf16(__nv_bfloat16* out, const int* ids, const float* table, const int* pos,
                                              const float* ptable, int n, int d, int vocab, int npos) {
  embedding_fwd(out, ids, table, pos, ptable, n, d, vocab, npos);
}

// embedding_bwd_f32: for each distinct id b < u (grid-stride over blocks),
// with id = unique[b] and its positions order[starts[b]] < … <
// order[starts[b+1]−1], ACCUMULATES
//
//	dtable[id,j] = ((dtable[id,j] + dout[p0,j]) + dout[p1,j]) + …
//
// for j < d. Ids outside [0, vocab) are skipped. Each table row belongs to
// one block, so there are no races and the sum order is fixed.
extern "C" __global__ void embedding_bwd_f32(float* dtable, const int* order, const int* unique, const int* starts,
                                             const float* dout, int u, int d, int vocab) {
  bool vec = (d & 3) == 0 && is_aligned(dtable, 16) && is_aligned(dout, 16);
  int d4 = vec ? d >> 2 : 0;
  for (int b = blockIdx.x; b < u; b += gridDim.x) {
    int id = unique[b];
    if (id < 0 || id >= vocab) continue;  // whole block
    int k0 = starts[b], k1 = starts[b + 1];
    float* dst = dtable + (size_t)id * d;
    for (int c = threadIdx.x; c < d4; c += blockDim.x) {
      float4 acc = reinterpret_cast<float4*>(dst)[c];
      for (int k = k0; k < k1; k++) {
        float4 g = reinterpret_cast<const float4*>(dout + (size_t)order[k] * d)[c];
        acc.x += g.x; acc.y += g.y; acc.z += g.z; acc.w += g.w;
      }
      reinterpret_cast<float4*>(dst)[c] = acc;
    }
    for (int j = 4 * d4 + threadIdx.x; j < d; j += blockDim.x) {
      float acc = dst[j];
      for (int k = k0; k < k1; k++) acc += dout[(size_t)order[k] * d + j];
      dst[j] = acc;
    }
  }
}
