"""Hypothesis fuzzers for model configs (qmia config.json, diffusers UNet2DModel config.json, absl flagfiles): a model or a QmiaError, within bounded memory and time."""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import resource
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmia_fast.models import UNet, load_model, save_model
from qmia_fast.models.flagfile import MODEL_FLAGS, parse_flagfile
from qmia_fast.models.wrapper import EpsModel
from qmia_fast.schedule import linear_schedule

from model_helpers import tiny_diffusers_unet
from data_builders import bounded, read_or_qmia_error

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
TINY = dict(T=20, ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0, in_ch=3, img_size=8)
# Room for building and loading a tiny model; every config here describes a tiny model or none.
EXTRA_ADDRESS_SPACE = 1 << 30

_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-3, 300)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
            | st.sampled_from(["1", "32", "1,2", "linear", "epsilon", "DownBlock2D", "AttnUpBlock2D", "silu"]))
JSON_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
NEAR_VALID = st.one_of(JSON_VALUES, st.lists(st.integers(-2, 70), max_size=5), st.integers(0, 64))


def _address_space_in_use() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * resource.getpagesize()


@contextlib.contextmanager
def _memory_bound(extra: int = EXTRA_ADDRESS_SPACE):
    """Any allocation beyond `extra` bytes of address space fails inside the body (torch's allocator included)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space_in_use() + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _load_or_error(load):
    with _memory_bound(), bounded(seconds=60, max_bytes=256 << 20), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # our own "assuming a default schedule" notes
        result = read_or_qmia_error(load)
    assert isinstance(result, (EpsModel, Exception))
    return result


def _json_text(value) -> str:
    return json.dumps(value, allow_nan=True)


# ---------------------------------------------------------------------- qmia config.json


@pytest.fixture(scope="module")
def qmia_weights(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("qmia_model")
    torch.manual_seed(0)
    save_model(UNet(**TINY), folder, linear_schedule(20))
    return folder / "model.pt", json.loads((folder / "config.json").read_text())


_FOLDER_NUMBERS = itertools.count()


def _qmia_folder(tmp_path: Path, weights: Path, config: dict) -> Path:
    folder = tmp_path / f"m{next(_FOLDER_NUMBERS)}"
    folder.mkdir()
    (folder / "model.pt").symlink_to(weights)
    (folder / "config.json").write_text(_json_text(config))
    return folder


_UNET_KEYS = st.sampled_from(sorted(TINY) + ["extra"])
_TOP_KEYS = st.sampled_from(["version", "architecture", "schedule", "weights", "unet", "format", "metadata"])
_SCHEDULE_KEYS = st.sampled_from(["kind", "T", "beta_1", "beta_T", "betas", "num_train_timesteps", "s"])


@FUZZ
@given(unet=st.dictionaries(_UNET_KEYS, NEAR_VALID, max_size=3),
       schedule=st.dictionaries(_SCHEDULE_KEYS, NEAR_VALID, max_size=2),
       top=st.dictionaries(_TOP_KEYS, JSON_VALUES, max_size=1))
def test_qmia_config_values_give_a_model_or_a_qmia_error(tmp_path, qmia_weights, unet, schedule, top):
    weights, config = qmia_weights
    config = json.loads(json.dumps(config))
    config["unet"].update(unet)
    config["schedule"].update(schedule)
    config.update(top)
    folder = _qmia_folder(tmp_path, weights, config)
    _load_or_error(lambda: load_model(folder))


@FUZZ
@given(text=st.text(max_size=300))
def test_qmia_config_bytes_give_a_model_or_a_qmia_error(tmp_path, qmia_weights, text):
    folder = _qmia_folder(tmp_path, qmia_weights[0], {})
    (folder / "config.json").write_text(text)
    _load_or_error(lambda: load_model(folder, format="qmia"))


# ---------------------------------------------------------------------- diffusers UNet2DModel config.json


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory) -> tuple[Path, dict]:
    pytest.importorskip("safetensors")
    folder = tmp_path_factory.mktemp("diffusers_model")
    tiny_diffusers_unet().save_pretrained(folder)
    return folder / "diffusion_pytorch_model.safetensors", json.loads((folder / "config.json").read_text())


_DIFFUSERS_KEYS = st.sampled_from([
    "sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
    "up_block_types", "norm_num_groups", "attention_head_dim", "time_embedding_type", "num_train_timesteps",
    "act_fn", "mid_block_type", "_class_name", "class_embed_type", "num_class_embeds", "add_attention",
    "resnet_time_scale_shift", "downsample_type", "upsample_type", "norm_eps", "dropout", "flip_sin_to_cos",
    "freq_shift", "center_input_sample", "time_embedding_dim", "attn_norm_num_groups", "downsample_padding",
])


@FUZZ
@given(changes=st.dictionaries(_DIFFUSERS_KEYS, NEAR_VALID, min_size=1, max_size=3))
def test_diffusers_config_values_give_a_model_or_a_qmia_error(tmp_path, diffusers_folder, changes):
    weights, config = diffusers_folder
    folder = tmp_path / f"d{abs(hash(_json_text(changes)))}"
    folder.mkdir(exist_ok=True)
    (folder / weights.name).unlink(missing_ok=True)
    (folder / weights.name).symlink_to(weights)
    (folder / "config.json").write_text(_json_text({**config, **changes}))
    result = _load_or_error(lambda: load_model(folder, format="diffusers"))
    if isinstance(result, EpsModel):
        # Whatever was accepted must also run: one forward pass on a batch of its own images.
        channels, height, width = result.image_shape
        with _memory_bound(), torch.no_grad():
            out = result(torch.zeros(1, channels, height, width), torch.zeros(1, dtype=torch.long))
        assert tuple(out.shape) == (1, channels, height, width)


# ---------------------------------------------------------------------- absl flagfiles (pytorch-ddpm)

_FLAG_NAMES = st.sampled_from(sorted(MODEL_FLAGS) + ["lr", "logdir", "T ", "attn="])
_FLAG_VALUES = st.one_of(st.text(max_size=12), st.integers(-5, 300).map(str), st.floats().map(repr),
                         st.lists(st.integers(-1, 6), max_size=4).map(lambda v: ",".join(map(str, v))))
_FLAG_LINES = st.one_of(
    st.tuples(st.sampled_from(["--", "-", ""]), _FLAG_NAMES, st.sampled_from(["=", "", " = "]), _FLAG_VALUES)
    .map(lambda parts: "".join(parts)),
    st.text(max_size=20),
)


@FUZZ
@given(lines=st.lists(_FLAG_LINES, max_size=12))
def test_flagfile_lines_parse_or_give_a_config_error(lines):
    text = "\n".join(lines)
    with bounded(seconds=10):
        result = read_or_qmia_error(lambda: parse_flagfile(text, source="flags.txt"))
    if not isinstance(result, Exception):
        assert set(result) <= MODEL_FLAGS


@pytest.fixture(scope="module")
def ddpm_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddpm") / "ckpt.pt"
    torch.manual_seed(0)
    torch.save({"ema_model": UNet(**TINY).state_dict(), "step": 3}, path)
    return path


def _flag_line(name: str, value) -> str:
    if isinstance(value, list):
        return "\n".join(f"--{name}={v}" for v in value)
    return f"--{name}={value}"


@FUZZ
@given(overrides=st.dictionaries(st.sampled_from(sorted(MODEL_FLAGS)), NEAR_VALID, max_size=3))
def test_pytorch_ddpm_flagfile_gives_a_model_or_a_qmia_error(tmp_path, ddpm_checkpoint, overrides):
    flags = {**TINY, "beta_1": 1e-4, "beta_T": 0.02}
    flags.pop("in_ch")
    flags.update(overrides)
    path = tmp_path / f"flags{abs(hash(_json_text(overrides)))}.txt"
    path.write_text("\n".join(_flag_line(name, value) for name, value in flags.items()) + "\n")
    _load_or_error(lambda: load_model(ddpm_checkpoint, format="pytorch-ddpm", config=path))


@FUZZ
@given(overrides=st.dictionaries(st.sampled_from(sorted(TINY) + ["beta_1", "beta_T", "mean_type", "var_type"]),
                                 NEAR_VALID, max_size=3))
def test_pytorch_ddpm_dict_config_gives_a_model_or_a_qmia_error(ddpm_checkpoint, overrides):
    config = {**TINY, **overrides}
    _load_or_error(lambda: load_model(ddpm_checkpoint, format="pytorch-ddpm", config=config))


def test_memory_bound_catches_an_allocation_beyond_it():
    # The bound the fuzzers rely on: an allocation larger than it fails instead of succeeding.
    with pytest.raises((RuntimeError, MemoryError)), _memory_bound(64 << 20):
        torch.empty(int(math.ceil((256 << 20) / 4)), dtype=torch.float32)
