// CUDA kernels of dnd_fast::tokenize / dnd_fast::detokenize (schemas in ops.cpp).
//
// One warp per (token, checkpoint), up to eight tokens per block. The token's real elements are
// read (tokenize) or written (detokenize) in the source buffer's own order, so those accesses are
// contiguous even for the transposed lora_B tiles; the h x w tile is staged in the warp's slice of
// shared memory, so the token side is contiguous too. Mean and std are warp-shuffle reductions:
// no block barriers, and the 4296 tokens of a Qwen2.5-0.5B LoRA fit on the GPU in one wave (the
// block-per-token version spent half its time in barriers at batch 1).
#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "tokenize.h"

namespace dnd_fast {
namespace {

constexpr int kMaxWarps = 8;  // tokens per block
constexpr size_t kSmemBytes = 48 * 1024;

__device__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

struct TokenMeta {
  int64_t src;
  int rows, cols;
  int64_t rs, cs;
  // Element s of the token in source order -> (i, j): the faster-moving source axis first.
  __device__ void ij(int s, int& i, int& j) const {
    if (rs == 1 && cs != 1) {
      i = s % rows;
      j = s / rows;
    } else {
      i = s / cols;
      j = s % cols;
    }
  }
};

__device__ TokenMeta load_meta(const int64_t* meta, int t) {
  const int64_t* m = meta + static_cast<int64_t>(t) * kMetaCols;
  return {m[0], static_cast<int>(m[1]), static_cast<int>(m[2]), m[3], m[4]};
}

template <typename in_t>
__global__ void tokenize_kernel(const in_t* __restrict__ x, const int64_t* __restrict__ meta,
                                const float* __restrict__ stats, float* __restrict__ tokens,
                                float* __restrict__ scales, int64_t P, int T, int h, int w, float eps) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int t = blockIdx.x * (blockDim.x >> 5) + warp;
  if (t >= T) return;  // a whole warp; nothing below waits on other warps
  const int64_t b = blockIdx.y;
  const int hw = h * w;
  float* tile = smem + warp * hw;
  const TokenMeta m = load_meta(meta, t);
  const int n = m.rows * m.cols;
  const in_t* src = x + b * P + m.src;

  float acc = 0.f;
  for (int s = lane; s < n; s += 32) {
    int i, j;
    m.ij(s, i, j);
    const float v = static_cast<float>(src[i * m.rs + j * m.cs]);
    tile[i * w + j] = v;
    acc += v;
  }
  float mean, stdev;
  if (stats != nullptr) {
    mean = stats[2 * t];
    stdev = stats[2 * t + 1];
  } else {
    mean = warp_sum(acc) / n;
    float sq = 0.f;
    for (int s = lane; s < n; s += 32) {  // each lane rereads what it wrote: no sync needed
      int i, j;
      m.ij(s, i, j);
      const float d = tile[i * w + j] - mean;
      sq += d * d;
    }
    stdev = fmaxf(sqrtf(warp_sum(sq) / n), eps);
  }
  __syncwarp();  // the tile is read below in token order, i.e. across lanes
  const int64_t bt = b * T + t;
  float* out = tokens + bt * hw;
  const float inv = 1.f / stdev;
  for (int k = lane; k < hw; k += 32) {
    const int i = k / w, j = k - (k / w) * w;
    out[k] = (i < m.rows && j < m.cols) ? (tile[k] - mean) * inv : 0.f;
  }
  if (lane == 0) {
    scales[2 * bt] = mean;
    scales[2 * bt + 1] = stdev;
  }
}

template <typename tok_t, typename out_t>
__global__ void detokenize_kernel(const tok_t* __restrict__ tokens, const float* __restrict__ scales,
                                  const int64_t* __restrict__ meta, out_t* __restrict__ y, int64_t P, int T,
                                  int h, int w) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int t = blockIdx.x * (blockDim.x >> 5) + warp;
  if (t >= T) return;
  const int64_t b = blockIdx.y, bt = b * T + t;
  const int hw = h * w;
  float* tile = smem + warp * hw;
  const TokenMeta m = load_meta(meta, t);
  const int n = m.rows * m.cols;
  const float mean = scales[2 * bt], stdev = scales[2 * bt + 1];
  const tok_t* in = tokens + bt * hw;
  for (int k = lane; k < hw; k += 32) tile[k] = static_cast<float>(in[k]) * stdev + mean;
  __syncwarp();
  out_t* dst = y + b * P + m.src;
  for (int s = lane; s < n; s += 32) {
    int i, j;
    m.ij(s, i, j);
    dst[i * m.rs + j * m.cs] = static_cast<out_t>(tile[i * w + j]);
  }
}

