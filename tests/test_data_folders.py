"""Image folders: symbolic links followed at stable indices with a loop guard, animated images, and --resolution's resize + centre crop checked against PIL."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from qmia_fast.data import load_data
from qmia_fast.data.image_decode import resize_center_crop, resized_size
from qmia_fast.errors import ConfigError, DataError

from data_builders import png_bytes

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

RNG = np.random.default_rng(5)


def _png(path: Path, pixels: np.ndarray | None = None, size=(4, 6)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        pixels = RNG.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    path.write_bytes(png_bytes(pixels))
    return pixels


# --------------------------------------------------------------------------- symbolic links

def test_symlinked_subfolder_images_sit_where_their_relative_paths_sort(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "elsewhere" / "real"
    pixels = {name: _png(data / name) for name in ["a.png", "m/x.png", "z.png"]}
    for name in ["b0.png", "b1.png", "deep/b2.png"]:
        pixels["linked/" + name] = _png(outside / name)
    os.symlink(outside, data / "linked")
    file_target = tmp_path / "one.png"
    pixels["l_file.png"] = _png(file_target)
    os.symlink(file_target, data / "l_file.png")
    loaded = load_data(data)
    expected = sorted(pixels)
    assert list(loaded.file_names) == expected
    assert expected.index("linked/b0.png") == 2  # after a.png and l_file.png, before m/x.png: not dropped
    for index, name in enumerate(expected):
        np.testing.assert_array_equal(loaded.images[index], pixels[name].transpose(2, 0, 1))
    assert [Path(f).relative_to(data).as_posix() for f in loaded.files] == expected


def test_two_links_to_one_folder_give_both_copies(tmp_path):
    data, shared = tmp_path / "data", tmp_path / "shared"
    _png(shared / "s.png")
    data.mkdir()
    os.symlink(shared, data / "one")
    os.symlink(shared, data / "two")
    assert load_data(data).file_names == ("one/s.png", "two/s.png")


@pytest.mark.parametrize("target", ["self", "parent", "ancestor", "root"])
def test_link_loops_are_refused_naming_the_link(tmp_path, target):
    data = tmp_path / "data"
    _png(data / "sub" / "deep" / "a.png")
    point_at = {"self": data / "sub" / "deep", "parent": data / "sub", "ancestor": data, "root": tmp_path}[target]
    os.symlink(point_at, data / "sub" / "deep" / "back")
    with pytest.raises(DataError, match=r"sub/deep/back is a symbolic link to .*a folder that contains the link "
                                        r"\(a loop\)") as info:
        load_data(data)
    assert "\n" not in str(info.value)


def test_loop_through_two_links_is_refused(tmp_path):
    data, a, b = tmp_path / "data", tmp_path / "a", tmp_path / "b"
    _png(data / "x.png")
    a.mkdir()
    b.mkdir()
    os.symlink(b, a / "to_b")
    os.symlink(a, b / "to_a")
    os.symlink(a, data / "a")
    with pytest.raises(DataError, match=r"a/to_b/to_a is a symbolic link"):
        load_data(data)


def test_broken_link_with_an_image_name_is_reported_not_skipped(tmp_path):
    data = tmp_path / "data"
    _png(data / "a.png")
    os.symlink(tmp_path / "missing.png", data / "b.png")
    with pytest.raises(DataError, match=r"b.png"):
        load_data(data)


def test_hidden_links_are_skipped_and_the_metadata_file_is_not_an_image(tmp_path):
    data = tmp_path / "data"
    _png(data / "a.png")
    os.symlink(data, data / ".loop")  # hidden, so never followed
    (data / "metadata.csv").write_text("file_name,label\na.png,1\n")
    assert load_data(data).file_names == ("a.png",)


# --------------------------------------------------------------------------- animated images and GIF

def _frames(values, size=(6, 5)):
    return [Image.fromarray(np.full((*size, 3), v, np.uint8)) for v in values]


def test_animated_images_warn_once_and_give_the_first_frame(tmp_path):
    data = tmp_path / "data"
    still = _png(data / "c.png", size=(6, 5))
    first, *rest = _frames([30, 200, 90])
    first.save(data / "a.png", save_all=True, append_images=rest)  # APNG
    first.save(data / "b.gif", save_all=True, append_images=rest)
    first.save(data / "d.webp", save_all=True, append_images=rest, lossless=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_data(data)
    assert loaded.file_names == ("a.png", "b.gif", "c.png", "d.webp")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "3 image(s) are animated (several frames), e.g. a.png" in messages[0]
    assert "only the first frame" in messages[0] and "\n" not in messages[0]
    for index in (0, 1, 3):
        assert (loaded.images[index] == 30).all()
    np.testing.assert_array_equal(loaded.images[2], still.transpose(2, 0, 1))


def test_still_gif_is_read_without_a_warning(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _frames([77])[0].save(data / "a.gif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_data(data)
    assert loaded.images.shape == (1, 3, 6, 5) and (loaded.images == 77).all()


# --------------------------------------------------------------------------- resize and centre crop

def _pil_reference(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """torchvision's Resize(R, BILINEAR) + CenterCrop(R) written out with PIL calls, from its source."""
    height, width = pixels.shape[:2]
    image = Image.fromarray(pixels)
    if width <= height:
        size = (resolution, int(resolution * height / width))
    else:
        size = (int(resolution * width / height), resolution)
    if size != (width, height):
        image = image.resize(size, Image.BILINEAR)
    left = int(round((size[0] - resolution) / 2.0))
    top = int(round((size[1] - resolution) / 2.0))
    return np.asarray(image.crop((left, top, left + resolution, top + resolution)))


