// CUDA kernel of dnd_fast::conv_plane_thin and its launcher (the op's argument checks are in ops_cuda.cpp).
//
// The decoder's thin convolutions (at most 64 input and 64 output channels, e.g. the height convs of
// the late layers: 50 -> 50, 25 -> 10, 10 -> 10 channels over 200 x 1024 positions, 9 x 9 taps) move
// far more input than they compute with: an implicit GEMM that loads each tap's shifted tile reads
// the input k*k times from L2 (the Triton plane kernel, L2-bound at ~7 TB/s). Here a block loads its
// input once, as a halo tile ((8 + k - 1) x (TQ + k - 1) positions, all channels) in shared memory,
// and every tap reads its shifted view of that tile with ldmatrix: L2 traffic is the halo plus the
// weights, which stream through a ring of per-tap slices. mma.sync m16n8k16, fp32 accumulators.
//
// Input: a PaddedPlane buffer (kernels/hyperconv.py) [rows, C8], image b's position (p, q) at row
// lead + b * (P + pad) * (Q + pad) + p * (Q + pad) + q, spare cells zero, so a tap's input for an
// output inside the image is a plain shifted position and 'same' padding comes for free. Outputs
// outside the image read whatever lies there and are not stored.
// Weight: [k*k, N16, CK] (tap, output channel, input channel), zero-padded (dnd_fast/thin_conv.py).
// Output: [B, C_out, P, Q] with any strides.
#include <algorithm>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include "conv_thin.h"

