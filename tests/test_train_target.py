"""Tests of DDPM target training: outputs, learning, bit-exact resume after an interruption, config refusal, CLI errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qmia_fast.cli import cli
from qmia_fast.errors import ConfigError, InputError
from qmia_fast.models import load_model
from qmia_fast.training import CHECKPOINT_NAME, SUMMARY_NAME, train_ddpm

TINY_UNET = dict(T=40, ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.1)
FAST = dict(unet=TINY_UNET, batch_size=4, lr=1e-3, warmup=2, device="cpu")
TINY_CLI = ["--ch", "32", "--ch-mult", "1,2", "--attn", "1", "--num-res-blocks", "1", "--T", "40",
            "--batch-size", "4", "--warmup", "2", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(6, 3, 8, 8), dtype=np.uint8)


def test_writes_a_loadable_model_checkpoint_and_summary(images, tmp_path):
    summary = train_ddpm(images, tmp_path / "run", steps=3, save_every=2, **FAST)
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", "model.pt", CHECKPOINT_NAME, SUMMARY_NAME])
    saved = json.loads((out / SUMMARY_NAME).read_text())
    assert saved["steps"] == 3 and saved["resumed_from_step"] == 0 and saved["images"] == 6
    assert np.isfinite(saved["final_loss"]) and saved["wall_time_s"] > 0
    assert summary["final_loss"] == saved["final_loss"]
    model = load_model(out)
    assert load_model(out / CHECKPOINT_NAME).format == "qmia"  # a file of the folder means the folder
    assert model.format == "qmia" and model.image_shape == (3, 8, 8) and model.schedule.T == 40
    assert model.config["metadata"]["step"] == 3 and model.config["metadata"]["weights"] == "ema"
    # The checkpoint holds only tensors and plain containers.
    checkpoint = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    ema = checkpoint["ema"]
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, ema[key])
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 8, 8), torch.tensor([0, 39])).shape == (2, 3, 8, 8)


def test_loss_decreases_on_a_repeated_tiny_set(tmp_path):
    # Two flat-colour images: easy to memorise, so the eps-MSE falls well below its starting value of ~1.
    images = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    images[1] = 255
    losses = []
    train_ddpm(images, tmp_path / "run", unet={**TINY_UNET, "dropout": 0.0, "T": 20}, steps=30, batch_size=4,
               lr=3e-3, warmup=5, hflip=False, device="cpu", save_every=1000,
               progress=lambda step, total, loss: losses.append(loss))
    assert len(losses) == 30
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])


def test_interrupted_run_resumes_bit_exactly(images, tmp_path):
    straight = train_ddpm(images, tmp_path / "straight", steps=6, save_every=3, **FAST)

    class Interrupt(Exception):
        pass

    def stop_after_step_4(step, total, loss):
        if step == 4:
            raise Interrupt  # a kill between checkpoints: step 4 is lost, step 3 is on disk

    with pytest.raises(Interrupt):
        train_ddpm(images, tmp_path / "resumed", steps=6, save_every=3, progress=stop_after_step_4, **FAST)
    assert torch.load(tmp_path / "resumed" / CHECKPOINT_NAME, weights_only=True)["step"] == 3

    seen = []
    resumed = train_ddpm(images, tmp_path / "resumed", steps=6, save_every=3,
                         progress=lambda step, total, loss: seen.append(step), **FAST)
    assert seen == [4, 5, 6] and resumed["resumed_from_step"] == 3
    assert resumed["final_loss"] == straight["final_loss"]
    a = torch.load(tmp_path / "straight" / CHECKPOINT_NAME, weights_only=True)
    b = torch.load(tmp_path / "resumed" / CHECKPOINT_NAME, weights_only=True)
    for part in ("net", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"] == 6
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][index]["exp_avg_sq"])

    # Extending the run later continues from step 6.
    longer = train_ddpm(images, tmp_path / "resumed", steps=8, save_every=3, **FAST)
    assert longer["resumed_from_step"] == 6 and longer["steps"] == 8


def test_resume_refuses_a_different_configuration(images, tmp_path):
    train_ddpm(images, tmp_path / "run", steps=2, save_every=2, **FAST)
    with pytest.raises(ConfigError, match="different configuration.*unet"):
        train_ddpm(images, tmp_path / "run", steps=4, **{**FAST, "unet": {**TINY_UNET, "ch": 64}})
    with pytest.raises(ConfigError, match="different configuration.*data"):
        train_ddpm(images[:5], tmp_path / "run", steps=4, **FAST)
    with pytest.raises(ConfigError, match="different configuration.*seed"):
        train_ddpm(images, tmp_path / "run", steps=4, seed=1, **FAST)
    (tmp_path / "run" / CHECKPOINT_NAME).unlink()  # a finished model without its checkpoint is not overwritten
    with pytest.raises(ConfigError, match="already holds a model"):
        train_ddpm(images, tmp_path / "run", steps=4, **FAST)


def test_bf16_and_float_images(tmp_path):
    images = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)
    summary = train_ddpm(images, tmp_path / "run", steps=2, bf16=True, hflip=True, save_every=5, **FAST)
    assert np.isfinite(summary["final_loss"]) and summary["image_shape"] == [1, 8, 8]
    assert load_model(tmp_path / "run").image_shape == (1, 8, 8)


@pytest.mark.parametrize("bad,error,match", [
    (dict(steps=0), ConfigError, "--steps"),
    (dict(lr=-1.0), ConfigError, "--lr"),
    (dict(ema_decay=1.0), ConfigError, "--ema-decay"),
    (dict(device="tpu"), ConfigError, "--device"),
    (dict(unet={**TINY_UNET, "ch_mult": [1, 2, 2, 2, 2]}), ConfigError, "img_size = 8 must be divisible by"),
    (dict(images=np.zeros((2, 3, 8, 8), dtype=np.int32)), InputError, "uint8"),
    (dict(images=np.full((2, 3, 8, 8), 2.0, dtype=np.float32)), InputError, r"\[0, 1\]"),
    (dict(images=np.zeros((2, 3, 8, 16), dtype=np.uint8)), InputError, "square"),
])
def test_bad_arguments(images, tmp_path, bad, error, match):
    kwargs = {**FAST, "steps": 2, **bad}
    data = kwargs.pop("images", images)
    with pytest.raises(error, match=match):
        train_ddpm(data, tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_cli_trains_from_a_npy_file_with_members(images, tmp_path):
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "members.txt").write_text("0\n2\n4\n")
    result = CliRunner().invoke(cli, ["train-target", "--data", str(tmp_path / "images.npy"), "--members",
                                      str(tmp_path / "members.txt"), "--out", str(tmp_path / "run"),
                                      "--steps", "2", *TINY_CLI])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output
    summary = json.loads((tmp_path / "run" / SUMMARY_NAME).read_text())
    assert summary["images"] == 3 and summary["hyperparameters"]["batch_size"] == 4
    assert load_model(tmp_path / "run").schedule.T == 40


@pytest.mark.parametrize("args,match", [
    (["--steps", "0"], "--steps"),
    (["--ch-mult", "1,x"], "--ch-mult"),
    (["--attn", "5"], "attn level"),
    (["--ema-decay", "1.5"], "--ema-decay"),
    (["--device", "nonsense"], "--device"),
    (["--beta-1", "0"], "--beta-1"),
    (["--data", "/no/such/file.npy"], "file.npy"),
])
def test_cli_bad_options_exit_2_with_one_line(tmp_path, args, match):
    np.save(tmp_path / "images.npy", np.zeros((2, 3, 8, 8), dtype=np.uint8))
    base = ["train-target", "--data", str(tmp_path / "images.npy"), "--out", str(tmp_path / "run"), "--steps", "1"]
    result = CliRunner().invoke(cli, base + TINY_CLI + args)
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("qmia-fast: error:")]
    assert len(error_lines) == 1 and "Traceback" not in result.output
    assert pytest.importorskip("re").search(match, error_lines[0]), error_lines[0]
