// The CUDA ops' host side: checks, allocations and the device guard, then the launchers in *_cuda.cu.
#include <c10/core/DeviceGuard.h>

#include "conv_thin.h"
#include "layer_norm.h"
#include "ops.h"

namespace dnd_fast {
namespace {

void check_cuda_launch(int64_t B, int64_t h, int64_t w, const char* op) {
  TORCH_CHECK(B <= 65535, op, " (CUDA): at most 65535 checkpoints per call, got ", B);
  TORCH_CHECK(h * w <= kMaxTileFloats, op, " (CUDA): a ", h, "x", w, " token tile exceeds 48 KiB of shared memory");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> tokenize_cuda(const at::Tensor& flat_in, const at::Tensor& meta_in,
                                                 int64_t h, int64_t w,
                                                 const std::optional<at::Tensor>& stats_in, double eps) {
  check_tokenize_args(flat_in, meta_in, h, w, stats_in);
  check_cuda_launch(flat_in.size(0), h, w, "tokenize");
  const c10::DeviceGuard guard(flat_in.device());
  const auto flat = flat_in.contiguous();
  const auto meta = meta_in.contiguous();
  const int64_t B = flat.size(0), T = meta.size(0);
  auto tokens = at::empty({B, T, h, w}, flat.options().dtype(at::kFloat));
  auto scales = at::empty({B, T, 2}, flat.options().dtype(at::kFloat));
  if (B == 0 || T == 0) return {tokens, scales};
  const at::Tensor stats = stats_in.has_value() ? stats_in->contiguous() : at::Tensor();
  const char* err = launch_tokenize(flat, meta, stats, tokens, scales, eps);
  TORCH_CHECK(err == nullptr, "tokenize (CUDA): the kernel launch failed: ", err);
  return {tokens, scales};
}

at::Tensor detokenize_cuda(const at::Tensor& tokens_in, const at::Tensor& scales_in, const at::Tensor& meta_in,
                           int64_t num_params, at::ScalarType dtype) {
  check_detokenize_args(tokens_in, scales_in, meta_in, dtype);
  check_cuda_launch(tokens_in.size(0), tokens_in.size(2), tokens_in.size(3), "detokenize");
  const c10::DeviceGuard guard(tokens_in.device());
  const auto tokens = tokens_in.contiguous();
  const auto scales = scales_in.contiguous();
  const auto meta = meta_in.contiguous();
  auto flat = at::empty({tokens.size(0), num_params}, tokens.options().dtype(dtype));
  if (tokens.size(0) == 0 || tokens.size(1) == 0) return flat;
  const char* err = launch_detokenize(tokens, scales, meta, flat);
  TORCH_CHECK(err == nullptr, "detokenize (CUDA): the kernel launch failed: ", err);
  return flat;
}

// The input's channels as the kernel reads them: one, two or four k16 steps.
static int64_t thin_channels(int64_t c8) { return c8 <= 16 ? 16 : (c8 <= 32 ? 32 : 64); }

void conv_plane_thin_cuda(const at::Tensor& plane, const at::Tensor& weight, int64_t ks, at::Tensor out) {
  const auto dt = plane.scalar_type();
  TORCH_CHECK(dt == at::kBFloat16 || dt == at::kHalf, "conv_plane_thin: the plane must be bfloat16 or float16, got ", dt);
  TORCH_CHECK(weight.scalar_type() == dt && out.scalar_type() == dt, "conv_plane_thin: plane, weight and out must share "
              "one dtype, got ", dt, ", ", weight.scalar_type(), ", ", out.scalar_type());
  TORCH_CHECK(weight.device() == plane.device() && out.device() == plane.device(),
              "conv_plane_thin: plane, weight and out must be on one device");
  TORCH_CHECK(ks >= 1 && ks <= 15 && ks % 2 == 1, "conv_plane_thin: kernel size must be odd, 1 to 15, got ", ks);
  TORCH_CHECK(plane.dim() == 2 && plane.is_contiguous() && plane.size(1) % 8 == 0 && plane.size(1) <= 64,
              "conv_plane_thin: plane must be a contiguous [rows, C8] buffer with C8 a multiple of 8, at most 64, got ",
              plane.sizes());
  TORCH_CHECK(out.dim() == 4 && out.size(1) >= 1 && out.size(1) <= 64,
              "conv_plane_thin: out must be [B, C_out, P, Q] with 1 <= C_out <= 64, got ", out.sizes());
  const int64_t B = out.size(0), cout = out.size(1), P = out.size(2), Q = out.size(3), pad = (ks - 1) / 2;
  const int64_t lead = pad * (Q + pad) + pad, rows = lead + B * (P + pad) * (Q + pad);
  TORCH_CHECK(plane.size(0) == rows, "conv_plane_thin: a padded plane of ", B, " x ", P, " x ", Q, " positions (kernel ",
              ks, ") has ", rows, " rows, got ", plane.size(0));
  const int64_t n16 = (cout + 15) / 16 * 16, ck = thin_channels(plane.size(1));
  TORCH_CHECK(weight.dim() == 3 && weight.is_contiguous() && weight.size(0) == ks * ks && weight.size(1) == n16 &&
                  weight.size(2) == ck,
              "conv_plane_thin: weight must be contiguous [", ks * ks, ", ", n16, ", ", ck, "], got ", weight.sizes());
  TORCH_CHECK(P <= 65535 && Q <= 65535 && rows < (int64_t{1} << 31),
              "conv_plane_thin: plane too large for one launch (", B, " x ", P, " x ", Q, ")");
  if (B == 0 || P == 0 || Q == 0) return;
  const c10::DeviceGuard guard(plane.device());
  const char* err = launch_conv_plane_thin(plane, weight, out, lead, ks);
  TORCH_CHECK(err == nullptr, "conv_plane_thin (CUDA): the kernel launch failed: ", err);
}

bool is_float_type(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void layer_norm_planes_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                            at::TensorList outs) {
  TORCH_CHECK(x.dim() == 4, "layer_norm_planes: x must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(is_float_type(x.scalar_type()), "layer_norm_planes: x must be float32, float16 or bfloat16, got ",
              x.scalar_type());
  const int64_t H = x.size(2), W = x.size(3);
  for (const auto* p : {&weight, &bias})
    TORCH_CHECK(p->scalar_type() == at::kFloat && p->is_contiguous() && p->dim() == 2 && p->size(0) == H &&
                    p->size(1) == W,
                "layer_norm_planes: weight and bias must be contiguous float32 [", H, ", ", W, "], got ",
                p->scalar_type(), p->sizes());
  TORCH_CHECK(outs.size() == 1 || outs.size() == 2, "layer_norm_planes: one or two outputs, got ", outs.size());
  for (const auto& o : outs) {
    TORCH_CHECK(o.sizes() == x.sizes(), "layer_norm_planes: each output must be ", x.sizes(), ", got ", o.sizes());
    TORCH_CHECK(o.scalar_type() == outs[0].scalar_type() && is_float_type(o.scalar_type()),
                "layer_norm_planes: the outputs must share one of float32, float16, bfloat16, got ", o.scalar_type());
    TORCH_CHECK(o.device() == x.device(), "layer_norm_planes: x and the outputs must be on one device");
  }
  TORCH_CHECK(weight.device() == x.device() && bias.device() == x.device(),
              "layer_norm_planes: x, weight and bias must be on one device");
  TORCH_CHECK(x.size(0) * x.size(1) < (int64_t{1} << 31) && H * W < (int64_t{1} << 30),
              "layer_norm_planes: x too large for one launch (", x.sizes(), ")");
  const c10::DeviceGuard guard(x.device());
  const int64_t smem = layer_norm_smem_bytes(H, W, x.element_size(), outs[0].element_size());
  const int64_t max_smem = layer_norm_max_smem_bytes();
  TORCH_CHECK(smem <= max_smem, "layer_norm_planes: an ", H, " x ", W, " slice needs ", smem,
              " bytes of shared memory, the device has ", max_smem, " per block");
  if (x.numel() == 0) return;
  const char* err = launch_layer_norm_planes(x, weight, bias, eps, outs[0], outs.back(), outs.size() == 2);
  TORCH_CHECK(err == nullptr, "layer_norm_planes (CUDA): the kernel launch failed: ", err);
}

}  // namespace dnd_fast
