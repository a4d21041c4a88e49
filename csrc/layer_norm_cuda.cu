// CUDA kernel of dnd_fast::layer_norm_planes and its launcher (the op's argument checks are in
// ops_cuda.cpp).
//
// The decoder normalises each layer's input x [B, C, H, W] over (H, W) and writes the result into
// two padded planes whose unit strides lie along different axes: W (the width-channel plane) and H
// (the height-channel plane). Read straight from x, the second store is a gather of 2-byte values H
// apart (the Triton kernels: 3x their copy floor). Here a block owns one (b, c) slice:
//   1. it loads the slice along x's rows (16-byte vectors) into shared memory, summing x - x[0] and
//      its square on the way (the shift keeps E[d^2] - E[d]^2 exact enough when |mean| >> std);
//   2. it normalises the staged values in the same row order, storing them to the output whose unit
//      stride is along W (vectors) and, in the output dtype, back to shared memory;
//   3. it stores the other output by walking shared memory along that output's unit stride (H).
// Offsets advance by fixed steps (Walk): no division per element (a first version that divided was
// instruction-bound at 4-5x the copy floor).
#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include "layer_norm.h"

namespace dnd_fast {
namespace {

struct Strides {
  int64_t b, c, h, w;
};

struct LnArgs {
  int C, H, W, n, y_offset16;  // y_offset16: where y starts in shared memory, in 16-byte units
  float eps;
  Strides x, o1, o2;
  bool two;      // o2 is written
  bool o1_rows;  // o1's unit stride is along W: stored in step 2 (vectors of V)
  bool x_h_fast; // x's unit stride is along H (V == 1): loaded down the columns
};

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float(__half v) {
  return __half2float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float(float v) {
  return __float2half_rn(v);
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// (slow, fast) of a thread's cells, `step` cells apart in the order whose fastest axis has nf cells.
struct Walk {
  int f, s, nf, df, ds;
  __device__ Walk(int start, int step, int nf_) : nf(nf_) {
    s = start / nf;
    f = start - s * nf;
    ds = step / nf;
    df = step - ds * nf;
  }
  __device__ void next() {
    f += df;
    s += ds;
    if (f >= nf) {
      f -= nf;
      ++s;
    }
  }
};

// Sums of a and b over the block; every thread gets them. `red` holds two floats per warp.
__device__ float2 block_sum2(float a, float b, float2* red) {
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffff, a, o);
    b += __shfl_xor_sync(0xffffffff, b, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) red[warp] = make_float2(a, b);
  __syncthreads();
  float2 s = lane < warps ? red[lane] : make_float2(0.f, 0.f);
  for (int o = 16; o > 0; o >>= 1) {
    s.x += __shfl_xor_sync(0xffffffff, s.x, o);
    s.y += __shfl_xor_sync(0xffffffff, s.y, o);
  }
  return s;
}

// Step 3: y (shared memory, row-major H x W) to an output of any strides, walked along its unit
// stride; two cells per store down a column when the output allows it.
template <typename out_t>
__device__ void store_from_smem(const out_t* ys, out_t* o, const Strides& s, int H, int W) {
  if (s.h == 1 && s.w != 1) {
    const bool pairs = H % 2 == 0 && s.w % 2 == 0 && reinterpret_cast<uintptr_t>(o) % (2 * sizeof(out_t)) == 0;
    if (pairs) {
      for (Walk it(threadIdx.x, blockDim.x, H / 2); it.s < W; it.next()) {
        const int h = 2 * it.f, w = it.s;
        Vec<out_t, 2> v;
        v.v[0] = ys[h * W + w];
        v.v[1] = ys[(h + 1) * W + w];
        *reinterpret_cast<Vec<out_t, 2>*>(o + h + w * s.w) = v;
      }
    } else {
      for (Walk it(threadIdx.x, blockDim.x, H); it.s < W; it.next()) o[it.f + it.s * s.w] = ys[it.f * W + it.s];
    }
  } else {
    for (Walk it(threadIdx.x, blockDim.x, W); it.s < H; it.next())
      o[it.s * s.h + it.f * s.w] = ys[it.s * W + it.f];
  }
}

template <typename x_t, typename out_t, int V>
__global__ void layer_norm_planes_kernel(const x_t* __restrict__ x, const float* __restrict__ weight,
                                         const float* __restrict__ bias, out_t* __restrict__ o1,
                                         out_t* __restrict__ o2, LnArgs a) {
  extern __shared__ float4 smem4[];
  __shared__ float2 red[32];
  x_t* xs = reinterpret_cast<x_t*>(smem4);
  // y in place of x when the dtypes are the same size (each thread rewrites the cells it read)
  out_t* ys = reinterpret_cast<out_t*>(smem4 + (sizeof(x_t) == sizeof(out_t) ? 0 : a.y_offset16));
  const int b = blockIdx.x / a.C, c = blockIdx.x - b * a.C;
  const x_t* xb = x + b * a.x.b + c * a.x.c;
  o1 += b * a.o1.b + c * a.o1.c;
  o2 += b * a.o2.b + c * a.o2.c;
  const int H = a.H, W = a.W, n = a.n, WV = W / V;

  // 1. stage the slice, with shifted sums
  const float shift = to_float(xb[0]);
  float s1 = 0.f, s2 = 0.f;
  if (a.x_h_fast) {
    for (Walk it(threadIdx.x, blockDim.x, H); it.s < W; it.next()) {
      const x_t v = xb[it.f + it.s * a.x.w];
      xs[it.f * W + it.s] = v;
      const float d = to_float(v) - shift;
      s1 += d;
      s2 += d * d;
    }
  } else {
    constexpr int kUnroll = 2;  // vectors in flight per thread
    Walk it(threadIdx.x, blockDim.x, WV);
    while (it.s < H) {
      Vec<x_t, V> v[kUnroll];
      int at[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        at[u] = it.s < H ? it.s * W + it.f * V : -1;
        if (at[u] >= 0) v[u] = *reinterpret_cast<const Vec<x_t, V>*>(xb + it.s * a.x.h + it.f * V * a.x.w);
        it.next();
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (at[u] < 0) continue;
        *reinterpret_cast<Vec<x_t, V>*>(xs + at[u]) = v[u];
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float d = to_float(v[u].v[k]) - shift;
          s1 += d;
          s2 += d * d;
        }
      }
    }
  }
  const float2 sums = block_sum2(s1, s2, red);  // its barrier also orders step 1's stores before step 2
  const float mean_d = sums.x / n;
  const float rstd = 1.f / sqrtf(fmaxf(sums.y / n - mean_d * mean_d, 0.f) + a.eps);
  const float mean = shift + mean_d;

  // 2. normalise in row order: to o1 (if its rows run along W) and to shared memory
  const bool stage_y = a.two || !a.o1_rows;
  for (Walk it(threadIdx.x, blockDim.x, WV); it.s < H; it.next()) {
    const int at = it.s * W + it.f * V;
    const Vec<x_t, V> v = *reinterpret_cast<const Vec<x_t, V>*>(xs + at);
    const Vec<float, V> g = *reinterpret_cast<const Vec<float, V>*>(weight + at);
    const Vec<float, V> e = *reinterpret_cast<const Vec<float, V>*>(bias + at);
    Vec<out_t, V> y;
#pragma unroll
    for (int k = 0; k < V; ++k) y.v[k] = from_float<out_t>((to_float(v.v[k]) - mean) * rstd * g.v[k] + e.v[k]);
    if (a.o1_rows) *reinterpret_cast<Vec<out_t, V>*>(o1 + it.s * a.o1.h + it.f * V) = y;
    if (stage_y) *reinterpret_cast<Vec<out_t, V>*>(ys + at) = y;
  }
  if (!stage_y) return;
  __syncthreads();

  // 3. the other output(s) from shared memory
  if (!a.o1_rows) store_from_smem(ys, o1, a.o1, H, W);
  if (a.two) store_from_smem(ys, o2, a.o2, H, W);
}

Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Whether t's rows run along W and every row starts on a v-element boundary of an aligned pointer.
bool rows_of(const at::Tensor& t, int64_t v) {
  const int64_t bytes = v * t.element_size();
  return t.stride(3) == 1 && t.size(3) % v == 0 && t.stride(2) % v == 0 && t.stride(1) % v == 0 &&
         t.stride(0) % v == 0 && reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes == 0;
}

template <typename x_t, typename out_t, int V>
const char* launch(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& o1,
                   const at::Tensor& o2, const LnArgs& a, int threads, size_t smem) {
  auto kernel = layer_norm_planes_kernel<x_t, out_t, V>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const int64_t B = x.size(0);
  kernel<<<static_cast<unsigned>(B * a.C), threads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const x_t*>(x.data_ptr()), weight.data_ptr<float>(), bias.data_ptr<float>(),
      reinterpret_cast<out_t*>(o1.data_ptr()), reinterpret_cast<out_t*>(o2.data_ptr()), a);
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// The widest vector (elements) that x's rows, o1's rows (when stored in step 2) and the [H, W] fp32
// weight all allow, at most 16 bytes of any of them.
template <typename x_t, typename out_t>
const char* launch_v(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& o1,
                     const at::Tensor& o2, const LnArgs& a, int threads, size_t smem) {
  constexpr int kMax = 16 / std::max({sizeof(x_t), sizeof(out_t), sizeof(float)});
  int v = a.x_h_fast ? 1 : kMax;
  const auto aligned = [](const at::Tensor& t, int v) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % (4 * v) == 0; };
  while (v > 1 && !(rows_of(x, v) && (!a.o1_rows || rows_of(o1, v)) && aligned(weight, v) && aligned(bias, v))) v /= 2;
  switch (v) {
    case 4: return launch<x_t, out_t, 4>(x, weight, bias, o1, o2, a, threads, smem);
    case 2: return launch<x_t, out_t, 2>(x, weight, bias, o1, o2, a, threads, smem);
    default: return launch<x_t, out_t, 1>(x, weight, bias, o1, o2, a, threads, smem);
  }
}

template <typename x_t>
const char* launch_out(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                       const at::Tensor& o1, const at::Tensor& o2, const LnArgs& a, int threads, size_t smem) {
  switch (o1.scalar_type()) {
    case at::kBFloat16: return launch_v<x_t, __nv_bfloat16>(x, weight, bias, o1, o2, a, threads, smem);
    case at::kHalf: return launch_v<x_t, __half>(x, weight, bias, o1, o2, a, threads, smem);
    default: return launch_v<x_t, float>(x, weight, bias, o1, o2, a, threads, smem);
  }
}

int64_t round16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

}  // namespace

