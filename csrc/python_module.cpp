// The Python module dnd_fast._C: importing it loads the library, which registers the ops
// (torch_bindings.cpp), binds tokenize_cuda directly for the latency path, and binds the host WordPiece
// (wordpiece.h) that generate() encodes prompts with.
#define PY_SSIZE_T_CLEAN  // Py_BuildValue's "y#" takes a Py_ssize_t length
#include <Python.h>

#include <torch/csrc/autograd/python_variable.h>

#include <memory>

#include "ops.h"
#include "wordpiece.h"

namespace {

const char* const kWordPieceCapsule = "dnd_fast.WordPiece";

bool string_of(PyObject* str, std::string& out) {
  Py_ssize_t size = 0;
  const char* text = PyUnicode_AsUTF8AndSize(str, &size);
  if (text == nullptr) return false;
  out.assign(text, static_cast<size_t>(size));
  return true;
}

bool strings_of(PyObject* list, std::vector<std::string>& out, const char* what) {
  if (!PyList_Check(list)) {
    PyErr_Format(PyExc_TypeError, "%s must be a list of str", what);
    return false;
  }
  out.resize(PyList_GET_SIZE(list));
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) {
    if (!string_of(PyList_GET_ITEM(list, i), out[i])) return false;
  }
  return true;
}

void free_wordpiece(PyObject* capsule) {
  delete static_cast<dnd_fast::WordPiece*>(PyCapsule_GetPointer(capsule, kWordPieceCapsule));
}

// wordpiece_new(vocab: list[str], prefix, unk, cls, sep, max_chars_per_word, lowercase, added: list[str])
PyObject* wordpiece_new_py(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 8) {
    PyErr_SetString(PyExc_TypeError, "wordpiece_new(vocab, prefix, unk, cls, sep, max_chars_per_word, lowercase, "
                                     "added)");
    return nullptr;
  }
  std::vector<std::string> vocab, added;
  std::string prefix;
  if (!strings_of(args[0], vocab, "vocab") || !string_of(args[1], prefix) || !strings_of(args[7], added, "added")) {
    return nullptr;
  }
  const int64_t unk = PyLong_AsLongLong(args[2]), cls = PyLong_AsLongLong(args[3]), sep = PyLong_AsLongLong(args[4]);
  const int64_t max_chars = PyLong_AsLongLong(args[5]);
  const int lowercase = PyObject_IsTrue(args[6]);
  if (PyErr_Occurred()) return nullptr;
  auto wp = std::make_unique<dnd_fast::WordPiece>(std::move(vocab), std::move(prefix), unk, cls, sep, max_chars,
                                                  lowercase != 0, std::move(added));
  PyObject* capsule = PyCapsule_New(wp.get(), kWordPieceCapsule, free_wordpiece);
  if (capsule != nullptr) wp.release();
  return capsule;
}

// wordpiece_encode(capsule, texts: list[str], max_length) -> (ids: bytes of int64, lengths: bytes of int64):
// each text's ids one after another; a length of -1 marks a text left to the reference (not ASCII, or
// holding an added token), which has no ids there.
PyObject* wordpiece_encode_py(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyList_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "wordpiece_encode(wordpiece, texts: list[str], max_length)");
    return nullptr;
  }
  auto* wp = static_cast<dnd_fast::WordPiece*>(PyCapsule_GetPointer(args[0], kWordPieceCapsule));
  const int64_t max_length = PyLong_AsLongLong(args[2]);
  if (wp == nullptr || PyErr_Occurred()) return nullptr;
  const Py_ssize_t n = PyList_GET_SIZE(args[1]);
  std::vector<int64_t> ids, lengths(static_cast<size_t>(n), -1);
  ids.reserve(static_cast<size_t>(n) * 48);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PyList_GET_ITEM(args[1], i);
    if (!PyUnicode_Check(item)) {
      PyErr_Format(PyExc_TypeError, "wordpiece_encode: texts[%zd] is not a str", i);
      return nullptr;
    }
    if (!PyUnicode_IS_ASCII(item)) continue;  // the reference's (length -1)
    Py_ssize_t size = 0;
    const char* text = PyUnicode_AsUTF8AndSize(item, &size);  // an ASCII str's own bytes: no copy
    if (text == nullptr) return nullptr;
    const size_t before = ids.size();
    if (wp->encode(std::string_view(text, static_cast<size_t>(size)), max_length, ids)) {
      lengths[static_cast<size_t>(i)] = static_cast<int64_t>(ids.size() - before);
    }
  }
  return Py_BuildValue("(y#y#)", reinterpret_cast<const char*>(ids.data()),
                       static_cast<Py_ssize_t>(ids.size() * sizeof(int64_t)),
                       reinterpret_cast<const char*>(lengths.data()),
                       static_cast<Py_ssize_t>(lengths.size() * sizeof(int64_t)));
}

}  // namespace

#define DND_FAST_FASTCALL(fn) reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fn))
#define DND_FAST_WORDPIECE_METHODS                                                                        \
  {"wordpiece_new", DND_FAST_FASTCALL(wordpiece_new_py), METH_FASTCALL, "a host WordPiece (wordpiece.h)"}, \
  {"wordpiece_encode", DND_FAST_FASTCALL(wordpiece_encode_py), METH_FASTCALL,                             \
   "(ids, lengths) as int64 bytes; length -1: left to the reference"},

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
    DND_FAST_WORDPIECE_METHODS
    {"tokenize_cuda", DND_FAST_FASTCALL(tokenize_cuda_py), METH_FASTCALL,
     "tokenize on CUDA tensors, without the dispatcher (see torch.ops.dnd_fast.tokenize)"},
    {nullptr, nullptr, 0, nullptr}};
#else
static PyMethodDef methods[] = {DND_FAST_WORDPIECE_METHODS {nullptr, nullptr, 0, nullptr}};
#endif

// A Python module so `import dnd_fast._C` loads the library (and so registers the ops).
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "dnd_fast C++/CUDA ops", -1, methods};
  PyObject* mod = PyModule_Create(&def);
  if (mod != nullptr) PyModule_AddIntConstant(mod, "with_cuda", DND_FAST_WITH_CUDA);
  return mod;
}
