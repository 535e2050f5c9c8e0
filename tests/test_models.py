"""Tests of the built-in UNet (pytorch-ddpm key names, size) and of round trips through every supported model format."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from qmia_fast.errors import ConfigError, InputError, ModelLoadError
from qmia_fast.models import (
    CIFAR10_UNET_CONFIG,
    EpsModel,
    UNet,
    check_image_shape,
    count_parameters,
    detect_format,
    load_model,
    save_model,
)
from qmia_fast.models.flagfile import parse_flagfile
from qmia_fast.schedule import cosine_schedule, linear_schedule
from model_helpers import tiny_diffusers_unet

TINY = dict(T=50, ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0, img_size=8)
TINY_FLAGFILE = """--T=50
--attn=1
--batch_size=4
--beta_1=0.0001
--beta_T=0.02
--ch=32
--ch_mult=1
--ch_mult=2
--dropout=0.0
--img_size=8
--logdir=./logs/tiny
--noparallel
--num_res_blocks=1
--train
--mean_type=epsilon
"""


def _randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    # Fresh UNets have near-zero output layers (gain 1e-5); random weights make output comparisons meaningful.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return _randomized(UNet(**TINY))


@pytest.fixture(scope="module")
def probe():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 8, 8, generator=gen) * 2 - 1
    t = torch.tensor([0, 17, 49])
    return x, t


def _expected_tiny_keys() -> list[str]:
    """pytorch-ddpm's state-dict names for TINY, written out from its model.py structure."""
    res = ["block1.0.weight", "block1.0.bias", "block1.2.weight", "block1.2.bias",
           "temb_proj.1.weight", "temb_proj.1.bias",
           "block2.0.weight", "block2.0.bias", "block2.3.weight", "block2.3.bias"]
    shortcut = ["shortcut.weight", "shortcut.bias"]
    attn = [f"attn.{m}.{p}" for m in ("group_norm", "proj_q", "proj_k", "proj_v", "proj") for p in ("weight", "bias")]
    keys = ["time_embedding.timembedding.0.weight",
            "time_embedding.timembedding.1.weight", "time_embedding.timembedding.1.bias",
            "time_embedding.timembedding.3.weight", "time_embedding.timembedding.3.bias",
            "head.weight", "head.bias"]
    keys += [f"downblocks.0.{k}" for k in res]                       # level 0, 32 -> 32
    keys += ["downblocks.1.main.weight", "downblocks.1.main.bias"]   # DownSample
    keys += [f"downblocks.2.{k}" for k in res + shortcut + attn]     # level 1, 32 -> 64, attention
    keys += [f"middleblocks.0.{k}" for k in res + attn]
    keys += [f"middleblocks.1.{k}" for k in res]
    keys += [f"upblocks.0.{k}" for k in res + shortcut + attn]       # 64+64 -> 64
    keys += [f"upblocks.1.{k}" for k in res + shortcut + attn]       # 64+32 -> 64
    keys += ["upblocks.2.main.weight", "upblocks.2.main.bias"]       # UpSample
    keys += [f"upblocks.3.{k}" for k in res + shortcut]              # 64+32 -> 32
    keys += [f"upblocks.4.{k}" for k in res + shortcut]              # 32+32 -> 32
    keys += ["tail.0.weight", "tail.0.bias", "tail.2.weight", "tail.2.bias"]
    return keys


# ---------------------------------------------------------------------- the UNet


def test_cifar10_unet_has_35_7m_parameters():
    with torch.device("meta"):
        net = UNet(**CIFAR10_UNET_CONFIG)
    assert count_parameters(net) == 35_746_307  # the paper's "35.7M"
    assert count_parameters(net, trainable_only=False) == 35_746_307 + 1000 * 128  # plus the sinusoid table


