// The qmia_fast._cpu extension: CPU kernels called with data_ptr() integers, the GIL released while they run.
#include <pybind11/pybind11.h>

#include "bindings/binding_utils.h"
#include "cpu/kernels_cpu.h"
#include "cpu/unet_layers_cpu.h"

#include "qmia_build_config.h"

namespace py = pybind11;
using qmia::bindings::as_pointer;
using qmia::bindings::make_layout;

namespace {

const char* simd_level_name() {
  return qmia::cpu::active_simd_level() == qmia::cpu::SimdLevel::kAvx2 ? "avx2" : "generic";
}

py::dict build_info() {
  py::dict info;
  info["version"] = QMIA_VERSION_INFO;
  info["compiler"] = QMIA_CXX_COMPILER;
  info["compile_flags"] = QMIA_CPU_COMPILE_FLAGS;
  info["build_type"] = QMIA_BUILD_TYPE;
#if defined(_OPENMP)
  info["openmp"] = int(_OPENMP);
#else
  info["openmp"] = py::none();
#endif
  info["openmp_max_threads"] = qmia::cpu::max_threads();
  info["simd_level"] = simd_level_name();
  info["cuda_module_built"] = bool(QMIA_CUDA_BUILT);
  info["cuda_archs"] = QMIA_CUDA_ARCHS;
  return info;
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "qmia-fast CPU kernels (internal: call qmia_fast.kernels instead)";

  m.def("build_info", &build_info);
  m.def("contract_constants", &qmia::bindings::contract_constants);
  m.def("max_threads", &qmia::cpu::max_threads);
  m.def("simd_level", &simd_level_name);
  m.def("force_simd_level", &qmia::cpu::force_simd_level, py::arg("level"),
        "-1: the best the CPU supports; 0: baseline x86-64; 1: AVX2 (capped at what the CPU has)");

  m.def(
      "philox_uint32",
      [](uintptr_t out, int64_t n_rows, int64_t n_groups, uint64_t seed, uint64_t offset, uint32_t stream,
         int num_threads) {
        py::gil_scoped_release release;
        qmia::cpu::philox_uint32(as_pointer<uint32_t>(out), n_rows, n_groups, seed, offset, stream, num_threads);
      },
      py::arg("out"), py::arg("n_rows"), py::arg("n_groups"), py::arg("seed"), py::arg("offset"), py::arg("stream"),
      py::arg("num_threads") = 0);

  m.def(
      "philox_normal",
      [](uintptr_t out, int32_t dtype, int64_t n_rows, int64_t row_length, int32_t channels_last, int64_t channels,
         int64_t plane, uint64_t seed, uint64_t offset, uintptr_t samples, uint32_t stream, int num_threads) {
        const qmia::RowLayout layout = make_layout(row_length, channels_last, channels, plane);
        py::gil_scoped_release release;
        qmia::cpu::philox_normal(as_pointer<void>(out), dtype, n_rows, layout, seed,
                                 qmia::bindings::make_samples(samples, offset), stream, num_threads);
      },
      py::arg("out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"), py::arg("channels_last"),
      py::arg("channels"), py::arg("plane"), py::arg("seed"), py::arg("offset"), py::arg("samples"), py::arg("stream"),
      py::arg("num_threads") = 0);

  m.def(
      "noise_inject",
      [](uintptr_t x0, uintptr_t a, float a_value, uintptr_t b, float b_value, uintptr_t x_t, uintptr_t eps_out,
         int32_t dtype, int64_t n_rows, int64_t row_length, int32_t channels_last, int64_t channels, int64_t plane,
         uint64_t seed, uint64_t offset, uintptr_t samples, uint32_t stream, int num_threads) {
        const qmia::RowLayout layout = make_layout(row_length, channels_last, channels, plane);
        py::gil_scoped_release release;
        qmia::cpu::noise_inject(as_pointer<const void>(x0), qmia::bindings::make_coefficient(a, a_value),
                                qmia::bindings::make_coefficient(b, b_value), as_pointer<void>(x_t),
                                as_pointer<void>(eps_out), dtype, n_rows, layout, seed,
                                qmia::bindings::make_samples(samples, offset), stream, num_threads);
      },
      py::arg("x0"), py::arg("a"), py::arg("a_value"), py::arg("b"), py::arg("b_value"), py::arg("x_t"),
      py::arg("eps_out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"), py::arg("channels_last"),
      py::arg("channels"), py::arg("plane"), py::arg("seed"), py::arg("offset"), py::arg("samples"), py::arg("stream"),
      py::arg("num_threads") = 0);

  m.def(
      "eps_sq_error",
      [](uintptr_t eps_pred, uintptr_t out, int32_t dtype, int64_t n_rows, int64_t row_length, int32_t channels_last,
         int64_t channels, int64_t plane, uint64_t seed, uint64_t offset, uintptr_t samples, uint32_t stream,
         int num_threads) {
        const qmia::RowLayout layout = make_layout(row_length, channels_last, channels, plane);
        py::gil_scoped_release release;
        qmia::cpu::eps_sq_error(as_pointer<const void>(eps_pred), as_pointer<float>(out), dtype, n_rows, layout, seed,
                                qmia::bindings::make_samples(samples, offset), stream, num_threads);
      },
      py::arg("eps_pred"), py::arg("out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"),
      py::arg("channels_last"), py::arg("channels"), py::arg("plane"), py::arg("seed"), py::arg("offset"),
      py::arg("samples"), py::arg("stream"), py::arg("num_threads") = 0);

  m.def("winograd_tiles", &qmia::cpu::winograd_tiles, py::arg("n"), py::arg("height"), py::arg("width"));

  m.def(
      "winograd_input_transform",
      [](uintptr_t x, uintptr_t v, int64_t n, int64_t height, int64_t width, int64_t channels, int64_t p0, int64_t p1,
         int num_threads) {
        py::gil_scoped_release release;
        qmia::cpu::winograd_input_transform(as_pointer<const float>(x), as_pointer<float>(v), n, height, width,
                                            channels, p0, p1, num_threads);
      },
      py::arg("x"), py::arg("v"), py::arg("n"), py::arg("height"), py::arg("width"), py::arg("channels"),
      py::arg("p0"), py::arg("p1"), py::arg("num_threads") = 0);

  m.def(
      "winograd_output_transform",
      [](uintptr_t m_ptr, uintptr_t bias, uintptr_t y, int64_t n, int64_t height, int64_t width, int64_t out_channels,
         int64_t p0, int64_t p1, int num_threads) {
        py::gil_scoped_release release;
        qmia::cpu::winograd_output_transform(as_pointer<const float>(m_ptr), as_pointer<const float>(bias),
                                             as_pointer<float>(y), n, height, width, out_channels, p0, p1,
                                             num_threads);
      },
      py::arg("m"), py::arg("bias"), py::arg("y"), py::arg("n"), py::arg("height"), py::arg("width"),
      py::arg("out_channels"), py::arg("p0"), py::arg("p1"), py::arg("num_threads") = 0);

  m.def(
      "group_norm_act",
      [](uintptr_t x, uintptr_t add, int32_t add_kind, uintptr_t gamma, uintptr_t beta, int32_t param_dtype,
         uintptr_t y, uintptr_t sum_out, int32_t dtype, int64_t n, int64_t pixels, int64_t channels, int64_t groups,
         float eps, int32_t silu, int num_threads) {
        py::gil_scoped_release release;
        qmia::cpu::group_norm_act(as_pointer<const void>(x), as_pointer<const void>(add), add_kind,
                                  as_pointer<const void>(gamma), as_pointer<const void>(beta), param_dtype,
                                  as_pointer<void>(y), as_pointer<void>(sum_out), dtype, n, pixels, channels, groups,
                                  eps, silu, num_threads);
      },
      py::arg("x"), py::arg("add"), py::arg("add_kind"), py::arg("gamma"), py::arg("beta"), py::arg("param_dtype"),
      py::arg("y"), py::arg("sum_out"), py::arg("dtype"), py::arg("n"), py::arg("pixels"), py::arg("channels"),
      py::arg("groups"), py::arg("eps"), py::arg("silu"), py::arg("num_threads") = 0);

  m.def(
      "ddim_step",
      [](uintptr_t x, uintptr_t eps, uintptr_t c1, float c1_value, uintptr_t c2, float c2_value, uintptr_t out,
         int32_t dtype, int64_t n_rows, int64_t row_length, int num_threads) {
        py::gil_scoped_release release;
        qmia::cpu::ddim_step(as_pointer<const void>(x), as_pointer<const void>(eps),
                             qmia::bindings::make_coefficient(c1, c1_value),
                             qmia::bindings::make_coefficient(c2, c2_value), as_pointer<void>(out), dtype, n_rows,
                             row_length, num_threads);
      },
      py::arg("x"), py::arg("eps"), py::arg("c1"), py::arg("c1_value"), py::arg("c2"), py::arg("c2_value"),
      py::arg("out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"), py::arg("num_threads") = 0);

  m.def(
      "ddim_step_sqerr",
      [](uintptr_t x, uintptr_t eps, uintptr_t c1, float c1_value, uintptr_t c2, float c2_value, uintptr_t ref,
         uintptr_t out, int32_t dtype, int64_t n_rows, int64_t row_length, int32_t channels_last, int64_t channels,
         int64_t plane, int num_threads) {
        const qmia::RowLayout layout = make_layout(row_length, channels_last, channels, plane);
        py::gil_scoped_release release;
        qmia::cpu::ddim_step_sqerr(as_pointer<const void>(x), as_pointer<const void>(eps),
                                   qmia::bindings::make_coefficient(c1, c1_value),
                                   qmia::bindings::make_coefficient(c2, c2_value), as_pointer<const void>(ref),
                                   as_pointer<float>(out), dtype, n_rows, layout, num_threads);
      },
      py::arg("x"), py::arg("eps"), py::arg("c1"), py::arg("c1_value"), py::arg("c2"), py::arg("c2_value"),
      py::arg("ref"), py::arg("out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"),
      py::arg("channels_last"), py::arg("channels"), py::arg("plane"), py::arg("num_threads") = 0);

  m.def(
      "pnorm_error",
      [](uintptr_t a, uintptr_t b, uintptr_t out, int32_t dtype, int64_t n_rows, int64_t row_length,
         int32_t channels_last, int64_t channels, int64_t plane, float p, int num_threads) {
        const qmia::RowLayout layout = make_layout(row_length, channels_last, channels, plane);
        py::gil_scoped_release release;
        qmia::cpu::pnorm_error(as_pointer<const void>(a), as_pointer<const void>(b), as_pointer<float>(out), dtype,
                               n_rows, layout, p, num_threads);
      },
      py::arg("a"), py::arg("b"), py::arg("out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"),
      py::arg("channels_last"), py::arg("channels"), py::arg("plane"), py::arg("p"), py::arg("num_threads") = 0);

  m.def(
      "vote",
      [](uintptr_t scores, uintptr_t thresholds, int32_t dtype, int64_t n_samples, int64_t n_models,
         int64_t score_stride, int64_t model_stride, int64_t sample_stride, uintptr_t votes, uintptr_t decision,
         uintptr_t margin, int num_threads) {
        py::gil_scoped_release release;
        qmia::cpu::vote(as_pointer<const void>(scores), as_pointer<const void>(thresholds), dtype, n_samples,
                        n_models, score_stride, model_stride, sample_stride, as_pointer<int32_t>(votes),
                        as_pointer<uint8_t>(decision), as_pointer<void>(margin), num_threads);
      },
      py::arg("scores"), py::arg("thresholds"), py::arg("dtype"), py::arg("n_samples"), py::arg("n_models"),
      py::arg("score_stride"), py::arg("model_stride"), py::arg("sample_stride"), py::arg("votes"),
      py::arg("decision"), py::arg("margin"), py::arg("num_threads") = 0);

  m.def(
      "float_to_storage",
      [](uintptr_t src, uintptr_t dst, int32_t dtype, int64_t n) {
        py::gil_scoped_release release;
        qmia::cpu::float_to_storage(as_pointer<const float>(src), as_pointer<void>(dst), dtype, n);
      },
      py::arg("src"), py::arg("dst"), py::arg("dtype"), py::arg("n"));
  m.def(
      "storage_to_float",
      [](uintptr_t src, uintptr_t dst, int32_t dtype, int64_t n) {
        py::gil_scoped_release release;
        qmia::cpu::storage_to_float(as_pointer<const void>(src), as_pointer<float>(dst), dtype, n);
      },
      py::arg("src"), py::arg("dst"), py::arg("dtype"), py::arg("n"));
}
