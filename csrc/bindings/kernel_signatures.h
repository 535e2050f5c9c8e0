// The Python signature of each kernel that both modules bind, written once: argument names, order and types.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <tuple>

#include "bindings/binding_utils.h"

namespace qmia {
namespace bindings {

namespace py = pybind11;

// Each *Args struct holds one kernel's arguments as both cores take them. parse() takes them
// as Python passes them (data_ptr() integers, a layout in four pieces, a coefficient as
// address and value) and names() gives their keywords; each module appends its own trailing
// arguments (num_threads; or workspace, device and cuda_stream) through def_kernel. Written
// once, the shared part cannot drift between the modules: kernels/dispatch.py (_launch)
// passes both the same leading arguments.
//
// The Philox stream keyword is the modules' one difference in the shared part: "stream" on
// the CPU, "stream_id" on CUDA, where "cuda_stream" is the CUDA stream.

inline std::tuple<py::arg, py::arg, py::arg, py::arg> layout_names() {
  return {py::arg("row_length"), py::arg("channels_last"), py::arg("channels"), py::arg("plane")};
}

// seed, offset, samples and the Philox stream, in that order: the key of a noise kernel's rows.
inline std::tuple<py::arg, py::arg, py::arg, py::arg> noise_key_names(const char* stream) {
  return {py::arg("seed"), py::arg("offset"), py::arg("samples"), py::arg(stream)};
}

struct PhiloxUint32Args {
  uint32_t* out;
  int64_t n_rows, n_groups;
  uint64_t seed, offset;
  uint32_t stream;

  static PhiloxUint32Args parse(uintptr_t out, int64_t n_rows, int64_t n_groups, uint64_t seed, uint64_t offset,
                                uint32_t stream) {
    return {as_pointer<uint32_t>(out), n_rows, n_groups, seed, offset, stream};
  }
  static auto names(const char* stream) {
    return std::make_tuple(py::arg("out"), py::arg("n_rows"), py::arg("n_groups"), py::arg("seed"),
                           py::arg("offset"), py::arg(stream));
  }
};

// What the three noise kernels share: the rows they cover and the Philox key of each row.
struct NoiseRows {
  int32_t dtype;
  int64_t n_rows;
  RowLayout layout;
  uint64_t seed;
  SampleIndex samples;
  uint32_t stream;
};

inline NoiseRows noise_rows(int32_t dtype, int64_t n_rows, int64_t row_length, int32_t channels_last,
                            int64_t channels, int64_t plane, uint64_t seed, uint64_t offset, uintptr_t samples,
                            uint32_t stream) {
  return {dtype, n_rows, make_layout(row_length, channels_last, channels, plane), seed, make_samples(samples, offset),
          stream};
}

struct PhiloxNormalArgs : NoiseRows {
  void* out;

  static PhiloxNormalArgs parse(uintptr_t out, int32_t dtype, int64_t n_rows, int64_t row_length,
                                int32_t channels_last, int64_t channels, int64_t plane, uint64_t seed,
                                uint64_t offset, uintptr_t samples, uint32_t stream) {
    return {noise_rows(dtype, n_rows, row_length, channels_last, channels, plane, seed, offset, samples, stream),
            as_pointer<void>(out)};
  }
  static auto names(const char* stream) {
    return std::tuple_cat(std::make_tuple(py::arg("out"), py::arg("dtype"), py::arg("n_rows")), layout_names(),
                          noise_key_names(stream));
  }
};

struct NoiseInjectArgs : NoiseRows {
  const void* x0;
  RowCoefficient a, b;
  void* x_t;
  void* eps_out;

  static NoiseInjectArgs parse(uintptr_t x0, uintptr_t a, float a_value, uintptr_t b, float b_value, uintptr_t x_t,
                               uintptr_t eps_out, int32_t dtype, int64_t n_rows, int64_t row_length,
                               int32_t channels_last, int64_t channels, int64_t plane, uint64_t seed,
                               uint64_t offset, uintptr_t samples, uint32_t stream) {
    return {noise_rows(dtype, n_rows, row_length, channels_last, channels, plane, seed, offset, samples, stream),
            as_pointer<const void>(x0), make_coefficient(a, a_value), make_coefficient(b, b_value),
            as_pointer<void>(x_t), as_pointer<void>(eps_out)};
  }
  static auto names(const char* stream) {
    return std::tuple_cat(std::make_tuple(py::arg("x0"), py::arg("a"), py::arg("a_value"), py::arg("b"),
                                          py::arg("b_value"), py::arg("x_t"), py::arg("eps_out"), py::arg("dtype"),
                                          py::arg("n_rows")),
                          layout_names(), noise_key_names(stream));
  }
};

struct EpsSqErrorArgs : NoiseRows {
  const void* eps_pred;
  float* out;

