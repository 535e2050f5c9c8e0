"""Loading is bounded: configs the weights cannot hold, FIFOs, image folders checked before decoding, score-file bombs, messages that say what is wrong."""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from qmia_fast.data import load_data
from qmia_fast.data import image_decode
from qmia_fast.data.formats import read_array_file, read_image_folder, read_npz_arrays
from qmia_fast.errors import ConfigError, DataError, InputError, ModelLoadError, UnsafeCheckpointError
from qmia_fast.models import BUILTIN_TARGET_DIR, UNet, load_model, normalize_unet_config, save_model
from qmia_fast.models.unet_shapes import unet_state_shapes
from qmia_fast.schedule import linear_schedule
from model_helpers import tiny_diffusers_unet

# Enough for the interpreter, torch and a small model; far below what any of the bombs asks for.
ADDRESS_SPACE_LIMIT = 3 << 30
CLI_TIMEOUT = 300
TINY = dict(T=20, ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0, img_size=8)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("QMIA_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "qmia_fast", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, preexec_fn=_limit_memory, env=env)


def _assert_refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _attack(model: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run_cli("attack", "--model", str(model), *extra, "--data", "builtin", "--out", str(tmp_path / "out"),
                    cwd=tmp_path)


def _demo_copy(tmp_path: Path, weights_format: str = "pt") -> Path:
    folder = tmp_path / "target"
    if weights_format == "pt":
        shutil.copytree(BUILTIN_TARGET_DIR, folder)
    else:
        builtin = load_model("builtin")
        save_model(builtin, folder, weights_format=weights_format)
    return folder


def _patch_config(folder: Path, unet=None, schedule=None, **top) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["unet"].update(unet or {})
    config["schedule"].update(schedule or {})
    config.update(top)
    (folder / "config.json").write_text(json.dumps(config))


# ---------------------------------------------------------------------- configs the weights cannot hold


def test_unet_shapes_match_the_module_exactly():
    for config in (TINY, dict(T=7, ch=64, ch_mult=[1, 2, 3, 1], attn=[0, 3], num_res_blocks=3, in_ch=1, img_size=16),
                   dict(T=5, ch=32, ch_mult=[2], attn=[], num_res_blocks=2, in_ch=4, img_size=4), {}):
        normalized = normalize_unet_config(config)
        expected = [(name, tuple(t.shape)) for name, t in UNet(**normalized).state_dict().items()]
        assert list(unet_state_shapes(normalized)) == expected


@pytest.mark.parametrize("unet, schedule, needle", [
    ({"ch": 4096}, None, "shape mismatch for time_embedding"),
    ({"num_res_blocks": 1_000_000}, None, "missing keys"),
    ({"T": 1_000_000_000}, {"T": 1_000_000_000}, "schedule T = 1000000000"),
])
def test_qmia_config_bombs_are_refused_in_little_memory(tmp_path, unet, schedule, needle):
    folder = _demo_copy(tmp_path)
    _patch_config(folder, unet=unet, schedule=schedule)
    _assert_refused(_attack(folder, tmp_path), needle)


def test_qmia_safetensors_config_bomb_is_refused(tmp_path):
    pytest.importorskip("safetensors")
    folder = _demo_copy(tmp_path, "safetensors")
    _patch_config(folder, unet={"ch": 4096})
    _assert_refused(_attack(folder, tmp_path), "shape mismatch")


def test_checkpoint_of_stride_zero_views_cannot_smuggle_a_huge_unet(tmp_path):
    # Every tensor has the shape the huge config asks for, but all are views of one-element storages:
    # the file is small, so the size bound must catch what the shape comparison cannot.
    config = normalize_unet_config({**TINY, "ch": 4096, "T": 1000})
    state = {name: torch.zeros(1).expand(shape) for name, shape in unet_state_shapes(config)}
    folder = tmp_path / "target"
    folder.mkdir()
    torch.save(state, folder / "model.pt")
    assert (folder / "model.pt").stat().st_size < 10 << 20
    (folder / "config.json").write_text(json.dumps({
        "format": "qmia-fast-model", "version": 1, "architecture": "ddpm-unet", "unet": config,
        "schedule": {"kind": "linear", "T": 1000}, "weights": "model.pt"}))
    _assert_refused(_attack(folder, tmp_path), "can hold at most")


@pytest.mark.parametrize("flag, needle", [
    ("--ch=4096", "shape mismatch"),
    ("--num_res_blocks=1000000", "missing keys"),
    ("--T=1000000000", "schedule T = 1000000000"),
])
def test_pytorch_ddpm_flagfile_bombs_are_refused(tmp_path, flag, needle):
    state = torch.load(BUILTIN_TARGET_DIR / "model.pt", weights_only=True)
    torch.save({"ema_model": state, "step": 1}, tmp_path / "ckpt.pt")
    (tmp_path / "flags.txt").write_text("\n".join([
        "--T=1000", "--ch=32", "--ch_mult=1", "--ch_mult=2", "--ch_mult=2", "--attn=2", "--num_res_blocks=1",
        "--img_size=28", flag]) + "\n")
    _assert_refused(_attack(tmp_path / "ckpt.pt", tmp_path, "--model-config", str(tmp_path / "flags.txt")), needle)


def _tiny_diffusers_folder(folder: Path, **overrides) -> Path:
    tiny_diffusers_unet().save_pretrained(folder)
    if overrides:
        config = json.loads((folder / "config.json").read_text())
        config.update(overrides)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("overrides, needle", [
    ({"block_out_channels": [4096, 4096]}, "shape mismatch"),
    ({"layers_per_block": 100_000}, "layers per block"),
])
def test_diffusers_config_bombs_are_refused(tmp_path, overrides, needle):
    folder = _tiny_diffusers_folder(tmp_path / "unet", **overrides)
    _assert_refused(_attack(folder, tmp_path), needle)


def test_zip_checkpoint_with_a_compressed_record_is_refused(tmp_path):
    torch.save({"ema_model": UNet(**TINY).state_dict()}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, \
            zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(ModelLoadError, match="compressed"):
        load_model(tmp_path / "deflated.pt", config=TINY)


# ---------------------------------------------------------------------- FIFOs and image folders checked before decoding


def _run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, preexec_fn=_limit_memory)


def _png(path: Path, mode: str = "RGB", size=(8, 8), value: int = 100) -> Path:
    image_module = pytest.importorskip("PIL.Image")
    channels = {"L": 1, "RGB": 3}[mode]
    pixels = np.full((size[1], size[0], channels), value, np.uint8)
    image_module.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode).save(path)
    return path


def test_fifo_named_png_is_refused_not_read(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    _png(folder / "a.png")
    os.mkfifo(folder / "b.png")
    proc = _run_python(
        "from qmia_fast.data import load_data\n"
        "from qmia_fast.errors import DataError\n"
        "try:\n    load_data('images')\nexcept DataError as exc:\n    print('REFUSED', exc)\n", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED" in proc.stdout and "b.png" in proc.stdout and "FIFO" in proc.stdout


def test_fifo_as_data_or_model_path_is_refused(tmp_path):
    os.mkfifo(tmp_path / "data.npy")
    os.mkfifo(tmp_path / "model.pt")
    proc = _run_python(
        "from qmia_fast.data import load_data\nfrom qmia_fast.models import load_model\n"
        "from qmia_fast.errors import QmiaError\n"
        "for call in (lambda: load_data('data.npy'), lambda: load_model('model.pt'),\n"
        "             lambda: load_data('builtin', split='data.npy')):\n"
        "    try:\n        call()\n    except QmiaError as exc:\n        print('REFUSED', exc)\n", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("REFUSED") == 3 and proc.stdout.count("FIFO") == 3, proc.stdout


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    original = image_decode.decode_image

    def counting(image, path):
        calls.append(path)
        return original(image, path)

    monkeypatch.setattr(image_decode, "decode_image", counting)
    return calls


def test_channels_are_checked_against_the_model_before_decoding(tmp_path, count_decodes):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        _png(folder / f"{i}.png", "RGB")
    with pytest.raises(DataError, match=r"colour \(3 channels\).*model expects 1 x 8 x 8.*grayscale"):
        load_data(folder, expected_shape=(1, 8, 8))
    with pytest.raises(DataError, match="resize the images to 16 x 16"):
        load_data(folder, expected_shape=(3, 16, 16))
    assert count_decodes == []
    images, _ = load_data(folder, expected_shape=(3, 8, 8))
    assert images.shape == (4, 3, 8, 8) and len(count_decodes) == 4


def test_mixed_images_are_refused_before_any_is_decoded(tmp_path, count_decodes):
    folder = tmp_path / "images"
    folder.mkdir()
    _png(folder / "0.png", "L")
    _png(folder / "1.png", "L")
    _png(folder / "2.png", "RGB")
    with pytest.raises(DataError, match="2.png: is colour but 0.png is grayscale"):
        load_data(folder)
    _png(folder / "2.png", "L", size=(16, 16))
    with pytest.raises(DataError, match="2.png: is 16 x 16 but 0.png is 8 x 8"):
        load_data(folder)
    assert count_decodes == []


def test_folder_too_large_to_decode_is_refused_first(tmp_path, count_decodes):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        _png(folder / f"{i}.png")
    with pytest.raises(DataError, match="would decode to 576 bytes, more than the 500"):
        read_image_folder(folder, max_bytes=500)
    assert count_decodes == []


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_bytes(width: int, height: int, extra_chunks: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + extra_chunks
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize("name, data", [
    ("huge_dimensions", _png_bytes(40_000, 40_000)),
    ("above_our_cap", _png_bytes(5000, 5000)),
    ("text_chunk", _png_bytes(8, 8, _png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"a" * (4 << 20))))),
])
def test_decompression_bombs_are_named(tmp_path, name, data):
    pytest.importorskip("PIL.Image")
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(data)
    with pytest.raises(DataError) as info:
        load_data(folder)
    message = str(info.value)
    assert "decompression bomb" in message and "corrupt" not in message, message


def test_expected_shape_applies_to_arrays_and_is_validated(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 8, 8), np.uint8))
    with pytest.raises(DataError, match="model expects 1 x 8 x 8"):
        load_data(tmp_path / "x.npy", expected_shape=(1, 8, 8))
    with pytest.raises(InputError, match="model expects 3 x 4 x 4"):
        load_data(np.zeros((2, 3, 8, 8), np.uint8), expected_shape=(3, 4, 4))
    with pytest.raises(ConfigError, match="expected_shape"):
        load_data(tmp_path / "x.npy", expected_shape=(3, 8))
    assert load_data(tmp_path / "x.npy", expected_shape=[3, 8, 8]).images.shape == (4, 3, 8, 8)


# ---------------------------------------------------------------------- score-file readers bounded before inflating


def _npy_claiming(path: Path, shape, dtype="<f8") -> Path:
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\x00" * 16)
    return path


def test_read_array_file_checks_the_declared_size_first(tmp_path):
    path = _npy_claiming(tmp_path / "scores.npy", (10**12,))
    assert path.stat().st_size < 200
    with pytest.raises(DataError, match=r"^scores .*scores\.npy: .*declares shape \(1000000000000,\)"):
        read_array_file(path, where="scores")
    np.save(tmp_path / "ok.npy", np.arange(10.0))
    np.testing.assert_array_equal(read_array_file(tmp_path / "ok.npy", where="scores"), np.arange(10.0))
    with pytest.raises(DataError, match="more than the 5 expected"):
        read_array_file(tmp_path / "ok.npy", where="scores", max_elements=5)
    with pytest.raises(DataError, match="more than the 40 bytes"):
        read_array_file(tmp_path / "ok.npy", where="scores", max_bytes=40)


def _inflate_claim(path: Path, member: str, claimed: int) -> None:
    # Rewrite the member's declared uncompressed size in both zip headers, as a crafted archive would.
    data = bytearray(path.read_bytes())
    name = member.encode()
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, claimed)
    struct.pack_into("<I", data, central + 24, claimed)
    assert data[local + 30:local + 30 + len(name)] == name
    path.write_bytes(bytes(data))


