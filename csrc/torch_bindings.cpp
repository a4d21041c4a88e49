// The one registration point of the extension's ops: schemas (``Tensor(a!)``: written in place) and
// which function serves each device. Nothing else lives here.
//   tokenize(flat[B,P], meta[T,5], h, w, stats?[T,2], eps) -> (tokens[B,T,h,w] f32, scales[B,T,2] f32)
//   detokenize(tokens[B,T,h,w], scales[B,T,2], meta[T,5], num_params, dtype) -> flat[B,P]
//   conv_plane_thin(plane[rows,C8], weight[k*k,N16,CK], k, out![B,C_out,P,Q]) -> ()  (CUDA only; the
//     thin convs of the decoder, reference and packing in dnd_fast/thin_conv.py)
//   layer_norm_planes(x[B,C,H,W], weight[H,W] f32, bias[H,W] f32, eps, outs![B,C,H,W] x 1 or 2) -> ()
//     (CUDA only; F.layer_norm over (H, W) into the decoder's planes, dnd_fast/layer_norm.py)
//   layer_norm_planes_smem(H, W, x_bytes, out_bytes) -> int: the shared memory one of its blocks needs
// Fake kernels for torch.compile sit beside each op's Python wrapper (dnd_fast/tokenizer.py,
// thin_conv.py, layer_norm.py).
#include <torch/library.h>

#include "layer_norm.h"
#include "ops.h"

TORCH_LIBRARY(dnd_fast, m) {
  m.def("tokenize(Tensor flat, Tensor meta, int height, int width, Tensor? stats, float eps) -> (Tensor, Tensor)");
  m.def("detokenize(Tensor tokens, Tensor scales, Tensor meta, int num_params, ScalarType dtype) -> Tensor");
  m.def("conv_plane_thin(Tensor plane, Tensor weight, int kernel_size, Tensor(a!) out) -> ()");
  m.def("layer_norm_planes(Tensor x, Tensor weight, Tensor bias, float eps, Tensor(a!)[] outs) -> ()");
#if DND_FAST_WITH_CUDA
  m.def("layer_norm_planes_smem(int height, int width, int x_bytes, int out_bytes) -> int",
        &dnd_fast::layer_norm_smem_bytes);
#endif
}

TORCH_LIBRARY_IMPL(dnd_fast, CPU, m) {
  m.impl("tokenize", &dnd_fast::tokenize_cpu);
  m.impl("detokenize", &dnd_fast::detokenize_cpu);
}

#if DND_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(dnd_fast, CUDA, m) {
  m.impl("tokenize", &dnd_fast::tokenize_cuda);
  m.impl("detokenize", &dnd_fast::detokenize_cuda);
  m.impl("conv_plane_thin", &dnd_fast::conv_plane_thin_cuda);
  m.impl("layer_norm_planes", &dnd_fast::layer_norm_planes_cuda);
}
#endif
