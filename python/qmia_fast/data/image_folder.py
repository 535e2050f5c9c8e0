"""Image folders: the sorted, symlink-following file list, class sub-folders as labels, and reading every image (header pass first, then decoding)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, require_extra
from . import image_decode
from .image_decode import CHANNEL_WORDS, IMAGE_SUFFIXES, MAX_RESOLUTION, image_call, read_header, resize_center_crop
from .safe_read import fail, guard

__all__ = ["list_image_files", "relative_names", "folder_class_labels", "read_image_folder", "check_resolution"]


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links
    except OSError:
        return False


def _contains(outer: str, inner: str) -> bool:
    """Whether real path `outer` is `inner` or one of its ancestors."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def list_image_files(folder: Path, *, where: str = "--data") -> list[Path]:
    """Image files under `folder`, recursively, sorted by relative path; hidden entries are skipped.

    Symbolic links to files and to folders are followed, and each image keeps the relative path
    of the link it was reached through, so an image's index is the position of that path in the
    sorted list whatever the links point at. A link to a folder that contains it (a loop, or a
    link to the folder itself or one of its ancestors) is a DataError naming the link. A name
    with an image suffix that is not a readable image (a broken link, a FIFO) is kept, so that
    reading it reports it instead of every later index shifting.
    """
    folder = Path(folder)
    found: list[tuple[str, Path]] = []
    stack = [(folder, "", (os.path.realpath(folder),))]
    while stack:
        directory, prefix, chain = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise fail(where, directory, f"cannot list this folder ({exc.strerror or exc}); check its "
                                         "permissions") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = prefix + entry.name
            if _is_dir(entry):
                real = os.path.realpath(entry.path)
                if any(_contains(real, ancestor) for ancestor in chain):
                    raise fail(where, folder, f"{relative} is a symbolic link to {real}, a folder that contains "
                                              "the link (a loop); remove the link or point it elsewhere")
                stack.append((Path(entry.path), relative + "/", chain + (real,)))
            elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                found.append((relative, Path(entry.path)))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def relative_names(folder: Path, files) -> list[str]:
    """Each file's path relative to `folder`, with '/' separators: the names members and captions refer to."""
    return [Path(f).relative_to(folder).as_posix() for f in files]


def folder_class_labels(folder: Path, names: list[str]) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """(labels, class names) by torchvision's ImageFolder convention, or None where it does not apply.

    Each top-level sub-folder (hidden ones aside, links followed) is a class; the classes are
    sorted by name and a class's label is its position, empty sub-folders included, as
    torchvision's find_classes numbers them. The convention applies only when every image lies
    inside a sub-folder: an image at the top level belongs to no class, so then there are no labels.
    """
    if not names or any("/" not in name for name in names):
        return None
    with os.scandir(folder) as entries:
        classes = sorted(e.name for e in entries if not e.name.startswith(".") and _is_dir(e))
    position = {name: i for i, name in enumerate(classes)}
    labels = np.array([position[name.split("/", 1)[0]] for name in names], dtype=np.int64)
    return labels, tuple(classes)


def check_resolution(resolution) -> int | None:
    if resolution is None:
        return None
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) \
            or not 1 <= int(resolution) <= MAX_RESOLUTION:
        raise ConfigError(f"--resolution must be a whole number of pixels from 1 to {MAX_RESOLUTION} (the side "
                          f"the images are resized and centre-cropped to), not {resolution!r:.40}")
    return int(resolution)


