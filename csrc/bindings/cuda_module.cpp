// The qmia_fast._cuda extension: CUDA launchers on the caller's device and stream, the GIL released while they run.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "bindings/binding_utils.h"
#include "bindings/kernel_signatures.h"
#include "cuda/group_norm_cuda.h"
#include "cuda/kernels_cuda.h"

#include "qmia_build_config.h"

namespace py = pybind11;
using namespace qmia::bindings;

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

// Runs launch() with the GIL released and `device` current, raising its CUDA error as `name`'s.
template <typename Launch>
void launch_on_device(int device, const char* name, const Launch& launch) {
  py::gil_scoped_release release;
  DeviceGuard guard(device);
  throw_on_error(launch(), name);
}

// Binds a kernel of both modules (bindings/kernel_signatures.h), followed by device and
// cuda_stream; launch(args, stream) returns the launcher's status.
template <typename Names, typename Launch>
void def_launcher(py::module_& m, const char* name, const Names& names, Launch launch) {
  def_kernel(
      m, name, names,
      [name, launch](const spec_of<Launch>& args, int device, uintptr_t stream) {
        launch_on_device(device, name, [&] { return launch(args, as_stream(stream)); });
      },
      py::arg("device"), py::arg("cuda_stream"));
}

// The same for the kernels that take a scratch buffer: workspace comes before device and
// cuda_stream; launch(args, workspace, stream).
template <typename Names, typename Launch>
void def_workspace_launcher(py::module_& m, const char* name, const Names& names, Launch launch) {
  def_kernel(
      m, name, names,
      [name, launch](const spec_of<Launch>& args, uintptr_t workspace, int device, uintptr_t stream) {
        launch_on_device(device, name, [&] { return launch(args, as_pointer<float>(workspace), as_stream(stream)); });
      },
      py::arg("workspace"), py::arg("device"), py::arg("cuda_stream"));
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "qmia-fast CUDA kernels (internal: call qmia_fast.kernels instead)";

  m.def("build_info", &build_info);
  m.def("contract_constants", &qmia::bindings::contract_constants);
  m.def("reduce_workspace_elements", &qmia::cuda::reduce_workspace_elements, py::arg("n_rows"),
        py::arg("row_length"));

  def_launcher(m, "philox_uint32", PhiloxUint32Args::names("stream_id"),
               [](const PhiloxUint32Args& args, cudaStream_t stream) {
                 return qmia::cuda::philox_uint32(args.out, args.n_rows, args.n_groups, args.seed, args.offset,
                                                  args.stream, stream);
               });
  def_launcher(m, "philox_normal", PhiloxNormalArgs::names("stream_id"),
               [](const PhiloxNormalArgs& args, cudaStream_t stream) {
                 return qmia::cuda::philox_normal(args.out, args.dtype, args.n_rows, args.layout, args.seed,
                                                  args.samples, args.stream, stream);
               });
  def_launcher(m, "noise_inject", NoiseInjectArgs::names("stream_id"),
               [](const NoiseInjectArgs& args, cudaStream_t stream) {
                 return qmia::cuda::noise_inject(args.x0, args.a, args.b, args.x_t, args.eps_out, args.dtype,
                                                 args.n_rows, args.layout, args.seed, args.samples, args.stream,
                                                 stream);
               });
  def_workspace_launcher(m, "eps_sq_error", EpsSqErrorArgs::names("stream_id"),
                         [](const EpsSqErrorArgs& args, float* workspace, cudaStream_t stream) {
                           return qmia::cuda::eps_sq_error(args.eps_pred, args.out, workspace, args.dtype,
                                                           args.n_rows, args.layout, args.seed, args.samples,
                                                           args.stream, stream);
                         });
  def_launcher(m, "ddim_step", DdimStepArgs::names(), [](const DdimStepArgs& args, cudaStream_t stream) {
    return qmia::cuda::ddim_step(args.x, args.eps, args.c1, args.c2, args.out, args.dtype, args.n_rows,
                                 args.row_length, stream);
  });
  def_workspace_launcher(m, "ddim_step_sqerr", DdimStepSqerrArgs::names(),
                         [](const DdimStepSqerrArgs& args, float* workspace, cudaStream_t stream) {
                           return qmia::cuda::ddim_step_sqerr(args.x, args.eps, args.c1, args.c2, args.ref,
                                                              args.out, workspace, args.dtype, args.n_rows,
                                                              args.layout, stream);
                         });
  def_workspace_launcher(m, "pnorm_error", PnormErrorArgs::names(),
                         [](const PnormErrorArgs& args, float* workspace, cudaStream_t stream) {
                           return qmia::cuda::pnorm_error(args.a, args.b, args.out, workspace, args.dtype,
                                                          args.n_rows, args.layout, args.p, stream);
                         });

  m.def("group_norm_workspace_elements", &qmia::cuda::group_norm_workspace_elements, py::arg("n"),
        py::arg("pixels"), py::arg("channels"));

  def_workspace_launcher(m, "group_norm_act", GroupNormActArgs::names(),
                         [](const GroupNormActArgs& args, float* workspace, cudaStream_t stream) {
                           return qmia::cuda::group_norm_act(args.x, args.add, args.add_kind, args.gamma,
                                                             args.beta, args.param_dtype, args.y, args.sum_out,
                                                             workspace, args.dtype, args.n, args.pixels,
                                                             args.channels, args.groups, args.eps, args.silu,
                                                             stream);
                         });
  def_launcher(m, "vote", VoteArgs::names(), [](const VoteArgs& args, cudaStream_t stream) {
    return qmia::cuda::vote(args.scores, args.thresholds, args.dtype, args.n_samples, args.n_models,
                            args.score_stride, args.model_stride, args.sample_stride, args.votes, args.decision,
                            args.margin, stream);
  });
}
