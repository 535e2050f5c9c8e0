"""What a scorer accepts: pixel arrays checked once (dtype, range, shape, finiteness), mapped to [-1, 1], and each image's global sample identity."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .config import as_int


def validate_images(images, name: str = "images") -> None:
    """Raise InputError unless images are uint8 in [0, 255] or floats in [0, 1], N x C x H x W, N > 0, finite."""
    if isinstance(images, (list, tuple)):
        raise InputError(f"{name} is a Python {type(images).__name__}; pass one N x C x H x W array or tensor "
                         "(stack the images with numpy.stack)")
    if isinstance(images, torch.Tensor):
        if images.is_sparse or images.layout != torch.strided:
            raise InputError(f"{name} is a {images.layout} tensor; pass a dense tensor (images.to_dense())")
        if images.device.type == "meta":
            raise InputError(f"{name} is on the meta device and holds no values; pass real pixels")
    elif not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise InputError(f"{name} is a {type(images).__name__}; pass a numpy array or torch tensor N x C x H x W")
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4:
        raise InputError(f"{name} must be an N x C x H x W array, got shape {shape}; add the missing axes")
    if shape[0] == 0:
        raise InputError(f"{name} is empty (0 images); pass at least one image")
    if isinstance(images, torch.Tensor):
        dtype = images.dtype
        is_uint8 = dtype == torch.uint8
        is_float = dtype.is_floating_point
    else:
        dtype = np.asarray(images[:0]).dtype
        is_uint8 = dtype == np.uint8
        is_float = np.issubdtype(dtype, np.floating)
    if is_uint8:
        return
    if not is_float:
        raise InputError(
            f"{name} has dtype {dtype}; use uint8 pixels in [0, 255] or floats in [0, 1] "
            "(convert integer images with .astype('uint8'))"
        )
    # Chunked so that checking a memory-mapped data set never loads it all at once.
    step = max(1, (1 << 24) // max(1, int(np.prod(shape[1:]))))
    for start in range(0, shape[0], step):
        chunk = images[start:start + step]
        chunk = chunk.detach().float().cpu().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        if not np.isfinite(chunk).all():
            bad = start + int(np.nonzero(~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1))[0][0])
            raise InputError(f"{name}[{bad}] contains NaN or Inf pixels; clean or drop that image")
        lo, hi = float(chunk.min()), float(chunk.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(
                f"{name} holds float pixels in [{lo:g}, {hi:g}] but floats must lie in [0, 1]; "
                "divide 0-255 data by 255 or pass uint8 images (values in [-1, 1] must be mapped with (x + 1) / 2)"
            )


def to_model_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] pixels -> float32 in [-1, 1], the model's input range.

    Rounds exactly as SecMI's pipeline does (torchvision's ToTensor divides by 255, then
    x * 2 - 1), so the first UNet call sees bit-identical inputs.
    """
    if batch.dtype == torch.uint8:
        return batch.to(torch.float32).div_(255.0).mul_(2.0).sub_(1.0)
    return batch.to(torch.float32).mul(2.0).sub_(1.0)


def sample_ids(n: int, offset, indices) -> np.ndarray:
    """int64 [n] global sample identities: `indices` as given, or offset, offset + 1, ..."""
    if indices is not None:
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        ids = np.asarray(indices)
        if ids.shape != (n,) or (ids.size and ids.dtype.kind not in "iu"):
            raise InputError(f"indices must be an integer array with one entry per image ({n}), "
                             f"got shape {ids.shape} and dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0):
            raise InputError(f"indices must be >= 0 (global sample numbers), got {int(ids.min())}")
        if offset:
            raise InputError("pass either indices or offset, not both")
        return ids
    offset = as_int(offset, "offset")
    if offset < 0 or offset + n >= 2**63:
        raise InputError(f"offset = {offset} must be >= 0 with offset + N below 2**63")
    return np.arange(offset, offset + n, dtype=np.int64)
