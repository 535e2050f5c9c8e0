"""Bounded readers for image/index files (npy, npz, MNIST idx, CIFAR batches, image folders) that turn any corruption into DataError."""
from __future__ import annotations

import ast
import gzip
import io
import os
import re
import stat
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import DataError, QmiaError, require_extra
from ..file_kinds import file_kind
from .safe_pickle import checked_element_count, materialize_array, safe_unpickle

__all__ = [
    "sniff_format", "read_npy", "NpzReader", "read_idx", "find_idx_images", "read_cifar_batch",
    "find_cifar_batches", "read_image_folder", "IMAGE_SUFFIXES", "read_array_file", "read_npz_arrays",
    "open_regular_file", "MAX_ARRAY_FILE_BYTES",
]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_NPY_HEADER = 65536
# Plain numeric arrays, plus small unicode arrays for metadata such as a split's source.
_NPY_KINDS = "biuf"
_MAX_UNICODE_BYTES = 1 << 20
# Deflate cannot expand data more than ~1032x; a member claiming more is corrupt or a bomb.
_DEFLATE_MAX_RATIO = 1032
_READ_CHUNK = 1 << 24
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_MAX_IMAGE_PIXELS = 1 << 24  # 4096 x 4096: far beyond any diffusion-model training image
# What score-file readers decompress at most by default: 134M float64 scores, far beyond any audit.
MAX_ARRAY_FILE_BYTES = 1 << 30


def _fail(where: str, path, message: str) -> DataError:
    return DataError(f"{where} {path}: {message}")


def _read_exact(stream, count: int, what: str) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise DataError(f"file ends inside the {what} (truncated)")
    return data


def _readinto_exact(stream, array: np.ndarray, what: str) -> None:
    view = memoryview(array.reshape(-1).view(np.uint8))
    filled = 0
    total = len(view)
    while filled < total:
        got = stream.readinto(view[filled:filled + _READ_CHUNK])
        if not got:
            raise DataError(f"file ends inside the {what} after {filled} of {total} bytes (truncated)")
        filled += got


def open_regular_file(path) -> "io.BufferedReader":
    """Open `path` for binary reading only if it is a regular file; a FIFO, socket or device is a DataError.

    Opening with O_NONBLOCK returns at once even for a FIFO without a writer, and fstat then
    judges the very file that was opened, so nothing can swap it in between.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"is {file_kind(mode)}, not a regular file; only regular files are read "
                            "(remove it or pass a file on disk)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _guard(where: str, path, action):
    # Library parsers (zipfile, gzip, ast, Pillow) raise a zoo of exception types on corrupt
    # input; every one of them means "this file is damaged" to the user.
    try:
        return action()
    except QmiaError as exc:
        if str(exc).startswith(f"{where} "):
            raise
        raise type(exc)(f"{where} {path}: {exc}") from None
    except RecursionError:
        raise _fail(where, path, "file is nested too deeply to be valid") from None
    except MemoryError:
        # Declared sizes are checked against the file before allocating, so this is a real shortage.
        raise _fail(where, path, "not enough memory to load it; free memory or load a smaller subset") from None
    except Exception as exc:  # noqa: BLE001
        raise _fail(where, path, f"file is corrupt or truncated ({_describe(exc)}); re-download or "
                                 "re-create it") from None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# --------------------------------------------------------------------------- format sniffing

def sniff_format(path: Path) -> str:
    """Guess a file's format from its name and first bytes: npy, npz, idx, cifar, json, txt or unknown."""
    name = path.name.lower()
    try:
        with open_regular_file(path) as fh:
            head = fh.read(8)
    except (OSError, DataError):
        head = b""
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGIC) or name.endswith(".npz"):
        return "npz"
    if "idx" in name and "ubyte" in name:
        return "idx"
    if head[:2] == b"\x00\x00" and len(head) >= 4 and head[2] in _IDX_DTYPES:
        return "idx"
    if head[:1] == b"\x80" or name.startswith(("data_batch", "test_batch")) or name in ("train", "test"):
        return "cifar"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".json"):
        return "json"
    if name.endswith((".txt", ".csv")):
        return "txt"
    return "unknown"


