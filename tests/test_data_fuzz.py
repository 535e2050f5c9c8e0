"""Hypothesis fuzzers: malformed, truncated and mutated data and split files give a QmiaError, never another exception, a hang or a huge allocation."""
from __future__ import annotations

import gzip
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmia_fast.data import load_data
from qmia_fast.data.formats import read_array_file, read_npz_arrays
from qmia_fast.errors import QmiaError
from qmia_fast.data.safe_pickle import safe_unpickle
from qmia_fast.data.split import Split, load_split, read_index_file, save_split

from data_builders import (
    bounded, cifar_pickle, idx_bytes, npy_bytes, npz_bytes, png_bytes, py2_cifar_pickle, read_or_qmia_error,
)

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_RNG = np.random.default_rng(7)
_IMAGES = _RNG.integers(0, 256, size=(3, 3, 4, 4), dtype=np.uint8)

# Valid files of every kind (name, bytes); the fuzzers truncate and mutate them.
VALID = {
    "npy": ("x.npy", npy_bytes(_IMAGES)),
    "npy_float": ("f.npy", npy_bytes(_IMAGES.astype(np.float32) / 255)),
    "npz": ("x.npz", npz_bytes(images=_IMAGES, labels=np.arange(3))),
    "npz_deflated": ("z.npz", npz_bytes(compressed=True, images=_IMAGES, members=np.array([0]),
                                        public=np.array([1]), holdout=np.array([2]))),
    "idx": ("train-images-idx3-ubyte", idx_bytes(_IMAGES[:, 0])),
    "idx_gz": ("train-images-idx3-ubyte.gz", gzip.compress(idx_bytes(_IMAGES[:, 0]))),
    "cifar_py2": ("data_batch_1", py2_cifar_pickle(_IMAGES, [1, 2, 3])),
    "cifar_p2": ("data_batch_2", cifar_pickle(_IMAGES, [1, 2, 3], protocol=2)),
    "cifar_p5": ("data_batch_3", cifar_pickle(_IMAGES, [1, 2, 3], protocol=5)),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _check_result(result) -> None:
    if isinstance(result, QmiaError):
        return
    images, split = result
    assert images.dtype == np.uint8 and images.ndim == 4 and images.flags.c_contiguous
    assert images.shape[0] > 0 and images.shape[1] in (1, 3)
    assert split is None or isinstance(split, Split)


def _load(path: Path, fmt: str = "auto"):
    with bounded():
        result = read_or_qmia_error(lambda: load_data(path, fmt=fmt))
    _check_result(result)
    return result


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@FUZZ
@given(data=st.binary(max_size=3000), name=st.sampled_from([v[0] for v in VALID.values()] + ["blob"]),
       fmt=st.sampled_from(["auto", "npy", "npz", "idx", "cifar"]))
def test_random_bytes(workdir, data, name, fmt):
    _load(_write(workdir, name, data), fmt)


@FUZZ
@given(kind=st.sampled_from(sorted(VALID)), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_valid_files_are_data_errors(workdir, kind, cut):
    name, good = VALID[kind]
    result = _load(_write(workdir, name, good[: int(cut * len(good))]))
    assert isinstance(result, QmiaError), f"truncated {kind} was accepted"


@FUZZ
@given(kind=st.sampled_from(sorted(VALID)),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_valid_files(workdir, kind, edits):
    name, good = VALID[kind]
    mutated = bytearray(good)
    for where, value in edits:
        mutated[int(where * len(mutated))] = value
    _load(_write(workdir, name, bytes(mutated)))


_DIMENSION = st.one_of(st.integers(0, 40), st.integers(0, 70000), st.integers(0, 2**32 - 1))


@FUZZ
@given(code=st.sampled_from([0x08, 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x01]), dims=st.lists(_DIMENSION, max_size=5),
       prefix=st.sampled_from([b"\x00\x00", b"\x00\x01", b"\xff\x00"]), gz=st.booleans(), body=st.binary(max_size=300))
def test_mutated_idx_headers(workdir, code, dims, prefix, gz, body):
    raw = prefix + bytes([code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body
    _load(_write(workdir, "train-images-idx3-ubyte.gz" if gz else "train-images-idx3-ubyte",
                 gzip.compress(raw) if gz else raw))


@FUZZ
@given(shape=st.lists(_DIMENSION, min_size=0, max_size=5),
       descr=st.sampled_from(["|u1", "<f4", ">f8", "<i8", "|b1", "<U4", "|O", "<c8"]),
       body=st.binary(max_size=400), fortran=st.booleans(), in_zip=st.booleans())
def test_npy_headers_with_garbage_bodies(workdir, shape, descr, body, fortran, in_zip):
    header = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}).encode("latin1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    raw = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body
    if in_zip:
        import io
        import zipfile

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("images.npy", raw)
        _load(_write(workdir, "g.npz", buffer.getvalue()))
    else:
        _load(_write(workdir, "g.npy", raw))


_OPCODES = [op.code.encode("latin1") for op in pickletools.opcodes]


@FUZZ
@given(pieces=st.lists(st.one_of(st.sampled_from(_OPCODES), st.binary(max_size=9)), max_size=60))
def test_random_pickle_opcode_streams(pieces):
    stream = b"\x80\x02" + b"".join(pieces) + b"."
    with bounded():
        try:
            safe_unpickle(stream)
        except QmiaError:
            pass


@FUZZ
@given(prefix=st.sampled_from([b"\x80\x02", b"\x80\x05\x95"]), cut=st.integers(0, 200), junk=st.binary(max_size=300))
def test_pickle_prefix_with_garbage(workdir, prefix, cut, junk):
    good = VALID["cifar_p2"][1] if prefix == b"\x80\x02" else VALID["cifar_p5"][1]
    _load(_write(workdir, "data_batch_1", good[:cut] + junk))


@FUZZ
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.floats(0.05, 1))
def test_mutated_png_in_folder(workdir, edits, cut):
    pytest.importorskip("PIL")
    folder = workdir / "png"
    folder.mkdir(exist_ok=True)
    good = png_bytes(_IMAGES[0].transpose(1, 2, 0))
    mutated = bytearray(good[: max(1, int(cut * len(good)))])
    for where, value in edits:
        mutated[int(where * len(mutated))] = value
    (folder / "a.png").write_bytes(good)
    (folder / "b.png").write_bytes(bytes(mutated))
    _load(folder)


# --------------------------------------------------------------------------- split readers

def _valid_split_files(folder: Path) -> dict[str, bytes]:
    split = Split([0, 1], [2, 3], [4, 5], source="fuzz")
    save_split(folder / "s.npz", split)
    save_split(folder / "s.json", split)
    secmi = npz_bytes(mia_train_idxs=np.array([0, 1, 2]), mia_eval_idxs=np.array([3, 4, 5]), ratio=np.array(0.5))
    return {"s.npz": (folder / "s.npz").read_bytes(), "s.json": (folder / "s.json").read_bytes(),
            "secmi.npz": secmi}


@FUZZ
@given(data=st.data())
def test_mutated_and_truncated_split_files(workdir, data):
    valid = _valid_split_files(workdir)
    name = data.draw(st.sampled_from(sorted(valid)))
    good = bytearray(valid[name])
    if data.draw(st.booleans()):
        good = good[: data.draw(st.integers(0, len(good) - 1))]
    elif good:
        for _ in range(data.draw(st.integers(1, 5))):
            good[data.draw(st.integers(0, len(good) - 1))] = data.draw(st.integers(0, 255))
    path = _write(workdir, "m_" + name, bytes(good))
    with bounded():
        result = read_or_qmia_error(lambda: load_split(path, 6))
    assert isinstance(result, (QmiaError, Split))


@FUZZ
@given(data=st.binary(max_size=500), name=st.sampled_from(["i.txt", "i.json", "i.npy", "i.npz", "i"]))
def test_random_index_files(workdir, data, name):
    path = _write(workdir, name, data)
    with bounded():
        read_or_qmia_error(lambda: read_index_file(path))
        read_or_qmia_error(lambda: load_split(path, 10))


_TOKENS = st.one_of(st.integers(-5, 2**70).map(str), st.sampled_from([" ", ",", "\n", "# c\n", "x", "1.5", "\t"]),
                    st.text(max_size=3))


@FUZZ
@given(tokens=st.lists(_TOKENS, max_size=40))
def test_text_index_files(workdir, tokens):
    path = workdir / "t.txt"
    path.write_text("".join(tokens), encoding="utf-8")
    with bounded():
        result = read_or_qmia_error(lambda: read_index_file(path))
    if not isinstance(result, QmiaError):
        assert result.dtype == np.int64 and result.ndim == 1


# --------------------------------------------------------------------------- score-file readers

_SCORE_FILES = {
    "s.npz": npz_bytes(compressed=True, scores=np.linspace(0, 1, 50), labels=np.arange(50) % 2),
    "s.npy": npy_bytes(np.linspace(0, 1, 50)),
}


@FUZZ
@given(name=st.sampled_from(sorted(_SCORE_FILES)), cut=st.floats(0.05, 1),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6))
def test_mutated_score_files_give_arrays_or_data_errors(workdir, name, cut, edits):
    good = _SCORE_FILES[name]
    mutated = bytearray(good[: max(1, int(cut * len(good)))])
    for where, value in edits:
        mutated[int(where * len(mutated))] = value
    path = _write(workdir, "score_" + name, bytes(mutated))
    with bounded(max_bytes=16 << 20):
        if name.endswith(".npz"):
            result = read_or_qmia_error(lambda: read_npz_arrays(path, where="scores", max_bytes=1 << 20))
        else:
            result = read_or_qmia_error(lambda: read_array_file(path, where="scores", max_bytes=1 << 20))
    assert isinstance(result, (QmiaError, dict, np.ndarray))


# --------------------------------------------------------------------------- captions, labels and name lists

_FOLDER_NAMES = ["a.png", "sub/b.png", "sub/c 1.png"]


def _image_folder(workdir: Path) -> Path:
    """A three-image folder, built once per module; the fuzzers write its metadata and list files."""
    folder = workdir / "conditions"
    if not (folder / _FOLDER_NAMES[-1]).is_file():
        pytest.importorskip("PIL")
        for i, name in enumerate(_FOLDER_NAMES):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(png_bytes(_IMAGES[i].transpose(1, 2, 0)))
    for stale in ("metadata.jsonl", "metadata.csv"):
        (folder / stale).unlink(missing_ok=True)
    return folder


def _load_conditions(folder: Path, **kwargs):
    import warnings

    with bounded(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = read_or_qmia_error(lambda: load_data(folder, **kwargs))
    _check_result(result)
    if not isinstance(result, QmiaError):
        n = len(result.images)
        assert result.labels is None or (result.labels.dtype == np.int64 and result.labels.shape == (n,)
                                         and (result.labels >= 0).all())
        assert result.captions is None or (len(result.captions) == n
                                           and all(isinstance(c, str) for c in result.captions))
    return result


_CELL = st.one_of(st.sampled_from(_FOLDER_NAMES + ["./a.png", "missing.png", "", "0", "1", "-1", "2", "x"]),
                  st.text(max_size=6))
_JSON_VALUE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 2**65), st.floats(allow_nan=True),
                                     _CELL), lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@FUZZ
@given(rows=st.lists(st.dictionaries(st.sampled_from(["file_name", "index", "text", "caption", "x"]), _JSON_VALUE,
                                     max_size=4), max_size=5),
       junk=st.sampled_from(["", "\n", "\n\n[1]\n", "\n{bad", "\ufeff", "\u2028"]))
def test_metadata_jsonl_rows(workdir, rows, junk):
    import json

    folder = _image_folder(workdir)
    text = "\n".join(json.dumps(row) for row in rows) + junk
    (folder / "metadata.jsonl").write_text(text, encoding="utf-8")
    _load_conditions(folder)
    _load_conditions(folder, caption_column="caption")


@FUZZ
@given(header=st.lists(st.sampled_from(["file_name", "index", "text", "label", "x", ""]), max_size=4),
       rows=st.lists(st.lists(_CELL, max_size=4), max_size=5),
       tail=st.sampled_from(["", "\n", '"', "\r\n", "\x00", ",,\n"]))
def test_metadata_csv_rows(workdir, header, rows, tail):
    import csv
    import io

    folder = _image_folder(workdir)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    (folder / "metadata.csv").write_text(buffer.getvalue() + tail, encoding="utf-8")
    _load_conditions(folder)
    _load_conditions(folder, captions=folder / "metadata.csv")
    _load_conditions(folder, labels=folder / "metadata.csv")


@FUZZ
@given(data=st.binary(max_size=400), name=st.sampled_from(["metadata.jsonl", "metadata.csv"]))
def test_metadata_random_bytes(workdir, data, name):
    folder = _image_folder(workdir)
    (folder / name).write_bytes(data)
    _load_conditions(folder)


@FUZZ
@given(data=st.binary(max_size=500), name=st.sampled_from(["l.txt", "l.csv", "l.json", "l.npy", "l.npz", "l"]))
def test_random_labels_files(workdir, data, name):
    folder = _image_folder(workdir)
    path = _write(workdir, name, data)
    _load_conditions(folder, labels=path)


@FUZZ
@given(value=_JSON_VALUE | st.dictionaries(_CELL, _JSON_VALUE, max_size=4))
def test_json_labels_files(workdir, value):
    import json

    folder = _image_folder(workdir)
    path = workdir / "labels.json"
    path.write_text(json.dumps(value), encoding="utf-8")
    _load_conditions(folder, labels=path)


@FUZZ
@given(lines=st.lists(_CELL | st.sampled_from(["# c", "  sub/b.png  ", "sub\\b.png", "1 2", "3"]), max_size=6),
       kind=st.sampled_from(["txt", "json", "npy", "split.json", "split.npz"]))
def test_file_name_member_and_split_lists(workdir, lines, kind):
    import json

    folder = _image_folder(workdir)
    if kind == "txt":
        path = workdir / "names.txt"
        path.write_text("\n".join(lines), encoding="utf-8")
    elif kind == "json":
        path = workdir / "names.json"
        path.write_text(json.dumps(lines), encoding="utf-8")
    elif kind == "npy":
        path = workdir / "names.npy"
        np.save(path, np.array(lines, dtype=str))
    elif kind == "split.json":
        path = workdir / "split_names.json"
        path.write_text(json.dumps({"members": lines[:2], "public": lines[2:4], "holdout": lines[4:]}))
    else:
        path = workdir / "split_names.npz"
        np.savez(path, members=np.array(lines[:2], dtype=str), public=np.array(lines[2:4], dtype=str),
                 holdout=np.array(lines[4:], dtype=str))
    option = "split" if kind.startswith("split") else "members"
    result = _load_conditions(folder, **{option: path})
    if not isinstance(result, QmiaError):
        assert isinstance(result.split, Split)