def test_state_dict_keys_are_pytorch_ddpm_names():
    net = UNet(**TINY)
    state = net.state_dict()
    assert list(state) == _expected_tiny_keys()
    assert state["time_embedding.timembedding.0.weight"].shape == (50, 32)
    assert state["time_embedding.timembedding.1.weight"].shape == (128, 32)
    assert state["upblocks.0.block1.2.weight"].shape == (64, 128, 3, 3)
    assert state["upblocks.1.shortcut.weight"].shape == (64, 96, 1, 1)
    assert state["tail.2.weight"].shape == (3, 32, 3, 3)
    table = state["time_embedding.timembedding.0.weight"]
    # Row t interleaves sin and cos of t * 10000^(-2i/ch).
    assert table[7, 0].item() == pytest.approx(math.sin(7.0)) and table[7, 1].item() == pytest.approx(math.cos(7.0))
    assert table[7, 2].item() == pytest.approx(math.sin(7.0 * 10000 ** (-2 / 32)), rel=1e-5)


def test_forward_int_and_tensor_timesteps(tiny_net, probe):
    x, _ = probe
    with torch.no_grad():
        by_int = tiny_net(x, 5)
        by_tensor = tiny_net(x, torch.full((3,), 5))
    assert by_int.shape == x.shape
    torch.testing.assert_close(by_int, by_tensor, rtol=0, atol=0)


def test_grayscale_and_channels_last_and_bf16():
    net = _randomized(UNet(**{**TINY, "in_ch": 1}))
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3, 4])
    with torch.no_grad():
        reference = net(x, t)
        assert reference.shape == (2, 1, 8, 8)
        net_cl = net.to(memory_format=torch.channels_last)
        torch.testing.assert_close(net_cl(x.contiguous(memory_format=torch.channels_last), t), reference,
                                   rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, t)
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() < 0.1 * reference.abs().max() + 0.05


@pytest.mark.parametrize("kwargs,match", [
    ({"img_size": 10, "ch_mult": [1, 2, 2]}, "divisible by 2\\*\\*\\(len\\(ch_mult\\)-1\\) = 4"),
    ({"attn": [2]}, "attn level"),
    ({"ch": 48}, "multiple of 32"),
    ({"dropout": 1.5}, "dropout"),
    ({"ch_mult": []}, "ch_mult is empty"),
    ({"num_res_blocks": 0}, "num_res_blocks"),
])
def test_bad_unet_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        UNet(**{**TINY, **kwargs})


# ---------------------------------------------------------------------- flagfiles


def test_flagfile_parsing():
    flags = parse_flagfile(TINY_FLAGFILE)
    assert flags == {"T": 50, "attn": [1], "beta_1": 1e-4, "beta_T": 0.02, "ch": 32, "ch_mult": [1, 2],
                     "dropout": 0.0, "img_size": 8, "num_res_blocks": 1, "mean_type": "epsilon"}
    assert parse_flagfile("--ch_mult=1,2,2,2\n--attn=\n# comment\n--unknown=3\n")["ch_mult"] == [1, 2, 2, 2]
    assert parse_flagfile("--attn=\n")["attn"] == []
    with pytest.raises(ConfigError, match="line 2"):
        parse_flagfile("--ch=32\n--ch=abc\n")


# ---------------------------------------------------------------------- pytorch-ddpm


def _save_ddpm_checkpoint(net, path, key="ema_model", prefix="module."):
    state = {prefix + k: v.clone() for k, v in net.state_dict().items()}
    ckpt = {key: state, "step": 800000, "x_T": torch.randn(2, 3, 8, 8),
            "optim": {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "params": [0]}]},
            "sched": {"base_lrs": [2e-4], "last_epoch": 5, "lr_lambdas": [None]}}
    if key == "ema_model":  # SecMI's checkpoints carry both; the loader must prefer the EMA weights
        ckpt["net_model"] = {k: torch.zeros_like(v) for k, v in state.items()}
    torch.save(ckpt, path)


