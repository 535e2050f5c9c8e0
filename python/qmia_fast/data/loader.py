"""load_data: the user's images (arrays, image folders, MNIST idx, CIFAR batches, shipped demo) as uint8 N x C x H x W plus their member split."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import atomic_io
from .arrays import NpzReader, read_npy
from .cifar import cifar_rows_to_nchw, find_cifar_batches, read_cifar_batch
from .conditions import resolve_captions, resolve_labels
from .formats import sniff_format
from .idx import find_idx_images, idx_labels_path, read_idx
from .image_folder import check_resolution, folder_class_labels, list_image_files, read_image_folder, relative_names
from .layout import to_uint8_nchw
from ..errors import ConfigError, DataError, InputError
from .split import Split, load_split, split_from_arrays, split_from_members

__all__ = ["load_data", "LoadedData", "save_data", "BUILTIN_DATA", "FORMATS", "PARTS"]

# Fashion-MNIST's classes, by label (the demo data's labels are these).
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot")
# The shipped demo: images uint8 N x C x H x W, members/public/holdout int64, optional labels.
BUILTIN_DATA = Path(__file__).resolve().parent.parent / "assets" / "demo_data.npz"
FORMATS = ("auto", "npy", "npz", "idx", "cifar", "images")
PARTS = ("train", "test", "all")
_IMAGE_KEYS = ("images", "x")
_SPLIT_KEYS = ("members", "public", "holdout", "mia_train_idxs", "mia_eval_idxs")
_METADATA_KEYS = ("labels", "source", "format", "ratio")


class LoadedData(tuple):
    """The result of load_data: unpacks as (images, split) and also carries

    description  one line for the CLI: what was read, the image shape, the layout assumed
                 and any conversion (e.g. "assumed N x H x W x C (last axis has size 3)");
    labels       int64 class labels [N] when known (a --labels file, else the format's own:
                 idx labels files, CIFAR labels / fine_labels, an npz 'labels' array, an image
                 folder's class sub-folders), else None;
    class_names  the class of each label value (an image folder's sub-folder names), else None;
    captions     one caption (str) per image in index order (--captions, or the image folder's
                 metadata.jsonl / metadata.csv), else None;
    format       the reader used (npy, npz, idx, cifar, images, array, builtin);
    files        the files the images came from, in index order;
    file_names   for an image folder, each image's path relative to it ('cats/img_7.png'), else None.
    """

    def __new__(cls, images: np.ndarray, split: Split | None, *, description: str = "", labels=None,
                format: str = "", files: tuple = (), class_names=None, captions=None, file_names=None):
        self = super().__new__(cls, (images, split))
        self.description, self.labels, self.format, self.files = description, labels, format, tuple(files)
        self.class_names = None if class_names is None else tuple(class_names)
        self.captions = None if captions is None else list(captions)
        self.file_names = None if file_names is None else tuple(file_names)
        return self

    def __getnewargs__(self):
        # Pickle (e.g. to worker processes) rebuilds the pair from this; the attributes travel in __dict__.
        return self[0], self[1]

    @property
    def images(self) -> np.ndarray:
        return self[0]

    @property
    def split(self) -> Split | None:
        return self[1]


def load_data(source: Any, *, split: Any = None, members: Any = None, public_fraction: float = 0.5,
              seed: int = 0, layout: str = "auto", fmt: str = "auto", part: str | None = None,
              expected_shape: Sequence[int] | None = None, labels: Any = None, captions: Any = None,
              caption_column: str | None = None, resolution: int | None = None,
              model_resolution: int | None = None) -> LoadedData:
    """Read images, their member split and their conditions (class labels, captions).

    source: "builtin" (the shipped demo), a numpy array, or a path to a .npy/.npz array, an
      image folder (PNG/JPEG/BMP/WebP/GIF, recursive, symbolic links followed, sorted by
      relative path), an MNIST/Fashion-MNIST idx file or folder, or a CIFAR-10/100 python batch
      or folder (read without unpickling code).
    split: a split file (.npz/.json, ours or SecMI/PIA's), a Split, or a mapping of arrays.
    members: instead of split, the member indices (index file path or array); all other
      images are non-members. For an image folder, member and split files may name images by
      relative path ('cats/img_7.png') instead of index.
    public_fraction, seed: how non-members are divided into public and holdout.
    layout: 'auto', 'nchw', 'nhwc' or 'nhw' for arrays; fmt: one of FORMATS;
    part: 'train' (default), 'test' or 'all' (train then test) for idx and CIFAR folders.
    expected_shape: (C, H, W) the images must have, e.g. the target model's image_shape; an image
      folder is checked against it from the file headers, before any image is decoded, and every
      other source once read. None (the default) accepts any shape.
    labels: a labels file (see labels.read_labels_file) or an integer array, one class label per
      image; it wins over the labels the format carries.
    captions: a captions file (.jsonl/.csv keyed by file_name or index; see
      captions.read_captions) or a list of strings; without it an image folder's own
      metadata.jsonl / metadata.csv is read. caption_column: its text column (default 'text').
    resolution: for an image folder, resize each image so its shorter side is this many pixels
      and centre-crop it square, as diffusers' train_text_to_image.py --center_crop does; mixed
      sizes are then allowed. model_resolution: the same for image folders when `resolution` is
      not given (the pipeline's training resolution); other sources are not resized.

    Returns LoadedData, which unpacks as (uint8 C-contiguous N x C x H x W images, Split or None).
    """
    if split is not None and members is not None:
        raise ConfigError("--split and --members were both given; pass only one of them")
    fmt = str(fmt).lower()
    if fmt == "folder":
        fmt = "images"
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if part is not None and part not in PARTS:
        raise ConfigError(f"--part must be one of {', '.join(PARTS)}, not {part!r}")
    expected_shape = _check_expected_shape(expected_shape)

    embedded: Mapping[str, np.ndarray] = {}
    is_path = isinstance(source, (str, os.PathLike)) and not (isinstance(source, str) and source == "builtin")
    if part is not None and not is_path:
        raise ConfigError("--part applies only to idx and CIFAR folders")
    resolution = check_resolution(resolution)
    model_resolution = check_resolution(model_resolution)
    if resolution is not None and not is_path:
        raise ConfigError("--resolution applies only to image folders; resize array images before passing them")
    _check_condition_files(labels, captions, caption_column)
    if isinstance(source, np.ndarray):
        images, note = to_uint8_nchw(source, layout, where="images", error=InputError)
        loaded = _Loaded(images, note, "array", "images argument")
    elif isinstance(source, str) and source == "builtin":
        if not BUILTIN_DATA.is_file():
            raise DataError(f"--data builtin: the demo data is not installed (expected {BUILTIN_DATA}); "
                            "reinstall qmia-fast or pass --data PATH to your own images")
        loaded, embedded = _load_npz(BUILTIN_DATA, layout)
        loaded.format, loaded.label = "builtin", "built-in demo data"
        loaded.class_names = FASHION_MNIST_CLASSES  # the demo's images and labels are Fashion-MNIST's
    elif isinstance(source, (str, os.PathLike)):
        loaded, embedded = _load_path(Path(source), fmt, layout, part, expected_shape, resolution,
                                      settle=lambda early: _conditions(early, labels, captions, caption_column, split,
                                                                members, {}, public_fraction, seed),
                                      model_resolution=model_resolution)
    else:
        raise InputError(f"--data must be 'builtin', a path or a numpy array, not {type(source).__name__}")
    if expected_shape is not None and tuple(loaded.images.shape[1:]) != expected_shape:
        error = InputError if loaded.format == "array" else DataError
        raise error(f"--data {loaded.label}: images are {_dims(loaded.images.shape[1:])} but the model expects "
                    f"{_dims(expected_shape)} (channels x height x width); {_fix(loaded.images.shape[1:], expected_shape)}")

    if loaded.settled is None:
        loaded.settled = _conditions(loaded, labels, captions, caption_column, split, members, embedded,
                                     public_fraction, seed)
    label_values, label_source, class_names, caption_values, caption_note, resolved = loaded.settled
    n, c, h, w = loaded.images.shape
    notes = [f"{loaded.label}: {n} images, {c} x {h} x {w} uint8"] + [loaded.note] * bool(loaded.note)
    if label_values is not None:
        notes.append(f"labels: {label_source}")
    notes += [caption_note] * bool(caption_note)
    if resolved is not None:
        notes.append(f"split: {resolved.summary()}")
    return LoadedData(loaded.images, resolved, description="; ".join(notes), labels=label_values,
                      format=loaded.format, files=loaded.files, class_names=class_names, captions=caption_values,
                      file_names=loaded.file_names)


def _conditions(loaded: "_Loaded", labels, captions, caption_column, split, members, embedded, public_fraction,
                seed) -> tuple:
    """Labels, class names, captions and split for `loaded` (whose images may not be decoded yet: only its
    count, file names, folder and format labels are used)."""
    n_images, names = loaded.count, loaded.file_names
    label_values, label_source = resolve_labels(labels, loaded.labels, loaded.label_source, n_images, names,
                                                loaded.label)
    class_names = loaded.class_names if labels is None else None
    caption_values, caption_note = resolve_captions(captions, caption_column, n_images, names, loaded.folder)
    resolved = _resolve_split(split, members, embedded, n_images, loaded.label, public_fraction, seed, names)
    return label_values, label_source, class_names, caption_values, caption_note, resolved


def _check_condition_files(labels, captions, caption_column) -> None:
    # Checked before any image is decoded: a mistyped path should not cost a folder's decoding.
    for option, value in (("--labels", labels), ("--captions", captions)):
        if isinstance(value, (str, os.PathLike)) and not Path(value).exists():
            raise DataError(f"{option} {value}: no such file")
    if caption_column is not None and (not isinstance(caption_column, str) or not caption_column.strip()):
        raise ConfigError(f"--caption-column must be the name of a column, such as 'text', not "
                          f"{caption_column!r:.40}")


def _check_expected_shape(expected) -> tuple[int, int, int] | None:
    if expected is None:
        return None
    try:
        values = tuple(expected)
    except TypeError:
        values = ()
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                                   for v in values):
        raise ConfigError(f"expected_shape = {expected!r:.60} must be (channels, height, width), e.g. a model's "
                          "image_shape such as (3, 32, 32)")
    return tuple(int(v) for v in values)


def _dims(shape) -> str:
    return " x ".join(str(int(v)) for v in shape)


def _fix(shape, expected) -> str:
    if shape[0] != expected[0]:
        return f"convert the images to {expected[0]} channel{'s' if expected[0] != 1 else ''} (grayscale 1, colour 3)"
    return f"resize the images to {expected[1]} x {expected[2]}"


class _Loaded:
    def __init__(self, images, note, format, label, labels=None, files=(), label_source="", folder=None,
                 file_names=None, class_names=None):
        self.images, self.note, self.format, self.label = images, note, format, label
        self.labels, self.files, self.label_source = labels, tuple(files), label_source
        self.folder, self.file_names, self.class_names = folder, file_names, class_names
        self.count = 0 if images is None else len(images)
        self.settled = None  # _conditions' result, once worked out


def _resolve_split(split, members, embedded, n_images, label, public_fraction, seed,
                   file_names=None) -> Split | None:
    if isinstance(split, Split):
        return split.validate(n_images, origin="split argument")
    if isinstance(split, Mapping):
        made = split_from_arrays(split, n_images, origin="split argument", public_fraction=public_fraction,
                                 seed=seed, source="split argument")
        if made is None:
            raise InputError("split argument: a mapping needs members/public/holdout or "
                             "mia_train_idxs/mia_eval_idxs")
        return made
    if isinstance(split, (str, os.PathLike)):
        return load_split(split, n_images, public_fraction=public_fraction, seed=seed, file_names=file_names)
    if split is not None:
        raise InputError(f"--split must be a path, a Split or a mapping, not {type(split).__name__}")
    if members is not None:
        return split_from_members(members, n_images, public_fraction=public_fraction, seed=seed,
                                  file_names=file_names)
    if embedded:
        return split_from_arrays(embedded, n_images, origin=f"--data {label}", public_fraction=public_fraction,
                                 seed=seed, source=f"stored in {label}")
    return None


def _detect_folder(folder: Path, part: str) -> tuple[str, Any]:
    cifar = find_cifar_batches(folder, part)
    if cifar is not None:
        return "cifar", cifar
    idx = find_idx_images(folder, part)
    if idx:
        return "idx", idx
    return "images", None


def _load_path(path: Path, fmt: str, layout: str, part: str | None, expected_shape=None,
               resolution=None, settle=None, model_resolution=None) -> tuple[_Loaded, Mapping]:
    if not path.exists():
        raise DataError(f"--data {path}: no such file or folder")
    if not path.is_dir() and not path.is_file():
        # A FIFO, socket or device: reading it would block or never end.
        raise DataError(f"--data {path}: is not a regular file or folder (a FIFO, socket or device); "
                        "pass a data file or folder on disk")
    folder_part = part or "train"
    found = None
    if path.is_dir():
        kind, found = _detect_folder(path, folder_part) if fmt == "auto" else (fmt, None)
        if kind in ("npy", "npz"):
            raise DataError(f"--data {path}: is a folder, not an .{kind} file")
    else:
        kind = sniff_format(path) if fmt == "auto" else fmt
        if kind == "images":
            raise DataError(f"--data {path}: --format images needs a folder of image files")
    if part is not None and not (path.is_dir() and kind in ("idx", "cifar")):
        raise ConfigError(f"--part applies only to idx and CIFAR folders, not to {path}")
    if resolution is not None and kind != "images":
        raise ConfigError(f"--resolution applies only to image folders, not to {path} ({kind}); resize the "
                          "images before saving them")
    if resolution is None and kind == "images":
        resolution = model_resolution  # a pipeline trained at a fixed resolution: its training transform
    if layout != "auto" and kind not in ("npy", "npz", "cifar"):
        raise ConfigError(f"--layout applies only to .npy/.npz arrays; {kind} files have a fixed layout")

    if kind == "npy":
        images, note = to_uint8_nchw(read_npy(path), layout, where=f"--data {path}")
        return _Loaded(images, note, "npy", str(path), files=(path,)), {}
    if kind == "npz":
        return _load_npz(path, layout)
    if kind == "idx":
        return _load_idx(path, found, folder_part), {}
    if kind == "cifar":
        return _load_cifar(path, found, folder_part, layout), {}
    if kind == "images":
        if not path.is_dir():
            raise DataError(f"--data {path}: --format images needs a folder of image files")
        return _load_image_folder(path, expected_shape, resolution, settle), {}
    if kind in ("json", "txt"):
        raise DataError(f"--data {path}: looks like an index list, not images; pass it as --split or --members")
    raise DataError(f"--data {path}: unrecognised data file; use .npy/.npz arrays, an image folder, "
                    "MNIST idx files or CIFAR python batches (or set --format)")


def _load_image_folder(path: Path, expected_shape, resolution, settle) -> _Loaded:
    files = list_image_files(path)
    names = relative_names(path, files)
    note = "images sorted by relative path"
    if resolution is not None:
        note += f", resized (shorter side {resolution}, bilinear) and centre-cropped to {resolution} x {resolution}"
    classes = folder_class_labels(path, names)
    labels, class_names, source = None, None, ""
    if classes is not None:
        labels, class_names = classes
        source = f"{len(class_names)} classes from sub-folder names ({', '.join(class_names[:5])}" + \
            (", ...)" if len(class_names) > 5 else ")")
    loaded = _Loaded(None, note, "images", f"{path}/", labels=labels, files=files, label_source=source,
                     folder=path, file_names=names, class_names=class_names)
    if files and settle is not None:
        # Labels, captions and member files are checked against the file names before any
        # image is opened, so a bad one costs no decoding.
        loaded.count = len(files)
        loaded.settled = settle(loaded)
    loaded.images, _ = read_image_folder(path, expected_shape=expected_shape, resolution=resolution, files=files)
    loaded.count = len(loaded.images)
    return loaded


def _load_npz(path: Path, layout: str) -> tuple[_Loaded, Mapping]:
    with NpzReader(path) as npz:
        keys = npz.keys()
        image_key = next((k for k in _IMAGE_KEYS if k in keys), None)
        if image_key is None:
            others = [k for k in keys if k not in _SPLIT_KEYS + _METADATA_KEYS]
            if len(others) != 1:
                raise DataError(f"--data {path}: cannot tell which array holds the images (keys: "
                                f"{', '.join(keys)}); name it 'images'")
            image_key = others[0]
        raw = npz.read(image_key)
        labels = npz.read("labels") if "labels" in keys else None
        embedded = {k: npz.read(k) for k in _SPLIT_KEYS if k in keys}
    images, note = to_uint8_nchw(raw, layout, where=f"--data {path} (array {image_key!r})")
    return _Loaded(images, note, "npz", str(path), labels=labels, files=(path,),
                   label_source="the 'labels' array"), embedded


def _load_idx(path: Path, found: list[Path] | None, part: str) -> _Loaded:
    if path.is_dir():
        files = found or find_idx_images(path, part)
        if not files:
            raise DataError(f"--data {path}: no train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz] here")
    else:
        files = [path]
    image_blocks, label_blocks = [], []
    for file in files:
        array = read_idx(file)
        if array.ndim != 3 or array.dtype != np.uint8:
            raise DataError(f"--data {file}: idx images must be uint8 N x H x W, this file holds "
                            f"{array.dtype} of shape {array.shape}")
        if image_blocks and array.shape[1:] != image_blocks[0].shape[1:]:
            raise DataError(f"--data {file}: images are {array.shape[1]} x {array.shape[2]} but "
                            f"{files[0].name} has {image_blocks[0].shape[1]} x {image_blocks[0].shape[2]}")
        image_blocks.append(array)
        labels_file = idx_labels_path(file)
        if labels_file is not None:
            labels = read_idx(labels_file)
            if labels.ndim != 1 or len(labels) != len(array):
                raise DataError(f"--data {labels_file}: expected {len(array)} labels, found shape {labels.shape}")
            label_blocks.append(labels)
    images = np.concatenate(image_blocks)[:, None] if len(image_blocks) > 1 else image_blocks[0][:, None]
    if len(images) == 0:
        raise DataError(f"--data {path}: the idx file holds zero images")
    labels = np.concatenate(label_blocks) if len(label_blocks) == len(image_blocks) else None
    label = str(path) if not path.is_dir() else f"{path} (idx, {part}: {' + '.join(f.name for f in files)})"
    note = "" if labels is not None or not label_blocks else \
        "no labels: not every images file has its labels-idx1-ubyte file beside it"
    return _Loaded(np.ascontiguousarray(images), note, "idx", label, labels=labels, files=files,
                   label_source="idx labels files")


def _load_cifar(path: Path, found, part: str, layout: str) -> _Loaded:
    if path.is_dir():
        found = found or find_cifar_batches(path, part)
        if found is None:
            raise DataError(f"--data {path}: no CIFAR batches (data_batch_1..5 / train) here")
        name, files = found
        label = f"{path} ({name} {part}: {', '.join(f.name for f in files)})"
    else:
        files, label = [path], str(path)
    image_blocks, label_blocks, note = [], [], ""
    for file in files:
        data, labels = read_cifar_batch(file)
        data, row_note = cifar_rows_to_nchw(data, where="--data", path=file)
        images, layout_note = to_uint8_nchw(data, "nchw" if row_note else layout, where=f"--data {file}")
        note = row_note or layout_note
        if image_blocks and images.shape[1:] != image_blocks[0].shape[1:]:
            raise DataError(f"--data {file}: images are {images.shape[1:]} but {files[0].name} has "
                            f"{image_blocks[0].shape[1:]}")
        if labels is not None and len(labels) != len(images):
            raise DataError(f"--data {file}: {len(labels)} labels for {len(images)} images")
        image_blocks.append(images)
        label_blocks.append(labels)
    images = np.concatenate(image_blocks) if len(image_blocks) > 1 else image_blocks[0]
    labels = None if any(lb is None for lb in label_blocks) else np.concatenate(label_blocks)
    return _Loaded(images, "" if note.startswith("CIFAR") else note, "cifar", label, labels=labels, files=files,
                   label_source="the batches' labels")


def save_data(path, images: np.ndarray, *, split: Split | None = None, labels=None,
              compressed: bool = False) -> None:
    """Write images (+ split, labels) as the .npz that load_data and the built-in demo use.

    Keys: images (uint8 N x C x H x W), members/public/holdout (int64) when a split is given,
    labels (int64) when given. Written atomically; `compressed` deflates it (smaller, slower).
    """
    checked, _ = to_uint8_nchw(np.asarray(images), "nchw", where="images", error=InputError)
    arrays = {"images": checked}
    if split is not None:
        split.validate(len(checked), origin="split argument")
        arrays.update(members=split.members, public=split.public, holdout=split.holdout,
                      source=np.array(split.source))
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(checked) or labels.dtype.kind not in "iu":
            raise InputError(f"labels must be {len(checked)} integers, one per image")
        arrays["labels"] = labels.astype(np.int64)
    atomic_io.save_npz(path, compressed=compressed, **arrays)
