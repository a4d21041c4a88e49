#pragma once
#include <ATen/ATen.h>

#include <optional>

#ifndef DND_FAST_WITH_CUDA
#define DND_FAST_WITH_CUDA 0
#endif

namespace dnd_fast {

// Columns of the per-token table: src_offset, rows, cols, row_stride, col_stride.
constexpr int64_t kMetaCols = 5;
// At most this many floats in one token's h x w tile (48 KiB of shared memory, CUDA kernels).
constexpr int64_t kMaxTileFloats = 48 * 1024 / 4;

#if DND_FAST_WITH_CUDA
// Launchers (tokenize_cuda.cu): enqueue on the current stream into outputs the caller allocated, on
// arguments checks.cpp and ops_cuda.cpp have checked; they return nullptr, or the
// CUDA error. tokenize_cuda is the CUDA op, also bound directly as dnd_fast._C.tokenize_cuda.
const char* launch_tokenize(const at::Tensor& flat, const at::Tensor& meta, const at::Tensor& stats,
                            const at::Tensor& tokens, const at::Tensor& scales, double eps);
const char* launch_detokenize(const at::Tensor& tokens, const at::Tensor& scales, const at::Tensor& meta,
                              const at::Tensor& flat);
std::tuple<at::Tensor, at::Tensor> tokenize_cuda(const at::Tensor& flat, const at::Tensor& meta, int64_t h, int64_t w,
                                                 const std::optional<at::Tensor>& stats, double eps);
#endif

}  // namespace dnd_fast