  static EpsSqErrorArgs parse(uintptr_t eps_pred, uintptr_t out, int32_t dtype, int64_t n_rows, int64_t row_length,
                              int32_t channels_last, int64_t channels, int64_t plane, uint64_t seed, uint64_t offset,
                              uintptr_t samples, uint32_t stream) {
    return {noise_rows(dtype, n_rows, row_length, channels_last, channels, plane, seed, offset, samples, stream),
            as_pointer<const void>(eps_pred), as_pointer<float>(out)};
  }
  static auto names(const char* stream) {
    return std::tuple_cat(std::make_tuple(py::arg("eps_pred"), py::arg("out"), py::arg("dtype"), py::arg("n_rows")),
                          layout_names(), noise_key_names(stream));
  }
};

struct DdimStepArgs {
  const void* x;
  const void* eps;
  RowCoefficient c1, c2;
  void* out;
  int32_t dtype;
  int64_t n_rows, row_length;

  static DdimStepArgs parse(uintptr_t x, uintptr_t eps, uintptr_t c1, float c1_value, uintptr_t c2, float c2_value,
                            uintptr_t out, int32_t dtype, int64_t n_rows, int64_t row_length) {
    return {as_pointer<const void>(x), as_pointer<const void>(eps), make_coefficient(c1, c1_value),
            make_coefficient(c2, c2_value), as_pointer<void>(out), dtype, n_rows, row_length};
  }
  static auto names() {
    return std::make_tuple(py::arg("x"), py::arg("eps"), py::arg("c1"), py::arg("c1_value"), py::arg("c2"),
                           py::arg("c2_value"), py::arg("out"), py::arg("dtype"), py::arg("n_rows"),
                           py::arg("row_length"));
  }
};

struct DdimStepSqerrArgs {
  const void* x;
  const void* eps;
  RowCoefficient c1, c2;
  const void* ref;
  float* out;
  int32_t dtype;
  int64_t n_rows;
  RowLayout layout;

  static DdimStepSqerrArgs parse(uintptr_t x, uintptr_t eps, uintptr_t c1, float c1_value, uintptr_t c2,
                                 float c2_value, uintptr_t ref, uintptr_t out, int32_t dtype, int64_t n_rows,
                                 int64_t row_length, int32_t channels_last, int64_t channels, int64_t plane) {
    return {as_pointer<const void>(x), as_pointer<const void>(eps), make_coefficient(c1, c1_value),
            make_coefficient(c2, c2_value), as_pointer<const void>(ref), as_pointer<float>(out), dtype, n_rows,
            make_layout(row_length, channels_last, channels, plane)};
  }
  static auto names() {
    return std::tuple_cat(std::make_tuple(py::arg("x"), py::arg("eps"), py::arg("c1"), py::arg("c1_value"),
                                          py::arg("c2"), py::arg("c2_value"), py::arg("ref"), py::arg("out"),
                                          py::arg("dtype"), py::arg("n_rows")),
                          layout_names());
  }
};

struct PnormErrorArgs {
  const void* a;
  const void* b;
  float* out;
  int32_t dtype;
  int64_t n_rows;
  RowLayout layout;
  float p;

  static PnormErrorArgs parse(uintptr_t a, uintptr_t b, uintptr_t out, int32_t dtype, int64_t n_rows,
                              int64_t row_length, int32_t channels_last, int64_t channels, int64_t plane, float p) {
    return {as_pointer<const void>(a), as_pointer<const void>(b), as_pointer<float>(out), dtype, n_rows,
            make_layout(row_length, channels_last, channels, plane), p};
  }
  static auto names() {
    return std::tuple_cat(std::make_tuple(py::arg("a"), py::arg("b"), py::arg("out"), py::arg("dtype"),
                                          py::arg("n_rows")),
                          layout_names(), std::make_tuple(py::arg("p")));
  }
};

struct GroupNormActArgs {
  const void* x;
  const void* add;
  int32_t add_kind;
  const void* gamma;
  const void* beta;
  int32_t param_dtype;
  void* y;
  void* sum_out;
  int32_t dtype;
  int64_t n, pixels, channels, groups;
  float eps;
  int32_t silu;