struct Launch {
  dim3 grid, block;
  size_t smem;
};

// As many tokens per block (one per warp) as fit in 48 KiB of shared memory, up to kMaxWarps.
Launch launch_shape(int64_t T, int64_t B, int64_t h, int64_t w) {
  const size_t tile = static_cast<size_t>(h * w) * sizeof(float);
  TORCH_CHECK(tile <= kSmemBytes, "dnd_fast CUDA tokenizer: token tile ", h, "x", w,
              " exceeds 48 KiB of shared memory");
  const int64_t warps = std::min<int64_t>({kMaxWarps, static_cast<int64_t>(kSmemBytes / tile), T});
  return {dim3(static_cast<unsigned>((T + warps - 1) / warps), static_cast<unsigned>(B)),
          dim3(static_cast<unsigned>(32 * warps)), tile * warps};
}

std::tuple<at::Tensor, at::Tensor> tokenize_cuda(const at::Tensor& flat_in, const at::Tensor& meta_in,
                                                 int64_t h, int64_t w,
                                                 const std::optional<at::Tensor>& stats_in, double eps) {
  check_tokenize_args(flat_in, meta_in, h, w, stats_in);
  const c10::cuda::CUDAGuard guard(flat_in.device());
  const auto flat = flat_in.contiguous();
  const auto meta = meta_in.contiguous();
  const int64_t B = flat.size(0), P = flat.size(1), T = meta.size(0);
  auto tokens = at::empty({B, T, h, w}, flat.options().dtype(at::kFloat));
  auto scales = at::empty({B, T, 2}, flat.options().dtype(at::kFloat));
  if (B == 0 || T == 0) return {tokens, scales};
  TORCH_CHECK(B <= 65535, "dnd_fast CUDA tokenizer: at most 65535 checkpoints per call, got ", B);
  const at::Tensor stats = stats_in.has_value() ? stats_in->contiguous() : at::Tensor();
  const Launch l = launch_shape(T, B, h, w);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, flat.scalar_type(), "tokenize_cuda", [&] {
    tokenize_kernel<scalar_t><<<l.grid, l.block, l.smem, stream>>>(
        flat.data_ptr<scalar_t>(), meta.data_ptr<int64_t>(), stats.defined() ? stats.data_ptr<float>() : nullptr,
        tokens.data_ptr<float>(), scales.data_ptr<float>(), P, static_cast<int>(T), static_cast<int>(h),
        static_cast<int>(w), static_cast<float>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {tokens, scales};
}

at::Tensor detokenize_cuda(const at::Tensor& tokens_in, const at::Tensor& scales_in, const at::Tensor& meta_in,
                           int64_t num_params, at::ScalarType dtype) {
  check_detokenize_args(tokens_in, scales_in, meta_in);
  const c10::cuda::CUDAGuard guard(tokens_in.device());
  const auto tokens = tokens_in.contiguous();
  const auto scales = scales_in.contiguous();
  const auto meta = meta_in.contiguous();
  const int64_t B = tokens.size(0), T = tokens.size(1), h = tokens.size(2), w = tokens.size(3);
  auto flat = at::empty({B, num_params}, tokens.options().dtype(dtype));
  if (B == 0 || T == 0) return flat;
  TORCH_CHECK(B <= 65535, "dnd_fast CUDA tokenizer: at most 65535 checkpoints per call, got ", B);
  const Launch l = launch_shape(T, B, h, w);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "detokenize_cuda_in", [&] {
    using tok_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "detokenize_cuda_out", [&] {
      detokenize_kernel<tok_t, scalar_t><<<l.grid, l.block, l.smem, stream>>>(
          tokens.data_ptr<tok_t>(), scales.data_ptr<float>(), meta.data_ptr<int64_t>(), flat.data_ptr<scalar_t>(),
          num_params, static_cast<int>(T), static_cast<int>(h), static_cast<int>(w));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return flat;
}

}  // namespace
}  // namespace dnd_fast

TORCH_LIBRARY_IMPL(dnd_fast, CUDA, m) {
  m.impl("tokenize", &dnd_fast::tokenize_cuda);
  m.impl("detokenize", &dnd_fast::detokenize_cuda);
}