# --------------------------------------------------------------------------- npy / npz

def _parse_npy_header(stream, total_size: int, what: str, max_bytes: int | None = None,
                      max_elements: int | None = None) -> tuple[np.dtype, tuple, bool, int]:
    magic = _read_exact(stream, 6, f"{what} header")
    if magic != _NPY_MAGIC:
        raise DataError(f"{what} is not a .npy array (bad magic bytes)")
    major, _minor = _read_exact(stream, 2, f"{what} header")
    if major == 1:
        (header_len,) = struct.unpack("<H", _read_exact(stream, 2, f"{what} header"))
        prefix = 10
    elif major in (2, 3):
        (header_len,) = struct.unpack("<I", _read_exact(stream, 4, f"{what} header"))
        prefix = 12
    else:
        raise DataError(f"{what} has unknown .npy format version {major}")
    if header_len > _MAX_NPY_HEADER:
        raise DataError(f"{what} declares a {header_len}-byte header, which no valid .npy has")
    text = _read_exact(stream, header_len, f"{what} header").decode("utf-8" if major == 3 else "latin1")
    header = ast.literal_eval(text)
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise DataError(f"{what} has a malformed .npy header")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str):
        raise DataError(f"{what} holds a structured array; only plain numeric arrays are read")
    dtype = np.dtype(descr)
    if dtype.kind not in _NPY_KINDS + "U" or dtype.hasobject or dtype.fields or dtype.subdtype:
        raise DataError(f"{what} has dtype {dtype}, which is not a plain numeric array "
                        "(object arrays are never unpickled)")
    if not isinstance(fortran, bool) or not isinstance(shape, tuple) or len(shape) > 8 \
            or not all(type(d) is int and d >= 0 for d in shape):
        raise DataError(f"{what} has a malformed .npy header")
    count = checked_element_count(shape, dtype.itemsize, what)
    nbytes = count * dtype.itemsize
    if max_elements is not None and count > max_elements:
        raise DataError(f"{what} declares shape {shape}: {count} elements, more than the {max_elements} expected")
    if max_bytes is not None and nbytes > max_bytes:
        raise DataError(f"{what} declares shape {shape} of {dtype} ({nbytes} bytes), more than the {max_bytes} "
                        "bytes this reader accepts")
    if dtype.kind == "U" and nbytes > _MAX_UNICODE_BYTES:
        raise DataError(f"{what} holds a {nbytes}-byte string array; only short metadata strings are read")
    data_bytes = total_size - prefix - header_len
    if nbytes != data_bytes:
        raise DataError(f"{what} declares shape {shape} of {dtype} ({nbytes} bytes) but holds "
                        f"{data_bytes} bytes of data (truncated or corrupt)")
    return dtype, shape, fortran, count


def _read_npy_stream(stream, total_size: int, what: str, max_bytes: int | None = None,
                     max_elements: int | None = None) -> np.ndarray:
    dtype, shape, fortran, count = _parse_npy_header(stream, total_size, what, max_bytes, max_elements)
    flat = np.empty(count, dtype=dtype)
    _readinto_exact(stream, flat, f"{what} data")
    array = flat.reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_npy(path: Path, *, where: str = "--data", max_bytes: int | None = None,
             max_elements: int | None = None) -> np.ndarray:
    """Read a .npy file without pickle, checking the declared size against the file size (and the limits) first."""
    def action():
        with open_regular_file(path) as fh:
            return _read_npy_stream(fh, os.fstat(fh.fileno()).st_size, "the array", max_bytes, max_elements)
    return _guard(where, path, action)


