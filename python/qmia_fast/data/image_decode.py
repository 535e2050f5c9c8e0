"""Pillow decoding for image folders: header checks before decoding, mode rules, decompression-bomb guards, and diffusers' resize + centre crop."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from .safe_read import open_regular_file

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "MAX_RESOLUTION", "CHANNEL_WORDS", "image_call",
           "read_header", "decode_image", "resize_center_crop", "resized_size"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
MAX_IMAGE_PIXELS = 1 << 24  # 4096 x 4096: far beyond any diffusion-model training image
MAX_RESOLUTION = 4096

# Pillow modes and the channels each becomes after decode_image; anything else (16-bit, float,
# CMYK, ...) is refused. Alpha is dropped once it is known to be opaque, and palettes become RGB.
_MODE_CONVERSION = {"1": "L", "L": "L", "P": None, "RGB": "RGB", "RGBA": "RGBA", "LA": "LA", "PA": "RGBA"}
_MODE_CHANNELS = {"1": 1, "L": 1, "LA": 1, "P": 3, "PA": 3, "RGB": 3, "RGBA": 3}
CHANNEL_WORDS = {1: "grayscale", 3: "colour"}
# Pillow's own guards against images that inflate far beyond their file.
_PNG_TEXT_BOMB = ("Decompressed data too large", "Too much memory used in text chunks")


def decode_image(image, path: Path) -> np.ndarray:
    """The first frame of an opened Pillow image as uint8 H x W x C (C = 1 or 3), by the mode rules above."""
    mode = image.mode
    if mode == "P":
        target = "RGBA" if "transparency" in image.info else "RGB"
    else:
        target = _MODE_CONVERSION.get(mode)
    if target is None:
        raise DataError(f"image mode {mode!r} is not supported; save 8-bit grayscale, RGB or RGBA images")
    if target != mode:
        image = image.convert(target)
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] in (2, 4):
        alpha = pixels[:, :, -1]
        if not (alpha == 255).all():
            raise DataError("has transparent pixels; composite it onto a background and save it without alpha")
        pixels = pixels[:, :, :-1]
    return pixels


def _open_image(image_module, handle):
    """Image.open on an already opened regular file, with Pillow's decompression-bomb warning made an error."""
    warnings.simplefilter("error", image_module.DecompressionBombWarning)
    return image_module.open(handle)


def image_call(image_module, path: Path, body):
    """Run body(image) on the lazily opened image; names decompression bombs as such instead of 'corrupt'."""
    with warnings.catch_warnings():
        try:
            with open_regular_file(path) as handle, _open_image(image_module, handle) as image:
                return body(image)
        except (image_module.DecompressionBombError, image_module.DecompressionBombWarning) as exc:
            raise DataError(f"is a decompression bomb: it declares far more pixels than its size could hold "
                            f"({str(exc)[:120]}); it was not decoded. Remove it from the folder") from None
        except ValueError as exc:
            if str(exc).startswith(_PNG_TEXT_BOMB):
                raise DataError("is a decompression bomb: a compressed text chunk inflates beyond Pillow's limit; "
                                "it was not decoded. Remove it from the folder") from None
            raise


def read_header(image) -> tuple[int, int, int, bool]:
    """(width, height, channels, animated) from the header alone: Image.open has not decoded any pixel yet."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"declares {width} x {height} pixels, more than the {MAX_IMAGE_PIXELS} (4096 x 4096) this "
                        "reader decodes (an image far larger than a diffusion model's input, or a decompression "
                        "bomb); it was not decoded")
    channels = _MODE_CHANNELS.get(image.mode)
    if channels is None:
        raise DataError(f"image mode {image.mode!r} is not supported; save 8-bit grayscale, RGB or RGBA images")
    # APNG and WebP declare their frame count in the header; for GIF Pillow looks for a second frame.
    animated = bool(getattr(image, "is_animated", False))
    return width, height, channels, animated


def resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(resolution): the shorter side becomes `resolution`,
    the longer int(resolution * long / short), truncated, as torchvision computes it."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resolution * long / short)
    return (resolution, new_long) if width <= height else (new_long, resolution)


def resize_center_crop(image_module, pixels: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 H x W x C resized so the shorter side is `resolution` and centre-cropped to resolution x resolution.

    This is the training transform of diffusers' examples/text_to_image/train_text_to_image.py
    with --center_crop and without --random_flip: transforms.Resize(resolution, interpolation=BILINEAR) then
    transforms.CenterCrop(resolution), on a PIL image. torchvision hands a PIL image to PIL's
    Image.resize with BILINEAR, whose filter support widens with the scale factor (so
    downscaling is antialiased), and leaves an image already of the target size untouched;
    CenterCrop's offsets are int(round((size - resolution) / 2)). Both are reproduced here with
    PIL alone, so no torchvision is needed.
    """
    height, width = pixels.shape[:2]
    image = image_module.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    new_width, new_height = resized_size(width, height, resolution)
    if (new_width, new_height) != (width, height):
        bilinear = getattr(image_module, "Resampling", image_module).BILINEAR
        image = image.resize((new_width, new_height), bilinear)
    top = int(round((new_height - resolution) / 2.0))
    left = int(round((new_width - resolution) / 2.0))
    out = np.asarray(image.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)
    return out[:, :, None] if out.ndim == 2 else out
