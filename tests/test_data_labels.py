"""Class labels per image: from every format that carries them (idx, CIFAR, npz, class sub-folders), from an explicit labels file, and check_labels."""
from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from qmia_fast.data import check_labels, load_data
from qmia_fast.errors import ConfigError, DataError, InputError

from data_builders import cifar_pickle, idx_bytes, npz_bytes, png_bytes

FASHION = Path("/usr/share/datasets/fashion-mnist")
RNG = np.random.default_rng(99)


def _png(path: Path, value: int | None = None, size=(4, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = RNG.integers(0, 256, size=(*size, 3), dtype=np.uint8) if value is None else \
        np.full((*size, 3), value, np.uint8)
    path.write_bytes(png_bytes(pixels))


def _class_folder(root: Path) -> list[str]:
    """dogs/ (2 images), cats/ (2, one nested deeper), empty/ (none): sorted names cats, dogs, empty."""
    names = ["dogs/d1.png", "cats/c0.png", "dogs/d0.png", "cats/deep/c1.png"]
    for name in names:
        _png(root / name)
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()
    _png(root / ".hidden" / "x.png")
    return sorted(names)


# --------------------------------------------------------------------------- labels the formats carry

def test_idx_labels_beside_images(tmp_path):
    images = RNG.integers(0, 256, size=(5, 3, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    loaded = load_data(tmp_path)
    assert loaded.labels.dtype == np.int64 and loaded.labels.tolist() == [3, 1, 4, 1, 5]
    assert "labels: idx labels files" in loaded.description and loaded.class_names is None


def test_idx_without_labels_of_one_part_says_so(tmp_path):
    images = RNG.integers(0, 256, size=(2, 3, 3), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1], np.uint8)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images))
    loaded = load_data(tmp_path, part="all")
    assert loaded.labels is None and "no labels" in loaded.description
    assert load_data(tmp_path, part="train").labels.tolist() == [0, 1]


@pytest.mark.skipif(not (FASHION / "train-labels-idx1-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist_labels_and_an_explicit_file_wins(tmp_path):
    test = load_data(FASHION, part="test")
    assert test.labels.shape == (10000,) and np.bincount(test.labels).tolist() == [1000] * 10
    assert test.labels[:3].tolist() == [9, 2, 1]  # ankle boot, pullover, trouser
    np.save(tmp_path / "l.npy", np.zeros(10000, np.int64))
    assert load_data(FASHION, part="test", labels=tmp_path / "l.npy").labels.max() == 0


@pytest.mark.parametrize("key", ["labels", "fine_labels"])
def test_cifar_batch_labels(tmp_path, key):
    images = RNG.integers(0, 256, size=(3, 3, 4, 4), dtype=np.uint8)
    (tmp_path / "data_batch_1").write_bytes(cifar_pickle(images, [7, 0, 2], label_key=key))
    loaded = load_data(tmp_path / "data_batch_1")
    assert loaded.labels.tolist() == [7, 0, 2] and "labels: the batches' labels" in loaded.description


def test_npz_labels_array(tmp_path):
    images = RNG.integers(0, 256, size=(3, 1, 2, 2), dtype=np.uint8)
    (tmp_path / "d.npz").write_bytes(npz_bytes(images=images, labels=np.array([2, 2, 0], np.int32)))
    loaded = load_data(tmp_path / "d.npz")
    assert loaded.labels.dtype == np.int64 and loaded.labels.tolist() == [2, 2, 0]
    (tmp_path / "bad.npz").write_bytes(npz_bytes(images=images, labels=np.array([2, -1, 0])))
    with pytest.raises(DataError, match=r"bad.npz.*label 1 = -1 is negative"):
        load_data(tmp_path / "bad.npz")


def test_class_subfolders_follow_torchvision_image_folder(tmp_path):
    names = _class_folder(tmp_path)
    loaded = load_data(tmp_path)
    assert list(loaded.file_names) == names
    # torchvision: classes = sorted sub-folder names (empty ones included), label = position.
    assert loaded.class_names == ("cats", "dogs", "empty")
    expected = [{"cats": 0, "dogs": 1}[name.split("/")[0]] for name in names]
    assert loaded.labels.tolist() == expected
    assert "3 classes from sub-folder names (cats, dogs, empty)" in loaded.description


def test_images_at_the_top_level_mean_no_classes(tmp_path):
    _class_folder(tmp_path)
    _png(tmp_path / "loose.png")
    loaded = load_data(tmp_path)
    assert loaded.labels is None and loaded.class_names is None and "labels" not in loaded.description


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(2):
        _png(tmp_path / f"{i}.png")
    loaded = load_data(tmp_path)
    assert loaded.labels is None and loaded.class_names is None


# --------------------------------------------------------------------------- explicit labels files

def _flat(tmp_path, n=4) -> Path:
    folder = tmp_path / "flat"
    for i in range(n):
        _png(folder / f"img_{i}.png")
    return folder


@pytest.mark.parametrize("name, write", [
    ("l.npy", lambda p: np.save(p, np.array([3, 0, 2, 1], np.uint8))),
    ("l.txt", lambda p: p.write_text("# labels\n3\n0, 2\n1\n")),
    ("l.csv", lambda p: p.write_text("3\n0\n2\n1\n")),
    ("l.json", lambda p: p.write_text("[3, 0, 2, 1]")),
    ("l2.json", lambda p: p.write_text('{"labels": [3, 0, 2, 1]}')),
    ("map.json", lambda p: p.write_text(json.dumps({"img_1.png": 0, "img_0.png": 3, "img_3.png": 1,
                                                     "./img_2.png": 2}))),
    ("map.csv", lambda p: p.write_text("file_name,label\nimg_3.png,1\nimg_0.png,3\nimg_2.png,2\nimg_1.png,0\n")),
    ("index.csv", lambda p: p.write_text("index,label\n1,0\n0,3\n3,1\n2,2\n")),
    ("column.csv", lambda p: p.write_text("label\n3\n0\n2\n1\n")),
    ("l.npz", lambda p: np.savez(p, labels=np.array([3, 0, 2, 1]))),
])
def test_labels_file_kinds(tmp_path, name, write):
    folder = _flat(tmp_path)
    write(tmp_path / name)
    loaded = load_data(folder, labels=tmp_path / name)
    assert loaded.labels.dtype == np.int64 and loaded.labels.tolist() == [3, 0, 2, 1]
    assert f"labels from {name}" in loaded.description


def test_explicit_labels_win_over_subfolders_and_arrays_work(tmp_path):
    names = _class_folder(tmp_path / "classes")
    np.save(tmp_path / "l.npy", np.arange(len(names)))
    loaded = load_data(tmp_path / "classes", labels=tmp_path / "l.npy")
    assert loaded.labels.tolist() == list(range(len(names))) and loaded.class_names is None
    images = np.zeros((3, 1, 2, 2), np.uint8)
    assert load_data(images, labels=[1, 0, 1]).labels.tolist() == [1, 0, 1]
    with pytest.raises(InputError, match="2 labels for 3 images"):
        load_data(images, labels=np.array([1, 0]))
    with pytest.raises(InputError, match="label 1 = 'a' is not an integer"):
        load_data(images, labels=[1, "a", 0])


def test_mapping_labels_need_every_image_and_warn_about_strangers(tmp_path):
    folder = _flat(tmp_path)
    (tmp_path / "m.csv").write_text("file_name,label\nimg_0.png,1\nimg_2.png,1\n")
    with pytest.raises(DataError, match=r"m.csv: 2 of 4 images have no label \(e.g. img_1.png, img_3.png\)"):
        load_data(folder, labels=tmp_path / "m.csv")
    rows = "".join(f"img_{i}.png,{i}\n" for i in range(4))
    (tmp_path / "m.csv").write_text("file_name,label\n" + rows + "gone.png,0\nother/x.png,1\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_data(folder, labels=tmp_path / "m.csv")
    assert loaded.labels.tolist() == [0, 1, 2, 3]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "2 row(s) name images that are not among the images" in messages[0]
    assert "gone.png" in messages[0] and "\n" not in messages[0]


def test_mapping_labels_without_an_image_folder(tmp_path):
    (tmp_path / "m.json").write_text('{"a.png": 1}')
    with pytest.raises(DataError, match="not come from an image folder.*key the rows by 'index'"):
        load_data(np.zeros((1, 1, 2, 2), np.uint8), labels=tmp_path / "m.json")


@pytest.mark.parametrize("name, content, message", [
    ("l.txt", "0 1 2", r"holds 3 labels but --data has 4 images"),
    ("l.txt", "0 1 2 3 4", r"holds 5 labels but --data has 4 images"),
    ("l.txt", "0 1 x 3", r"line 1: 'x' is not an integer label"),
    ("l.txt", "0 1 2.5 3", r"'2.5' is not an integer label"),
    ("l.txt", "0 1 -2 3", r"label 2 = -2 is negative"),
    ("l.txt", f"0 1 {2**64} 3", r"label 2 = \d+ is negative or too large"),
    ("l.txt", "", r"holds 0 labels but --data has 4 images"),
    ("l.txt", "0 1 \u00b9 3", r"line 1: '\u00b9' is not an integer label"),  # superscript one: isdigit, not int
    ("l.txt", "0 1 +-2 3", r"line 1: '\+-2' is not an integer label"),
    ("l.csv", "\u00b9\n0\n", r"has no label column \(columns: \u00b9\)"),
    ("l.json", "[0, 1, true, 3]", r"label 2 = 'True' is not an integer"),
    ("l.json", "[0, 1, 2.0, 3]", r"label 2 = '2.0' is not an integer"),
    ("l.json", '[0, 1, "2", 3]', r"label 2 = '2' is not an integer"),
    ("l.json", "{not json", r"is not valid JSON"),
    ("l.json", "7", r"JSON must be a list of integers"),
    ("l.json", '{"img_0.png": 1, "img_0.png": 2}', r"key 'img_0.png' appears twice"),
    ("l.csv", "file_name,label\nimg_0.png,1\nimg_0.png,2\nimg_1.png,0\nimg_2.png,0\nimg_3.png,0\n",
     r"line 3 repeats the label of 'img_0.png' given by line 2"),
    ("l.csv", "file_name,klass\nimg_0.png,1\n", r"has no label column \(columns: file_name, klass\)"),
    ("l.csv", "file_name,label\nimg_0.png\n", r"line 2 has 1 fields but the header has 2"),
    ("l.csv", "index,label\nzero,1\n", r"line 2: index 'zero' is not a whole number"),
    ("l.csv", "file_name,label\n" + "".join(f"img_{i}.png,x\n" for i in range(4)), r"label 0 = 'x' is not an integer"),
])
def test_labels_file_errors_name_the_file(tmp_path, name, content, message):
    folder = _flat(tmp_path)
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_data(folder, labels=tmp_path / name)
    assert str(info.value).startswith(f"--labels {tmp_path / name}") and "\n" not in str(info.value)


def test_labels_npy_and_file_kind_errors(tmp_path):
    folder = _flat(tmp_path)
    np.save(tmp_path / "f.npy", np.arange(4.0))
    with pytest.raises(DataError, match="float64 values, not integers"):
        load_data(folder, labels=tmp_path / "f.npy")
    np.save(tmp_path / "b.npy", np.ones(4, bool))
    with pytest.raises(DataError, match="bool values, not integers"):
        load_data(folder, labels=tmp_path / "b.npy")
    np.save(tmp_path / "2d.npy", np.zeros((2, 2), np.int64))
    with pytest.raises(DataError, match="1-D"):
        load_data(folder, labels=tmp_path / "2d.npy")
    with pytest.raises(DataError, match="no such file"):
        load_data(folder, labels=tmp_path / "none.npy")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe1 2")
    with pytest.raises(DataError, match="not UTF-8"):
        load_data(folder, labels=tmp_path / "bin.txt")
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(DataError, match="a folder, not a regular file"):
        load_data(folder, labels=tmp_path / "dir.txt")


def test_missing_labels_file_is_reported_before_decoding(tmp_path, monkeypatch):
    from qmia_fast.data import image_decode

    folder = _flat(tmp_path)
    monkeypatch.setattr(image_decode, "decode_image", lambda *a: pytest.fail("decoded before checking --labels"))
    with pytest.raises(DataError, match="--labels .*none.csv: no such file"):
        load_data(folder, labels=tmp_path / "none.csv")


def test_oversized_labels_file_is_refused_unread(tmp_path, monkeypatch):
    from qmia_fast.data import labels as labels_module

    folder = _flat(tmp_path)
    monkeypatch.setattr(labels_module, "MAX_LABEL_FILE_BYTES", 16)
    (tmp_path / "big.txt").write_text("0 " * 20)
    with pytest.raises(DataError, match="is 40 bytes, more than the 16 bytes a labels file may have"):
        load_data(folder, labels=tmp_path / "big.txt")


# --------------------------------------------------------------------------- check_labels

def test_check_labels_against_the_model():
    labels = np.array([0, 9, 3, 10, 12])
    with pytest.raises(DataError, match=r"image 3 has label 10, but the model has 10 classes \(labels 0..9\); 2 "):
        check_labels(labels, 10)
    with pytest.raises(DataError, match=r"image 3 \(d.png\) has label 10"):
        check_labels(labels, 10, "--labels l.npy", names=["a.png", "b.png", "c.png", "d.png", "e.png"])
    np.testing.assert_array_equal(check_labels(labels, 13), labels)
    assert check_labels([0, 1], 2).dtype == np.int64
    assert check_labels(np.array([], np.int64), 3).shape == (0,)
    with pytest.raises(DataError, match="no class labels; pass --labels FILE"):
        check_labels(None, 10, "--data x")
    with pytest.raises(DataError, match="negative"):
        check_labels([0, -1], 10)
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ConfigError, match="number of classes"):
            check_labels([0], bad)


def test_loaded_labels_pickle_with_the_new_attributes(tmp_path):
    import pickle

    _class_folder(tmp_path)
    loaded = load_data(tmp_path)
    again = pickle.loads(pickle.dumps(loaded))
    assert again.class_names == loaded.class_names and again.file_names == loaded.file_names
    np.testing.assert_array_equal(again.labels, loaded.labels)
