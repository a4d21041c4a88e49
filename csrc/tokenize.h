#pragma once
#include <ATen/ATen.h>

#include <optional>

#ifndef DND_FAST_WITH_CUDA
#define DND_FAST_WITH_CUDA 0
#endif

namespace dnd_fast {

// Columns of the per-token table: src_offset, rows, cols, row_stride, col_stride.
constexpr int64_t kMetaCols = 5;

void check_tokenize_args(const at::Tensor& flat, const at::Tensor& meta, int64_t h, int64_t w,
                         const std::optional<at::Tensor>& stats);
void check_detokenize_args(const at::Tensor& tokens, const at::Tensor& scales, const at::Tensor& meta);

}  // namespace dnd_fast
