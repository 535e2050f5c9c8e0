"""Bounded readers for image/index files (npy, npz, MNIST idx, CIFAR batches, image folders) that turn any corruption into DataError."""
from __future__ import annotations

import ast
import gzip
import os
import re
import struct
import zipfile
from pathlib import Path
import numpy as np

from ..errors import DataError, QmiaError, require_extra
from .safe_pickle import checked_element_count, materialize_array, safe_unpickle

__all__ = [
    "sniff_format", "read_npy", "NpzReader", "read_idx", "find_idx_images", "read_cifar_batch",
    "find_cifar_batches", "read_image_folder", "IMAGE_SUFFIXES",
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
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
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

def _parse_npy_header(stream, total_size: int, what: str) -> tuple[np.dtype, tuple, bool, int]:
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
    if dtype.kind == "U" and nbytes > _MAX_UNICODE_BYTES:
        raise DataError(f"{what} holds a {nbytes}-byte string array; only short metadata strings are read")
    data_bytes = total_size - prefix - header_len
    if nbytes != data_bytes:
        raise DataError(f"{what} declares shape {shape} of {dtype} ({nbytes} bytes) but holds "
                        f"{data_bytes} bytes of data (truncated or corrupt)")
    return dtype, shape, fortran, count


def _read_npy_stream(stream, total_size: int, what: str) -> np.ndarray:
    dtype, shape, fortran, count = _parse_npy_header(stream, total_size, what)
    flat = np.empty(count, dtype=dtype)
    _readinto_exact(stream, flat, f"{what} data")
    array = flat.reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_npy(path: Path, *, where: str = "--data") -> np.ndarray:
    """Read a .npy file without pickle, checking the declared size against the file size first."""
    def action():
        with open(path, "rb") as fh:
            return _read_npy_stream(fh, os.fstat(fh.fileno()).st_size, "the array")
    return _guard(where, path, action)


class NpzReader:
    """Lazy, bounded reader of a .npz archive: keys() lists arrays, read(key) loads one.

    Each member's declared size is checked against its header, its compression method and
    ratio before anything is allocated; pickled (object) members are refused.
    """

    def __init__(self, path: Path, *, where: str = "--data"):
        self.path, self.where = Path(path), where
        self._archive_size = _guard(where, path, lambda: self.path.stat().st_size)
        self._zip = _guard(where, path, lambda: zipfile.ZipFile(self.path))
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

    def keys(self) -> list[str]:
        return list(self._members)

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def read(self, key: str) -> np.ndarray:
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
                array = _read_npy_stream(stream, info.file_size, f"array {key!r}")
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
        file_size = path.stat().st_size
        with open(path, "rb") as raw:
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
        batch = safe_unpickle(path.read_bytes())
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


# Pillow modes and the array each becomes; anything else (16-bit, float, CMYK, ...) is refused.
_MODE_CONVERSION = {"1": "L", "L": "L", "P": None, "RGB": "RGB", "RGBA": "RGBA", "LA": "LA", "PA": "RGBA"}


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


def read_image_folder(folder: Path, *, where: str = "--data") -> tuple[np.ndarray, list[Path]]:
    """All images under `folder` as uint8 N x C x H x W, in sorted relative-path order.

    Every image must have the same size and the same number of channels (grayscale vs colour
    is never converted silently); palette images become RGB, opaque alpha is dropped.
    """
    files = list_image_files(folder)
    if not files:
        raise _fail(where, folder, f"folder holds no images ({', '.join(IMAGE_SUFFIXES)}) and no "
                                   "known dataset files (.npy, .npz, idx, CIFAR batches)")
    image_module = require_extra("PIL.Image", "images", "reading an image folder")
    images = None
    reference = None
    for index, path in enumerate(files):
        def decode(path=path):
            with image_module.open(path) as image:
                if image.width * image.height > _MAX_IMAGE_PIXELS:
                    raise DataError(f"is {image.width} x {image.height}, larger than any supported image")
                if reference is not None and image.size != reference[0]:
                    raise DataError(f"is {image.width} x {image.height} but {files[0].name} is "
                                    f"{reference[0][0]} x {reference[0][1]}; all images must have one size")
                image.load()
                return _decode_image(image, path)
        pixels = _guard(where, path, decode)
        if reference is None:
            reference = ((pixels.shape[1], pixels.shape[0]), pixels.shape[2])
            images = np.empty((len(files), pixels.shape[2], pixels.shape[0], pixels.shape[1]), np.uint8)
        elif pixels.shape[2] != reference[1]:
            kind = {1: "grayscale", 3: "colour"}
            raise _fail(where, path, f"is {kind[pixels.shape[2]]} but {files[0].name} is "
                                     f"{kind[reference[1]]}; convert all images to one mode")
        images[index] = pixels.transpose(2, 0, 1)
    return images, files