  static GroupNormActArgs parse(uintptr_t x, uintptr_t add, int32_t add_kind, uintptr_t gamma, uintptr_t beta,
                                int32_t param_dtype, uintptr_t y, uintptr_t sum_out, int32_t dtype, int64_t n,
                                int64_t pixels, int64_t channels, int64_t groups, float eps, int32_t silu) {
    return {as_pointer<const void>(x), as_pointer<const void>(add), add_kind, as_pointer<const void>(gamma),
            as_pointer<const void>(beta), param_dtype, as_pointer<void>(y), as_pointer<void>(sum_out), dtype, n,
            pixels, channels, groups, eps, silu};
  }
  static auto names() {
    return std::make_tuple(py::arg("x"), py::arg("add"), py::arg("add_kind"), py::arg("gamma"), py::arg("beta"),
                           py::arg("param_dtype"), py::arg("y"), py::arg("sum_out"), py::arg("dtype"), py::arg("n"),
                           py::arg("pixels"), py::arg("channels"), py::arg("groups"), py::arg("eps"),
                           py::arg("silu"));
  }
};

struct VoteArgs {
  const void* scores;
  const void* thresholds;
  int32_t dtype;
  int64_t n_samples, n_models, score_stride, model_stride, sample_stride;
  int32_t* votes;
  uint8_t* decision;
  void* margin;

  static VoteArgs parse(uintptr_t scores, uintptr_t thresholds, int32_t dtype, int64_t n_samples, int64_t n_models,
                        int64_t score_stride, int64_t model_stride, int64_t sample_stride, uintptr_t votes,
                        uintptr_t decision, uintptr_t margin) {
    return {as_pointer<const void>(scores), as_pointer<const void>(thresholds), dtype, n_samples, n_models,
            score_stride, model_stride, sample_stride, as_pointer<int32_t>(votes), as_pointer<uint8_t>(decision),
            as_pointer<void>(margin)};
  }
  static auto names() {
    return std::make_tuple(py::arg("scores"), py::arg("thresholds"), py::arg("dtype"), py::arg("n_samples"),
                           py::arg("n_models"), py::arg("score_stride"), py::arg("model_stride"),
                           py::arg("sample_stride"), py::arg("votes"), py::arg("decision"), py::arg("margin"));
  }
};

// ---- binding -------------------------------------------------------------------------

template <typename... T>
struct TypeList {};

// The parameters of Spec::parse: the kernel's Python arguments.
template <typename F>
struct ParseParams;
template <typename Spec, typename... Python>
struct ParseParams<Spec (*)(Python...)> {
  using type = TypeList<Python...>;
};

// The parameters of a module's call, a lambda (const Spec&, own...).
template <typename Call>
struct CallParams : CallParams<decltype(&Call::operator())> {};
template <typename C, typename R, typename Spec, typename... Own>
struct CallParams<R (C::*)(const Spec&, Own...) const> {
  using spec = Spec;
  using own = TypeList<Own...>;
};

template <typename Call>
using spec_of = typename CallParams<Call>::spec;

// One function of (Spec's Python arguments..., the module's own...), the form pybind11 reads
// a signature from; parse() runs first, so a bad layout raises before the call releases the GIL.
template <typename Spec, typename PythonParams, typename OwnParams, typename Call>
struct ParsedCall;
template <typename Spec, typename... Python, typename... Own, typename Call>
struct ParsedCall<Spec, TypeList<Python...>, TypeList<Own...>, Call> {
  Call call;
  void operator()(Python... python, Own... own) const { call(Spec::parse(python...), own...); }
};

// Binds `name` as call(Spec::parse(shared...), own...), Spec and own taken from call's parameters;
// names are Spec::names(...), own_names the keywords of own.
template <typename Call, typename... Names, typename... OwnNames>
void def_kernel(py::module_& m, const char* name, const std::tuple<Names...>& names, Call call,
                const OwnNames&... own_names) {
  using Spec = spec_of<Call>;
  using Function = ParsedCall<Spec, typename ParseParams<decltype(&Spec::parse)>::type,
                              typename CallParams<Call>::own, Call>;
  std::apply([&](const auto&... arg) { m.def(name, Function{call}, arg..., own_names...); }, names);
}

}  // namespace bindings
}  // namespace qmia
