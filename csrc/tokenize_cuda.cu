// CUDA kernels of dnd_fast::tokenize / dnd_fast::detokenize and their launchers (the ops, their
// argument checks and allocations are in checks.cpp and ops_cuda.cpp).
//
// One warp per (token, checkpoint), up to eight tokens per block. The token's real elements are
// read (tokenize) or written (detokenize) in the source buffer's own order, so those accesses are
// contiguous even for the transposed lora_B tiles; the h x w tile is staged in the warp's slice of
// shared memory, so the token side is contiguous (and vectorised) too. Mean and std are
// warp-shuffle reductions: no block barriers.
//
// Tokenize keeps all of a warp's loads in flight at once: a warp that waits on each load in turn
// leaves the memory system idle (ncu: 83% of cycles stalled on loads; 48% of copy bandwidth at
// batch 64). Offsets in the source and the tile advance by fixed steps (Walk) instead of a
// division per element.
//
// fp32 tokens whose real elements come in aligned runs of four along the source's unit-stride
// axis (every token of the usual layouts: lora_A rows and transposed lora_B columns) take the
// register path: one 16-byte load per four elements, the whole token held in registers (up to
// kVec loads per lane), mean and std from the registers, and only the centred values written
// to the tile. Other fp32 tokens go by 4-byte cp.async straight into the tile (ptxas turned a
// register-staged scalar loop into load/store pairs, one load in flight).
#include <algorithm>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>

#include "tokenize.h"

