"""Pixel-array checks and layout detection: any accepted image array becomes uint8 N x C x H x W, or a clear error."""
from __future__ import annotations

from typing import Type

import numpy as np

from ..errors import DataError, QmiaError

__all__ = ["LAYOUTS", "CHANNEL_COUNTS", "resolve_layout", "to_uint8_nchw"]

LAYOUTS = ("auto", "nchw", "nhwc", "nhw")
# 4 is accepted only so that an RGBA array can have its (opaque) alpha channel dropped.
CHANNEL_COUNTS = (1, 3, 4)
_CHUNK = 4096  # images converted at a time, so float inputs need no full-size temporaries

_LAYOUT_TEXT = {"nchw": "N x C x H x W", "nhwc": "N x H x W x C", "nhw": "N x H x W (grayscale)"}


def resolve_layout(shape: tuple, layout: str = "auto", *, where: str = "--data",
                   error: Type[QmiaError] = DataError) -> tuple[str, str]:
    """Decide how an array of `shape` holds its images.

    Returns (layout, note): layout is 'nchw', 'nhwc' or 'nhw'; note is a short phrase saying
    what was assumed and why (empty when the layout was given explicitly).

    Rules for layout='auto' on a 4-D array N x a x b x c, with channel sizes {1, 3, 4}:
    only a is a channel size -> N x C x H x W; only c is -> N x H x W x C; both are -> the
    reading whose image is square wins, and when both (or neither) are square N x C x H x W,
    the package's own layout, is assumed and the note says so. 3-D arrays are N x H x W
    grayscale, except that H x W x 3 / H x W x 4 (one colour image) is refused.
    """
    layout = str(layout).lower()
    if layout not in LAYOUTS:
        raise error(f"{where}: layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    ndim = len(shape)
    shape_text = " x ".join(str(d) for d in shape)
    if layout == "nhw":
        if ndim != 3:
            raise error(f"{where}: layout 'nhw' needs a 3-D array, got shape {shape_text}")
        return "nhw", ""
    if layout in ("nchw", "nhwc"):
        if ndim != 4:
            raise error(f"{where}: layout {layout!r} needs a 4-D array, got shape {shape_text}")
        channels = shape[1] if layout == "nchw" else shape[3]
        if channels not in CHANNEL_COUNTS:
            raise error(f"{where}: with layout {layout!r} the array has {channels} channels; "
                        "images need 1 (grayscale) or 3 (RGB) channels")
        return layout, ""
    if ndim == 3:
        if shape[2] in (3, 4) and shape[0] not in CHANNEL_COUNTS:
            raise error(f"{where}: shape {shape_text} looks like one H x W x C image; "
                        "add a leading batch axis (x[None]) or pass layout='nhw' if it really is "
                        "N grayscale images")
        return "nhw", "assumed N x H x W grayscale (3-D array)"
    if ndim != 4:
        raise error(f"{where}: images must be a 4-D array (N x C x H x W or N x H x W x C) or 3-D "
                    f"(N x H x W grayscale); got {ndim}-D shape {shape_text or '()'}")
    first_is_channel = shape[1] in CHANNEL_COUNTS
    last_is_channel = shape[3] in CHANNEL_COUNTS
    if first_is_channel and not last_is_channel:
        return "nchw", f"assumed N x C x H x W (axis 1 has size {shape[1]})"
    if last_is_channel and not first_is_channel:
        return "nhwc", f"assumed N x H x W x C (last axis has size {shape[3]})"
    if not first_is_channel:
        raise error(f"{where}: shape {shape_text} has no channel axis of size 1, 3 or 4; pass "
                    "N x C x H x W or N x H x W x C (C = 1 or 3), or N x H x W for grayscale")
    square_if_nchw = shape[2] == shape[3]
    square_if_nhwc = shape[1] == shape[2]
    if square_if_nhwc and not square_if_nchw:
        return "nhwc", (f"ambiguous shape {shape_text}: assumed N x H x W x C because that reading "
                        "gives square images; pass layout='nchw' (--layout nchw) if wrong")
    reason = "that reading gives square images" if square_if_nchw and not square_if_nhwc else \
        "it is the package's own layout"
    return "nchw", (f"ambiguous shape {shape_text}: assumed N x C x H x W because {reason}; "
                    "pass layout='nhwc' (--layout nhwc) if wrong")


def _first_bad_image(bad_per_image: np.ndarray) -> int:
    return int(np.flatnonzero(bad_per_image)[0])


def to_uint8_nchw(array, layout: str = "auto", *, where: str = "--data",
                  error: Type[QmiaError] = DataError) -> tuple[np.ndarray, str]:
    """Validate an image array and return (uint8 C-contiguous N x C x H x W copy or view, note).

    Accepts uint8 in [0, 255] or floats in [0, 1] (converted with round(x * 255), ties to
    even); every other dtype, NaN/Inf, or floats outside [0, 1] raise `error` naming `where`.
    A 4th channel is dropped when it is a fully opaque alpha channel and refused otherwise.
    The note lists the layout assumed and any conversion, for the caller to print.
    """
    if not isinstance(array, np.ndarray):
        raise error(f"{where}: expected a numpy array of images, got {type(array).__name__}")
    dtype = array.dtype
    if dtype != np.uint8 and dtype.kind != "f":
        hint = ("convert integer pixels with .astype(np.uint8) after checking they lie in [0, 255]"
                if dtype.kind in "iub" else "save the images as uint8 or float")
        raise error(f"{where}: pixel dtype {dtype} is not supported; images must be uint8 in "
                    f"[0, 255] or floats in [0, 1] ({hint})")
    chosen, layout_note = resolve_layout(array.shape, layout, where=where, error=error)
    if chosen == "nhw":
        array = array[:, None, :, :]
    elif chosen == "nhwc":
        array = array.transpose(0, 3, 1, 2)
    n, c, h, w = array.shape
    if n == 0:
        raise error(f"{where}: the array holds zero images")
    if h == 0 or w == 0:
        raise error(f"{where}: images have zero height or width (shape {array.shape})")
    notes = [layout_note] if layout_note else []
    if dtype == np.uint8:
        images = np.ascontiguousarray(array)
    else:
        images = _floats_to_uint8(array, where=where, error=error)
        notes.append("floats in [0, 1] converted to uint8 with round(x * 255)")
    if c == 4:
        alpha = images[:, 3]
        opaque = (alpha == 255).reshape(n, -1).all(axis=1)
        if not opaque.all():
            raise error(f"{where}: image {_first_bad_image(~opaque)} has a 4th (alpha) channel that "
                        "is not fully opaque; composite the images onto a background and save RGB")
        images = np.ascontiguousarray(images[:, :3])
        notes.append("dropped an opaque alpha channel")
    return images, "; ".join(notes)


def _floats_to_uint8(array: np.ndarray, *, where: str, error: Type[QmiaError]) -> np.ndarray:
    n = array.shape[0]
    out = np.empty(array.shape, dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        with np.errstate(invalid="ignore"):  # signalling NaNs warn when widened; they are reported below
            block = np.asarray(array[start:start + _CHUNK], dtype=np.float64)
        flat = block.reshape(block.shape[0], -1)
        finite = np.isfinite(flat).all(axis=1)
        if not finite.all():
            bad = start + _first_bad_image(~finite)
            raise error(f"{where}: image {bad} contains NaN or Inf; every pixel must be a finite "
                        "float in [0, 1]")
        in_range = ((flat >= 0.0) & (flat <= 1.0)).all(axis=1)
        if not in_range.all():
            bad_local = _first_bad_image(~in_range)
            lo, hi = float(flat[bad_local].min()), float(flat[bad_local].max())
            raise error(f"{where}: float pixels must lie in [0, 1], but image {start + bad_local} "
                        f"spans [{lo:g}, {hi:g}]; for images in [-1, 1] save (x + 1) / 2, for "
                        "[0, 255] save them as uint8")
        out[start:start + _CHUNK] = np.rint(block * 255.0).astype(np.uint8)
    return out