@pytest.mark.parametrize("width, height, resolution", [
    (40, 30, 16), (30, 40, 16), (17, 51, 8), (64, 64, 32), (9, 7, 7), (5, 3, 12), (100, 33, 33), (3, 300, 2),
])
def test_resize_center_crop_matches_pil(width, height, resolution):
    pixels = RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    ours = resize_center_crop(Image, pixels, resolution)
    assert ours.shape == (resolution, resolution, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, _pil_reference(pixels, resolution))


def test_resized_size_is_torchvisions_arithmetic():
    assert resized_size(40, 30, 16) == (21, 16)  # int(16 * 40 / 30) = 21, truncated
    assert resized_size(30, 40, 16) == (16, 21)
    assert resized_size(10, 10, 4) == (4, 4)
    assert resized_size(3, 1000, 5) == (5, 1666)


def test_downscale_is_antialiased_not_sampled():
    # A 1-pixel checkerboard averaged by an antialiased filter is flat grey; point sampling keeps 0/255.
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = resize_center_crop(Image, np.repeat(board[:, :, None], 3, axis=2), 8)
    assert 100 <= out.min() and out.max() <= 155


def test_identity_when_already_at_the_resolution():
    pixels = RNG.integers(0, 256, size=(8, 8, 1), dtype=np.uint8)
    np.testing.assert_array_equal(resize_center_crop(Image, pixels, 8), pixels)


def test_resolution_through_load_data_allows_mixed_sizes(tmp_path):
    data = tmp_path / "data"
    sources = {"a.png": _png(data / "a.png", size=(30, 40)), "b.png": _png(data / "b.png", size=(50, 20)),
               "c.png": _png(data / "c.png", size=(16, 16))}
    with pytest.raises(DataError, match="all images must have one size .*--resolution"):
        load_data(data)
    loaded = load_data(data, resolution=16)
    assert loaded.images.shape == (3, 3, 16, 16)
    for index, name in enumerate(sorted(sources)):
        np.testing.assert_array_equal(loaded.images[index], _pil_reference(sources[name], 16).transpose(2, 0, 1))
    assert "centre-cropped to 16 x 16" in loaded.description


def test_resolution_on_grayscale_palette_and_alpha(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    gray = RNG.integers(0, 256, size=(12, 20), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(data / "g.png")
    loaded = load_data(data, resolution=6)
    reference = np.asarray(Image.fromarray(gray).resize((10, 6), Image.BILINEAR).crop((2, 0, 8, 6)))
    np.testing.assert_array_equal(loaded.images[0, 0], reference)
    rgb = RNG.integers(0, 256, size=(10, 10, 3), dtype=np.uint8)
    os.remove(data / "g.png")
    Image.fromarray(rgb).convert("P").save(data / "p.png")
    palette_rgb = np.asarray(Image.open(data / "p.png").convert("RGB"))
    np.testing.assert_array_equal(load_data(data, resolution=4).images[0], _pil_reference(palette_rgb, 4)
                                  .transpose(2, 0, 1))
    rgba = np.concatenate([rgb, np.full((10, 10, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(data / "p.png")
    np.testing.assert_array_equal(load_data(data, resolution=4).images[0], _pil_reference(rgb, 4).transpose(2, 0, 1))


def test_resolution_against_the_model_shape_before_decoding(tmp_path, monkeypatch):
    from qmia_fast.data import image_decode

    data = tmp_path / "data"
    _png(data / "a.png", size=(40, 50))
    monkeypatch.setattr(image_decode, "decode_image", lambda *a: pytest.fail("decoded before the shape check"))
    with pytest.raises(DataError, match=r"resized to 16 x 16 by --resolution 16.*expects 3 x 32 x 32.*--resolution 32"):
        load_data(data, resolution=16, expected_shape=(3, 32, 32))
    with pytest.raises(DataError, match=r"are 40 x 50.*or pass --resolution 32"):
        load_data(data, expected_shape=(3, 32, 32))


@pytest.mark.parametrize("bad", [0, -1, 4097, 2.0, "32", True])
def test_bad_resolution_values(tmp_path, bad):
    with pytest.raises(ConfigError, match="--resolution must be a whole number of pixels from 1 to 4096"):
        load_data(tmp_path, resolution=bad)


def test_resolution_applies_only_to_image_folders(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 4, 4), np.uint8))
    with pytest.raises(ConfigError, match="--resolution applies only to image folders, not to .*x.npy"):
        load_data(tmp_path / "x.npy", resolution=2)
    with pytest.raises(ConfigError, match="--resolution applies only to image folders"):
        load_data(np.zeros((2, 1, 4, 4), np.uint8), resolution=2)
    with pytest.raises(ConfigError, match="--resolution applies only to image folders"):
        load_data("builtin", resolution=2)


def test_resize_center_crop_matches_torchvision():
    """The transform diffusers' train_text_to_image.py runs, where torchvision is installed (it is no dependency)."""
    transforms = pytest.importorskip("torchvision.transforms")
    pipeline = transforms.Compose([transforms.Resize(0), transforms.CenterCrop(0)])
    rng = np.random.default_rng(11)
    for _ in range(100):
        width, height = (int(v) for v in rng.integers(1, 200, size=2))
        resolution, channels = int(rng.integers(1, 120)), int(rng.choice([1, 3]))
        pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
        pipeline.transforms[0] = transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR)
        pipeline.transforms[1] = transforms.CenterCrop(resolution)
        expected = np.asarray(pipeline(Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)))
        expected = expected[:, :, None] if expected.ndim == 2 else expected
        np.testing.assert_array_equal(resize_center_crop(Image, pixels, resolution), expected,
                                      err_msg=f"{width} x {height} -> {resolution}")