class NpzReader:
    """Lazy, bounded reader of a .npz archive: keys() lists arrays, read(key) loads one.

    Each member's declared size is checked against its header, its compression method and
    ratio before anything is allocated; pickled (object) members are refused.
    """

    def __init__(self, path: Path, *, where: str = "--data"):
        self.path, self.where = Path(path), where
        self._file = _guard(where, path, lambda: open_regular_file(self.path))
        self._archive_size = os.fstat(self._file.fileno()).st_size
        try:
            self._zip = _guard(where, path, lambda: zipfile.ZipFile(self._file))
        except DataError:
            self._file.close()
            raise
        try:
            members = _guard(where, path, self._zip.infolist)
        except DataError:
            self.close()
            raise
        self._members = {info.filename[:-4]: info for info in members if info.filename.endswith(".npy")}
        if not self._members:
            self.close()
            raise _fail(where, path, "is a zip archive without .npy arrays, not an .npz file")

    def __enter__(self) -> "NpzReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._zip.close()
        except Exception:  # noqa: BLE001 - closing a damaged archive must not mask the real error
            pass
        self._file.close()

    def keys(self) -> list[str]:
        return list(self._members)

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def declared_size(self, key: str) -> int:
        """The uncompressed size member `key` claims (what read() would inflate), without reading it."""
        info = self._members.get(key)
        if info is None:
            raise _fail(self.where, self.path, f"has no array {key!r} (it holds {', '.join(self._members)})")
        return info.file_size

    def read(self, key: str, *, max_bytes: int | None = None, max_elements: int | None = None) -> np.ndarray:
        info = self._members.get(key)
        if info is None:
            raise _fail(self.where, self.path, f"has no array {key!r} (it holds {', '.join(self._members)})")

        def action():
            if info.compress_size > self._archive_size:
                raise DataError(f"member {info.filename} claims to be larger than the whole archive")
            if info.compress_type == zipfile.ZIP_STORED:
                if info.file_size != info.compress_size:
                    raise DataError(f"member {info.filename} has inconsistent sizes")
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                if info.file_size > info.compress_size * _DEFLATE_MAX_RATIO + 1024:
                    raise DataError(f"member {info.filename} claims an impossible compression ratio")
            else:
                raise DataError(f"member {info.filename} uses compression method {info.compress_type}; "
                                "numpy writes only stored or deflated members")
            with self._zip.open(info) as stream:
                array = _read_npy_stream(stream, info.file_size, f"array {key!r}", max_bytes, max_elements)
                if stream.read(1):
                    raise DataError(f"member {info.filename} has trailing data")
            return array
        return _guard(self.where, self.path, action)


# --------------------------------------------------------------------------- MNIST idx

_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_IMAGES = re.compile(r"^(train|t10k)-images[.-]idx3-ubyte(\.gz)?$")


def read_idx(path: Path, *, where: str = "--data") -> np.ndarray:
    """Read an idx file (gzipped or not), checking the declared dimensions against the data size."""
    def action():
        with open_regular_file(path) as raw:
            file_size = os.fstat(raw.fileno()).st_size
            if raw.read(2) != _GZIP_MAGIC:
                raw.seek(0)
                return _read_idx_stream(raw, file_size, None)
            # ISIZE, the gzip trailer, is the uncompressed length mod 2**32: checking the header
            # against it before allocating stops a corrupt dimension from claiming gigabytes.
            if file_size < 18:
                raise DataError("gzip file is truncated")
            raw.seek(file_size - 4)
            (isize,) = struct.unpack("<I", raw.read(4))
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                array = _read_idx_stream(stream, isize, file_size)
                if stream.read(1):
                    raise DataError("gzip stream holds data after the declared array")
            return array
    return _guard(where, path, action)


def _read_idx_stream(stream, size_or_isize: int, gzip_file_size: int | None) -> np.ndarray:
    magic = _read_exact(stream, 4, "idx header")
    if magic[:2] != b"\x00\x00" or magic[2] not in _IDX_DTYPES or not 1 <= magic[3] <= 4:
        raise DataError(f"not an idx file (magic bytes {magic.hex()})")
    dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
    dims = struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, "idx header"))
    count = checked_element_count(dims, dtype.itemsize, "idx header")
    total = 4 + 4 * ndim + count * dtype.itemsize
    if gzip_file_size is None:
        if total != size_or_isize:
            raise DataError(f"idx header declares {' x '.join(map(str, dims))} {dtype.name} "
                            f"({total} bytes) but the file has {size_or_isize} bytes (truncated or corrupt)")
    elif total % (1 << 32) != size_or_isize or total > gzip_file_size * _DEFLATE_MAX_RATIO + 1024:
        raise DataError(f"idx header declares {' x '.join(map(str, dims))} {dtype.name} ({total} bytes) "
                        "but the gzip stream does not hold that much (truncated or corrupt)")
    flat = np.empty(count, dtype=dtype)
    _readinto_exact(stream, flat, "idx data")
    return flat.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _idx_folder_candidates(folder: Path) -> list[Path]:
    return [folder, folder / "raw"]


