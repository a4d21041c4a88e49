// Argument checks of the ops that run on both devices (what a caller gets wrong fails here, with the op's name).
#include "ops.h"

namespace dnd_fast {

bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_tokenize_args(const at::Tensor& flat, const at::Tensor& meta, int64_t h, int64_t w,
                         const std::optional<at::Tensor>& stats) {
  TORCH_CHECK(flat.dim() == 2, "tokenize: flat must be [B, P], got ", flat.sizes());
  TORCH_CHECK(is_kernel_dtype(flat.scalar_type()), "tokenize: flat must be float32, float64, float16 or bfloat16, got ",
              flat.scalar_type());
  TORCH_CHECK(meta.dim() == 2 && meta.size(1) == kMetaCols && meta.scalar_type() == at::kLong,
              "tokenize: meta must be int64 [T, 5], got ", meta.scalar_type(), meta.sizes());
  TORCH_CHECK(meta.device() == flat.device(), "tokenize: meta is on ", meta.device(),
              " but flat is on ", flat.device());
  TORCH_CHECK(h > 0 && w > 0, "tokenize: token shape must be positive, got ", h, "x", w);
  if (stats.has_value()) {
    const auto& s = *stats;
    TORCH_CHECK(s.dim() == 2 && s.size(0) == meta.size(0) && s.size(1) == 2 &&
                    s.scalar_type() == at::kFloat && s.device() == flat.device(),
                "tokenize: stats must be float32 [T, 2] on ", flat.device(), ", got ",
                s.scalar_type(), s.sizes(), " on ", s.device());
  }
}

void check_detokenize_args(const at::Tensor& tokens, const at::Tensor& scales, const at::Tensor& meta,
                           at::ScalarType dtype) {
  TORCH_CHECK(tokens.dim() == 4, "detokenize: tokens must be [B, T, h, w], got ", tokens.sizes());
  TORCH_CHECK(meta.dim() == 2 && meta.size(1) == kMetaCols && meta.scalar_type() == at::kLong,
              "detokenize: meta must be int64 [T, 5], got ", meta.scalar_type(), meta.sizes());
  TORCH_CHECK(tokens.size(1) == meta.size(0), "detokenize: tokens hold ", tokens.size(1),
              " tokens but the layout has ", meta.size(0));
  TORCH_CHECK(scales.dim() == 3 && scales.size(0) == tokens.size(0) && scales.size(1) == tokens.size(1) &&
                  scales.size(2) == 2 && scales.scalar_type() == at::kFloat,
              "detokenize: scales must be float32 [B, T, 2] matching tokens, got ", scales.scalar_type(),
              scales.sizes());
  TORCH_CHECK(tokens.device() == meta.device() && scales.device() == meta.device(),
              "detokenize: tokens, scales and meta must be on one device");
  TORCH_CHECK(is_kernel_dtype(tokens.scalar_type()),
              "detokenize: tokens must be float32, float64, float16 or bfloat16, got ", tokens.scalar_type());
  TORCH_CHECK(is_kernel_dtype(dtype), "detokenize: the output dtype must be float32, float64, float16 or bfloat16, got ",
              dtype);
}

}  // namespace dnd_fast
