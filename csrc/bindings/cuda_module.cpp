// The qmia_fast._cuda extension: CUDA launchers on the caller's device and stream, the GIL released while they run.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "bindings/binding_utils.h"
#include "cuda/group_norm_cuda.h"
#include "cuda/kernels_cuda.h"

#include "qmia_build_config.h"

namespace py = pybind11;
using qmia::bindings::as_pointer;
using qmia::bindings::make_layout;

namespace {

void throw_on_error(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("qmia_fast CUDA error in ") + what + ": " + cudaGetErrorName(status) + " (" +
                             cudaGetErrorString(status) + ")");
  }
}

// Makes `device` current for one call and restores the caller's device afterwards, so
// that torch's idea of the current device is left as it was.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    qmia::require(device >= 0, "device index must be >= 0");
    throw_on_error(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) throw_on_error(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

cudaStream_t as_stream(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

py::dict build_info() {
  py::dict info;
  info["cuda_archs"] = QMIA_CUDA_ARCHS;
  info["cuda_compiler_version"] = QMIA_CUDA_VERSION;
  info["cuda_flags"] = QMIA_CUDA_FLAGS;
  info["cudart_built_version"] = int(CUDART_VERSION);
  int runtime = 0, driver = 0, devices = 0;
  info["cudart_runtime_version"] =
      cudaRuntimeGetVersion(&runtime) == cudaSuccess ? py::object(py::int_(runtime)) : py::object(py::none());
  info["driver_version"] =
      cudaDriverGetVersion(&driver) == cudaSuccess ? py::object(py::int_(driver)) : py::object(py::none());
  const cudaError_t count_status = cudaGetDeviceCount(&devices);
  info["device_count"] = count_status == cudaSuccess ? devices : 0;
  if (count_status != cudaSuccess) {
    info["device_error"] = std::string(cudaGetErrorName(count_status));
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
  }
  return info;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "qmia-fast CUDA kernels (internal: call qmia_fast.kernels instead)";

  m.def("build_info", &build_info);
  m.def("contract_constants", &qmia::bindings::contract_constants);
  m.def("reduce_workspace_elements", &qmia::cuda::reduce_workspace_elements, py::arg("n_rows"),
        py::arg("row_length"));

  m.def(
      "philox_uint32",
      [](uintptr_t out, int64_t n_rows, int64_t n_groups, uint64_t seed, uint64_t offset, uint32_t stream_id,
         int device, uintptr_t stream) {
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        throw_on_error(qmia::cuda::philox_uint32(as_pointer<uint32_t>(out), n_rows, n_groups, seed, offset, stream_id,
                                                 as_stream(stream)),
                       "philox_uint32");
      },
      py::arg("out"), py::arg("n_rows"), py::arg("n_groups"), py::arg("seed"), py::arg("offset"),
      py::arg("stream_id"), py::arg("device"), py::arg("cuda_stream"));

  m.def(
      "philox_normal",
      [](uintptr_t out, int32_t dtype, int64_t n_rows, int64_t row_length, int32_t channels_last, int64_t channels,
         int64_t plane, uint64_t seed, uint64_t offset, uintptr_t samples, uint32_t stream_id, int device,
         uintptr_t stream) {
        const qmia::RowLayout layout = make_layout(row_length, channels_last, channels, plane);
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        throw_on_error(qmia::cuda::philox_normal(as_pointer<void>(out), dtype, n_rows, layout, seed,
                                                 qmia::bindings::make_samples(samples, offset), stream_id,
                                                 as_stream(stream)),
                       "philox_normal");
      },
      py::arg("out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"), py::arg("channels_last"),
      py::arg("channels"), py::arg("plane"), py::arg("seed"), py::arg("offset"), py::arg("samples"),
      py::arg("stream_id"),
      py::arg("device"), py::arg("cuda_stream"));

  m.def(
      "noise_inject",
      [](uintptr_t x0, uintptr_t a, float a_value, uintptr_t b, float b_value, uintptr_t x_t, uintptr_t eps_out,
         int32_t dtype, int64_t n_rows, int64_t row_length, int32_t channels_last, int64_t channels, int64_t plane,
         uint64_t seed, uint64_t offset, uintptr_t samples, uint32_t stream_id, int device, uintptr_t stream) {
        const qmia::RowLayout layout = make_layout(row_length, channels_last, channels, plane);
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        throw_on_error(
            qmia::cuda::noise_inject(as_pointer<const void>(x0), qmia::bindings::make_coefficient(a, a_value),
                                     qmia::bindings::make_coefficient(b, b_value), as_pointer<void>(x_t),
                                     as_pointer<void>(eps_out), dtype, n_rows, layout, seed,
                                     qmia::bindings::make_samples(samples, offset), stream_id, as_stream(stream)),
            "noise_inject");
      },
      py::arg("x0"), py::arg("a"), py::arg("a_value"), py::arg("b"), py::arg("b_value"), py::arg("x_t"),
      py::arg("eps_out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"), py::arg("channels_last"),
      py::arg("channels"), py::arg("plane"), py::arg("seed"), py::arg("offset"), py::arg("samples"),
      py::arg("stream_id"),
      py::arg("device"), py::arg("cuda_stream"));

  m.def(
      "eps_sq_error",
      [](uintptr_t eps_pred, uintptr_t out, int32_t dtype, int64_t n_rows, int64_t row_length, int32_t channels_last,
         int64_t channels, int64_t plane, uint64_t seed, uint64_t offset, uintptr_t samples, uint32_t stream_id,
         uintptr_t workspace, int device, uintptr_t stream) {
        const qmia::RowLayout layout = make_layout(row_length, channels_last, channels, plane);
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        throw_on_error(qmia::cuda::eps_sq_error(as_pointer<const void>(eps_pred), as_pointer<float>(out),
                                                as_pointer<float>(workspace), dtype, n_rows, layout, seed,
                                                qmia::bindings::make_samples(samples, offset), stream_id,
                                                as_stream(stream)),
                       "eps_sq_error");
      },
      py::arg("eps_pred"), py::arg("out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"),
      py::arg("channels_last"), py::arg("channels"), py::arg("plane"), py::arg("seed"), py::arg("offset"),
      py::arg("samples"), py::arg("stream_id"), py::arg("workspace"), py::arg("device"), py::arg("cuda_stream"));

  m.def(
      "ddim_step",
      [](uintptr_t x, uintptr_t eps, uintptr_t c1, float c1_value, uintptr_t c2, float c2_value, uintptr_t out,
         int32_t dtype, int64_t n_rows, int64_t row_length, int device, uintptr_t stream) {
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        throw_on_error(qmia::cuda::ddim_step(as_pointer<const void>(x), as_pointer<const void>(eps),
                                             qmia::bindings::make_coefficient(c1, c1_value),
                             qmia::bindings::make_coefficient(c2, c2_value),
                                             as_pointer<void>(out), dtype, n_rows, row_length, as_stream(stream)),
                       "ddim_step");
      },
      py::arg("x"), py::arg("eps"), py::arg("c1"), py::arg("c1_value"), py::arg("c2"), py::arg("c2_value"),
      py::arg("out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"), py::arg("device"),
      py::arg("cuda_stream"));

  m.def(
      "ddim_step_sqerr",
      [](uintptr_t x, uintptr_t eps, uintptr_t c1, float c1_value, uintptr_t c2, float c2_value, uintptr_t ref,
         uintptr_t out, int32_t dtype, int64_t n_rows, int64_t row_length, int32_t channels_last, int64_t channels,
         int64_t plane, uintptr_t workspace, int device, uintptr_t stream) {
        const qmia::RowLayout layout = make_layout(row_length, channels_last, channels, plane);
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        throw_on_error(qmia::cuda::ddim_step_sqerr(as_pointer<const void>(x), as_pointer<const void>(eps),
                                                   qmia::bindings::make_coefficient(c1, c1_value),
                             qmia::bindings::make_coefficient(c2, c2_value),
                                                   as_pointer<const void>(ref), as_pointer<float>(out),
                                                   as_pointer<float>(workspace), dtype, n_rows, layout,
                                                   as_stream(stream)),
                       "ddim_step_sqerr");
      },
      py::arg("x"), py::arg("eps"), py::arg("c1"), py::arg("c1_value"), py::arg("c2"), py::arg("c2_value"),
      py::arg("ref"), py::arg("out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"),
      py::arg("channels_last"), py::arg("channels"), py::arg("plane"), py::arg("workspace"), py::arg("device"),
      py::arg("cuda_stream"));

  m.def(
      "pnorm_error",
      [](uintptr_t a, uintptr_t b, uintptr_t out, int32_t dtype, int64_t n_rows, int64_t row_length,
         int32_t channels_last, int64_t channels, int64_t plane, float p, uintptr_t workspace, int device,
         uintptr_t stream) {
        const qmia::RowLayout layout = make_layout(row_length, channels_last, channels, plane);
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        throw_on_error(qmia::cuda::pnorm_error(as_pointer<const void>(a), as_pointer<const void>(b),
                                               as_pointer<float>(out), as_pointer<float>(workspace), dtype, n_rows,
                                               layout, p, as_stream(stream)),
                       "pnorm_error");
      },
      py::arg("a"), py::arg("b"), py::arg("out"), py::arg("dtype"), py::arg("n_rows"), py::arg("row_length"),
      py::arg("channels_last"), py::arg("channels"), py::arg("plane"), py::arg("p"), py::arg("workspace"),
      py::arg("device"), py::arg("cuda_stream"));

  m.def("group_norm_workspace_elements", &qmia::cuda::group_norm_workspace_elements, py::arg("n"),
        py::arg("pixels"), py::arg("channels"));

  m.def(
      "group_norm_act",
      [](uintptr_t x, uintptr_t add, int32_t add_kind, uintptr_t gamma, uintptr_t beta, int32_t param_dtype,
         uintptr_t y, uintptr_t sum_out, int32_t dtype, int64_t n, int64_t pixels, int64_t channels, int64_t groups,
         float eps, int32_t silu, uintptr_t workspace, int device, uintptr_t stream) {
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        throw_on_error(qmia::cuda::group_norm_act(as_pointer<const void>(x), as_pointer<const void>(add), add_kind,
                                                  as_pointer<const void>(gamma), as_pointer<const void>(beta),
                                                  param_dtype, as_pointer<void>(y), as_pointer<void>(sum_out),
                                                  as_pointer<float>(workspace), dtype, n, pixels, channels, groups,
                                                  eps, silu, as_stream(stream)),
                       "group_norm_act");
      },
      py::arg("x"), py::arg("add"), py::arg("add_kind"), py::arg("gamma"), py::arg("beta"), py::arg("param_dtype"),
      py::arg("y"), py::arg("sum_out"), py::arg("dtype"), py::arg("n"), py::arg("pixels"), py::arg("channels"),
      py::arg("groups"), py::arg("eps"), py::arg("silu"), py::arg("workspace"), py::arg("device"),
      py::arg("cuda_stream"));

  m.def(
      "vote",
      [](uintptr_t scores, uintptr_t thresholds, int32_t dtype, int64_t n_samples, int64_t n_models,
         int64_t score_stride, int64_t model_stride, int64_t sample_stride, uintptr_t votes, uintptr_t decision,
         uintptr_t margin, int device, uintptr_t stream) {
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        throw_on_error(qmia::cuda::vote(as_pointer<const void>(scores), as_pointer<const void>(thresholds), dtype,
                                        n_samples, n_models, score_stride, model_stride, sample_stride,
                                        as_pointer<int32_t>(votes), as_pointer<uint8_t>(decision),
                                        as_pointer<void>(margin), as_stream(stream)),
                       "vote");
      },
      py::arg("scores"), py::arg("thresholds"), py::arg("dtype"), py::arg("n_samples"), py::arg("n_models"),
      py::arg("score_stride"), py::arg("model_stride"), py::arg("sample_stride"), py::arg("votes"),
      py::arg("decision"), py::arg("margin"), py::arg("device"), py::arg("cuda_stream"));
}