def test_read_npz_arrays_bounds_what_it_inflates(tmp_path):
    np.savez_compressed(tmp_path / "scores.npz", scores=np.zeros(1 << 20), labels=np.zeros(1 << 20, np.int8),
                        metadata=np.array('{"direction": "lower_is_member"}'))
    arrays = read_npz_arrays(tmp_path / "scores.npz", where="evaluate")
    assert set(arrays) == {"scores", "labels", "metadata"} and arrays["scores"].shape == (1 << 20,)
    assert set(read_npz_arrays(tmp_path / "scores.npz", where="evaluate", keys=["labels"])) == {"labels"}
    with pytest.raises(DataError, match="has no array 'nope'"):
        read_npz_arrays(tmp_path / "scores.npz", where="evaluate", keys=["nope"])
    with pytest.raises(DataError, match="would inflate to .* more than the 1000000 bytes"):
        read_npz_arrays(tmp_path / "scores.npz", where="evaluate", max_bytes=1_000_000)
    with pytest.raises(DataError, match="more than the 1000 expected"):
        read_npz_arrays(tmp_path / "scores.npz", where="evaluate", keys=["scores"], max_elements=1000)

    np.savez_compressed(tmp_path / "bomb.npz", scores=np.zeros(16))
    _inflate_claim(tmp_path / "bomb.npz", "scores.npy", 3 << 30)
    with pytest.raises(DataError, match="accepted for a file of this size"):
        read_npz_arrays(tmp_path / "bomb.npz", where="evaluate")