def find_idx_images(folder: Path, part: str) -> list[Path]:
    """The idx image files of `part` ('train', 'test' or 'all' = train then test) in `folder` or `folder/raw`."""
    for candidate in _idx_folder_candidates(folder):
        if not candidate.is_dir():
            continue
        found: dict[str, Path] = {}
        for entry in sorted(candidate.iterdir(), key=lambda p: (p.name.endswith(".gz"), p.name)):
            match = _IDX_IMAGES.match(entry.name)
            if match and entry.is_file():
                found.setdefault(match.group(1), entry)  # uncompressed first: it reads faster
        if found:
            wanted = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[part]
            missing = [w for w in wanted if w not in found]
            if missing:
                raise DataError(f"--data {folder}: no {missing[0]}-images-idx3-ubyte[.gz] file for part={part!r}")
            return [found[w] for w in wanted]
    return []


def idx_labels_path(images_path: Path) -> Path | None:
    """The labels file next to an idx images file (train-images-idx3-ubyte -> train-labels-idx1-ubyte)."""
    name = images_path.name
    if "images" not in name or "idx3" not in name:
        return None
    label_name = name.replace("images", "labels").replace("idx3", "idx1")
    for candidate in (label_name, label_name[:-3] if label_name.endswith(".gz") else label_name + ".gz"):
        path = images_path.with_name(candidate)
        if path.is_file():
            return path
    return None


# --------------------------------------------------------------------------- CIFAR batches

_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_LAYOUTS = {
    "cifar-10": {"train": _CIFAR10_TRAIN, "test": ["test_batch"]},
    "cifar-100": {"train": ["train"], "test": ["test"]},
}


def find_cifar_batches(folder: Path, part: str) -> tuple[str, list[Path]] | None:
    """(dataset name, batch files of `part`) for a CIFAR-10/100 python folder or a root holding one."""
    for candidate in (folder, folder / "cifar-10-batches-py", folder / "cifar-100-python"):
        if not candidate.is_dir():
            continue
        if (candidate / "data_batch_1").is_file():
            name = "cifar-10"
        elif (candidate / "train").is_file() and (candidate / "meta").is_file():
            name = "cifar-100"
        else:
            continue
        parts = ["train", "test"] if part == "all" else [part]
        files = [candidate / f for p in parts for f in _CIFAR_LAYOUTS[name][p]]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            # SecMI's indices assume all five training batches in order; a partial set would
            # silently shift them.
            raise DataError(f"--data {candidate}: {name} folder is missing {', '.join(missing)}")
        return name, files
    return None


def read_cifar_batch(path: Path, *, where: str = "--data") -> tuple[np.ndarray, np.ndarray | None]:
    """Read one CIFAR python batch with the restricted unpickler: (raw image array, labels or None).

    The image array is returned as stored (N x 3072 rows, or an N x ... image array written by
    another tool); the caller reshapes and validates it.
    """
    def action():
        with open_regular_file(path) as handle:
            raw = handle.read()
        batch = safe_unpickle(raw)
        if not isinstance(batch, dict):
            raise DataError(f"is a pickle of a {type(batch).__name__}, not a CIFAR batch dict")
        # Original batches are Python 2 pickles (str keys under latin1); re-dumped ones may use bytes keys.
        fields = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
        data = materialize_array(fields.get("data"))
        if data is None:
            raise DataError("is not a CIFAR batch: it has no 'data' array")
        labels = None
        for key in ("labels", "fine_labels"):
            if key in fields:
                labels = materialize_array(fields[key])
                if labels is None or labels.ndim != 1 or labels.dtype.kind not in "iu":
                    raise DataError(f"CIFAR batch field {key!r} is not a list of integers")
                break
        return data, labels
    return _guard(where, path, action)


