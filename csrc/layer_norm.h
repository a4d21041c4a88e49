#pragma once
#include <ATen/ATen.h>

namespace dnd_fast {

// Shared memory (bytes) one block of dnd_fast::layer_norm_planes needs for an H x W slice of x in
// x_bytes-wide values normalised into out_bytes-wide ones (ops_cuda.cpp checks it against the device).
int64_t layer_norm_smem_bytes(int64_t H, int64_t W, int64_t x_bytes, int64_t out_bytes);

// The most shared memory a block may have on the current device (the opt-in limit).
int64_t layer_norm_max_smem_bytes();

// Launcher of dnd_fast::layer_norm_planes (layer_norm_cuda.cu): enqueues on the current stream, on
// arguments ops_cuda.cpp has checked; returns nullptr, or the CUDA error. o2 is read only if `two`.
const char* launch_layer_norm_planes(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                     double eps, const at::Tensor& o1, const at::Tensor& o2, bool two);

}  // namespace dnd_fast
