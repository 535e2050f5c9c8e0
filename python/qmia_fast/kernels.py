"""Fused noise, DDIM-step and per-sample reduction kernels: validated torch wrappers over the C++/CUDA core.

Every public function takes and returns torch tensors, checks its arguments
(dtype, device, shape, layout, ranges) and raises :class:`qmia_fast.errors.InputError`
or :class:`qmia_fast.errors.ConfigError` naming the argument and the fix before any
pointer reaches the compiled core. CPU tensors run on ``qmia_fast._cpu`` (OpenMP,
``torch.get_num_threads()`` threads, one thread below 2**20 elements); CUDA tensors run on ``qmia_fast._cuda`` on
``torch.cuda.current_stream(device)``, without host synchronisation (so calls can
be captured in CUDA graphs), except the finiteness check of CUDA coefficient
tensors outside graph capture (see ``_coefficients``).

Tensors are ``N x ...``: row ``i`` is sample ``i`` and has ``D = prod(shape[1:])``
elements (``D = 1`` for a 1-D tensor). Storage dtypes are float32, bfloat16 and
float16 (``vote`` also float64); arithmetic and accumulation are float32, row sums
combine their 4096-element chunks in float64.

Noise (``philox_normal``, ``noise_inject``, ``eps_sq_error``) is Philox4x32-10 with a
Box-Muller transform, the same bits on CPU and CUDA::

    key     = (seed mod 2**32, seed // 2**32)                 seed in [0, 2**63) (seeds.SEED_LIMIT)
    counter = (e // 4, stream, sample mod 2**32, sample // 2**32)
    sample  = offset + i, or samples[i]                       offset >= 0; samples int64 >= 0
    e       = logical C-order index of the element in its row (c*H*W + h*W + w)

One Philox call yields words ``(w0, w1, w2, w3)`` for elements ``4g .. 4g+3``:
``u1 = (w_even + 0.5) / 2**32``, ``u2 = (w_odd + 0.5) / 2**32``,
``n[4g+0|2] = sqrt(-2 ln u1) cos(2 pi u2)``, ``n[4g+1|3] = sqrt(-2 ln u1) sin(2 pi u2)``
on the pairs ``(w0, w1)`` and ``(w2, w3)``. The transcendental functions are our own
float64 polynomials (not libm), so the float32 result is the correctly rounded exact
Box-Muller value except about once in 200,000 draws, where it is 1 ulp off. A
sample's noise depends only on (seed, sample index, stream, logical shape): never on
the batch it is in, the device, the thread count or the memory format.
``stream`` (0 .. 2**32-1) gives independent noise for the same (seed, sample).

Instead of ``offset`` the noise kernels take ``samples``: an int64 tensor [N] on the
data's device holding each row's global sample index. It exists for CUDA graphs: a
scalar offset is frozen into a captured launch, while a graph reads the ``samples``
tensor afresh at every replay, so refilling it (``samples.copy_(...)``) moves the batch
without re-capturing. ``samples = offset + arange(N)`` gives exactly the bits of
``offset``.

Row sums are deterministic: the order is fixed by the element index (chunks of 4096,
1024 lanes, a pairwise fold, chunk sums in float64; see ``csrc/common/row_reduce.h``),
so a sample's sum has the same bits alone or inside any batch, with any thread
count, and on CPU and CUDA (for ``pnorm_error`` with p not in {1, 2, 3, 4}, CUDA's
``powf`` may differ from the CPU's by an ulp per term).

Layout: rows that are dense in C order, or 4-D tensors dense in
``torch.channels_last``, go to the kernel as they are. Anything else (slices,
transposes, expanded tensors) is first copied with ``.contiguous()``, which costs a
copy of that tensor. When the tensor arguments of one call have different layouts,
the others are copied to the layout of the first. Outputs of ``ddim_step`` and
``noise_inject`` keep the (possibly copied) input's memory format.
"""
from __future__ import annotations

import importlib
import math
import numbers
import operator
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from .errors import ConfigError, InputError, QmiaError
from .seeds import SEED_LIMIT, check_seed

