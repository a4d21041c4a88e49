// dnd_fast._C: the one registration point of the extension's ops, and their CPU kernels.
//
// Ops (schemas declared once here; argument checks and allocations here for both devices, the
// CUDA kernels and launchers in tokenize_cuda.cu; fake kernels for torch.compile in
// dnd_fast/tokenizer.py):
//   tokenize(flat[B,P], meta[T,5], h, w, stats?[T,2], eps) -> (tokens[B,T,h,w] f32, scales[B,T,2] f32)
//   detokenize(tokens[B,T,h,w], scales[B,T,2], meta[T,5], num_params, dtype) -> flat[B,P]
//   conv_plane_thin(plane[rows,C8], weight[k*k,N16,CK], k, out![B,C_out,P,Q]) -> ()  (CUDA only; the
//     thin convs of the decoder, reference and packing in dnd_fast/thin_conv.py)
//   layer_norm_planes(x[B,C,H,W], weight[H,W] f32, bias[H,W] f32, eps, outs![B,C,H,W] x 1 or 2) -> ()
//     (CUDA only; F.layer_norm over (H, W) into the decoder's planes, dnd_fast/layer_norm.py)
//   layer_norm_planes_smem(H, W, x_bytes, out_bytes) -> int: the shared memory one of its blocks needs
//
// meta row t = (src_offset, rows, cols, row_stride, col_stride): token t holds
// flat[b, src + i*row_stride + j*col_stride] at (i, j) for i < rows, j < cols; every other
// slot of the h x w tile is padding (0). The reference is dnd_fast/tokenizer.py.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/library.h>

#include <cmath>

#include "conv_thin.h"
#include "layer_norm.h"
#include "tokenize.h"

namespace dnd_fast {
namespace {

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

}  // namespace

#if DND_FAST_WITH_CUDA
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
#endif

}  // namespace dnd_fast

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

// tokenize(flat, meta, h, w, stats or None, eps) on CUDA tensors, called from Python without the
// dispatcher's boxed call: 2.3 us of host time instead of 4.6 on the lent H100's host, where the
// batch-1 call takes ~24 us in all (benchmarks/gpu_tokenizer.py --breakdown). torch.compile and every other caller
// go through torch.ops.dnd_fast.tokenize.
static PyObject* tokenize_cuda_py(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 6 || !THPVariable_Check(args[0]) || !THPVariable_Check(args[1]) ||
      (args[4] != Py_None && !THPVariable_Check(args[4]))) {
    PyErr_SetString(PyExc_TypeError, "tokenize_cuda(flat, meta, h, w, stats or None, eps)");
    return nullptr;
  }
  const int64_t h = PyLong_AsLongLong(args[2]), w = PyLong_AsLongLong(args[3]);
  const double eps = PyFloat_AsDouble(args[5]);
  if (PyErr_Occurred()) return nullptr;
  std::optional<at::Tensor> stats;
  if (args[4] != Py_None) stats = THPVariable_Unpack(args[4]);
  try {
    auto [tokens, scales] =
        dnd_fast::tokenize_cuda(THPVariable_Unpack(args[0]), THPVariable_Unpack(args[1]), h, w, stats, eps);
    PyObject* out = PyTuple_New(2);
    if (out == nullptr) return nullptr;
    PyTuple_SET_ITEM(out, 0, THPVariable_Wrap(std::move(tokens)));
    PyTuple_SET_ITEM(out, 1, THPVariable_Wrap(std::move(scales)));
    return out;
  } catch (const c10::Error& e) {  // TORCH_CHECK: the op path raises RuntimeError with the same text
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

static PyMethodDef methods[] = {
    {"tokenize_cuda", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(tokenize_cuda_py)),
     METH_FASTCALL, "tokenize on CUDA tensors, without the dispatcher (see torch.ops.dnd_fast.tokenize)"},
    {nullptr, nullptr, 0, nullptr}};
#else
static PyMethodDef methods[] = {{nullptr, nullptr, 0, nullptr}};
#endif

// A Python module so `import dnd_fast._C` loads the library (and so registers the ops).
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "dnd_fast C++/CUDA ops", -1, methods};
  PyObject* mod = PyModule_Create(&def);
  if (mod != nullptr) PyModule_AddIntConstant(mod, "with_cuda", DND_FAST_WITH_CUDA);
  return mod;
}
