// The CPU kernels of tokenize / detokenize (the reference is dnd_fast/tokenizer.py).
//
// meta row t = (src_offset, rows, cols, row_stride, col_stride): token t holds
// flat[b, src + i*row_stride + j*col_stride] at (i, j) for i < rows, j < cols; every other
// slot of the h x w tile is padding (0).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "ops.h"

namespace dnd_fast {

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
  check_detokenize_args(tokens_in, scales_in, meta_in, dtype);
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

}  // namespace dnd_fast
