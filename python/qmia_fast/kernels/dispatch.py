"""The kernels' private toolkit: loading the compiled cores, argument checks, layout, coefficients and the one launch helper."""
from __future__ import annotations

import importlib
import math
import numbers
import operator
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from ..errors import ConfigError, InputError, QmiaError
from ..seeds import check_seed

# Storage dtype codes of csrc/common/qmia_common.h.
_STORAGE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_VOTE_CODES = {**_STORAGE_CODES, torch.float64: 3}
_STORAGE_NAMES = "float32, bfloat16 or float16"

REDUCE_CHUNK = 4096  # elements per chunk of a row sum (csrc/common/row_reduce.h)
STREAM_LIMIT = 2**32  # streams are in [0, STREAM_LIMIT)
_SAMPLE_LIMIT = 2**63  # offset + N must stay an int64
_ROW_LENGTH_LIMIT = 2**34  # Philox element groups are 32-bit


def _load_core(name: str):
    """(module, None), or (None, the reason) when it is missing or was built from other sources.

    The dtype codes and the reduction chunk are a contract between this file and the C++
    core; a stale build that disagrees would misread memory, so it is treated as absent.
    """
    try:
        module = importlib.import_module(f"qmia_fast.{name}")
    except ImportError as exc:  # pragma: no cover - depends on the build
        return None, exc
    constants = module.contract_constants()
    expected = {"reduce_chunk": REDUCE_CHUNK, **{f"dtype_{str(dtype)[6:]}": code for dtype, code in _VOTE_CODES.items()}}
    wrong = {key: constants.get(key) for key, value in expected.items() if constants.get(key) != value}
    if wrong:  # pragma: no cover - depends on the build
        return None, ImportError(f"qmia_fast.{name} was built from other sources (constants {wrong} differ from "
                                 f"{expected}); rebuild it with  pip install --no-build-isolation -e .")
    return module, None


_cpu, _CPU_IMPORT_ERROR = _load_core("_cpu")  # always built; a failure here is an installation problem
_cuda, _CUDA_IMPORT_ERROR = _load_core("_cuda")  # built only where nvcc was found

Coefficient = Union[float, int, torch.Tensor, Sequence[float]]


def cuda_built() -> bool:
    """Whether the CUDA module was compiled into this installation."""
    return _cuda is not None


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------

def _cpu_module():
    if _cpu is None:
        raise QmiaError(
            "the compiled core qmia_fast._cpu could not be imported "
            f"({_CPU_IMPORT_ERROR}); reinstall qmia-fast with  pip install --force-reinstall qmia-fast"
        )
    return _cpu


def _backend(device: torch.device, name: str):
    if device.type == "cpu":
        return _cpu_module()
    if device.type == "cuda":
        if _cuda is not None and not torch.cuda.is_available():
            raise InputError(f"{name} asks for {device} but torch sees no CUDA device; use the CPU ('cpu')")
        if _cuda is None:
            raise InputError(
                f"{name} is on {device} but this qmia-fast was built without its CUDA module "
                f"({_CUDA_IMPORT_ERROR}); move the tensors to the CPU with .cpu(), or reinstall on a "
                "machine with nvcc (QMIA_CUDA=ON pip install qmia-fast)"
            )
        return _cuda
    raise InputError(f"{name} is on device '{device}'; qmia-fast kernels run on 'cpu' or 'cuda' tensors only")


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def _check_seed(seed: Any) -> int:
    # The package's one seed range (the Philox key could take 64 bits; every caller stays in 63).
    return check_seed(_as_int(seed, "seed"))


def _check_stream(stream: Any) -> int:
    stream = _as_int(stream, "stream")
    if not 0 <= stream < STREAM_LIMIT:
        raise ConfigError(f"stream must be in [0, 2**32), got {stream}")
    return stream


def _check_offset(offset: Any, n_rows: int) -> int:
    offset = _as_int(offset, "offset")
    if offset < 0:
        raise ConfigError(f"offset (the global index of the first sample) must be >= 0, got {offset}")
    if offset + n_rows > _SAMPLE_LIMIT:
        raise ConfigError(f"offset + N = {offset + n_rows} exceeds 2**63; sample indices are int64")
    return offset