def _decoded_budget() -> int:
    """Bytes an image folder may decode to: half of physical memory, and of the address-space limit if one is set."""
    budget = 1 << 62
    try:
        budget = min(budget, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    except (AttributeError, ValueError, OSError):
        pass
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            budget = min(budget, soft // 2)
    except (ImportError, ValueError, OSError):
        pass
    return budget


def _shape_words(shape) -> str:
    return " x ".join(str(v) for v in shape)


def _check_expected(shape: tuple[int, int, int], expected, first: Path, resolution: int | None) -> None:
    if expected is None or tuple(shape) == tuple(expected):
        return
    channels, height, width = shape
    want_c, want_h, want_w = expected
    if channels != want_c:
        have_word, want_word = CHANNEL_WORDS.get(channels, f"{channels}-channel"), \
            CHANNEL_WORDS.get(want_c, f"{want_c}-channel")
        fix = f"convert the images to {want_word} ({want_c} channel{'s' if want_c != 1 else ''})"
        what = f"are {have_word} ({channels} channel{'s' if channels != 1 else ''})"
    elif resolution is not None:
        fix = f"pass --resolution {want_h}" if want_h == want_w else f"resize the images to {want_h} x {want_w}"
        what = f"are resized to {height} x {width} by --resolution {resolution}"
    else:
        fix = f"resize the images to {want_h} x {want_w}"
        if want_h == want_w:
            fix += f" (or pass --resolution {want_h} to resize and centre-crop them)"
        what = f"are {height} x {width}"
    raise DataError(f"the images {what}, e.g. {first.name}, but the model expects {_shape_words(expected)} "
                    f"(channels x height x width); {fix}")


def read_image_folder(folder: Path, *, where: str = "--data", expected_shape=None, max_bytes: int | None = None,
                      resolution: int | None = None, files: list[Path] | None = None) -> tuple[np.ndarray, list[Path]]:
    """All images under `folder` (see list_image_files) as uint8 N x C x H x W, in sorted relative-path order.

    Every image must have the same number of channels (grayscale vs colour is never converted
    silently) and, unless `resolution` is given, the same size; palette images become RGB,
    opaque alpha is dropped. With `resolution` = R each image is resized so its shorter side is
    R (bilinear, antialiased) and centre-cropped to R x R, exactly as diffusers'
    train_text_to_image.py does with --center_crop (see image_decode.resize_center_crop), so
    mixed sizes are allowed. Animated images (GIF/APNG/WebP with several frames) are read as
    their first frame, as that script's Image.open(...).convert does; one warning counts them.

    Every header is read first, so that a file that is not a regular file (a FIFO named *.png is
    refused, never opened for reading), an image of another size or mode, one that does not
    match `expected_shape` (C, H, W), a decompression bomb, or a folder that would decode to
    more than `max_bytes` (default: half of physical memory) is reported before any pixel is
    decoded. `files`: the folder's list_image_files, where the caller already has it.
    """
    resolution = check_resolution(resolution)
    files = list_image_files(folder, where=where) if files is None else files
    if not files:
        raise fail(where, folder, f"folder holds no images ({', '.join(IMAGE_SUFFIXES)}) and no "
                                  "known dataset files (.npy, .npz, idx, CIFAR batches)")
    image_module = require_extra("PIL.Image", "images", "reading an image folder")
    reference = None
    animated = []
    for path in files:
        width, height, channels, moving = guard(where, path, lambda path=path: image_call(image_module, path,
                                                                                          read_header))
        if moving:
            animated.append(path)
        if reference is None:
            reference = (width, height, channels)
            size = (resolution, resolution) if resolution is not None else (height, width)
            guard(where, folder, lambda: _check_expected((channels, *size), expected_shape, files[0], resolution))
        elif resolution is None and (width, height) != reference[:2]:
            raise fail(where, path, f"is {width} x {height} but {files[0].name} is {reference[0]} x "
                                    f"{reference[1]}; all images must have one size (or pass --resolution to "
                                    "resize and centre-crop them)")
        elif channels != reference[2]:
            raise fail(where, path, f"is {CHANNEL_WORDS[channels]} but {files[0].name} is "
                                    f"{CHANNEL_WORDS[reference[2]]}; convert all images to one mode")
    width, height, channels = reference
    if resolution is not None:
        width = height = resolution
    total = len(files) * channels * height * width
    budget = _decoded_budget() if max_bytes is None else max_bytes
    if total > budget:
        raise fail(where, folder, f"{len(files)} images of {channels} x {height} x {width} would decode to "
                                  f"{total} bytes, more than the {budget} bytes allowed (half of this "
                                  "machine's memory); pass a smaller folder or a subset")
    if animated:
        first = animated[0].relative_to(folder).as_posix()
        warnings.warn(f"{where} {folder}: {len(animated)} image(s) are animated (several frames), e.g. {first}; "
                      "only the first frame of each is read, as Pillow-based training scripts read them",
                      stacklevel=2)
    images = np.empty((len(files), channels, height, width), np.uint8)
    for index, path in enumerate(files):
        def decode(image, path=path):
            if resolution is None and (image.width, image.height) != (width, height):
                raise DataError("changed while the folder was being read; read it again")
            image.load()
            pixels = image_decode.decode_image(image, path)
            return pixels if resolution is None else resize_center_crop(image_module, pixels, resolution)
        pixels = guard(where, path, lambda path=path, decode=decode: image_call(image_module, path, decode))
        if pixels.shape != (height, width, channels):
            raise fail(where, path, "changed while the folder was being read; read it again")
        images[index] = pixels.transpose(2, 0, 1)
    return images, files
