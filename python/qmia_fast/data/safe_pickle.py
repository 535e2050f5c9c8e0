"""Restricted unpickler for CIFAR python batches: rebuilds numpy arrays, lists and strings and refuses everything else."""
from __future__ import annotations

import io
import pickle
import re
import struct
from typing import Any, Callable

import numpy as np

from ..errors import DataError

__all__ = ["safe_unpickle", "materialize_array", "checked_element_count"]

# Plain numeric dtypes only: object arrays would let a pickle smuggle arbitrary objects in,
# and structured or string dtypes never occur in CIFAR batches.
_DTYPE_NAME = re.compile(r"^[<>|=]?(b1|[iu][1248]|f[248])$")


class _ReadOnly:
    """Base of every object this unpickler hands to pickle: BUILD and setattr cannot rewire them."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError("read-only")

    def __delattr__(self, name):
        raise AttributeError("read-only")


class _AllowedCallable(_ReadOnly):
    """A whitelisted constructor; wrapping plain functions stops pickle from setting their
    __defaults__ or other attributes through BUILD or slot state."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable):
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args):
        return self._fn(*args)


class _NdarrayType(_ReadOnly):
    """Stands in for numpy.ndarray, which pickles only pass to _reconstruct as a tag."""

    __slots__ = ()


_NDARRAY = _NdarrayType()


class _PendingDtype(_ReadOnly):
    """A dtype being rebuilt: numpy.dtype(name, align, copy) followed by BUILD(state)."""

    __slots__ = ("name", "byteorder")

    def __init__(self, name):
        if not isinstance(name, str) or not _DTYPE_NAME.match(name):
            raise DataError(f"pickled dtype {name!r} is not a plain numeric type")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "byteorder", None)

    def __setstate__(self, state):
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or state[1] not in ("<", ">", "|", "="):
            raise DataError("pickled dtype has a malformed state")
        if any(part is not None for part in state[2:5]):
            raise DataError("pickled dtype is structured or a sub-array; only plain numeric arrays are allowed")
        object.__setattr__(self, "byteorder", state[1])

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.name)
        if self.byteorder in ("<", ">"):
            dtype = dtype.newbyteorder(self.byteorder)
        return dtype


class _PendingArray(_ReadOnly):
    """An array being rebuilt: _reconstruct(ndarray, (0,), b'b') followed by BUILD(state)."""

    __slots__ = ("array",)

    def __init__(self):
        object.__setattr__(self, "array", None)

    def __setstate__(self, state):
        if self.array is not None:
            raise DataError("pickled array is built twice")
        # ndarray state: (version, shape, dtype, is_fortran, rawdata); version 0 omits the version.
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise DataError("pickled array has a malformed state")
        shape, dtype, is_fortran, raw = state[-4:]
        object.__setattr__(self, "array", _array_from_bytes(raw, dtype, shape, "F" if is_fortran else "C"))


def checked_element_count(shape: tuple, itemsize: int, what: str) -> int:
    """Element count of `shape`, refusing shapes numpy itself could not represent.

    Python ints cannot overflow, and zero-length axes are counted as 1 for the bound so that
    a shape such as (0, 2**31, 2**31, 2**31) is refused instead of reaching numpy.
    """
    count, bound = 1, max(itemsize, 1)
    for d in shape:
        count *= d
        bound *= max(d, 1)
    if bound >= 1 << 62:
        raise DataError(f"{what} declares an impossible shape {tuple(shape)}")
    return count


def _as_raw_bytes(raw) -> bytes:
    # Python 2 pickles store the buffer as a str; read with encoding='latin1' it maps back byte for byte.
    if isinstance(raw, str):
        return raw.encode("latin1")
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    raise DataError(f"pickled array data is a {type(raw).__name__}, not bytes")


def _array_from_bytes(raw, dtype, shape, order) -> np.ndarray:
    if not isinstance(dtype, _PendingDtype):
        raise DataError("pickled array has no valid dtype")
    resolved = dtype.resolve()
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape) or len(shape) > 8:
        raise DataError(f"pickled array has a malformed shape {shape!r}")
    data = _as_raw_bytes(raw)
    count = checked_element_count(shape, resolved.itemsize, "pickled array")
    if count * resolved.itemsize != len(data):
        raise DataError(f"pickled array of shape {shape} needs {count * resolved.itemsize} bytes but holds {len(data)}")
    flat = np.frombuffer(data, dtype=resolved, count=count)
    return flat.reshape(shape, order=order).astype(resolved.newbyteorder("="), order="C")


