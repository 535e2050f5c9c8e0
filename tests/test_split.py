"""Split files and builders: SecMI's real CIFAR-10 split, our own split files, member lists, the seeded partition and every consistency check."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qmia_fast.data import load_data
from qmia_fast.errors import ConfigError, SplitError
from qmia_fast.data.split import (
    Split, load_split, partition_nonmembers, read_index_file, save_split, split_from_members, split_from_secmi,
)

SECMI = Path("/work/shared/fixtures/secmi_CIFAR10_train_ratio0.5.npz")
N_CIFAR_TRAIN = 50000


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory) -> Path:
    """50,000 tiny images whose pixels encode their own index, to check indices line up."""
    index = np.arange(N_CIFAR_TRAIN)
    images = np.stack([index % 256, index // 256 % 256, np.zeros_like(index), np.full_like(index, 7)], axis=1)
    path = tmp_path_factory.mktemp("cifar") / "tiny.npy"
    np.save(path, images.astype(np.uint8).reshape(N_CIFAR_TRAIN, 1, 2, 2))
    return path


def _decode(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.int64)
    return flat[:, 0] + 256 * flat[:, 1]


@pytest.mark.skipif(not SECMI.is_file(), reason="SecMI fixture not present")
def test_secmi_cifar10_split_lines_up(tiny_cifar):
    raw = np.load(SECMI)
    images, split = load_data(tiny_cifar, split=SECMI)
    assert images.shape == (N_CIFAR_TRAIN, 1, 2, 2)
    np.testing.assert_array_equal(split.members, raw["mia_train_idxs"])
    np.testing.assert_array_equal(_decode(images[split.members]), raw["mia_train_idxs"])
    assert len(split.public) == len(split.holdout) == 12500
    np.testing.assert_array_equal(np.sort(split.nonmembers), np.sort(raw["mia_eval_idxs"]))
    assert not np.intersect1d(split.public, split.holdout).size
    assert not np.intersect1d(split.members, split.nonmembers).size
    # Seeded and deterministic: same seed same sets, other seed other sets.
    again = load_split(SECMI, N_CIFAR_TRAIN)
    assert again == split
    other = load_split(SECMI, N_CIFAR_TRAIN, seed=1)
    assert not np.array_equal(other.public, split.public)
    np.testing.assert_array_equal(np.sort(other.nonmembers), np.sort(split.nonmembers))
    # Pinned values: the partition is our own splitmix64 ranking, independent of numpy's RNG.
    assert split.public[:5].tolist() == [4, 5, 7, 11, 16]
    assert split.holdout[:5].tolist() == [0, 3, 10, 14, 23]
    assert "SecMI" in split.source and "seed 0" in split.source


@pytest.mark.skipif(not SECMI.is_file(), reason="SecMI fixture not present")
def test_secmi_split_against_wrong_data_size():
    with pytest.raises(SplitError, match=r"out of range for 40000 images.*--data"):
        load_split(SECMI, 40000)


def test_partition_properties():
    nonmembers = np.arange(10, 1010)
    public, holdout = partition_nonmembers(nonmembers, 0.3, seed=5)
    assert len(public) == 300 and len(holdout) == 700
    assert np.array_equal(np.sort(np.concatenate([public, holdout])), nonmembers)
    # Depends on the set, not the order; and an index's side does not depend on the others present.
    shuffled = np.random.default_rng(0).permutation(nonmembers)
    p2, h2 = partition_nonmembers(shuffled, 0.3, seed=5)
    assert np.array_equal(public, p2) and np.array_equal(holdout, h2)
    assert np.all(np.diff(public) > 0) and np.all(np.diff(holdout) > 0)
    # Rounding: floor(f * n + 0.5).
    assert len(partition_nonmembers(np.arange(5), 0.5)[0]) == 3
    assert len(partition_nonmembers(np.arange(2), 0.5)[0]) == 1


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), "half", True])
def test_partition_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="public-fraction"):
        partition_nonmembers(np.arange(10), fraction)


def test_partition_bad_seed_and_too_few():
    with pytest.raises(ConfigError, match="seed"):
        partition_nonmembers(np.arange(10), 0.5, seed=-1)
    with pytest.raises(SplitError, match="non-empty public and holdout"):
        partition_nonmembers(np.arange(1), 0.5)
    with pytest.raises(SplitError, match="non-empty"):
        partition_nonmembers(np.arange(10), 0.01)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_own_split_file_round_trip(tmp_path, suffix):
    split = Split(members=[5, 1, 3], public=[0, 2], holdout=[4, 6, 7], source="unit test")
    save_split(tmp_path / f"s{suffix}", split)
    loaded = load_split(tmp_path / f"s{suffix}", 8)
    assert loaded == split
    np.testing.assert_array_equal(loaded.members, [5, 1, 3])  # order kept as given
    assert loaded.members.dtype == np.int64 and not loaded.members.flags.writeable
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary behind
    if suffix == ".json":
        stored = json.loads((tmp_path / "s.json").read_text())
        assert stored["counts"] == {"members": 3, "public": 2, "holdout": 3}


def test_to_dict_and_summary():
    split = Split([1], [0], [2], source="x", n_images=3)
    assert split.to_dict()["members"] == [1] and split.to_dict()["n_images"] == 3
    assert split.summary() == "1 members, 1 public, 1 holdout (x)"
    assert np.array_equal(split.nonmembers, [0, 2])


def test_save_split_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ConfigError, match=".npz or .json"):
        save_split(tmp_path / "s.csv", Split([0], [1], [2]))


@pytest.mark.parametrize("writer, name", [
    (lambda p, v: np.save(p, np.array(v)), "m.npy"),
    (lambda p, v: p.write_text(json.dumps(v)), "m.json"),
    (lambda p, v: p.write_text(json.dumps({"members": v})), "m2.json"),
    (lambda p, v: p.write_text("# member ids\n" + "\n".join(f"{x},  " for x in v) + "\n"), "m.txt"),
    (lambda p, v: np.savez(p, members=np.array(v)), "m.npz"),
])
def test_members_index_files(tmp_path, writer, name):
    writer(tmp_path / name, [7, 2, 9, 4])
    np.testing.assert_array_equal(read_index_file(tmp_path / name), [7, 2, 9, 4])
    split = split_from_members(tmp_path / name, 12, seed=3)
    np.testing.assert_array_equal(split.members, [7, 2, 9, 4])
    assert sorted(split.public.tolist() + split.holdout.tolist()) == [0, 1, 3, 5, 6, 8, 10, 11]
    assert len(split.public) == 4
    images, through_load = load_data(np.zeros((12, 1, 2, 2), np.uint8), members=tmp_path / name, seed=3)
    assert through_load == split


def test_members_as_array_and_mask():
    split = split_from_members(np.array([0, 3]), 6)
    mask = np.zeros(6, bool)
    mask[[0, 3]] = True
    assert split_from_members(mask, 6) == split
    assert split_from_members([0.0, 3.0], 6) == split


def test_mapping_and_split_objects_through_load_data():
    images = np.zeros((6, 1, 2, 2), np.uint8)
    split = Split([0, 1], [2, 3], [4, 5])
    assert load_data(images, split=split).split == split
    assert load_data(images, split={"members": [0, 1], "public": [2, 3], "holdout": [4, 5]}).split == split
    from_secmi = load_data(images, split={"mia_train_idxs": [0, 1], "mia_eval_idxs": [2, 3, 4, 5]}).split
    np.testing.assert_array_equal(from_secmi.members, [0, 1])
    with pytest.raises(SplitError, match="out of range for 6 images"):
        load_data(images, split=Split([0, 6], [2], [3]))


@pytest.mark.parametrize("arrays, message", [
    ({"members": [0, 1], "public": [2, 2], "holdout": [4]}, r"public\[1\] = 2 repeats public\[0\]"),
    ({"members": [0, 9], "public": [2], "holdout": [4]}, r"members\[1\] = 9 is out of range for 6 images"),
    ({"members": [0, -1], "public": [2], "holdout": [4]}, r"members\[1\] = -1 is out of range"),
    ({"members": [0, 1], "public": [2, 1], "holdout": [4]}, r"public\[1\] = 1 is also in members"),
    ({"members": [0], "public": [2], "holdout": [3, 2]}, r"holdout\[1\] = 2 is also in public"),
    ({"members": [], "public": [2], "holdout": [4]}, "members is empty"),
    ({"members": [0, 1.5], "public": [2], "holdout": [4]}, r"members\[1\] = 1.5 is not an integer"),
    ({"members": ["a"], "public": [2], "holdout": [4]}, "not integer indices"),
    ({"members": [[0, 1]], "public": [2], "holdout": [4]}, "1-D"),
    ({"members": [True, False], "public": [2], "holdout": [4]}, "boolean mask"),
    ({"mia_train_idxs": [0, 1], "mia_eval_idxs": [1, 2]}, r"mia_eval_idxs\[0\] = 1 is also in mia_train_idxs"),
    ({"mia_train_idxs": [0, 0], "mia_eval_idxs": [1, 2]}, r"mia_train_idxs\[1\] = 0 repeats"),
    ({"mia_train_idxs": [0], "mia_eval_idxs": [1]}, "non-empty public and holdout"),
])
@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_split_file_violations_name_file_and_index(tmp_path, arrays, message, suffix):
    path = tmp_path / f"bad{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(arrays))
    else:
        try:
            np.savez(path, **{k: np.array(v) for k, v in arrays.items()})
        except ValueError:
            pytest.skip("not representable as an npz")
    with pytest.raises(SplitError, match=message) as info:
        load_split(path, 6)
    assert str(path) in str(info.value) and "--split" in str(info.value)


def test_split_file_kinds_and_missing(tmp_path):
    with pytest.raises(SplitError, match="no such file"):
        load_split(tmp_path / "none.npz", 5)
    (tmp_path / "x.txt").write_text("1 2")
    with pytest.raises(SplitError, match="unknown split file type"):
        load_split(tmp_path / "x.txt", 5)
    (tmp_path / "other.npz").write_bytes(b"")
    np.savez(tmp_path / "other.npz", foo=np.arange(3))
    with pytest.raises(SplitError, match="neither"):
        load_split(tmp_path / "other.npz", 5)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SplitError, match="must be an object"):
        load_split(tmp_path / "list.json", 5)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SplitError, match="invalid JSON"):
        load_split(tmp_path / "bad.json", 5)
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(SplitError):
        load_split(tmp_path / "deep.json", 5)


def test_index_file_errors(tmp_path):
    (tmp_path / "m.txt").write_text("1 2\n3 x4\n")
    with pytest.raises(SplitError, match="line 2: 'x4' is not an integer"):
        read_index_file(tmp_path / "m.txt")
    (tmp_path / "m.txt").write_text(str(2**70))
    with pytest.raises(SplitError, match="out of range"):
        read_index_file(tmp_path / "m.txt")
    (tmp_path / "m.json").write_text('[1, "2"]')
    with pytest.raises(SplitError, match="list of integers"):
        read_index_file(tmp_path / "m.json")
    np.savez(tmp_path / "m.npz", a=np.arange(2), b=np.arange(2))
    with pytest.raises(SplitError, match="name the member array 'members'"):
        read_index_file(tmp_path / "m.npz")
    (tmp_path / "m.bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SplitError, match="text"):
        read_index_file(tmp_path / "m.bin")
    with pytest.raises(SplitError, match="members is empty"):
        (tmp_path / "empty.txt").write_text("# nothing\n")
        split_from_members(tmp_path / "empty.txt", 5)
    with pytest.raises(SplitError, match="--members"):
        split_from_members([0, 1, 2, 3, 4], 5)


def test_secmi_builder_direct():
    split = split_from_secmi([1, 2], [0, 3, 4, 5], 6, public_fraction=0.25, seed=9)
    assert len(split.public) == 1 and len(split.holdout) == 3 and split.n_images == 6