def _check_samples(samples: Any, offset: Any, n_rows: int, device: torch.device) -> Tuple[Optional[torch.Tensor], int]:
    """(int64 [n_rows] tensor on `device` or None, offset) for the noise kernels.

    With ``samples`` the offset must stay 0. Negative indices are an InputError; on CUDA
    that check synchronises the stream once, and it is skipped while a graph is being
    captured (the scorer's graphs fill the tensor themselves).
    """
    if samples is None:
        return None, _check_offset(offset, n_rows)
    if _as_int(offset, "offset") != 0:
        raise ConfigError("pass either offset or samples (per-row sample indices), not both")
    samples = _check_tensor("samples", samples)
    if samples.dtype != torch.int64:
        raise InputError(f"samples has dtype {samples.dtype}; sample indices are int64 (convert with .long())")
    if samples.dim() != 1 or samples.shape[0] != n_rows:
        raise InputError(f"samples has shape {tuple(samples.shape)}; it needs one sample index per row, "
                         f"shape [{n_rows}]")
    if samples.device != device:
        raise InputError(f"samples is on {samples.device} but the data is on {device}; move it with "
                         f"samples.to({str(device)!r})")
    samples = samples.contiguous()
    if n_rows and not _capturing(device) and bool((samples < 0).any()):
        raise InputError("samples holds negative sample indices; global sample indices are >= 0")
    return samples, 0


def _noise_keys(seed: Any, offset: Any, stream: Any, samples: Any, n_rows: int,
                device: torch.device) -> Tuple[Tuple[int, int, int, int], Optional[torch.Tensor]]:
    """The noise kernels' key arguments (seed, offset, samples address, stream), and the samples tensor to keep alive."""
    seed = _check_seed(seed)
    stream = _check_stream(stream)
    samples, offset = _check_samples(samples, offset, n_rows, device)
    return (seed, offset, _address(samples), stream), samples


def _check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_sparse or value.layout != torch.strided:
        raise InputError(f"{name} must be a dense (strided) tensor; convert it with .to_dense()")
    if value.is_complex():
        raise InputError(f"{name} is complex ({value.dtype}); qmia-fast kernels take real tensors")
    # A lazily negated view (x.conj().imag) would hand its un-negated memory to the core.
    return value.detach().resolve_neg()


def _check_group(tensors: Dict[str, Any], codes: Dict[torch.dtype, int], dtype_names: str,
                 min_dim: int = 1) -> Dict[str, torch.Tensor]:
    """All tensors of one call: real, dense, one allowed dtype, one device, >= min_dim dims."""
    checked = {name: _check_tensor(name, value) for name, value in tensors.items()}
    first_name, first = next(iter(checked.items()))
    if first.dtype not in codes:
        raise InputError(f"{first_name} has dtype {first.dtype}; use {dtype_names} (convert with .float())")
    for name, t in checked.items():
        if t.dtype != first.dtype:
            raise InputError(
                f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; all tensors of one call share "
                f"a dtype: convert with {name}.to({first.dtype})"
            )
        if t.device != first.device:
            raise InputError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; move it with "
                f"{name}.to({str(first.device)!r})"
            )
        if t.dim() < min_dim:
            raise InputError(f"{name} must have at least {min_dim} dimension(s) (N x ...), got a "
                             f"{t.dim()}-d tensor")
    _backend(first.device, first_name)
    return checked


def _check_same_shape(tensors: Dict[str, torch.Tensor]) -> None:
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if t.shape != first.shape:
            raise InputError(
                f"{name} has shape {tuple(t.shape)} but {first_name} has {tuple(first.shape)}; elementwise "
                "arguments must have the same shape"
            )


def _row_length(shape: Sequence[int]) -> int:
    row_length = int(math.prod(shape[1:])) if len(shape) > 1 else 1
    if row_length > _ROW_LENGTH_LIMIT:
        raise InputError(f"rows of {row_length} elements exceed the supported 2**34")
    return row_length


def _is_channels_last(t: torch.Tensor) -> bool:
    # A tensor that is dense in both formats (C == 1 or H*W == 1) maps logical to memory
    # order identically either way; calling it C order keeps one code path.
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _dense_rows(tensors: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Tuple[int, int, int, int]]:
    """Gives every tensor the first one's layout (C order or channels_last), copying where needed.

    Returns the tensors and the core's layout arguments (row_length, channels_last, channels, plane).
    """
    first = next(iter(tensors.values()))
    channels_last = _is_channels_last(first)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dense = {name: t.contiguous(memory_format=fmt) for name, t in tensors.items()}
    shape = first.shape
    row_length = _row_length(shape)
    if channels_last:
        layout = (row_length, 1, int(shape[1]), int(shape[2] * shape[3]))
    else:
        layout = (row_length, 0, 1, 1)
    return dense, layout


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _coefficients(name: str, value: Any, n_rows: int, device: torch.device) -> Tuple[Optional[torch.Tensor], float]:
    """A per-sample coefficient as the core takes it: (contiguous float32 [n_rows] tensor on `device`, 0.0),
    or (None, value) for one value shared by every sample.

    Accepts a Python/numpy number (one value for every sample), a 0-d tensor, or a 1-d
    tensor/array/sequence of length n_rows, of any float dtype and on any device.
    Non-finite values are an InputError; for CUDA tensors that check synchronises the
    stream once, and it is skipped while a CUDA graph is being captured.
    """
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number or a float tensor of shape [{n_rows}], got a bool")
    if isinstance(value, numbers.Real) and not isinstance(value, torch.Tensor):
        number = float(value)
        if not math.isfinite(number):
            raise InputError(f"{name} = {number} is not finite; DDIM/noise coefficients must be finite")
        return None, number
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(
                f"{name} must be a number or a float tensor of shape [{n_rows}], got {type(value).__name__}"
            ) from None
    value = _check_tensor(name, value)
    if not value.is_floating_point():
        raise InputError(f"{name} has dtype {value.dtype}; coefficients must be floating point "
                         f"(convert with {name}.float())")
    if value.device.type not in ("cpu", "cuda"):
        raise InputError(f"{name} is on device '{value.device}'; use a CPU or CUDA tensor")
    if value.dim() == 0:
        if value.device.type == "cpu":
            return _coefficients(name, float(value), n_rows, device)
        value = value.reshape(1).expand(n_rows)  # stays on the GPU: no synchronisation
    elif value.dim() != 1 or value.shape[0] != n_rows:
        raise InputError(
            f"{name} has shape {tuple(value.shape)}; it must be a number or one coefficient per sample, "
            f"shape [{n_rows}]"
        )
    coef = value.to(device=device, dtype=torch.float32).contiguous()
    if n_rows and not _capturing(coef.device):
        if not bool(torch.isfinite(coef).all()):
            raise InputError(f"{name} has non-finite values (nan or inf); coefficients must be finite")
    return coef, 0.0