def cifar_rows_to_nchw(data: np.ndarray, *, where: str, path) -> tuple[np.ndarray, str]:
    """CIFAR rows (N x 3*S*S, channel planes then rows) to N x 3 x S x S; other shapes pass through."""
    if data.ndim != 2:
        return data, ""
    n, row = data.shape
    side = int(round((row / 3) ** 0.5)) if row > 0 else 0
    if side == 0 or 3 * side * side != row:
        raise _fail(where, path, f"CIFAR 'data' rows have {row} values, not 3 x S x S colour planes")
    return data.reshape(n, 3, side, side), "CIFAR rows as 3 colour planes"


# --------------------------------------------------------------------------- image folders

def list_image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted by relative path; hidden entries are skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(root) / name)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


# Pillow modes and the channels each becomes after _decode_image; anything else (16-bit, float,
# CMYK, ...) is refused. Alpha is dropped once it is known to be opaque, and palettes become RGB.
_MODE_CONVERSION = {"1": "L", "L": "L", "P": None, "RGB": "RGB", "RGBA": "RGBA", "LA": "LA", "PA": "RGBA"}
_MODE_CHANNELS = {"1": 1, "L": 1, "LA": 1, "P": 3, "PA": 3, "RGB": 3, "RGBA": 3}
_CHANNEL_WORDS = {1: "grayscale", 3: "colour"}
# Pillow's own guards against images that inflate far beyond their file.
_PNG_TEXT_BOMB = ("Decompressed data too large", "Too much memory used in text chunks")


def _decode_image(image, path: Path) -> np.ndarray:
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


def _image_call(image_module, path: Path, body):
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


def _header(image) -> tuple[int, int, int]:
    """(width, height, channels) from the header alone: Image.open has not decoded any pixel yet."""
    width, height = image.size
    if width * height > _MAX_IMAGE_PIXELS:
        raise DataError(f"declares {width} x {height} pixels, more than the {_MAX_IMAGE_PIXELS} (4096 x 4096) this "
                        "reader decodes (an image far larger than a diffusion model's input, or a decompression "
                        "bomb); it was not decoded")
    channels = _MODE_CHANNELS.get(image.mode)
    if channels is None:
        raise DataError(f"image mode {image.mode!r} is not supported; save 8-bit grayscale, RGB or RGBA images")
    return width, height, channels


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


def _check_expected(shape: tuple[int, int, int], expected, first: Path) -> None:
    if expected is None or tuple(shape) == tuple(expected):
        return
    channels, height, width = shape
    want_c, want_h, want_w = expected
    if channels != want_c:
        have_word, want_word = _CHANNEL_WORDS.get(channels, f"{channels}-channel"), \
            _CHANNEL_WORDS.get(want_c, f"{want_c}-channel")
        fix = f"convert the images to {want_word} ({want_c} channel{'s' if want_c != 1 else ''})"
        what = f"are {have_word} ({channels} channel{'s' if channels != 1 else ''})"
    else:
        fix = f"resize the images to {want_h} x {want_w}"
        what = f"are {height} x {width}"
    raise DataError(f"the images {what}, e.g. {first.name}, but the model expects {_shape_words(expected)} "
                    f"(channels x height x width); {fix}")


