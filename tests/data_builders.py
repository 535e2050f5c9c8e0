"""Builders of small data files (idx, npy/npz, CIFAR pickles in Python 2 and 3 form, PNG) and guards shared by the data tests."""
from __future__ import annotations

import contextlib
import io
import pickle
import signal
import struct
import tracemalloc

import numpy as np

from qmia_fast.errors import QmiaError


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file holding `array` (uint8 or the big-endian types the format allows)."""
    codes = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
             np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}
    code = codes[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(compressed: bool = False, **arrays) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def png_bytes(pixels: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def cifar_rows(images_nchw: np.ndarray) -> np.ndarray:
    """N x 3 x S x S uint8 as CIFAR's N x 3072 rows (red plane, green plane, blue plane)."""
    return images_nchw.reshape(len(images_nchw), -1)


def cifar_pickle(images_nchw: np.ndarray, labels, protocol: int = 2, bytes_keys: bool = False,
                 label_key: str = "labels") -> bytes:
    """A CIFAR batch as Python 3 tools write it: pickle of a dict of a numpy array and lists."""
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    batch = {key("batch_label"): "training batch 1 of 5", key(label_key): list(labels),
             key("data"): cifar_rows(images_nchw), key("filenames"): [f"img_{i}.png" for i in range(len(labels))]}
    return pickle.dumps(batch, protocol=protocol)


def py2_cifar_pickle(images_nchw: np.ndarray, labels) -> bytes:
    """A CIFAR batch in the byte form of the official files: a Python 2 cPickle (protocol 2) whose
    strings are py2 str (SHORT_BINSTRING/BINSTRING) and whose array is numpy.core.multiarray._reconstruct."""
    rows = cifar_rows(images_nchw)

    def short_str(text: bytes) -> bytes:
        return b"U" + bytes([len(text)]) + text

    def int_op(value: int) -> bytes:
        if 0 <= value < 256:
            return b"K" + bytes([value])
        if 0 <= value < 65536:
            return b"M" + struct.pack("<H", value)
        return b"J" + struct.pack("<i", value)

    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + int_op(0) + b"\x85" + short_str(b"b")
             + b"\x87R(" + int_op(1) + int_op(rows.shape[0]) + int_op(rows.shape[1]) + b"\x86"
             + b"cnumpy\ndtype\n" + short_str(b"u1") + int_op(0) + int_op(1) + b"\x87R("
             + int_op(3) + short_str(b"|") + b"NNN" + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + int_op(0) + b"tb"
             + b"\x89T" + struct.pack("<I", rows.nbytes) + rows.tobytes() + b"tb")
    label_list = b"](" + b"".join(int_op(int(v)) for v in labels) + b"e"
    return (b"\x80\x02}(" + short_str(b"data") + array + short_str(b"labels") + label_list
            + short_str(b"batch_label") + short_str(b"training batch 1 of 5") + b"u.")


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def bounded(seconds: int = 10, max_bytes: int = 64 << 20):
    """Fail if the body runs longer than `seconds` or allocates more than `max_bytes` at once.

    tracemalloc sees numpy's buffers too, so a reader that trusts a corrupt header and
    allocates what it declares shows up here even when the pages are never touched.
    """
    def on_alarm(signum, frame):
        raise _Timeout(f"reader ran longer than {seconds} s (hang?)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak <= max_bytes, f"reader allocated {peak} bytes at its peak"
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def read_or_qmia_error(read):
    """Run `read`; a QmiaError is an accepted answer, any other exception fails the test."""
    try:
        return read()
    except QmiaError as exc:
        assert str(exc), "errors must carry a message"
        # Readers check declared sizes before allocating; running out of memory on a small
        # corrupt file means one of those checks is missing.
        for symptom in ("not enough memory", "MemoryError", "array is too big", "Maximum allowed dimension"):
            assert symptom not in str(exc), str(exc)
        return exc