def test_score_readers_never_unpickle(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="never unpickled"):
        read_array_file(tmp_path / "objects.npy", where="scores")
    np.savez(tmp_path / "objects.npz", scores=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="never unpickled"):
        read_npz_arrays(tmp_path / "objects.npz", where="scores")


# ---------------------------------------------------------------------- messages that say what is wrong


def test_string_version_is_called_a_type_error_not_an_old_release(tmp_path):
    folder = tmp_path / "m"
    save_model(UNet(**TINY), folder, linear_schedule(20))
    _patch_config(folder, version="1")
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    assert "must be an integer" in str(info.value) and "upgrade" not in str(info.value)


def test_train_target_refusal_does_not_advise_a_flag_it_lacks(tmp_path):
    from qmia_fast.training import CHECKPOINT_NAME, train_ddpm

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"format": "x", "args": argparse.Namespace(lr=1.0)}, out / CHECKPOINT_NAME)
    images = np.zeros((4, 1, 8, 8), np.uint8)
    with pytest.raises(UnsafeCheckpointError) as info:
        train_ddpm(images, out, unet={**TINY, "in_ch": 1}, steps=1, batch_size=2)
    message = str(info.value)
    assert "--trust-checkpoint" not in message and "delete" in message and "--out" in message


def _silence_check(capfd, record):
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == "", captured
    assert [str(w.message) for w in record if "no scheduler config" not in str(w.message)] == []


