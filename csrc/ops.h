#pragma once
// The ops' host functions: argument checks and allocations (one place for both devices), then the
// CPU kernels (ops_cpu.cpp) or the CUDA launchers (ops_cuda.cpp -> *_cuda.cu). Schemas: torch_bindings.cpp.
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "tokenize.h"

namespace dnd_fast {

// checks.cpp
bool is_kernel_dtype(at::ScalarType t);
void check_tokenize_args(const at::Tensor& flat, const at::Tensor& meta, int64_t h, int64_t w,
                         const std::optional<at::Tensor>& stats);
void check_detokenize_args(const at::Tensor& tokens, const at::Tensor& scales, const at::Tensor& meta,
                           at::ScalarType dtype);

// ops_cpu.cpp
std::tuple<at::Tensor, at::Tensor> tokenize_cpu(const at::Tensor& flat, const at::Tensor& meta, int64_t h, int64_t w,
                                                const std::optional<at::Tensor>& stats, double eps);
at::Tensor detokenize_cpu(const at::Tensor& tokens, const at::Tensor& scales, const at::Tensor& meta,
                          int64_t num_params, at::ScalarType dtype);

#if DND_FAST_WITH_CUDA
// ops_cuda.cpp (tokenize_cuda is declared in tokenize.h: the Python module binds it directly too)
at::Tensor detokenize_cuda(const at::Tensor& tokens, const at::Tensor& scales, const at::Tensor& meta,
                           int64_t num_params, at::ScalarType dtype);
void conv_plane_thin_cuda(const at::Tensor& plane, const at::Tensor& weight, int64_t ks, at::Tensor out);
void layer_norm_planes_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                            at::TensorList outs);
#endif

}  // namespace dnd_fast