def test_pytorch_ddpm_round_trip_with_flagfile_beside(tiny_net, probe, tmp_path):
    _save_ddpm_checkpoint(tiny_net, tmp_path / "ckpt.pt")
    (tmp_path / "flagfile.txt").write_text(TINY_FLAGFILE)
    assert detect_format(tmp_path / "ckpt.pt")[0] == "pytorch-ddpm"
    model = load_model(tmp_path / "ckpt.pt")
    assert model.format == "pytorch-ddpm" and model.config["weights"] == "ema_model"
    assert model.image_shape == (3, 8, 8)
    assert model.schedule == linear_schedule(50, 1e-4, 0.02)
    json.dumps(model.config)
    x, t = probe
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), tiny_net(x, t), rtol=0, atol=0)
    # The folder itself also works: it holds one checkpoint and its flagfile.
    assert load_model(tmp_path).config["weights"] == "ema_model"


def test_pytorch_ddpm_net_model_and_explicit_config(tiny_net, probe, tmp_path):
    _save_ddpm_checkpoint(tiny_net, tmp_path / "weights.pth", key="net_model", prefix="")
    flagfile = tmp_path / "CIFAR10.txt"
    flagfile.write_text(TINY_FLAGFILE.replace("--ch_mult=1\n--ch_mult=2\n", "--ch_mult=1,2\n"))
    model = load_model(tmp_path / "weights.pth", format="pytorch-ddpm", config=flagfile)
    assert model.config["weights"] == "net_model"
    x, t = probe
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), tiny_net(x, t), rtol=0, atol=0)
    as_dict = load_model(tmp_path / "weights.pth", config={**TINY, "beta_T": 0.03})
    assert as_dict.schedule == linear_schedule(50, 1e-4, 0.03)


def test_pytorch_ddpm_without_config_falls_back_to_cifar10_with_warning(tiny_net, tmp_path):
    _save_ddpm_checkpoint(tiny_net, tmp_path / "ckpt.pt")
    with pytest.warns(UserWarning, match="CIFAR-10"):
        with pytest.raises(ModelLoadError, match="do not match the architecture.*missing keys"):
            load_model(tmp_path / "ckpt.pt")


def test_pytorch_ddpm_xstart_model_is_converted_to_eps(tiny_net, probe, tmp_path):
    _save_ddpm_checkpoint(tiny_net, tmp_path / "ckpt.pt")
    model = load_model(tmp_path / "ckpt.pt", config={**TINY, "mean_type": "xstart"})
    x, t = probe
    abar = torch.tensor(model.schedule.abar, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        x0 = tiny_net(x, t)
        torch.testing.assert_close(model(x, t), (x - abar.sqrt() * x0) / (1 - abar).sqrt(), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------- our format


@pytest.mark.parametrize("weights_format", ["pt", "safetensors"])
def test_qmia_format_round_trip(tiny_net, probe, tmp_path, weights_format):
    if weights_format == "safetensors":
        pytest.importorskip("safetensors")
    folder = tmp_path / "target"
    schedule = cosine_schedule(50)
    save_model(tiny_net, folder, schedule, {"trained_on": "unit test"}, weights_format=weights_format)
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "qmia-fast-model" and config["version"] == 1
    assert config["architecture"] == "ddpm-unet" and config["unet"]["ch_mult"] == [1, 2]
    assert config["weights"] == f"model.{weights_format}"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", f"model.{weights_format}"])
    for path in (folder, folder / "config.json", folder / f"model.{weights_format}"):
        assert detect_format(path) == ("qmia", folder)
    model = load_model(folder)
    assert isinstance(model, EpsModel) and model.format == "qmia"
    assert model.schedule == schedule and model.image_shape == (3, 8, 8)
    assert model.config["metadata"] == {"trained_on": "unit test"}
    x, t = probe
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), tiny_net(x, t), rtol=0, atol=0)
    # Saving the wrapper keeps its schedule.
    save_model(model, tmp_path / "again")
    assert load_model(tmp_path / "again").schedule == schedule


def test_qmia_format_overrides_state_dict(tiny_net, tmp_path):
    zeros = {k: torch.zeros_like(v) for k, v in tiny_net.state_dict().items()}
    save_model(tiny_net, tmp_path / "m", linear_schedule(50), state_dict=zeros)
    loaded = load_model(tmp_path / "m").net.state_dict()
    assert all(torch.count_nonzero(v) == 0 for v in loaded.values())


