// The Python module dnd_fast._C: importing it loads the library, which registers the ops
// (torch_bindings.cpp), and binds tokenize_cuda directly for the latency path.
#include <Python.h>

#include <torch/csrc/autograd/python_variable.h>

#include "ops.h"

#if DND_FAST_WITH_CUDA
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