namespace dnd_fast {
namespace {

// Tokens (one per warp) per block. Tokenize's register path needs 71 registers a thread: four warps
// a block keep seven blocks on an SM and the batch-1 grid (4296 tokens) within about one wave;
// capping registers for more warps spilled and cost 40% (H100, both measured).
constexpr int kTokenizeWarps = 4;
constexpr int kDetokenizeWarps = 8;
constexpr int kUnroll = 16;   // loads in flight per lane (16-bit inputs)
constexpr int kVec = 8;       // 16-byte loads per lane on the register path: tokens of <= 1024 elements
constexpr size_t kSmemBytes = kMaxTileFloats * sizeof(float);  // per block

__device__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

// A lane's walk over a token's real elements in source order, 32 elements per step: element s
// sits at (fast, slow) = (s % nf, s / nf) along the source's faster- and slower-moving axes.
struct Walk {
  int f, nf, df;
  int64_t src, src_step, src_wrap;  // offset in the source (from the token's start)
  int tile, tile_step, tile_wrap;   // offset in the h x w tile
  __device__ void next() {
    f += df;
    src += src_step;
    tile += tile_step;
    if (f >= nf) {
      f -= nf;
      src += src_wrap;
      tile += tile_wrap;
    }
  }
};

struct TokenMeta {
  int64_t src;
  int rows, cols;
  int64_t rs, cs;
  __device__ Walk walk(int s, int w) const {
    const bool col_major = rs == 1 && cs != 1;  // e.g. a transposed lora_B tile
    const int nf = col_major ? rows : cols;
    const int64_t sf = col_major ? rs : cs, ss = col_major ? cs : rs;
    const int tf = col_major ? w : 1, ts = col_major ? 1 : w;
    const int f = s % nf, slow = s / nf, df = 32 % nf, ds = 32 / nf;
    return {f, nf, df, f * sf + slow * ss, df * sf + ds * ss, ss - nf * sf,
            f * tf + slow * ts, df * tf + ds * ts, ts - nf * tf};
  }
};

__device__ TokenMeta load_meta(const int64_t* meta, int t) {
  const int64_t* m = meta + static_cast<int64_t>(t) * kMetaCols;
  return {m[0], static_cast<int>(m[1]), static_cast<int>(m[2]), m[3], m[4]};
}

__host__ __device__ inline int tile_floats(int hw) { return (hw + 3) / 4 * 4; }  // float4-aligned slices

// The register path's walk over a token's runs of four: run q (lane + 32 u) sits at (a, o) =
// (q % nv, q / nv) along the unit-stride axis (in runs) and the other one.
struct RunWalk {
  int a, o, nv, da, dob;
  __device__ RunWalk(int lane, int nv_) : a(lane % nv_), o(lane / nv_), nv(nv_), da(32 % nv_), dob(32 / nv_) {}
  __device__ void next() {
    a += da;
    o += dob;
    if (a >= nv) {
      a -= nv;
      ++o;
    }
  }
};

// A token's real elements seen as runs of four along the source's unit-stride axis: `nv` runs per
// line, lines `across` apart in the source; in the tile, elements of a run are `tile_along` apart and
// lines `tile_across`.
struct Runs {
  int nv, runs, tile_along, tile_across;
  int64_t across;
  bool aligned;  // every run is a 16-byte-aligned float4
  __device__ Runs(const TokenMeta& m, const float* src, int w) {
    const bool row_major = m.cs == 1;
    const int along = row_major ? m.cols : m.rows;
    across = row_major ? m.rs : m.cs;
    nv = along / 4;
    runs = m.rows * m.cols / 4;
    tile_along = row_major ? 1 : w;
    tile_across = row_major ? w : 1;
    aligned = (m.cs == 1 || m.rs == 1) && along % 4 == 0 && across % 4 == 0 &&
              reinterpret_cast<uintptr_t>(src) % 16 == 0;
  }
  __device__ bool fit_registers() const { return aligned && runs <= 32 * kVec; }  // warp-uniform
};

// Register path of tokenize (fp32): writes the token's centred values into its zeroed tile and
// returns (mean, std). `stats` given: those, else the token's own.
__device__ float2 tokenize_runs(const Runs& r, const float* __restrict__ src, float* tile, int lane,
                                const float* stats, int t, float eps) {
  float4 v[kVec];
  RunWalk it(lane, r.nv);
#pragma unroll
  for (int u = 0; u < kVec; ++u) {
    v[u] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (lane + 32 * u < r.runs) v[u] = __ldg(reinterpret_cast<const float4*>(src + 4 * it.a + it.o * r.across));
    it.next();
  }
  const int n = 4 * r.runs;
  float mean;
  if (stats != nullptr) {
    mean = stats[2 * t];
  } else {
    float acc = 0.f;
#pragma unroll
    for (int u = 0; u < kVec; ++u) acc += (v[u].x + v[u].y) + (v[u].z + v[u].w);
    mean = warp_sum(acc) / n;
  }
  float sq = 0.f;
  it = RunWalk(lane, r.nv);
#pragma unroll
  for (int u = 0; u < kVec; ++u) {
    if (lane + 32 * u < r.runs) {
      const float dx = v[u].x - mean, dy = v[u].y - mean, dz = v[u].z - mean, dw = v[u].w - mean;
      sq += (dx * dx + dy * dy) + (dz * dz + dw * dw);
      float* at = tile + 4 * it.a * r.tile_along + it.o * r.tile_across;
      at[0] = dx;
      at[r.tile_along] = dy;
      at[2 * r.tile_along] = dz;
      at[3 * r.tile_along] = dw;
    }
    it.next();
  }
  const float stdev = stats != nullptr ? stats[2 * t + 1] : fmaxf(sqrtf(warp_sum(sq) / n), eps);
  return make_float2(mean, stdev);
}

// Cp.async / unrolled-load path of tokenize (any token, fp32 or 16-bit input): writes the token's
// centred values into its zeroed tile and returns (mean, std), like tokenize_runs.
template <typename in_t>
__device__ float2 tokenize_walk(const TokenMeta& m, const in_t* __restrict__ src, float* tile, int w, int lane,
                                const float* stats, int t, float eps) {
  const int n = m.rows * m.cols;
  const Walk start = m.walk(lane, w);
  Walk it = start;
  float acc = 0.f;
  if constexpr (std::is_same_v<in_t, float>) {
    // Every element's copy in flight at once, straight into its tile slot (cp.async, no registers):
    // a load-then-store loop is compiled into one load in flight at a time.
    for (int s = lane; s < n; s += 32) {
      const unsigned slot = static_cast<unsigned>(__cvta_generic_to_shared(tile + it.tile));
      asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(slot), "l"(src + it.src) : "memory");
      it.next();
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    it = start;
    for (int s = lane; s < n; s += 32) {
      acc += tile[it.tile];
      it.next();
    }
  } else {
    for (int s0 = lane; s0 < n; s0 += 32 * kUnroll) {
      float v[kUnroll];
      int at[kUnroll];
#pragma unroll
      for (int r = 0; r < kUnroll; ++r) {
        const bool real = s0 + 32 * r < n;
        v[r] = real ? static_cast<float>(src[real ? it.src : 0]) : 0.f;
        at[r] = real ? it.tile : -1;
        it.next();
      }
#pragma unroll
      for (int r = 0; r < kUnroll; ++r) {
        if (at[r] >= 0) tile[at[r]] = v[r];
        acc += v[r];
      }
    }
  }
  const float mean = stats != nullptr ? stats[2 * t] : warp_sum(acc) / n;
  // Centre in place; each lane revisits the slots it wrote, so no sync is needed.
  float sq = 0.f;
  it = start;
  for (int s = lane; s < n; s += 32) {
    const float d = tile[it.tile] - mean;
    tile[it.tile] = d;
    sq += d * d;
    it.next();
  }
  const float stdev = stats != nullptr ? stats[2 * t + 1] : fmaxf(sqrtf(warp_sum(sq) / n), eps);
  return make_float2(mean, stdev);
}

// The warp's tile, times `scale`, to the token's row of the output (16-byte stores when aligned).
__device__ void store_token(const float4* tile4, const float* tile, float* out, int hw, int lane, float scale) {
  if (hw % 4 == 0) {  // the token's row starts 16-byte aligned
    float4* out4 = reinterpret_cast<float4*>(out);
    for (int k = lane; k < hw / 4; k += 32) {
      const float4 d = tile4[k];
      out4[k] = make_float4(d.x * scale, d.y * scale, d.z * scale, d.w * scale);
    }
  } else {
    for (int k = lane; k < hw; k += 32) out[k] = tile[k] * scale;
  }
}

template <typename in_t>
__global__ void tokenize_kernel(const in_t* __restrict__ x, const int64_t* __restrict__ meta,
                                const float* __restrict__ stats, float* __restrict__ tokens,
                                float* __restrict__ scales, int64_t P, int T, int h, int w, float eps) {
  extern __shared__ float4 smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int t = blockIdx.x * (blockDim.x >> 5) + warp;
  if (t >= T) return;  // a whole warp; nothing below waits on other warps
  const int64_t b = blockIdx.y;
  const int hw = h * w, hw4 = tile_floats(hw) / 4;
  float4* tile4 = smem + warp * hw4;
  float* tile = reinterpret_cast<float*>(tile4);
  const TokenMeta m = load_meta(meta, t);
  const in_t* src = x + b * P + m.src;

  for (int k = lane; k < hw4; k += 32) tile4[k] = make_float4(0.f, 0.f, 0.f, 0.f);  // padding stays 0
  __syncwarp();
  float2 ms;
  bool done = false;
  if constexpr (std::is_same_v<in_t, float>) {
    const Runs r(m, src, w);
    if (r.fit_registers()) {
      ms = tokenize_runs(r, src, tile, lane, stats, t, eps);
      done = true;
    }
  }
  if (!done) ms = tokenize_walk(m, src, tile, w, lane, stats, t, eps);
  __syncwarp();  // the tile is read below in token order, i.e. across lanes
  const int64_t bt = b * T + t;
  store_token(tile4, tile, tokens + bt * hw, hw, lane, 1.f / ms.y);
  if (lane == 0) {
    scales[2 * bt] = ms.x;
    scales[2 * bt + 1] = ms.y;
  }
}

template <typename tok_t, typename out_t>
__global__ void detokenize_kernel(const tok_t* __restrict__ tokens, const float* __restrict__ scales,
                                  const int64_t* __restrict__ meta, out_t* __restrict__ y, int64_t P, int T,
                                  int h, int w) {
  extern __shared__ float4 smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int t = blockIdx.x * (blockDim.x >> 5) + warp;
  if (t >= T) return;
  const int64_t b = blockIdx.y, bt = b * T + t;
  const int hw = h * w;
  float* tile = reinterpret_cast<float*>(smem + warp * (tile_floats(hw) / 4));
  const TokenMeta m = load_meta(meta, t);
  const int n = m.rows * m.cols;
  const float mean = scales[2 * bt], stdev = scales[2 * bt + 1];
  const tok_t* in = tokens + bt * hw;
  for (int k = lane; k < hw; k += 32) tile[k] = static_cast<float>(in[k]) * stdev + mean;
  __syncwarp();
  out_t* dst = y + b * P + m.src;
  Walk it = m.walk(lane, w);
  for (int s = lane; s < n; s += 32) {
    dst[it.src] = static_cast<out_t>(tile[it.tile]);
    it.next();
  }
}

struct Launch {
  dim3 grid, block;
  size_t smem;
};

// As many tokens per block (one per warp) as fit in 48 KiB of shared memory, up to max_warps
// (ops_cuda.cpp has checked that one token's tile fits: h * w <= kMaxTileFloats).
Launch launch_shape(int64_t T, int64_t B, int64_t h, int64_t w, int64_t max_warps) {
  const size_t tile = static_cast<size_t>(tile_floats(static_cast<int>(h * w))) * sizeof(float);
  const int64_t warps = std::min<int64_t>({max_warps, static_cast<int64_t>(kSmemBytes / tile), T});
  return {dim3(static_cast<unsigned>((T + warps - 1) / warps), static_cast<unsigned>(B)),
          dim3(static_cast<unsigned>(32 * warps)), tile * warps};
}

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* launch_tokenize(const at::Tensor& flat, const at::Tensor& meta, const at::Tensor& stats,
                            const at::Tensor& tokens, const at::Tensor& scales, double eps) {
  const int64_t B = flat.size(0), P = flat.size(1), T = meta.size(0), h = tokens.size(2), w = tokens.size(3);
  const Launch l = launch_shape(T, B, h, w, kTokenizeWarps);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, flat.scalar_type(), "tokenize_cuda", [&] {
    tokenize_kernel<scalar_t><<<l.grid, l.block, l.smem, stream>>>(
        flat.data_ptr<scalar_t>(), meta.data_ptr<int64_t>(), stats.defined() ? stats.data_ptr<float>() : nullptr,
        tokens.data_ptr<float>(), scales.data_ptr<float>(), P, static_cast<int>(T), static_cast<int>(h),
        static_cast<int>(w), static_cast<float>(eps));
  });
  return launch_status();
}

const char* launch_detokenize(const at::Tensor& tokens, const at::Tensor& scales, const at::Tensor& meta,
                              const at::Tensor& flat) {
  const int64_t B = tokens.size(0), T = tokens.size(1), h = tokens.size(2), w = tokens.size(3);
  const Launch l = launch_shape(T, B, h, w, kDetokenizeWarps);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "detokenize_cuda_in", [&] {
    using tok_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, flat.scalar_type(), "detokenize_cuda_out", [&] {
      detokenize_kernel<tok_t, scalar_t><<<l.grid, l.block, l.smem, stream>>>(
          tokens.data_ptr<tok_t>(), scales.data_ptr<float>(), meta.data_ptr<int64_t>(), flat.data_ptr<scalar_t>(),
          flat.size(1), static_cast<int>(T), static_cast<int>(h), static_cast<int>(w));
    });
  });
  return launch_status();
}

}  // namespace dnd_fast