__all__ = [
    "philox_normal",
    "noise_inject",
    "eps_sq_error",
    "ddim_step",
    "ddim_step_sqerr",
    "pnorm_error",
    "vote",
    "philox_uint32",
    "cuda_built",
    "REDUCE_CHUNK",
    "SEED_LIMIT",
    "STREAM_LIMIT",
]

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
        module = importlib.import_module(f"{__package__}.{name}")
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


# ---------------------------------------------------------------------------
# public kernels
# ---------------------------------------------------------------------------

def philox_uint32(n_rows: int, n_groups: int, seed: int, offset: int = 0, stream: int = 0,
                  device: Any = None) -> torch.Tensor:
    """Raw Philox4x32-10 words: int64 [n_rows, n_groups, 4] with values in [0, 2**32).

    Entry [i, g, k] is word k of Philox(counter=(g, stream, offset+i low, high), key=seed).
    Exposed so that tests and other tools can check the stream bit for bit.
    """
    n_rows = _as_int(n_rows, "n_rows")
    n_groups = _as_int(n_groups, "n_groups")
    if n_rows < 0 or n_groups < 0:
        raise InputError(f"n_rows and n_groups must be >= 0, got {n_rows}, {n_groups}")
    if n_groups > 2**32:
        raise InputError(f"n_groups must be <= 2**32, got {n_groups}")
    seed = _check_seed(seed)
    stream = _check_stream(stream)
    offset = _check_offset(offset, n_rows)
    dev = _parse_device(device)
    _backend(dev, "device")
    out = torch.empty((n_rows, n_groups, 4), dtype=torch.int32, device=dev)
    if out.numel():
        _launch("philox_uint32", dev, out.data_ptr(), n_rows, n_groups, seed, offset, stream)
    return out.to(torch.int64) & 0xFFFFFFFF


def philox_normal(shape: Any, seed: int, offset: int = 0, device: Any = None,
                  dtype: torch.dtype = torch.float32, stream: int = 0,
                  samples: Optional[torch.Tensor] = None) -> torch.Tensor:
    """N(0, 1) noise of the given shape (C-contiguous): element e of row i is keyed by
    (seed, sample offset + i or samples[i], element e, stream), see the module docstring.

    The values are computed in float32 and rounded to ``dtype``.
    """
    dims = _parse_shape(shape)
    if dtype not in _STORAGE_CODES:
        raise InputError(f"dtype {dtype} is not supported; use {_STORAGE_NAMES}")
    dev = _parse_device(device)
    _backend(dev, "device")
    keys, samples = _noise_keys(seed, offset, stream, samples, dims[0], dev)
    row_length = _row_length(dims)
    out = torch.empty(dims, dtype=dtype, device=dev)
    if out.numel():
        _launch("philox_normal", dev, out.data_ptr(), _STORAGE_CODES[dtype], dims[0], row_length, 0, 1, 1, *keys,
                elements=out.numel())
    return out


def noise_inject(x0: torch.Tensor, a: Coefficient, b: Coefficient, seed: int, offset: int = 0,
                 return_noise: bool = False, stream: int = 0, samples: Optional[torch.Tensor] = None):
    """Forward diffusion with in-kernel noise: ``x_t = a[i] * x0 + b[i] * eps``.

    ``eps`` is ``philox_normal(x0.shape, seed, offset, stream=stream, samples=samples)`` in
    float32 (keyed by the logical element index whatever x0's memory format). ``a`` and ``b`` are numbers or
    per-sample tensors [N] of any float dtype on any device. Returns ``x_t`` (x0's dtype and
    memory format), or ``(x_t, eps)`` with ``eps`` rounded to x0's dtype when
    ``return_noise`` is true; ``x_t`` is computed from the float32 ``eps``.
    """
    x0 = _check_group({"x0": x0}, _STORAGE_CODES, _STORAGE_NAMES)["x0"]
    n_rows = x0.shape[0]
    keys, samples = _noise_keys(seed, offset, stream, samples, n_rows, x0.device)
    coef_a = _coefficients("a", a, n_rows, x0.device)
    coef_b = _coefficients("b", b, n_rows, x0.device)
    dense, layout = _dense_rows({"x0": x0})
    x0 = dense["x0"]
    x_t = torch.empty_like(x0)
    eps = torch.empty_like(x0) if return_noise else None
    if x0.numel():
        _launch("noise_inject", x0.device, x0.data_ptr(), *_coef_args(coef_a), *_coef_args(coef_b), x_t.data_ptr(),
                _address(eps), _STORAGE_CODES[x0.dtype], n_rows, *layout, *keys, elements=x0.numel())
    return (x_t, eps) if return_noise else x_t


