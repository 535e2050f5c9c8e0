"""Member and split files that name an image folder's images by relative path, and the warning for index lists against numbered file names."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from qmia_fast.data import Split, load_data, load_split, split_from_members
from qmia_fast.errors import SplitError

from data_builders import png_bytes

# Sorted: cats/img_0, cats/img_10, cats/img_2, dogs/img_1, dogs/img_7
NAMES = ["cats/img_2.png", "cats/img_10.png", "cats/img_0.png", "dogs/img_7.png", "dogs/img_1.png"]
SORTED = sorted(NAMES)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "data"
    for i, name in enumerate(NAMES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png_bytes(np.full((2, 2, 3), i, np.uint8)))
    return root


def _quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_data(*args, **kwargs)


@pytest.mark.parametrize("name, write", [
    ("m.txt", lambda p, v: p.write_text("# members\n" + "\n".join(v) + "\n\n")),
    ("m.json", lambda p, v: p.write_text(json.dumps(v))),
    ("m2.json", lambda p, v: p.write_text(json.dumps({"members": v}))),
    ("m.npy", lambda p, v: np.save(p, np.array(v))),
    ("m.npz", lambda p, v: np.savez(p, members=np.array(v))),
])
def test_members_by_file_name(tmp_path, folder, name, write):
    write(tmp_path / name, ["dogs/img_7.png", "cats/img_2.png"])
    loaded = _quiet_load(folder, members=tmp_path / name)
    assert loaded.split.members.tolist() == [SORTED.index("dogs/img_7.png"), SORTED.index("cats/img_2.png")]
    assert sorted(loaded.split.nonmembers.tolist()) == [0, 1, 3]


def test_names_are_matched_leniently_but_never_rewritten(tmp_path, folder):
    (tmp_path / "m.txt").write_text("./cats/img_0.png\n  dogs\\img_1.png  \n")
    assert _quiet_load(folder, members=tmp_path / "m.txt").split.members.tolist() == [0, 3]


def test_unknown_and_duplicated_names(tmp_path, folder):
    (tmp_path / "m.txt").write_text("cats/img_0.png\nimg_2.png\ncats/img_99.png\nbirds/x.png\nz.png\n")
    with pytest.raises(SplitError, match=r"m.txt: 4 of 5 members names are not images of --data \('img_2.png', "
                                         r"'cats/img_99.png', 'birds/x.png' and 1 more\); names are paths relative "
                                         r"to the --data folder, such as 'cats/img_0.png'"):
        load_data(folder, members=tmp_path / "m.txt")
    (tmp_path / "m.txt").write_text("cats/img_0.png\ndogs/img_1.png\n./cats/img_0.png\n")
    with pytest.raises(SplitError, match=r"members\[2\] = './cats/img_0.png' is the same image as members\[0\]"):
        load_data(folder, members=tmp_path / "m.txt")
    (tmp_path / "m.json").write_text('["cats/img_0.png", 3]')
    with pytest.raises(SplitError, match="JSON must be a list of integers or of file names"):
        load_data(folder, members=tmp_path / "m.json")


def test_names_without_an_image_folder_are_refused(tmp_path):
    (tmp_path / "m.txt").write_text("0\n\u00b9\n")
    with pytest.raises(SplitError, match=r"line 2: '\u00b9' is not an integer index"):
        load_data(np.zeros((4, 1, 2, 2), np.uint8), members=tmp_path / "m.txt")
    (tmp_path / "m.txt").write_text("a.png\n")
    with pytest.raises(SplitError, match=r"line 1: 'a.png' is not an integer index \(file names are accepted only "
                                         r"when --data is an image folder"):
        load_data(np.zeros((4, 1, 2, 2), np.uint8), members=tmp_path / "m.txt")
    (tmp_path / "s.json").write_text(json.dumps({"members": ["a.png"], "public": [1], "holdout": [2]}))
    with pytest.raises(SplitError, match="members lists file names, not integer indices; file names are accepted"):
        load_data(np.zeros((4, 1, 2, 2), np.uint8), split=tmp_path / "s.json")


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_own_split_file_by_file_name(tmp_path, folder, suffix):
    arrays = {"members": ["cats/img_10.png", "dogs/img_1.png"], "public": ["cats/img_0.png"],
              "holdout": ["cats/img_2.png", "dogs/img_7.png"]}
    path = tmp_path / f"s{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(arrays))
    else:
        np.savez(path, **{k: np.array(v) for k, v in arrays.items()})
    split = _quiet_load(folder, split=path).split
    assert split == Split([1, 3], [0], [2, 4])


def test_secmi_split_by_file_name_and_mixed_lists(tmp_path, folder):
    (tmp_path / "s.json").write_text(json.dumps({"members": ["cats/img_0.png", 1], "public": [2], "holdout": [3]}))
    with pytest.raises(SplitError, match="members: the list mixes file names and indices"):
        load_data(folder, split=tmp_path / "s.json")
    np.savez(tmp_path / "secmi.npz", mia_train_idxs=np.array(["dogs/img_7.png"]),
             mia_eval_idxs=np.array([n for n in SORTED if n != "dogs/img_7.png"]))
    split = load_split(tmp_path / "secmi.npz", 5, file_names=SORTED)
    assert split.members.tolist() == [4] and sorted(split.nonmembers.tolist()) == [0, 1, 2, 3]


def test_split_names_errors_name_the_set(tmp_path, folder):
    (tmp_path / "s.json").write_text(json.dumps({"members": ["cats/img_0.png"], "public": ["nope.png"],
                                                 "holdout": ["dogs/img_7.png"]}))
    with pytest.raises(SplitError, match=r"--split .*s.json: 1 of 1 public names are not images of --data"):
        load_data(folder, split=tmp_path / "s.json")
    (tmp_path / "s.json").write_text(json.dumps({"members": ["cats/img_0.png"], "public": ["cats/img_0.png"],
                                                 "holdout": ["dogs/img_7.png"]}))
    with pytest.raises(SplitError, match=r"public\[0\] = 0 is also in members"):
        load_data(folder, split=tmp_path / "s.json")


# --------------------------------------------------------------------------- the numbered-names warning

def _warnings_of(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught]


def test_index_list_against_numbered_names_warns_once(tmp_path, folder):
    (tmp_path / "m.txt").write_text("0 2\n")
    loaded, messages = _warnings_of(lambda: load_data(folder, members=tmp_path / "m.txt"))
    assert loaded.split.members.tolist() == [0, 2]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "indices, which are positions in the image folder's list sorted by relative path" in messages[0]
    assert "(cats/img_10.png sorts before cats/img_2.png)" in messages[0]
    assert "list file names (e.g. cats/img_2.png) instead" in messages[0]
    (tmp_path / "s.json").write_text(json.dumps({"members": [0], "public": [1, 2], "holdout": [3, 4]}))
    _, messages = _warnings_of(lambda: load_data(folder, split=tmp_path / "s.json"))
    assert len(messages) == 1 and messages[0].startswith(f"--split {tmp_path / 's.json'}: holds indices")


@pytest.mark.parametrize("names", [
    ["img_00.png", "img_01.png", "img_10.png"],  # zero-padded: the sort is the numeric order
    ["cat.png", "dog.png", "emu.png"],  # no numbers
    ["a/img_5.png", "b/img_1.png", "b/img_2.png"],  # each folder in order; folders sort by name
    ["shot_2023_01.png", "shot_2023_12.png", "shot_2024_02.png"],  # dates: every number counts
    ["a.png", "a1.png", "a2.png"],  # an unnumbered name is not compared
])
def test_no_warning_where_the_sort_is_numeric(tmp_path, names):
    root = tmp_path / "data"
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png_bytes(np.zeros((2, 2, 3), np.uint8)))
    (tmp_path / "m.txt").write_text("0\n")
    _, messages = _warnings_of(lambda: load_data(root, members=tmp_path / "m.txt"))
    assert messages == []


def test_no_warning_for_names_or_non_folder_data(tmp_path, folder):
    (tmp_path / "m.txt").write_text("cats/img_2.png\n")
    assert _warnings_of(lambda: load_data(folder, members=tmp_path / "m.txt"))[1] == []
    (tmp_path / "i.txt").write_text("0\n")
    assert _warnings_of(lambda: load_data(np.zeros((3, 1, 2, 2), np.uint8), members=tmp_path / "i.txt"))[1] == []
    assert _warnings_of(lambda: split_from_members(np.array([0]), 3))[1] == []
