// The qmia_fast._cpu extension: CPU kernels called with data_ptr() integers, the GIL released while they run.
#include <pybind11/pybind11.h>

#include "bindings/binding_utils.h"
#include "bindings/kernel_signatures.h"
#include "cpu/kernels_cpu.h"
#include "cpu/unet_layers_cpu.h"

#include "qmia_build_config.h"

namespace py = pybind11;
using namespace qmia::bindings;

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

// Binds a kernel of both modules (bindings/kernel_signatures.h), followed by num_threads = 0
// (the OpenMP default); run(args, num_threads) calls the core without the GIL.
template <typename Names, typename Run>
void def_threaded(py::module_& m, const char* name, const Names& names, Run run) {
  def_kernel(
      m, name, names,
      [run](const spec_of<Run>& args, int num_threads) {
        py::gil_scoped_release release;
        run(args, num_threads);
      },
      py::arg("num_threads") = 0);
}

// Binds a storage conversion, convert(src, dst, dtype, n); one direction reads float32 and
// writes dtype, the other the reverse.
template <typename Src, typename Dst>
void def_conversion(py::module_& m, const char* name, void (*convert)(const Src*, Dst*, int32_t, int64_t)) {
  m.def(
      name,
      [convert](uintptr_t src, uintptr_t dst, int32_t dtype, int64_t n) {
        py::gil_scoped_release release;
        convert(as_pointer<const Src>(src), as_pointer<Dst>(dst), dtype, n);
      },
      py::arg("src"), py::arg("dst"), py::arg("dtype"), py::arg("n"));
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

  def_threaded(m, "philox_uint32", PhiloxUint32Args::names("stream"),
               [](const PhiloxUint32Args& args, int num_threads) {
                 qmia::cpu::philox_uint32(args.out, args.n_rows, args.n_groups, args.seed, args.offset,
                                          args.stream, num_threads);
               });
  def_threaded(m, "philox_normal", PhiloxNormalArgs::names("stream"),
               [](const PhiloxNormalArgs& args, int num_threads) {
                 qmia::cpu::philox_normal(args.out, args.dtype, args.n_rows, args.layout, args.seed,
                                          args.samples, args.stream, num_threads);
               });
  def_threaded(m, "noise_inject", NoiseInjectArgs::names("stream"), [](const NoiseInjectArgs& args, int num_threads) {
    qmia::cpu::noise_inject(args.x0, args.a, args.b, args.x_t, args.eps_out, args.dtype, args.n_rows, args.layout,
                            args.seed, args.samples, args.stream, num_threads);
  });
  def_threaded(m, "eps_sq_error", EpsSqErrorArgs::names("stream"), [](const EpsSqErrorArgs& args, int num_threads) {
    qmia::cpu::eps_sq_error(args.eps_pred, args.out, args.dtype, args.n_rows, args.layout, args.seed, args.samples,
                            args.stream, num_threads);
  });

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

  def_threaded(m, "group_norm_act", GroupNormActArgs::names(), [](const GroupNormActArgs& args, int num_threads) {
    qmia::cpu::group_norm_act(args.x, args.add, args.add_kind, args.gamma, args.beta, args.param_dtype, args.y,
                              args.sum_out, args.dtype, args.n, args.pixels, args.channels, args.groups, args.eps,
                              args.silu, num_threads);
  });
  def_threaded(m, "ddim_step", DdimStepArgs::names(), [](const DdimStepArgs& args, int num_threads) {
    qmia::cpu::ddim_step(args.x, args.eps, args.c1, args.c2, args.out, args.dtype, args.n_rows, args.row_length,
                         num_threads);
  });
  def_threaded(m, "ddim_step_sqerr", DdimStepSqerrArgs::names(), [](const DdimStepSqerrArgs& args, int num_threads) {
    qmia::cpu::ddim_step_sqerr(args.x, args.eps, args.c1, args.c2, args.ref, args.out, args.dtype, args.n_rows,
                               args.layout, num_threads);
  });
  def_threaded(m, "pnorm_error", PnormErrorArgs::names(), [](const PnormErrorArgs& args, int num_threads) {
    qmia::cpu::pnorm_error(args.a, args.b, args.out, args.dtype, args.n_rows, args.layout, args.p, num_threads);
  });
  def_threaded(m, "vote", VoteArgs::names(), [](const VoteArgs& args, int num_threads) {
    qmia::cpu::vote(args.scores, args.thresholds, args.dtype, args.n_samples, args.n_models, args.score_stride,
                    args.model_stride, args.sample_stride, args.votes, args.decision, args.margin, num_threads);
  });

  def_conversion(m, "float_to_storage", &qmia::cpu::float_to_storage);
  def_conversion(m, "storage_to_float", &qmia::cpu::storage_to_float);
}