namespace dnd_fast {
namespace {

constexpr int kWarps = 8;   // one output row of the block's tile per warp
constexpr int kTileP = kWarps;
constexpr int kStages = 4;  // weight taps in flight

// 16-byte chunk `chunk` of shared-memory row `row` (NC chunks per row), its chunk index XOR-ed with
// bits of the row so that the 8 rows an ldmatrix phase reads land in 8 distinct bank groups for
// any starting row (the taps shift the rows by one position at a time).
template <int NC>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * NC + (chunk ^ ((row / (8 / NC)) & (NC - 1)));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const void* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

struct ThinArgs {
  int64_t rows;          // rows of the plane buffer
  int C8, lead, P, Q, ks, cout, tiles_p, tiles_q;
  int64_t sob, son, sop, soq;  // output strides (batch, channel, p, q)
  int inner;             // which output index runs fastest across threads in the store: 0 n, 1 q, 2 p
};

// CK: input channels padded to 16/32/64 (one k16 step per 16); NT: 8-wide output-channel tiles;
// MT: 16-position row tiles per warp (a warp owns one output row of 16 * MT positions).
template <typename T, int CK, int NT, int MT>
__global__ void __launch_bounds__(kWarps * 32, 2)
    conv_thin_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, ThinArgs g) {
  constexpr int NC = CK / 8, N16 = (NT + 1) / 2 * 16, TQ = 16 * MT, NW = 8 * NT, STAGE_LD = NW + 8;
  extern __shared__ uint4 smem[];
  const int pad = (g.ks - 1) / 2, HQ = TQ + g.ks - 1, HP = kTileP + g.ks - 1;
  uint4* halo = smem;                    // HP x HQ positions, NC chunks each
  uint4* ring = smem + HP * HQ * NC;     // kStages taps x N16 output channels, NC chunks each
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int blk = blockIdx.x;
  const int tq = blk % g.tiles_q;
  blk /= g.tiles_q;
  const int tp = blk % g.tiles_p, b = blk / g.tiles_p;
  const int p0 = tp * kTileP, q0 = tq * TQ, QP = g.Q + pad;
  const int64_t origin = g.lead + static_cast<int64_t>(b) * (g.P + pad) * QP +
                         static_cast<int64_t>(p0 - pad) * QP + (q0 - pad);  // halo position (0, 0)

  for (int e = tid; e < HP * HQ * NC; e += kWarps * 32) {
    const int chunk = e % NC, pos = e / NC, a = pos / HQ, c = pos - a * HQ;
    const int64_t r = origin + static_cast<int64_t>(a) * QP + c;
    const bool ok = r >= 0 && r < g.rows && chunk * 8 < g.C8;  // else zero: past the buffer, or channel padding
    cp_async16(halo + swizzled<NC>(pos, chunk), x + (ok ? r * g.C8 + chunk * 8 : 0), ok);
  }
  cp_commit();
  const int taps = g.ks * g.ks;
  auto load_tap = [&](int t) {
    uint4* dst = ring + (t % kStages) * N16 * NC;
    const T* src = w + static_cast<int64_t>(t) * N16 * CK;
    for (int e = tid; e < N16 * NC; e += kWarps * 32)
      cp_async16(dst + swizzled<NC>(e / NC, e % NC), src + e * 8, true);
  };
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < taps) load_tap(s);
    cp_commit();  // empty groups too: the wait below counts groups
  }

  float acc[MT][NT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int v = 0; v < 4; ++v) acc[m][n][v] = 0.f;

  for (int t = 0; t < taps; ++t) {
    cp_wait<kStages - 2>();  // the halo and tap t have landed (this thread's copies) ...
    __syncthreads();         // ... everyone's, and tap t - 1's slot is free
    if (t + kStages - 1 < taps) load_tap(t + kStages - 1);
    cp_commit();
    const int i = t / g.ks, j = t - i * g.ks;
    const uint4* wt = ring + (t % kStages) * N16 * NC;
#pragma unroll
    for (int kc = 0; kc < CK / 16; ++kc) {
      unsigned a[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m)  // rows (lane & 15), k half (lane >> 4): the m16k16 A fragment
        ldsm_x4(a[m], halo + swizzled<NC>((warp + i) * HQ + m * 16 + j + (lane & 15), 2 * kc + (lane >> 4)));
#pragma unroll
      for (int np = 0; np < (NT + 1) / 2; ++np) {  // two n8 tiles: k halves of n rows 0-7, then of 8-15
        unsigned bf[4];
        ldsm_x4(bf, wt + swizzled<NC>(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kc + ((lane >> 3) & 1)));
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mma16816<T>(acc[m][2 * np], a[m], bf[0], bf[1]);
          if (2 * np + 1 < NT) mma16816<T>(acc[m][2 * np + 1], a[m], bf[2], bf[3]);
        }
      }
    }
  }
  cp_wait<0>();
  __syncthreads();  // the tile is staged over the halo

  // Accumulators to [position][channel] in shared memory, then to the output in the order of its
  // smallest stride, so that neighbouring threads store neighbouring elements.
  T* stage = reinterpret_cast<T*>(smem);
  const int gr = lane >> 2, gc = 2 * (lane & 3);
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        T* row = stage + (warp * TQ + m * 16 + gr + 8 * h) * STAGE_LD + n * 8 + gc;
        row[0] = static_cast<T>(acc[m][n][2 * h]);
        row[1] = static_cast<T>(acc[m][n][2 * h + 1]);
      }
  __syncthreads();
  T* ob = out + static_cast<int64_t>(b) * g.sob;
  for (int e = tid; e < kTileP * TQ * NW; e += kWarps * 32) {
    int n, a, c;
    if (g.inner == 0) {
      n = e % NW;
      a = e / NW / TQ;
      c = e / NW % TQ;
    } else if (g.inner == 1) {
      c = e % TQ;
      a = e / TQ % kTileP;
      n = e / TQ / kTileP;
    } else {
      a = e % kTileP;
      c = e / kTileP % TQ;
      n = e / kTileP / TQ;
    }
    if (n < g.cout && p0 + a < g.P && q0 + c < g.Q)
      ob[n * g.son + (p0 + a) * g.sop + (q0 + c) * g.soq] = stage[(a * TQ + c) * STAGE_LD + n];
  }
}

