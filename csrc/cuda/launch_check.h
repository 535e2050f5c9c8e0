// Internal to csrc/cuda: error propagation for launchers (return the first CUDA error, check after every launch).
#pragma once

#include <cuda_runtime.h>

#define QMIA_RETURN_IF_ERROR(expr)                       \
  do {                                                   \
    const cudaError_t qmia_status = (expr);              \
    if (qmia_status != cudaSuccess) return qmia_status;  \
  } while (0)

// Launch check after every kernel: configuration errors surface here, not later.
#define QMIA_LAUNCH_CHECK() QMIA_RETURN_IF_ERROR(cudaGetLastError())
