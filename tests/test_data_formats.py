"""Round trips of every data format load_data reads (npy, npz, image folders, idx, CIFAR batches) and their error cases."""
from __future__ import annotations

import gzip
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from qmia_fast.data import loader as data_module
from qmia_fast.data import BUILTIN_DATA, LoadedData, load_data, save_data
from qmia_fast.errors import ConfigError, DataError, InputError, QmiaError
from qmia_fast.data.split import Split

from data_builders import cifar_pickle, idx_bytes, npz_bytes, png_bytes, py2_cifar_pickle

FASHION = Path("/usr/share/datasets/fashion-mnist")
RNG = np.random.default_rng(1234)


def random_images(n=6, c=3, h=5, w=7) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


# --------------------------------------------------------------------------- npy / npz

@pytest.mark.parametrize("layout_name", ["nchw", "nhwc"])
def test_npy_round_trip_both_layouts(tmp_path, layout_name):
    images = random_images()
    stored = images if layout_name == "nchw" else images.transpose(0, 2, 3, 1)
    np.save(tmp_path / "x.npy", stored)
    loaded = load_data(tmp_path / "x.npy")
    got, split = loaded
    assert split is None and got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, images)
    expected = "N x C x H x W" if layout_name == "nchw" else "N x H x W x C"
    assert f"assumed {expected}" in loaded.description
    assert loaded.format == "npy" and isinstance(loaded, LoadedData) and loaded.images is got


def test_npy_grayscale_three_dimensional(tmp_path):
    images = random_images(c=1)
    np.save(tmp_path / "g.npy", images[:, 0])
    got, _ = load_data(str(tmp_path / "g.npy"))
    np.testing.assert_array_equal(got, images)


def test_npy_float_converted_with_rounding(tmp_path):
    values = np.array([0.0, 1.0, 0.5, 1 / 255, 0.499 / 255, 254.5 / 255], dtype=np.float64)
    array = np.tile(values, (2, 1, 1, 1))  # 2 x 1 x 1 x 6 -> N x C x H x W
    np.save(tmp_path / "f.npy", array.astype(np.float32))
    loaded = load_data(tmp_path / "f.npy")
    np.testing.assert_array_equal(loaded.images[0, 0, 0], np.rint(values.astype(np.float32) * 255.0))
    assert "round(x * 255)" in loaded.description


def test_npy_fortran_and_big_endian(tmp_path):
    images = random_images()
    np.save(tmp_path / "fo.npy", np.asfortranarray(images))
    np.testing.assert_array_equal(load_data(tmp_path / "fo.npy").images, images)
    np.save(tmp_path / "be.npy", images.astype(np.float32).astype(">f4") / 255)
    np.testing.assert_array_equal(load_data(tmp_path / "be.npy").images, images)


def test_explicit_layout_overrides_detection(tmp_path):
    array = random_images(n=2, c=3, h=3, w=3)  # both axis 1 and axis 3 have size 3
    np.save(tmp_path / "a.npy", array)
    assert "ambiguous" in load_data(tmp_path / "a.npy").description
    np.testing.assert_array_equal(load_data(tmp_path / "a.npy", layout="nhwc").images, array.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(load_data(tmp_path / "a.npy", layout="NCHW").images, array)


def test_npz_keys_labels_and_embedded_split(tmp_path):
    images = random_images(n=8)
    labels = np.arange(8) % 3
    path = tmp_path / "d.npz"
    (tmp_path / "d.npz").write_bytes(npz_bytes(compressed=True, x=images, labels=labels))
    loaded = load_data(path)
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.labels, labels)
    assert loaded.split is None

    split = Split(members=[0, 1, 2], public=[3, 4], holdout=[5, 6, 7])
    save_data(tmp_path / "own.npz", images, split=split, labels=labels)
    loaded = load_data(tmp_path / "own.npz")
    assert loaded.split == split and "stored in" in loaded.split.source
    np.testing.assert_array_equal(loaded.images, images)

    (tmp_path / "single.npz").write_bytes(npz_bytes(arr_0=images.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(load_data(tmp_path / "single.npz").images, images)


def test_npz_without_clear_image_key(tmp_path):
    (tmp_path / "two.npz").write_bytes(npz_bytes(a=random_images(), b=random_images()))
    with pytest.raises(DataError, match="name it 'images'"):
        load_data(tmp_path / "two.npz")


def test_npz_with_object_array_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, images=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="not a plain numeric array"):
        load_data(path)


def test_npy_with_object_array_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="never unpickled"):
        load_data(path)