template <typename T, int CK, int NT>
const char* launch(const at::Tensor& plane, const at::Tensor& weight, const at::Tensor& out, ThinArgs g) {
  constexpr int MT = NT <= 2 ? 4 : 2;  // few output channels: longer rows per warp for the same work
  constexpr int TQ = 16 * MT, N16 = (NT + 1) / 2 * 16;
  const int64_t B = out.size(0);
  g.tiles_p = (g.P + kTileP - 1) / kTileP;
  g.tiles_q = (g.Q + TQ - 1) / TQ;
  const size_t halo = static_cast<size_t>(kTileP + g.ks - 1) * (TQ + g.ks - 1) * CK * sizeof(T);
  const size_t ring = static_cast<size_t>(kStages) * N16 * CK * sizeof(T);
  const size_t stage = static_cast<size_t>(kTileP) * TQ * (8 * NT + 8) * sizeof(T);
  const size_t smem = std::max(halo + ring, stage);
  auto kernel = conv_thin_kernel<T, CK, NT, MT>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const int64_t blocks = B * g.tiles_p * g.tiles_q;
  if (blocks > 2147483647) return "too many output tiles for one launch";
  kernel<<<static_cast<unsigned>(blocks), kWarps * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(
      static_cast<const T*>(plane.data_ptr()), static_cast<const T*>(weight.data_ptr()),
      static_cast<T*>(out.data_ptr()), g);
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <typename T, int CK>
const char* launch_nt(int nt, const at::Tensor& plane, const at::Tensor& weight, const at::Tensor& out,
                      const ThinArgs& g) {
  switch (nt) {  // 8-wide output tiles actually multiplied: C_out 10 -> 2, 25 -> 4, 50 -> 7
    case 1:
    case 2: return launch<T, CK, 2>(plane, weight, out, g);
    case 3:
    case 4: return launch<T, CK, 4>(plane, weight, out, g);
    case 5:
    case 6: return launch<T, CK, 6>(plane, weight, out, g);
    case 7: return launch<T, CK, 7>(plane, weight, out, g);
    default: return launch<T, CK, 8>(plane, weight, out, g);
  }
}

template <typename T>
const char* launch_ck(int ck, int nt, const at::Tensor& plane, const at::Tensor& weight, const at::Tensor& out,
                      const ThinArgs& g) {
  if (ck == 16) return launch_nt<T, 16>(nt, plane, weight, out, g);
  if (ck == 32) return launch_nt<T, 32>(nt, plane, weight, out, g);
  return launch_nt<T, 64>(nt, plane, weight, out, g);
}

}  // namespace

const char* launch_conv_plane_thin(const at::Tensor& plane, const at::Tensor& weight, const at::Tensor& out,
                                   int64_t lead, int64_t ks) {
  const int64_t P = out.size(2), Q = out.size(3), cout = out.size(1);
  ThinArgs g{};
  g.rows = plane.size(0);
  g.C8 = static_cast<int>(plane.size(1));
  g.lead = static_cast<int>(lead);
  g.P = static_cast<int>(P);
  g.Q = static_cast<int>(Q);
  g.ks = static_cast<int>(ks);
  g.cout = static_cast<int>(cout);
  g.sob = out.stride(0);
  g.son = out.stride(1);
  g.sop = out.stride(2);
  g.soq = out.stride(3);
  const int64_t sn = g.son, sp = g.sop, sq = g.soq;
  g.inner = (sn <= sp && sn <= sq) ? 0 : (sq <= sp ? 1 : 2);
  const int ck = static_cast<int>(weight.size(2)), nt = static_cast<int>((cout + 7) / 8);
  if (plane.scalar_type() == at::kBFloat16) return launch_ck<at::BFloat16>(ck, nt, plane, weight, out, g);
  return launch_ck<at::Half>(ck, nt, plane, weight, out, g);
}

}  // namespace dnd_fast
