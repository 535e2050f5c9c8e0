"""Every way loading a model can fail gives a clear ModelLoadError; pickled code never runs without trust_checkpoint."""
from __future__ import annotations

import argparse
import json
import zipfile

import pytest
import torch

from qmia_fast.errors import ConfigError, ModelLoadError, QmiaError, UnsafeCheckpointError
from qmia_fast.models import BUILTIN_TARGET_DIR, UNet, load_model, save_model
from qmia_fast.schedule import linear_schedule

TINY = dict(T=20, ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0, img_size=8)


class _WritesMarker:
    """Unpickling this calls open(marker, 'w'): a stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return UNet(**TINY).state_dict()


@pytest.fixture
def ddpm_ckpt(tmp_path, tiny_state):
    path = tmp_path / "ckpt.pt"
    torch.save({"ema_model": dict(tiny_state)}, path)
    return path


def _load(path, **kwargs):
    return load_model(path, format=kwargs.pop("format", "auto"), config=kwargs.pop("config", TINY), **kwargs)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.pt", format="pytorch-ddpm")


def test_unknown_format_name(ddpm_ckpt):
    with pytest.raises(ModelLoadError, match="model format 'onnx' is unknown"):
        load_model(ddpm_ckpt, format="onnx")


@pytest.mark.parametrize("setup", ["text_file", "empty_folder", "two_checkpoints", "bare_safetensors"])
def test_undetectable_format(tmp_path, setup):
    if setup == "text_file":
        target = tmp_path / "notes.txt"
        target.write_text("not a model")
    elif setup == "empty_folder":
        target = tmp_path / "empty"
        target.mkdir()
    elif setup == "two_checkpoints":
        target = tmp_path
        torch.save({}, tmp_path / "a.pt")
        torch.save({}, tmp_path / "b.pt")
    else:
        target = tmp_path / "weights.safetensors"
        target.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelLoadError, match="cannot tell the model format"):
        load_model(target)


def test_truncated_and_empty_checkpoints(ddpm_ckpt, tmp_path):
    data = ddpm_ckpt.read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        _load(tmp_path / "half.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        _load(tmp_path / "empty.pt")
    (tmp_path / "noise.pt").write_bytes(b"\x80\x02" + bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError, match="corrupt"):
        _load(tmp_path / "noise.pt")


def test_truncated_legacy_checkpoint(tiny_state, tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"ema_model": dict(tiny_state)}, path, _use_new_zipfile_serialization=False)
    assert _load(path).format == "pytorch-ddpm"  # intact legacy files load
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        _load(path)


def test_missing_and_unexpected_keys(tiny_state, tmp_path):
    state = dict(tiny_state)
    del state["head.weight"], state["tail.2.bias"]
    state["extra.layer.weight"] = torch.zeros(1)
    torch.save({"ema_model": state}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path / "ckpt.pt")
    message = str(info.value)
    assert "missing keys: head.weight, tail.2.bias" in message
    assert "unexpected keys: extra.layer.weight" in message


def test_shape_mismatch_names_key_and_shapes(ddpm_ckpt):
    with pytest.raises(ModelLoadError) as info:
        _load(ddpm_ckpt, config={**TINY, "T": 30})
    assert "time_embedding.timembedding.0.weight" in str(info.value)
    assert "(20, 32)" in str(info.value) and "(30, 32)" in str(info.value)


def test_checkpoint_without_weights(tmp_path):
    torch.save({"step": 5, "optim": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelLoadError, match="no 'ema_model' or 'net_model'.*optim, step"):
        _load(tmp_path / "ckpt.pt")


def test_pickled_code_is_refused_and_never_runs(tiny_state, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"ema_model": dict(tiny_state), "payload": _WritesMarker(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        _load(tmp_path / "evil.pt")
    assert not marker.exists()
    # The same holds inside our own format.
    save_model(UNet(**TINY), tmp_path / "m", linear_schedule(20))
    torch.save({**tiny_state, "payload": _WritesMarker(marker)}, tmp_path / "m" / "model.pt")
    with pytest.raises(UnsafeCheckpointError, match="only if you trust its author"):
        load_model(tmp_path / "m")
    assert not marker.exists()


def test_trust_checkpoint_allows_pickled_objects(tiny_state, tmp_path):
    # Real checkpoints often carry an argparse.Namespace of training options.
    torch.save({"ema_model": dict(tiny_state), "args": argparse.Namespace(lr=1e-4)}, tmp_path / "ckpt.pt")
    with pytest.raises(UnsafeCheckpointError):
        _load(tmp_path / "ckpt.pt")
    assert _load(tmp_path / "ckpt.pt", trust_checkpoint=True).format == "pytorch-ddpm"


def test_bad_config_values(ddpm_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        _load(ddpm_ckpt, config={**TINY, "channels": 3})
    with pytest.raises(ConfigError, match="img_size"):
        _load(ddpm_ckpt, config={**TINY, "img_size": 9})
    with pytest.raises(ModelLoadError, match="mean_type = 'xprev'"):
        _load(ddpm_ckpt, config={**TINY, "mean_type": "xprev"})
    with pytest.raises(ModelLoadError, match="does not exist"):
        _load(ddpm_ckpt, config=tmp_path / "missing_flags.txt")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        _load(ddpm_ckpt, config=tmp_path / "bad.json")


def test_corrupt_qmia_folders(tmp_path, tiny_state):
    folder = tmp_path / "m"
    save_model(UNet(**TINY), folder, linear_schedule(20))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "version": 99}))
    with pytest.raises(ModelLoadError, match="version 99"):
        load_model(folder, format="qmia")
    (folder / "config.json").write_text(json.dumps({**config, "schedule": {"kind": "linear", "T": 10}}))
    with pytest.raises(ModelLoadError, match="T = 10"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.pt").unlink()
    with pytest.raises(ModelLoadError, match="no weights file"):
        load_model(folder)
    (folder / "config.json").write_text("{")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(folder, format="qmia")


def test_corrupt_safetensors(tmp_path):
    pytest.importorskip("safetensors")
    folder = tmp_path / "m"
    save_model(UNet(**TINY), folder, linear_schedule(20), weights_format="safetensors")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(folder)


def test_corrupt_torchscript(tmp_path):
    path = tmp_path / "model.ts"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/code/__torch__/m.py", "garbage")
        archive.writestr("model/constants.pkl", b"\x80\x02garbage")
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load_model(path, config={"image_shape": [3, 8, 8], "schedule": {"T": 20}})


def test_builtin_target_missing_is_reported(tmp_path, monkeypatch):
    # As in an install whose assets were stripped: point the loader at an empty folder.
    monkeypatch.setattr("qmia_fast.models.loader.BUILTIN_TARGET_DIR", tmp_path / "demo_target")
    with pytest.raises(ModelLoadError, match="demo target is not installed"):
        load_model("builtin")


def test_builtin_target_loads_and_is_a_ddpm_unet():
    assert (BUILTIN_TARGET_DIR / "config.json").exists(), "the shipped demo target is missing from the package"
    model = load_model("builtin")
    assert model.image_shape == (1, 28, 28) and model.schedule.T == 1000


def test_every_error_is_a_qmia_error():
    assert issubclass(UnsafeCheckpointError, ModelLoadError) and issubclass(ModelLoadError, QmiaError)