int64_t layer_norm_smem_bytes(int64_t H, int64_t W, int64_t x_bytes, int64_t out_bytes) {
  const int64_t cells = H * W;
  return x_bytes == out_bytes ? round16(cells * x_bytes) : round16(cells * x_bytes) + round16(cells * out_bytes);
}

int64_t layer_norm_max_smem_bytes() {
  int dev = 0, bytes = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  return bytes;
}

const char* launch_layer_norm_planes(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                     double eps, const at::Tensor& o1_in, const at::Tensor& o2_in, bool two) {
  // The output whose rows run along W (if either) is stored in step 2: make it o1.
  const bool swap = two && o1_in.stride(3) != 1 && o2_in.stride(3) == 1;
  const at::Tensor& o1 = swap ? o2_in : o1_in;
  const at::Tensor& o2 = swap ? o1_in : o2_in;
  LnArgs a{};
  a.C = static_cast<int>(x.size(1));
  a.H = static_cast<int>(x.size(2));
  a.W = static_cast<int>(x.size(3));
  a.n = a.H * a.W;
  a.y_offset16 = static_cast<int>(round16(int64_t{a.n} * x.element_size()) / 16);
  a.eps = static_cast<float>(eps);
  a.x = strides_of(x);
  a.o1 = strides_of(o1);
  a.o2 = strides_of(o2);
  a.two = two;
  a.o1_rows = o1.stride(3) == 1;
  a.x_h_fast = x.stride(3) != 1 && x.stride(2) == 1;
  const size_t smem = layer_norm_smem_bytes(a.H, a.W, x.element_size(), o1.element_size());
  const int threads = a.n <= 4096 ? 256 : (a.n <= 16384 ? 512 : 1024);
  switch (x.scalar_type()) {
    case at::kBFloat16: return launch_out<__nv_bfloat16>(x, weight, bias, o1, o2, a, threads, smem);
    case at::kHalf: return launch_out<__half>(x, weight, bias, o1, o2, a, threads, smem);
    default: return launch_out<float>(x, weight, bias, o1, o2, a, threads, smem);
  }
}

}  // namespace dnd_fast