def eps_sq_error(eps_pred: torch.Tensor, seed: int, offset: int = 0, stream: int = 0,
                 samples: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 [N]: ``sum_e (eps_pred[i, e] - eps[i, e])**2`` with ``eps`` regenerated from
    its key (seed, offset + i or samples[i], e, stream) instead of read from memory."""
    tensors = _check_group({"eps_pred": eps_pred}, _STORAGE_CODES, _STORAGE_NAMES)
    n_rows = tensors["eps_pred"].shape[0]
    keys, samples = _noise_keys(seed, offset, stream, samples, n_rows, tensors["eps_pred"].device)
    dense, layout = _dense_rows(tensors)
    eps_pred = dense["eps_pred"]
    out = torch.empty(n_rows, dtype=torch.float32, device=eps_pred.device)
    if n_rows:
        _launch("eps_sq_error", eps_pred.device, eps_pred.data_ptr(), out.data_ptr(), _STORAGE_CODES[eps_pred.dtype],
                n_rows, *layout, *keys, elements=eps_pred.numel(), scratch=("reduce", n_rows, layout[0]))
    return out


def ddim_step(x: torch.Tensor, eps: torch.Tensor, c1: Coefficient, c2: Coefficient) -> torch.Tensor:
    """Deterministic DDIM step written as an affine map: ``x_n = c1[i] * x + c2[i] * eps``.

    ``x`` and ``eps`` share shape, dtype and device; the result has x's dtype and memory
    format. ``c1``/``c2`` are numbers or per-sample tensors [N].
    """
    tensors = _check_group({"x": x, "eps": eps}, _STORAGE_CODES, _STORAGE_NAMES)
    _check_same_shape(tensors)
    n_rows, device = tensors["x"].shape[0], tensors["x"].device
    coef1 = _coefficients("c1", c1, n_rows, device)
    coef2 = _coefficients("c2", c2, n_rows, device)
    dense, layout = _dense_rows(tensors)
    x, eps = dense["x"], dense["eps"]
    out = torch.empty_like(x)
    if x.numel():
        _launch("ddim_step", device, x.data_ptr(), eps.data_ptr(), *_coef_args(coef1), *_coef_args(coef2),
                out.data_ptr(), _STORAGE_CODES[x.dtype], n_rows, layout[0], elements=x.numel())
    return out


def ddim_step_sqerr(x: torch.Tensor, eps: torch.Tensor, c1: Coefficient, c2: Coefficient,
                    ref: torch.Tensor) -> torch.Tensor:
    """float32 [N]: ``sum_e (c1[i] * x + c2[i] * eps - ref)**2``, without writing the step."""
    tensors = _check_group({"x": x, "eps": eps, "ref": ref}, _STORAGE_CODES, _STORAGE_NAMES)
    _check_same_shape(tensors)
    n_rows, device = tensors["x"].shape[0], tensors["x"].device
    coef1 = _coefficients("c1", c1, n_rows, device)
    coef2 = _coefficients("c2", c2, n_rows, device)
    dense, layout = _dense_rows(tensors)
    x, eps, ref = dense["x"], dense["eps"], dense["ref"]
    out = torch.empty(n_rows, dtype=torch.float32, device=device)
    if n_rows:
        _launch("ddim_step_sqerr", device, x.data_ptr(), eps.data_ptr(), *_coef_args(coef1), *_coef_args(coef2),
                ref.data_ptr(), out.data_ptr(), _STORAGE_CODES[x.dtype], n_rows, *layout, elements=x.numel(),
                scratch=("reduce", n_rows, layout[0]))
    return out


def pnorm_error(a: torch.Tensor, b: torch.Tensor, p: float = 4.0) -> torch.Tensor:
    """float32 [N]: ``sum_e |a - b|**p`` (no root; PIA's score with p = 4).

    p must be finite and > 0; p in {1, 2, 3, 4} uses multiplications only (bit-equal on
    CPU and CUDA), other p go through powf.
    """
    tensors = _check_group({"a": a, "b": b}, _STORAGE_CODES, _STORAGE_NAMES)
    _check_same_shape(tensors)
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise ConfigError(f"p must be a number > 0, got {p!r}")
    p = float(p)
    if not (math.isfinite(p) and p > 0):
        raise ConfigError(f"p must be finite and > 0, got {p}")
    dense, layout = _dense_rows(tensors)
    a, b = dense["a"], dense["b"]
    n_rows = a.shape[0]
    out = torch.empty(n_rows, dtype=torch.float32, device=a.device)
    if n_rows:
        _launch("pnorm_error", a.device, a.data_ptr(), b.data_ptr(), out.data_ptr(), _STORAGE_CODES[a.dtype], n_rows,
                *layout, p, elements=a.numel(), scratch=("reduce", n_rows, layout[0]))
    return out


def vote(scores: torch.Tensor, thresholds: torch.Tensor):
    """Majority vote of a bag of B quantile regressors.

    ``scores``: [N]; ``thresholds``: [B, N] (any strides; float32, float64, bfloat16 or
    float16, the two may differ: they are compared in their promoted dtype, exactly).
    Model j votes member iff ``scores[i] < thresholds[j, i]`` (a tie is a non-member).
    Returns ``(votes, decision, margin)``: int32 [N] member votes, bool [N]
    ``2 * votes > B``, and the mean over j of ``thresholds[j, i] - scores[i]``,
    accumulated in float64 and returned as float64 when the promoted dtype is float64
    (it is the bag's membership score: float32 would merge distinct scores into ties),
    else as float32. NaN scores or thresholds never vote member and make the
    margin NaN. With B = 0: votes 0, decision False, margin NaN (a mean of nothing).
    With N = 0: three empty tensors.
    """
    scores = _check_tensor("scores", scores)
    thresholds = _check_tensor("thresholds", thresholds)
    for name, t in (("scores", scores), ("thresholds", thresholds)):
        if t.dtype not in _VOTE_CODES:
            raise InputError(f"{name} has dtype {t.dtype}; use float32, float64, bfloat16 or float16")
    if scores.dim() != 1:
        raise InputError(f"scores must be 1-d [N], got shape {tuple(scores.shape)}")
    if thresholds.dim() != 2 or thresholds.shape[1] != scores.shape[0]:
        raise InputError(
            f"thresholds must be [B, N] = [n_models, {scores.shape[0]}], got shape {tuple(thresholds.shape)}; "
            "transpose an [N, B] array with .T"
        )
    if thresholds.device != scores.device:
        raise InputError(f"thresholds is on {thresholds.device} but scores is on {scores.device}; move it with "
                         f"thresholds.to({str(scores.device)!r})")
    _backend(scores.device, "scores")
    dtype = torch.promote_types(scores.dtype, thresholds.dtype)
    scores = scores.to(dtype)
    thresholds = thresholds.to(dtype)
    n_models, n_samples = thresholds.shape
    device = scores.device
    votes = torch.empty(n_samples, dtype=torch.int32, device=device)
    decision = torch.empty(n_samples, dtype=torch.bool, device=device)
    margin = torch.empty(n_samples, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
    if n_samples:
        _launch("vote", device, scores.data_ptr(), thresholds.data_ptr(), _VOTE_CODES[dtype], n_samples, n_models,
                scores.stride(0), thresholds.stride(0), thresholds.stride(1), votes.data_ptr(), decision.data_ptr(),
                margin.data_ptr())
    return votes, decision, margin
