"""Captions per image: metadata.jsonl / metadata.csv in an image folder (the Hugging Face convention), an explicit captions file, and every error case."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from qmia_fast.data import load_data, read_captions
from qmia_fast.errors import ConfigError, DataError, InputError

from data_builders import png_bytes

NAMES = ["b.png", "a.png", "sub/c.png"]
CAPTIONS = {"b.png": "a dog", "a.png": "", "sub/c.png": "ein Bär, \"quoted\"\nsecond line \u2028 sep"}


def _folder(root: Path, names=NAMES) -> Path:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png_bytes(np.full((4, 4, 3), i * 40, np.uint8)))
    return root


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _csv(path: Path, header, rows) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _sorted_captions():
    return [CAPTIONS[name] for name in sorted(NAMES)]


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_folder_metadata_file_gives_captions_in_index_order(tmp_path, kind):
    folder = _folder(tmp_path / "f")
    if kind == "jsonl":
        _jsonl(folder / "metadata.jsonl", [{"file_name": n, "text": CAPTIONS[n], "extra": 1} for n in NAMES])
    else:
        _csv(folder / "metadata.csv", ["file_name", "text"], [[n, CAPTIONS[n]] for n in NAMES])
    loaded = load_data(folder)
    assert loaded.captions == _sorted_captions()
    assert len(loaded.images) == 3, "the metadata file must not be taken for an image"
    assert f"captions from metadata.{kind} ('text')" in loaded.description


def test_caption_column_and_explicit_file_wins(tmp_path):
    folder = _folder(tmp_path / "f")
    _jsonl(folder / "metadata.jsonl", [{"file_name": n, "text": "folder", "prompt": n.upper()} for n in NAMES])
    assert load_data(folder, caption_column="prompt").captions == [n.upper() for n in sorted(NAMES)]
    explicit = _csv(tmp_path / "caps.csv", ["index", "text"], [[2, "two"], [0, "zero"], [1, "one"]])
    loaded = load_data(folder, captions=explicit)
    assert loaded.captions == ["zero", "one", "two"] and "captions from caps.csv" in loaded.description


def test_index_keyed_captions_for_arrays(tmp_path):
    images = np.zeros((2, 1, 2, 2), np.uint8)
    path = _jsonl(tmp_path / "c.jsonl", [{"index": 1, "text": "second"}, {"index": 0, "text": "first"}])
    assert load_data(images, captions=path).captions == ["first", "second"]
    assert load_data(images, captions=["x", ""]).captions == ["x", ""]
    with pytest.raises(InputError, match="1 captions for 2 images"):
        load_data(images, captions=["x"])
    with pytest.raises(InputError, match="caption 1 is int"):
        load_data(images, captions=["x", 3])
    file_keyed = _jsonl(tmp_path / "f.jsonl", [{"file_name": "a.png", "text": "t"}])
    with pytest.raises(DataError, match="keyed by file_name, but the images do not come from an image folder"):
        load_data(images, captions=file_keyed)


def test_folder_without_captions_and_metadata_without_text(tmp_path):
    folder = _folder(tmp_path / "f")
    assert load_data(folder).captions is None
    with pytest.raises(ConfigError, match="--caption-column was given but there are no captions"):
        load_data(folder, caption_column="text")
    _csv(folder / "metadata.csv", ["file_name", "label"], [[n, 1] for n in NAMES])
    loaded = load_data(folder)
    assert loaded.captions is None and "metadata.csv has no 'text' column (columns: file_name, label)" in \
        loaded.description
    with pytest.raises(DataError, match=r"has no caption column 'text' \(columns: file_name, label\)"):
        load_data(folder, caption_column="text")


def test_image_without_caption_names_the_first_few(tmp_path):
    names = [f"img_{i}.png" for i in range(6)]
    folder = _folder(tmp_path / "f", names)
    _jsonl(folder / "metadata.jsonl", [{"file_name": "img_2.png", "text": "x"}])
    with pytest.raises(DataError, match=r"metadata.jsonl: 5 of 6 images have no caption \(e.g. img_0.png, img_1.png, "
                                        r"img_3.png and 2 more\); add a row with file_name and text"):
        load_data(folder)


def test_rows_for_unknown_files_are_one_counted_warning(tmp_path):
    folder = _folder(tmp_path / "f")
    rows = [{"file_name": f"./{n}", "text": CAPTIONS[n]} for n in NAMES]
    rows += [{"file_name": "gone.png", "text": "x"}, {"file_name": "../f/a.png", "text": "y"}]
    _jsonl(folder / "metadata.jsonl", rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_data(folder)
    assert loaded.captions == _sorted_captions()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "2 row(s) name images that are not among the images" in messages[0]
    assert "(first: gone.png)" in messages[0]
    _jsonl(folder / "metadata.jsonl", rows[:3] + [{"file_name": "two\nlines.png", "text": "x"}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_data(folder)
    assert len(caught) == 1 and "\n" not in str(caught[0].message) and "two\\nlines.png" in str(caught[0].message)


@pytest.mark.parametrize("content, message", [
    ('{"file_name": "a.png", "text": "x"}\n{"file_name": "a.png", "text": "y"}\n',
     r"line 2 repeats the caption of 'a.png' given by line 1; keep one row per image"),
    ('{"path": "a.png", "text": "x"}\n', r"has no 'file_name' or 'index' column \(columns: path, text\)"),
    ('{"file_name": "a.png", "text": 5}\n', r"line 1: the 'text' caption is int '5', not a string"),
    ('{"file_name": "a.png", "text": null}\n', r"line 1: the 'text' caption is NoneType"),
    ('{"file_name": "a.png", "text": ["x"]}\n', r"line 1: the 'text' caption is list"),
    ('{"file_name": 3, "text": "x"}\n', r"line 1: file_name '3' is not a string"),
    ('{"file_name": "a.png", "text": "x"}\n{"file_name": "b.png"}\n', r"line 2 has no 'text' caption"),
    ('{"file_name": "a.png", "text": "x"}\n{"text": "y"}\n', r"line 2 has no 'file_name'"),
    ('{"file_name": "a.png", "text": "x"}\n[1, 2]\n', r"line 2 is a JSON list, not an object"),
    ('{"file_name": "a.png", "text": "x"\n', r"line 1: is not valid JSON"),
    ('{"file_name": "a.png", "file_name": "b.png", "text": "x"}\n', r"line 1: key 'file_name' appears twice"),
    ('[' * 5000 + ']' * 5000 + '\n', r"line 1: JSON is nested too deeply|line 1 is a JSON list"),
])
def test_jsonl_errors_are_one_line_and_name_the_file(tmp_path, content, message):
    folder = _folder(tmp_path / "f")
    (folder / "metadata.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_data(folder)
    assert str(info.value).startswith(f"--data {folder / 'metadata.jsonl'}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content, message", [
    ("file_name,text\na.png,x\nb.png\n", r"line 3 has 1 fields but the header has 2"),
    ("file_name,text,text\na.png,x,y\n", r"header names column 'text' twice"),
    ("", r"is empty; a CSV file needs a header row"),
    ('file_name,text\na.png,"unclosed\n', r"not valid CSV"),
    ("file_name,text\na.png,x\na.png,y\n", r"line 3 repeats the caption of 'a.png' given by line 2"),
])
def test_csv_errors(tmp_path, content, message):
    folder = _folder(tmp_path / "f")
    (folder / "metadata.csv").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_data(folder)
    assert "\n" not in str(info.value)


def test_file_level_errors(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "f")
    (folder / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "\xff"}\n')
    with pytest.raises(DataError, match=r"is not UTF-8 text \(byte 32, line 1\)"):
        load_data(folder)
    (folder / "metadata.csv").write_text("file_name,text\n")
    with pytest.raises(DataError, match="holds both metadata.jsonl and metadata.csv"):
        load_data(folder)
    os.remove(folder / "metadata.csv")
    os.remove(folder / "metadata.jsonl")
    os.mkfifo(folder / "metadata.jsonl")
    with pytest.raises(DataError, match="FIFO"):
        load_data(folder)
    os.remove(folder / "metadata.jsonl")
    (folder / "metadata.jsonl").mkdir()
    with pytest.raises(DataError, match="a folder, not a regular file"):
        load_data(folder)
    os.rmdir(folder / "metadata.jsonl")
    from qmia_fast.data import captions as captions_module

    monkeypatch.setattr(captions_module, "MAX_CAPTION_FILE_BYTES", 64)
    _jsonl(folder / "metadata.jsonl", [{"file_name": n, "text": "x" * 40} for n in NAMES])
    with pytest.raises(DataError, match="more than the 64 bytes a captions file may have"):
        load_data(folder)
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(DataError, match=r"--captions .*c.json: captions must be a .jsonl"):
        load_data(folder, captions=tmp_path / "c.json")
    with pytest.raises(DataError, match=r"--captions .*none.jsonl: no such file"):
        load_data(folder, captions=tmp_path / "none.jsonl")
    with pytest.raises(ConfigError, match="--caption-column must be the name of a column"):
        load_data(folder, caption_column="  ")


def test_read_captions_directly(tmp_path):
    path = _csv(tmp_path / "c.csv", ["file_name", "caption"], [["x/a.png", "A"], ["b.png", "B"]])
    captions, note = read_captions(path, n_images=2, file_names=["b.png", "x/a.png"], caption_column="caption")
    assert captions == ["B", "A"] and "c.csv" in note
    with pytest.raises(DataError, match=r"c.csv: has no caption column 'text' \(columns: file_name, caption\); pass "
                                        "--caption-column"):
        load_data(_folder(tmp_path / "f"), captions=path)
    empty = _csv(tmp_path / "e.csv", ["index", "text"], [])
    with pytest.raises(DataError, match="2 of 2 images have no caption"):
        read_captions(empty, n_images=2, file_names=None)


def test_conditions_are_checked_before_any_image_is_opened(tmp_path, monkeypatch):
    from qmia_fast.data import image_folder

    folder = _folder(tmp_path / "f")
    monkeypatch.setattr(image_folder, "read_header", lambda *a: pytest.fail("an image was opened first"))
    _jsonl(folder / "metadata.jsonl", [{"file_name": "a.png", "text": "x"}])
    with pytest.raises(DataError, match="2 of 3 images have no caption"):
        load_data(folder)
    (folder / "metadata.jsonl").unlink()
    (tmp_path / "m.txt").write_text("nope.png\n")
    with pytest.raises(DataError, match="1 of 1 members names are not images"):
        load_data(folder, members=tmp_path / "m.txt")
    (tmp_path / "l.txt").write_text("1 2\n")
    with pytest.raises(DataError, match="holds 2 labels but --data has 3 images"):
        load_data(folder, labels=tmp_path / "l.txt")
    with pytest.raises(pytest.fail.Exception, match="an image was opened first"):
        load_data(folder)  # the guard itself works
