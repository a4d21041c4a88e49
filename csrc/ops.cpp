// dnd_fast._C: the one registration point of the extension's ops, and their CPU kernels.
//
// Ops (schemas declared once here; CUDA kernels in tokenize_cuda.cu; fake kernels for
// torch.compile in dnd_fast/ops.py):
//   tokenize(flat[B,P], meta[T,5], h, w, stats?[T,2], eps) -> (tokens[B,T,h,w] f32, scales[B,T,2] f32)
//   detokenize(tokens[B,T,h,w], scales[B,T,2], meta[T,5], num_params, dtype) -> flat[B,P]
//
// meta row t = (src_offset, rows, cols, row_stride, col_stride): token t holds
// flat[b, src + i*row_stride + j*col_stride] at (i, j) for i < rows, j < cols; every other
// slot of the h x w tile is padding (0). The reference is dnd_fast/tokenizer.py.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "tokenize.h"

namespace dnd_fast {

void check_tokenize_args(const at::Tensor& flat, const at::Tensor& meta, int64_t h, int64_t w,
                         const std::optional<at::Tensor>& stats) {
  TORCH_CHECK(flat.dim() == 2, "tokenize: flat must be [B, P], got ", flat.sizes());
  TORCH_CHECK(at::isFloatingType(flat.scalar_type()), "tokenize: flat must be floating point, got ",
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

void check_detokenize_args(const at::Tensor& tokens, const at::Tensor& scales, const at::Tensor& meta) {
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
}

namespace {

std::tuple<at::Tensor, at::Tensor> tokenize_cpu(const at::Tensor& flat_in, const at::Tensor& meta_in,
                                                int64_t h, int64_t w,
                                                const std::optional<at::Tensor>& stats_in, double eps) {
  check_tokenize_args(flat_in, meta_in, h, w, stats_in);
  const auto flat = flat_in.contiguous();
  const auto meta = meta_in.contiguous();
  const int64_t B = flat.size(0), P = flat.size(1), T = meta.size(0), hw = h * w;
  auto tokens = at::empty({B, T, h, w}, flat.options().dtype(at::kFloat));
  auto scales = at::empty({B, T, 2}, flat.options().dtype(at::kFloat));
  const at::Tensor stats = stats_in.has_value() ? stats_in->contiguous() : at::Tensor();
  const float* sp = stats.defined() ? stats.data_ptr<float>() : nullptr;
  const int64_t* mp = meta.data_ptr<int64_t>();
  float* tp = tokens.data_ptr<float>();
  float* scp = scales.data_ptr<float>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, flat.scalar_type(), "tokenize_cpu", [&] {
    const scalar_t* xp = flat.data_ptr<scalar_t>();
    at::parallel_for(0, B * T, 64, [&](int64_t begin, int64_t end) {
      for (int64_t bt = begin; bt < end; ++bt) {
        const int64_t b = bt / T, t = bt % T;
        const int64_t* m = mp + t * kMetaCols;
        const int64_t src = m[0], rows = m[1], cols = m[2], rs = m[3], cs = m[4];
        const scalar_t* x = xp + b * P + src;
        float* out = tp + bt * hw;
        double sum = 0.0;
        for (int64_t i = 0; i < h; ++i) {
          for (int64_t j = 0; j < w; ++j) {
            const bool real = i < rows && j < cols;
            const float v = real ? static_cast<float>(x[i * rs + j * cs]) : 0.f;
            out[i * w + j] = v;
            sum += v;
          }
        }
        float mean, stdev;
        if (sp != nullptr) {
          mean = sp[t * 2];
          stdev = sp[t * 2 + 1];
        } else {
          const double n = static_cast<double>(rows * cols);
          const double mu = sum / n;
          double sq = 0.0;
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) {
              const double d = out[i * w + j] - mu;
              sq += d * d;
            }
          mean = static_cast<float>(mu);
          stdev = std::max(static_cast<float>(std::sqrt(sq / n)), static_cast<float>(eps));
        }
        for (int64_t i = 0; i < h; ++i)
          for (int64_t j = 0; j < w; ++j)
            out[i * w + j] = (i < rows && j < cols) ? (out[i * w + j] - mean) / stdev : 0.f;
        scp[bt * 2] = mean;
        scp[bt * 2 + 1] = stdev;
      }
    });
  });
  return {tokens, scales};
}

at::Tensor detokenize_cpu(const at::Tensor& tokens_in, const at::Tensor& scales_in, const at::Tensor& meta_in,
                          int64_t num_params, at::ScalarType dtype) {
  check_detokenize_args(tokens_in, scales_in, meta_in);
  const auto tokens = tokens_in.contiguous().to(at::kFloat);
  const auto scales = scales_in.contiguous();
  const auto meta = meta_in.contiguous();
  const int64_t B = tokens.size(0), T = tokens.size(1), h = tokens.size(2), w = tokens.size(3);
  auto flat = at::empty({B, num_params}, tokens.options().dtype(dtype));
  const float* tp = tokens.data_ptr<float>();
  const float* scp = scales.data_ptr<float>();
  const int64_t* mp = meta.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "detokenize_cpu", [&] {
    scalar_t* yp = flat.data_ptr<scalar_t>();
    at::parallel_for(0, B * T, 64, [&](int64_t begin, int64_t end) {
      for (int64_t bt = begin; bt < end; ++bt) {
        const int64_t b = bt / T, t = bt % T;
        const int64_t* m = mp + t * kMetaCols;
        const int64_t src = m[0], rows = m[1], cols = m[2], rs = m[3], cs = m[4];
        const float mean = scp[bt * 2], stdev = scp[bt * 2 + 1];
        const float* in = tp + bt * h * w;
        scalar_t* y = yp + b * num_params + src;
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < cols; ++j)
            y[i * rs + j * cs] = static_cast<scalar_t>(in[i * w + j] * stdev + mean);
      }
    });
  });
  return flat;
}

}  // namespace
}  // namespace dnd_fast

TORCH_LIBRARY(dnd_fast, m) {
  m.def("tokenize(Tensor flat, Tensor meta, int height, int width, Tensor? stats, float eps) -> (Tensor, Tensor)");
  m.def("detokenize(Tensor tokens, Tensor scales, Tensor meta, int num_params, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(dnd_fast, CPU, m) {
  m.impl("tokenize", &dnd_fast::tokenize_cpu);
  m.impl("detokenize", &dnd_fast::detokenize_cpu);
}

// A plain Python module so `import dnd_fast._C` loads the library (and so registers the ops).
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "dnd_fast C++/CUDA ops", -1, nullptr};
  PyObject* mod = PyModule_Create(&def);
  if (mod != nullptr) PyModule_AddIntConstant(mod, "with_cuda", DND_FAST_WITH_CUDA);
  return mod;
}