# --------------------------------------------------------------------------- pixel validation

@pytest.mark.parametrize("array, message", [
    (np.full((2, 3, 4, 4), np.nan, np.float32), "NaN or Inf"),
    (np.full((2, 3, 4, 4), np.inf, np.float64), "NaN or Inf"),
    (np.full((2, 3, 4, 4), -0.5, np.float32), r"lie in \[0, 1\]"),
    (np.full((2, 3, 4, 4), 255.0, np.float32), r"lie in \[0, 1\]"),
    (np.zeros((2, 3, 4, 4), np.int64), "dtype int64 is not supported"),
    (np.zeros((2, 3, 4, 4), np.uint16), "dtype uint16"),
    (np.zeros((2, 3, 4, 4), np.bool_), "dtype bool"),
    (np.zeros((2, 3, 4, 4), np.complex64), "dtype complex64"),
    (np.zeros((0, 3, 4, 4), np.uint8), "zero images"),
    (np.zeros((2, 3, 0, 4), np.uint8), "zero height or width"),
    (np.zeros((2, 8, 8), np.float32)[0], "4-D array"),
    (np.zeros((1, 2, 3, 3, 4), np.uint8), "5-D"),
    (np.zeros((2, 5, 6, 7), np.uint8), "no channel axis"),
    (np.zeros((32, 32, 3), np.uint8), "one H x W x C image"),
    (np.zeros((2, 4, 4, 4), np.uint8), "not fully opaque"),
])
def test_bad_pixel_arrays_raise_data_error_naming_data(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message) as info:
        load_data(tmp_path / "bad.npy")
    assert "--data" in str(info.value)
    # The same checks guard arrays passed through the Python API, as InputError.
    if array.dtype != object:
        with pytest.raises(InputError, match=message):
            load_data(array)


def test_first_bad_image_is_named(tmp_path):
    array = np.zeros((5, 1, 2, 2), np.float32)
    array[3, 0, 1, 1] = np.nan
    array[4, 0, 0, 0] = 2.0
    np.save(tmp_path / "nan.npy", array)
    with pytest.raises(DataError, match="image 3 contains NaN"):
        load_data(tmp_path / "nan.npy")
    array[3] = 0
    with pytest.raises(InputError, match=r"image 4 spans \[0, 2\]"):
        load_data(array)


def test_opaque_alpha_channel_is_dropped():
    images = random_images(c=3)
    rgba = np.concatenate([images, np.full((len(images), 1, 5, 7), 255, np.uint8)], axis=1)
    loaded = load_data(rgba)
    np.testing.assert_array_equal(loaded.images, images)
    assert "alpha" in loaded.description


# --------------------------------------------------------------------------- image folders

def test_image_folder_round_trip_sorted_recursive(tmp_path):
    pytest.importorskip("PIL")
    images = random_images(n=4, c=3, h=6, w=9)
    names = ["b/img1.png", "a.png", "b/img0.PNG", "c/d/z.png"]
    for name, image in zip(names, images):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(png_bytes(image.transpose(1, 2, 0)))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "._a.png").write_bytes(b"AppleDouble junk")  # hidden: skipped
    loaded = load_data(tmp_path)
    order = sorted(range(4), key=lambda i: names[i])
    np.testing.assert_array_equal(loaded.images, images[order])
    assert [f.relative_to(tmp_path).as_posix() for f in loaded.files] == sorted(names)
    assert loaded.format == "images"