def _reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY:
        raise DataError("pickled _reconstruct is not called on numpy.ndarray")
    return _PendingArray()


def _make_dtype(name, align=False, copy=True):
    return _PendingDtype(name)


def _frombuffer(buf, dtype, shape, order):
    # Protocol 5 form of an array: the buffer travels in-band as bytes or bytearray.
    if isinstance(buf, pickle.PickleBuffer):
        buf = buf.raw().tobytes()
    return _array_from_bytes(buf, dtype, shape, "F" if order == "F" else "C")


def _scalar(dtype, raw):
    if not isinstance(dtype, _PendingDtype):
        raise DataError("pickled numpy scalar has no valid dtype")
    resolved = dtype.resolve()
    data = _as_raw_bytes(raw)
    if len(data) != resolved.itemsize:
        raise DataError("pickled numpy scalar has the wrong number of bytes")
    return np.frombuffer(data, dtype=resolved)[0].item()


def _latin1_encode(text, encoding="utf-8"):
    # Protocol 2 written by Python 3 stores bytes as _codecs.encode(str, 'latin1'); any other
    # codec (zlib, base64, ...) is refused so a pickle cannot ask for a decompression bomb.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise DataError("pickled _codecs.encode call is not a plain latin1 byte string")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _AllowedCallable(_reconstruct)
    _ALLOWED[(_module, "scalar")] = _AllowedCallable(_scalar)
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_module, "_frombuffer")] = _AllowedCallable(_frombuffer)
_ALLOWED[("numpy", "ndarray")] = _NDARRAY
_ALLOWED[("numpy", "dtype")] = _AllowedCallable(_make_dtype)
_ALLOWED[("_codecs", "encode")] = _AllowedCallable(_latin1_encode)


class _RestrictedUnpickler(pickle._Unpickler):
    # The pure-Python unpickler on purpose: its memo is a dict, whereas the C one grows a table to
    # the largest memo index it sees, so one corrupt LONG_BINPUT could claim tens of gigabytes.

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._data_size = len(data)

    def _load_bytearray8(self):
        # The stock handler allocates the declared length before reading; check it first.
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self._data_size:
            raise DataError(f"pickle declares a {size}-byte bytearray in a {self._data_size}-byte file")
        buffer = bytearray(size)
        self.readinto(buffer)
        self.append(buffer)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

    def find_class(self, module, name):
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise DataError(
                f"refusing to unpickle {module}.{name}: only numpy arrays, lists and strings are "
                "allowed in a CIFAR batch (loading this file with plain pickle could run code)"
            )
        return allowed

    def persistent_load(self, pid):
        raise DataError("pickle uses persistent ids, which CIFAR batches never do")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle `data` allowing only numpy arrays, numpy scalars, dtypes and builtin containers.

    Python 2 strings are decoded as latin1 (so the original CIFAR batches read as str keys).
    Arrays come back as _PendingArray placeholders inside the structure; call
    materialize_array() on the values you need. Raises DataError on anything else,
    including every kind of corruption.
    """
    try:
        return _RestrictedUnpickler(data).load()
    except DataError:
        raise
    except RecursionError:
        raise DataError("pickle is nested too deeply") from None
    except MemoryError:
        raise DataError("not enough memory to unpickle it") from None
    except Exception as exc:  # noqa: BLE001 - corrupt pickles raise anything from struct.error to KeyError
        detail = f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__
        raise DataError(f"pickle is corrupt or truncated ({detail}); re-download or re-create it") from None


def materialize_array(value: Any) -> np.ndarray | None:
    """Turn an unpickled value (array placeholder or list of numbers) into a numpy array, else None."""
    if isinstance(value, _PendingArray):
        return value.array
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)) and all(type(v) in (int, float, bool) for v in value):
        try:
            return np.asarray(value)
        except (OverflowError, ValueError):
            return None
    return None
