// Python bindings of the C++ kernels: module emofast._C (plain pybind11, no torch headers).
//
// Tensors cross as raw data pointers (tensor.data_ptr()), sizes and element strides; emofast/kernels/_cpp.py
// validates and prepares them. The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "select_reduce.h"

namespace py = pybind11;

namespace {

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void select_reduce(uintptr_t x, int x_dtype, int64_t B, int64_t T, int64_t D, int64_t sb, int64_t st, int64_t sd,
                   uintptr_t batch_index, uintptr_t token_index, uintptr_t labels, int64_t R, int64_t C,
                   uintptr_t weights, uintptr_t dirs, int64_t K, uintptr_t out, int64_t soc, int64_t sod,
                   bool accumulate, uintptr_t proj, int64_t spr, int64_t spk, int64_t threads) {
  emofast::SelectReduceArgs a;
  a.x = ptr<const void>(x);
  a.x_dtype = static_cast<emofast::DType>(x_dtype);
  a.B = B;
  a.T = T;
  a.D = D;
  a.sb = sb;
  a.st = st;
  a.sd = sd;
  a.batch_index = ptr<const int64_t>(batch_index);
  a.token_index = ptr<const int64_t>(token_index);
  a.labels = ptr<const int64_t>(labels);
  a.R = R;
  a.C = C;
  a.weights = ptr<const float>(weights);
  a.dirs = ptr<const float>(dirs);
  a.K = K;
  a.out = ptr<float>(out);
  a.soc = soc;
  a.sod = sod;
  a.accumulate = accumulate;
  a.proj = ptr<float>(proj);
  a.spr = spr;
  a.spk = spk;
  a.threads = threads;
  py::gil_scoped_release release;
  emofast::select_reduce(a);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "emofast C++ CPU kernels (see emofast/kernels/_cpp.py for the Python entry point)";
  py::dict dtypes;
  dtypes["float32"] = static_cast<int>(emofast::DType::F32);
  dtypes["float16"] = static_cast<int>(emofast::DType::F16);
  dtypes["bfloat16"] = static_cast<int>(emofast::DType::BF16);
  m.attr("DTYPES") = dtypes;
  m.def("select_reduce", &select_reduce,
        "Fused select-reduce on raw pointers (0 for an absent weights/dirs/proj); element strides; "
        "fp32 weights [R], dirs [K, D] contiguous; out [C, D] and proj [R, K] fp32, any strides; "
        "threads: OpenMP threads to use.",
        py::arg("x"), py::arg("x_dtype"), py::arg("B"), py::arg("T"), py::arg("D"), py::arg("sb"), py::arg("st"),
        py::arg("sd"), py::arg("batch_index"), py::arg("token_index"), py::arg("labels"), py::arg("R"),
        py::arg("C"), py::arg("weights"), py::arg("dirs"), py::arg("K"), py::arg("out"), py::arg("soc"),
        py::arg("sod"), py::arg("accumulate"), py::arg("proj"), py::arg("spr"), py::arg("spk"), py::arg("threads"));
}