def test_image_folder_modes(tmp_path):
    pytest.importorskip("PIL")
    gray = random_images(n=2, c=1, h=4, w=4)
    for i, image in enumerate(gray):
        (tmp_path / "gray" / f"{i}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "gray" / f"{i}.png").write_bytes(png_bytes(image[0], mode="L"))
    np.testing.assert_array_equal(load_data(tmp_path / "gray").images, gray)

    rgba = np.concatenate([random_images(n=1, c=3, h=4, w=4), np.full((1, 1, 4, 4), 255, np.uint8)], axis=1)
    (tmp_path / "rgba").mkdir()
    (tmp_path / "rgba" / "0.png").write_bytes(png_bytes(rgba[0].transpose(1, 2, 0), mode="RGBA"))
    np.testing.assert_array_equal(load_data(tmp_path / "rgba").images, rgba[:, :3])

    rgba[0, 3, 0, 0] = 10
    (tmp_path / "rgba" / "0.png").write_bytes(png_bytes(rgba[0].transpose(1, 2, 0), mode="RGBA"))
    with pytest.raises(DataError, match="transparent"):
        load_data(tmp_path / "rgba")


def test_image_folder_jpeg(tmp_path):
    pytest.importorskip("PIL")
    image = np.full((8, 8, 3), 128, np.uint8)
    (tmp_path / "a.jpg").write_bytes(png_bytes(image, fmt="JPEG"))
    got = load_data(tmp_path).images
    assert got.shape == (1, 3, 8, 8) and abs(int(got.mean()) - 128) <= 2


def test_image_folder_inconsistent_or_broken(tmp_path):
    pytest.importorskip("PIL")
    (tmp_path / "a.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    (tmp_path / "b.png").write_bytes(png_bytes(np.zeros((4, 5, 3), np.uint8)))
    with pytest.raises(DataError, match="one size"):
        load_data(tmp_path)
    (tmp_path / "b.png").write_bytes(png_bytes(np.zeros((4, 4), np.uint8), mode="L"))
    with pytest.raises(DataError, match="grayscale but a.png is colour"):
        load_data(tmp_path)
    (tmp_path / "b.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8))[:40])
    with pytest.raises(DataError, match="b.png"):
        load_data(tmp_path)
    (tmp_path / "b.png").write_bytes(png_bytes(np.zeros((4, 4), np.uint16)))
    with pytest.raises(DataError, match="mode"):
        load_data(tmp_path)


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(DataError, match="no images"):
        load_data(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "nope.npy")


def test_missing_pillow_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(QmiaError, match=r"pip install '\.\[images\]'"):
        load_data(tmp_path)


# --------------------------------------------------------------------------- MNIST idx

def _write_idx_pair(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool):
    suffix = ".gz" if gz else ""
    opener = gzip.compress if gz else (lambda b: b)
    (folder / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(opener(idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(opener(idx_bytes(labels)))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_file_and_folder_parts(tmp_path, gz):
    train, test = random_images(n=5, c=1, h=4, w=3)[:, 0], random_images(n=3, c=1, h=4, w=3)[:, 0]
    train_labels, test_labels = np.arange(5, dtype=np.uint8), np.arange(3, dtype=np.uint8) + 7
    _write_idx_pair(tmp_path, "train", train, train_labels, gz)
    _write_idx_pair(tmp_path, "t10k", test, test_labels, gz)

    loaded = load_data(tmp_path)
    np.testing.assert_array_equal(loaded.images[:, 0], train)
    np.testing.assert_array_equal(loaded.labels, train_labels)
    assert loaded.format == "idx"
    np.testing.assert_array_equal(load_data(tmp_path, part="test").images[:, 0], test)
    everything = load_data(tmp_path, part="all")
    np.testing.assert_array_equal(everything.images[:, 0], np.concatenate([train, test]))
    np.testing.assert_array_equal(everything.labels, np.concatenate([train_labels, test_labels]))

    file = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    single = load_data(file)
    np.testing.assert_array_equal(single.images[:, 0], test)
    np.testing.assert_array_equal(single.labels, test_labels)


def test_idx_in_raw_subfolder_and_part_errors(tmp_path):
    (tmp_path / "raw").mkdir()
    _write_idx_pair(tmp_path / "raw", "train", random_images(n=2, c=1)[:, 0], np.zeros(2, np.uint8), True)
    assert load_data(tmp_path).images.shape == (2, 1, 5, 7)
    with pytest.raises(DataError, match="t10k"):
        load_data(tmp_path, part="test")
    with pytest.raises(ConfigError, match="--part"):
        load_data(tmp_path, part="validation")


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:-1], "truncated or corrupt"),
    (lambda b: b + b"\x00", "truncated or corrupt"),
    (lambda b: b"\x00\x01" + b[2:], "not an idx file"),
    (lambda b: b[:4] + b"\xff\xff\xff\xff" + b[8:], "truncated or corrupt"),
    (lambda b: b[:3] + b"\x07" + b[4:], "not an idx file"),
    (lambda b: b[:3] + b"\x04" + b[4:], "truncated"),
    (lambda b: b[:2] + b"\x0d" + b[3:], "truncated or corrupt"),
])
def test_idx_corruption(tmp_path, mutate, message):
    good = idx_bytes(random_images(n=3, c=1)[:, 0])
    (tmp_path / "train-images-idx3-ubyte").write_bytes(mutate(good))
    with pytest.raises(DataError, match=message):
        load_data(tmp_path / "train-images-idx3-ubyte")
    (tmp_path / "train-images-idx3-ubyte").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(mutate(good)))
    with pytest.raises(DataError):
        load_data(tmp_path / "train-images-idx3-ubyte.gz")


def test_idx_huge_declared_size_is_refused_before_allocating(tmp_path):
    header = bytes([0, 0, 8, 3]) + (60000).to_bytes(4, "big") + (65535).to_bytes(4, "big") * 2
    (tmp_path / "big-images-idx3-ubyte").write_bytes(header + b"\x00" * 100)
    (tmp_path / "big-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + b"\x00" * 100))
    for name in ("big-images-idx3-ubyte", "big-images-idx3-ubyte.gz"):
        with pytest.raises(DataError, match="declares"):
            load_data(tmp_path / name)


def test_idx_labels_must_match(tmp_path):
    images = random_images(n=3, c=1)[:, 0]
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match="expected 3 labels"):
        load_data(tmp_path)


def test_idx_non_uint8_images_refused(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((2, 3, 3), np.float32)))
    with pytest.raises(DataError, match="uint8 N x H x W"):
        load_data(tmp_path / "train-images-idx3-ubyte")


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist():
    train = load_data(FASHION)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == np.uint8
    assert train.labels.shape == (60000,) and set(np.unique(train.labels)) == set(range(10))
    assert train.labels[0] == 9  # the first training image is an ankle boot
    assert train.images[0].max() == 255 and train.images[0, 0, 0, 0] == 0
    test = load_data(FASHION / "t10k-images-idx3-ubyte.gz")
    assert test.images.shape == (10000, 1, 28, 28) and test.labels[0] == 9


