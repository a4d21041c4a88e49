#pragma once
#include <ATen/ATen.h>

namespace dnd_fast {

// Launcher of dnd_fast::conv_plane_thin (conv_thin_cuda.cu): enqueues on the current stream, on
// arguments ops_cuda.cpp has checked; returns nullptr, or the CUDA error.
const char* launch_conv_plane_thin(const at::Tensor& plane, const at::Tensor& weight, const at::Tensor& out,
                                   int64_t lead, int64_t ks);

}  // namespace dnd_fast