def test_model_moves_and_checks_shapes(tiny_net, tmp_path):
    save_model(tiny_net, tmp_path / "m", linear_schedule(50))
    model = load_model(tmp_path / "m", device="cpu")
    assert model.device.type == "cpu" and not model.training
    check_image_shape(model, (10, 3, 8, 8))
    with pytest.raises(InputError, match="1 channel"):
        check_image_shape(model, (10, 1, 8, 8))
    with pytest.raises(InputError, match="16 x 16 pixels"):
        check_image_shape(model, (3, 16, 16))
    with pytest.raises(ConfigError, match="t = 50"):
        model(torch.zeros(1, 3, 8, 8), 50)
    with pytest.raises(InputError, match="integer"):
        model(torch.zeros(1, 3, 8, 8), torch.tensor([1.5]))


# ---------------------------------------------------------------------- TorchScript


def test_torchscript_round_trip(tiny_net, probe, tmp_path):
    x, t = probe
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(tiny_net, (x, t), check_trace=False)
    traced.save(str(tmp_path / "eps.ts.pt"))
    config = {"image_shape": [3, 8, 8], "schedule": {"kind": "linear", "T": 50}}
    (tmp_path / "eps.json").write_text(json.dumps(config))
    assert detect_format(tmp_path / "eps.ts.pt")[0] == "torchscript"
    for cfg in (config, tmp_path / "eps.json"):
        model = load_model(tmp_path / "eps.ts.pt", config=cfg)
        assert model.format == "torchscript" and model.image_shape == (3, 8, 8)
        assert model.schedule == linear_schedule(50)
        with torch.no_grad():
            torch.testing.assert_close(model(x, t), tiny_net(x, t), rtol=1e-6, atol=1e-6)
    with pytest.raises(ModelLoadError, match="image shape and noise schedule"):
        load_model(tmp_path / "eps.ts.pt")
    with pytest.raises(ConfigError, match="image_shape"):
        load_model(tmp_path / "eps.ts.pt", config={"image_shape": [3, 8], "schedule": {}})


# ---------------------------------------------------------------------- diffusers


def _tiny_diffusers_unet(out_channels=3):
    return _randomized(tiny_diffusers_unet(out_channels))


def test_diffusers_unet_folder(probe, tmp_path):
    net = _tiny_diffusers_unet()
    net.save_pretrained(tmp_path / "unet_only")
    assert detect_format(tmp_path / "unet_only")[0] == "diffusers"
    with pytest.warns(UserWarning, match="no scheduler config"):
        model = load_model(tmp_path / "unet_only")
    assert model.format == "diffusers" and model.image_shape == (3, 8, 8)
    assert model.schedule == linear_schedule()
    json.dumps(model.config)
    x, t = probe
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), net(x, t).sample, rtol=0, atol=0)


def test_diffusers_pipeline_with_v_prediction_and_learned_variance(probe, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    net = _tiny_diffusers_unet(out_channels=6)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2",
                                        prediction_type="v_prediction")
    net.save_pretrained(tmp_path / "pipe" / "unet")
    scheduler.save_pretrained(tmp_path / "pipe" / "scheduler")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    model = load_model(tmp_path / "pipe")
    assert model.schedule == cosine_schedule(50)
    assert model.config["prediction_type"] == "v_prediction" and model.config["learned_variance"]
    x, t = probe
    abar = torch.tensor(model.schedule.abar, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        v = net(x, t).sample[:, :3]
        torch.testing.assert_close(model(x, t), abar.sqrt() * v + (1 - abar).sqrt() * x, rtol=1e-5, atol=1e-5)


def test_diffusers_text_unet_without_its_text_encoder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "sample_size": 8}))
    with pytest.raises(ModelLoadError, match="UNet2DConditionModel .*no text_encoder/ and tokenizer/"):
        load_model(tmp_path)