# --------------------------------------------------------------------------- CIFAR batches

def _cifar10_folder(root: Path, per_batch=3, side=4) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = random_images(n=5 * per_batch, c=3, h=side, w=side)
    train_labels = np.arange(5 * per_batch) % 10
    for b in range(5):
        chunk = slice(b * per_batch, (b + 1) * per_batch)
        (folder / f"data_batch_{b + 1}").write_bytes(py2_cifar_pickle(train[chunk], train_labels[chunk]))
    test = random_images(n=2, c=3, h=side, w=side)
    (folder / "test_batch").write_bytes(cifar_pickle(test, [1, 2], protocol=5))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a"] * 10}))
    return train, train_labels, test


def test_py2_style_batch_matches_plain_pickle():
    images = random_images(n=2, c=3, h=4, w=4)
    plain = pickle.loads(py2_cifar_pickle(images, [3, 4]), encoding="latin1")
    np.testing.assert_array_equal(plain["data"], images.reshape(2, -1))


def test_cifar10_folder_official_order(tmp_path):
    train, train_labels, test = _cifar10_folder(tmp_path)
    for folder in (tmp_path, tmp_path / "cifar-10-batches-py"):
        loaded = load_data(folder)
        np.testing.assert_array_equal(loaded.images, train)
        np.testing.assert_array_equal(loaded.labels, train_labels)
        assert loaded.format == "cifar" and "cifar-10 train" in loaded.description
    np.testing.assert_array_equal(load_data(tmp_path, part="test").images, test)
    np.testing.assert_array_equal(load_data(tmp_path, part="all").images, np.concatenate([train, test]))
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        load_data(tmp_path)


def test_cifar100_folder(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = random_images(n=4, c=3, h=4, w=4), random_images(n=2, c=3, h=4, w=4)
    (folder / "train").write_bytes(cifar_pickle(train, [5, 6, 7, 8], protocol=2, bytes_keys=True,
                                                label_key="fine_labels"))
    (folder / "test").write_bytes(cifar_pickle(test, [1, 2], protocol=3, label_key="fine_labels"))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": []}))
    loaded = load_data(tmp_path)
    np.testing.assert_array_equal(loaded.images, train)
    np.testing.assert_array_equal(loaded.labels, [5, 6, 7, 8])
    np.testing.assert_array_equal(load_data(folder, part="test").images, test)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_single_cifar_batch_every_protocol(tmp_path, protocol):
    images = random_images(n=3, c=3, h=4, w=4)
    (tmp_path / "data_batch_1").write_bytes(cifar_pickle(images, [0, 1, 2], protocol=protocol))
    loaded = load_data(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.labels, [0, 1, 2])


def test_cifar_style_batch_with_image_array_and_numpy_labels(tmp_path):
    images = random_images(n=3, c=3, h=6, w=6)
    batch = {"data": images.transpose(0, 2, 3, 1).copy(), "labels": np.array([4, 5, 6])}
    (tmp_path / "batch.pkl").write_bytes(pickle.dumps(batch))
    loaded = load_data(tmp_path / "batch.pkl")
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.labels, [4, 5, 6])


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalsCode:
    def __reduce__(self):
        return eval, ("__import__('os')",)