def _coef_args(coef: Tuple[Optional[torch.Tensor], float]) -> Tuple[int, float]:
    """(address, value) for the core: address 0 means `value` for every row."""
    tensor, value = coef
    return (0, value) if tensor is None else (tensor.data_ptr(), 0.0)


def _device_args(device: torch.device) -> Tuple[int, int]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(index).cuda_stream


def _launch(kernel: str, device: torch.device, *args: Any, elements: Optional[int] = None,
            scratch: Optional[Tuple[Any, ...]] = None) -> None:
    """Runs `kernel` of the device's compiled module on `args`, the argument list both modules share.

    The CPU module then takes its OpenMP thread count (for `elements` elements); the CUDA
    module takes the scratch buffer that `scratch` = (kind, *sizes) names when given (see
    _workspace), then the device index and torch's current stream on it.
    """
    if device.type == "cpu":
        getattr(_cpu_module(), kernel)(*args, _threads(elements))
        return
    buffers = () if scratch is None else (_workspace(scratch[0], scratch[1:], device),)
    getattr(_cuda, kernel)(*args, *map(_address, buffers), *_device_args(device))


# Below this many elements a CPU kernel runs on the calling thread alone: a parallel region
# right after a torch op waits for a second core that torch's still-spinning OpenMP pool (or
# another process) holds, which costs more than the work itself (bench/README.md has the
# measurements); up to this size one thread finishes in about a millisecond.
_SERIAL_ELEMENTS = 1 << 20


def _threads(elements: Optional[int] = None) -> int:
    """OpenMP threads for a CPU kernel over `elements` elements: torch's count, or 1 for small jobs."""
    if elements is not None and elements < _SERIAL_ELEMENTS:
        return 1
    return max(1, torch.get_num_threads())


def _workspace(kind: str, sizes: Sequence[int], device: torch.device) -> Optional[torch.Tensor]:
    """The float32 CUDA scratch buffer that `_cuda.<kind>_workspace_elements(*sizes)` asks for (None for none):
    kind "reduce" for a row reduction over (n_rows, row_length), "group_norm" for (n, pixels, channels).

    It comes from torch's caching allocator, which is stream-ordered and graph-capture
    safe: the caller keeps the tensor referenced until the launch has been queued.
    """
    elements = getattr(_cuda, f"{kind}_workspace_elements")(*sizes)
    if elements == 0:
        return None
    return torch.empty(elements, dtype=torch.float32, device=device)


def _address(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _parse_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        parsed = torch.device(device)
    except (TypeError, RuntimeError) as exc:
        raise InputError(f"device {device!r} is not a torch device ({exc}); use 'cpu' or 'cuda[:index]'") from None
    if parsed.type == "cuda" and torch.cuda.is_available():
        if parsed.index is None:
            parsed = torch.device("cuda", torch.cuda.current_device())
        elif parsed.index >= torch.cuda.device_count():
            raise InputError(f"device {parsed} does not exist: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    return parsed


def _parse_shape(shape: Any) -> Tuple[int, ...]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        dims = tuple(_as_int(d, "shape") for d in shape)
    except (TypeError, ConfigError):
        raise InputError(f"shape must be a tuple of non-negative ints (N, ...), got {shape!r}") from None
    if not dims:
        raise InputError("shape must have at least one dimension (N, ...)")
    if any(d < 0 for d in dims):
        raise InputError(f"shape {dims} has a negative size")
    return dims