def test_diffusers_pickled_weights_are_refused_by_name_and_quietly(tmp_path, capfd):
    folder = _tiny_diffusers_folder(tmp_path / "unet")
    from safetensors.torch import load_file

    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({**state, "args": argparse.Namespace(lr=1.0)}, folder / "diffusion_pytorch_model.bin")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(UnsafeCheckpointError) as info:
            load_model(folder)
    assert "argparse.Namespace" in str(info.value) and "Unable to load" not in str(info.value)
    _silence_check(capfd, record)


def test_diffusers_bin_with_legacy_attention_names_loads_quietly(tmp_path, capfd):
    folder = _tiny_diffusers_folder(tmp_path / "unet")
    from safetensors.torch import load_file

    with pytest.warns(UserWarning, match="no scheduler config"):
        reference = load_model(folder)
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    legacy = {}
    for key, value in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
                break
        legacy[key] = value
    assert any(".query." in key for key in legacy)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(legacy, folder / "diffusion_pytorch_model.bin")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = load_model(folder)
    _silence_check(capfd, record)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 7])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), reference(x, t), rtol=0, atol=0)


def test_diffusers_config_that_does_not_fit_its_weights_is_refused(tmp_path):
    folder = _tiny_diffusers_folder(tmp_path / "unet", layers_per_block=2)
    with pytest.raises(ModelLoadError, match="do not match the architecture"):
        load_model(folder)
    folder = _tiny_diffusers_folder(tmp_path / "unet2", sample_size=9)
    with pytest.raises(ModelLoadError, match="cannot run on 3 x 9 x 9 images"):
        load_model(folder)