@pytest.mark.parametrize("payload", ["system", "eval", "nested"])
def test_pickle_that_runs_code_is_refused(tmp_path, payload):
    marker = tmp_path / "marker"
    evil = {"system": _RunsCode(marker), "eval": _EvalsCode(),
            "nested": {"data": np.zeros((1, 12), np.uint8), "labels": [_RunsCode(marker)]}}[payload]
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_data(tmp_path / "data_batch_1")
    assert not marker.exists()


def test_pickle_of_object_array_is_refused(tmp_path):
    batch = {"data": np.array([[1, 2, 3]], dtype=object), "labels": [0]}
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="not a plain numeric type"):
        load_data(tmp_path / "data_batch_1")


def test_cifar_batch_structure_errors(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="not a CIFAR batch dict"):
        load_data(path)
    path.write_bytes(pickle.dumps({"labels": [1]}))
    with pytest.raises(DataError, match="no 'data' array"):
        load_data(path)
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError, match="colour planes"):
        load_data(path)
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 12), np.uint8), "labels": [0, 1, 2]}))
    with pytest.raises(DataError, match="3 labels for 2 images"):
        load_data(path)


# --------------------------------------------------------------------------- dispatch and builtin

def test_builtin_missing_or_present(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "BUILTIN_DATA", tmp_path / "demo_data.npz")
    with pytest.raises(DataError, match="not installed"):
        load_data("builtin")
    images = random_images(n=6)
    save_data(tmp_path / "demo_data.npz", images, split=Split([0, 1], [2, 3], [4, 5], source="demo"))
    loaded = load_data("builtin")
    np.testing.assert_array_equal(loaded.images, images)
    assert loaded.format == "builtin" and loaded.split == Split([0, 1], [2, 3], [4, 5])


def test_loaded_data_pickles():
    loaded = load_data(random_images(), split=Split([0], [1], [2, 3]))
    again = pickle.loads(pickle.dumps(loaded))
    images, split = again
    np.testing.assert_array_equal(images, loaded.images)
    assert split == loaded.split and again.description == loaded.description


def test_builtin_path_constant_points_into_assets():
    assert BUILTIN_DATA.name == "demo_data.npz" and BUILTIN_DATA.parent.name == "assets"


def test_option_errors(tmp_path):
    np.save(tmp_path / "x.npy", random_images())
    with pytest.raises(ConfigError, match="only one"):
        load_data(tmp_path / "x.npy", split="a.npz", members=[1])
    with pytest.raises(ConfigError, match="--format"):
        load_data(tmp_path / "x.npy", fmt="tiff")
    with pytest.raises(ConfigError, match="--part"):
        load_data(tmp_path / "x.npy", part="test")
    with pytest.raises(DataError, match="layout must be one of"):
        load_data(tmp_path / "x.npy", layout="chw")
    with pytest.raises(InputError):
        load_data(12345)
    with pytest.raises(ConfigError, match="--part"):
        load_data(random_images(), part="train")
    with pytest.raises(ConfigError, match="--part"):
        load_data("builtin", part="test")
    (tmp_path / "idx.txt").write_text("1 2 3")
    with pytest.raises(DataError, match="--split or --members"):
        load_data(tmp_path / "idx.txt")
    (tmp_path / "weird.bin").write_bytes(b"hello world")
    with pytest.raises(DataError, match="unrecognised"):
        load_data(tmp_path / "weird.bin")


def test_explicit_format_on_wrong_file(tmp_path):
    np.save(tmp_path / "x.npy", random_images())
    for fmt in ("npz", "idx", "cifar"):
        with pytest.raises(DataError):
            load_data(tmp_path / "x.npy", fmt=fmt)
    (tmp_path / "x.npz").write_bytes(npz_bytes(images=random_images()))
    with pytest.raises(DataError):
        load_data(tmp_path / "x.npz", fmt="npy")


def test_save_data_validates(tmp_path):
    with pytest.raises(InputError):
        save_data(tmp_path / "d.npz", np.zeros((2, 3, 4, 4), np.float32) - 1)
    with pytest.raises(QmiaError, match="out of range"):
        save_data(tmp_path / "d.npz", random_images(n=2), split=Split([0], [1], [2]))
    assert not (tmp_path / "d.npz").exists()


def test_data_module_does_not_import_torch():
    import subprocess

    code = ("import sys; import qmia_fast.data, qmia_fast.data.split, qmia_fast.data.safe_pickle; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