def read_image_folder(folder: Path, *, where: str = "--data", expected_shape=None,
                      max_bytes: int | None = None) -> tuple[np.ndarray, list[Path]]:
    """All images under `folder` as uint8 N x C x H x W, in sorted relative-path order.

    Every image must have the same size and the same number of channels (grayscale vs colour
    is never converted silently); palette images become RGB, opaque alpha is dropped. Every
    header is read first, so that a file that is not a regular file (a FIFO named *.png is
    refused, never opened for reading), an image of another size or mode, one that does not
    match `expected_shape` (C, H, W), a decompression bomb, or a folder that would decode to
    more than `max_bytes` (default: half of physical memory) is reported before any pixel is
    decoded.
    """
    files = list_image_files(folder)
    if not files:
        raise _fail(where, folder, f"folder holds no images ({', '.join(IMAGE_SUFFIXES)}) and no "
                                   "known dataset files (.npy, .npz, idx, CIFAR batches)")
    image_module = require_extra("PIL.Image", "images", "reading an image folder")
    reference = None
    for path in files:
        width, height, channels = _guard(where, path, lambda path=path: _image_call(image_module, path, _header))
        if reference is None:
            reference = (width, height, channels)
            _guard(where, folder, lambda: _check_expected((channels, height, width), expected_shape, files[0]))
        elif (width, height) != reference[:2]:
            raise _fail(where, path, f"is {width} x {height} but {files[0].name} is {reference[0]} x "
                                     f"{reference[1]}; all images must have one size")
        elif channels != reference[2]:
            raise _fail(where, path, f"is {_CHANNEL_WORDS[channels]} but {files[0].name} is "
                                     f"{_CHANNEL_WORDS[reference[2]]}; convert all images to one mode")
    width, height, channels = reference
    total = len(files) * channels * height * width
    budget = _decoded_budget() if max_bytes is None else max_bytes
    if total > budget:
        raise _fail(where, folder, f"{len(files)} images of {channels} x {height} x {width} would decode to "
                                   f"{total} bytes, more than the {budget} bytes allowed (half of this "
                                   "machine's memory); pass a smaller folder or a subset")
    images = np.empty((len(files), channels, height, width), np.uint8)
    for index, path in enumerate(files):
        def decode(image, path=path):
            if (image.width, image.height) != (width, height):
                raise DataError("changed while the folder was being read; read it again")
            image.load()
            return _decode_image(image, path)
        pixels = _guard(where, path, lambda path=path, decode=decode: _image_call(image_module, path, decode))
        if pixels.shape[2] != channels:
            raise _fail(where, path, "changed while the folder was being read; read it again")
        images[index] = pixels.transpose(2, 0, 1)
    return images, files


# --------------------------------------------------------------------------- score and array files

def read_array_file(path, *, where: str, max_elements: int | None = None,
                    max_bytes: int = MAX_ARRAY_FILE_BYTES) -> np.ndarray:
    """One numeric array from a .npy file, for score, label and index files, read without pickle.

    The header's declared shape is checked before anything is allocated: it must match the
    file's size exactly, hold at most `max_elements` elements (when given) and `max_bytes`
    bytes. Any other outcome is a DataError that starts with "{where} {path}:".
    """
    return read_npy(Path(path), where=where, max_bytes=max_bytes, max_elements=max_elements)


def read_npz_arrays(path, *, where: str, keys: Iterable[str] | None = None, max_elements: int | None = None,
                    max_bytes: int = MAX_ARRAY_FILE_BYTES) -> dict[str, np.ndarray]:
    """The arrays of a .npz file (all of them, or `keys`) as {name: array}, read without pickle.

    Before a byte is inflated, the members' declared sizes are checked: together at most
    `max_bytes` and at most what deflate can expand the file to (about 1000 times its size);
    each at most `max_elements` elements (when given). A key that is missing, a member that
    inflates beyond what it declared, a pickled (object) member or a damaged archive is a
    DataError that starts with "{where} {path}:".
    """
    path = Path(path)
    with NpzReader(path, where=where) as npz:
        wanted = npz.keys() if keys is None else list(keys)
        declared = sum(npz.declared_size(key) for key in wanted)
        limit = min(max_bytes, npz._archive_size * _DEFLATE_MAX_RATIO + 1024)
        if declared > limit:
            raise _fail(where, path, f"its arrays would inflate to {declared} bytes, more than the {limit} bytes "
                                     "accepted for a file of this size (a zip bomb, or not a score file)")
        return {key: npz.read(key, max_bytes=max_bytes, max_elements=max_elements) for key in wanted}
