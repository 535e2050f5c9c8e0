"""Inputs of the wrong type or kind are one-line QmiaErrors: API specs, load_model, --config values, flagfile typos; ignored options are said."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import qmia_fast as qf
from qmia_fast.cli import cli
from qmia_fast.errors import ConfigError, QmiaError
from qmia_fast.models.flagfile import parse_flagfile
from qmia_fast.pipeline import AuditSpec, DataSpec, ModelSpec, ScoreJob, ScoreSpec, run_audit, run_score
from qmia_fast.pipeline.audit import subsample
from qmia_fast.seeds import derive_seed


@pytest.mark.parametrize("make", [
    lambda: run_audit(AuditSpec(out=123)),
    lambda: run_audit("not a spec"),
    lambda: run_score(ScoreJob(out=["a"])),
    lambda: AuditSpec(model="builtin"),
    lambda: ModelSpec(path=5),
    lambda: DataSpec(path=[np.zeros((2, 1, 8, 8))]),
    lambda: ScoreSpec(device=0),
    lambda: ScoreSpec(fused="yes"),
    lambda: AuditSpec(overwrite="no"),
    lambda: qf.load_model(5),
    lambda: qf.load_model("builtin", format=["qmia"]),
    lambda: qf.load_model("builtin", trust_checkpoint="yes"),
])
def test_api_arguments_of_the_wrong_type_are_qmia_errors(make):
    """A wrong type is a QmiaError naming the argument, not a TypeError or AttributeError from deep inside."""
    with pytest.raises(QmiaError):
        make()


@pytest.mark.parametrize("values, needle", [
    ({"seed": True}, "seed"),
    ({"max_per_set": 10.7}, "max_per_set"),
    ({"unet_batch": 8.0}, "whole number"),
    ({"n_models": False}, "n_models"),
])
def test_config_values_are_not_coerced_across_kinds(tmp_path, values, needle):
    """--config `seed: true` is not seed 1, `max_per_set: 10.7` is not 10: each is a one-line error."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps(values))
    result = CliRunner().invoke(cli, ["attack", "--config", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_config_that_is_a_fifo_is_named_as_one(tmp_path):
    """--config naming a FIFO says it is a FIFO (and never waits for a writer), not 'no such file'."""
    fifo = tmp_path / "c.json"
    os.mkfifo(fifo)
    result = CliRunner().invoke(cli, ["attack", "--config", str(fifo), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "FIFO" in result.stderr and "no such file" not in result.stderr


def test_a_misspelt_flag_in_a_flagfile_is_named_with_its_line():
    """--chmult=1 is reported as an unknown flag on its line (with the flag it probably means), not as 32 missing
    weights; the training program's own flags are still read past."""
    with pytest.raises(ConfigError, match=r"line 3: unknown flag --chmult; did you mean --ch_mult"):
        parse_flagfile("--ch=32\n--lr=0.0002\n--chmult=1\n")
    assert parse_flagfile("--batch_size=128\n--logdir=./logs\n--notrain\n--ch=32\n--verbosity=0\n") == {"ch": 32}


def test_options_the_method_does_not_read_are_warned_about():
    """--method secmi --t 50: t does not apply to secmi; one warning says it is ignored."""
    from qmia_fast.models import EpsModel
    from qmia_fast.schedule import linear_schedule

    from model_helpers import tiny_unet

    model = EpsModel(tiny_unet(1, 8, attn=()), linear_schedule(), (1, 8, 8), {}, format="test")
    with pytest.warns(UserWarning, match=r"t = 50 does not apply to method secmi"):
        settings, _ = ScoreSpec(method="secmi", t=50).resolve(model)
    assert settings["t_sec"] == 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScoreSpec(method="loss", t=50).resolve(model)


def test_max_per_set_subsamples_use_the_derived_seed_streams():
    """audit.subsample draws with seeds.derive_seed (one stream per set), like every other seeded choice."""
    indices = np.arange(1000)
    drawn = subsample(indices, 10, seed=3, name="members")
    assert len(drawn) == 10 and np.all(np.diff(drawn) > 0)
    assert not np.array_equal(drawn, subsample(indices, 10, seed=3, name="public"))
    rng = np.random.default_rng([3, len("members"), sum(map(ord, "members"))])  # the former rule
    assert not np.array_equal(drawn, np.sort(rng.choice(indices, size=10, replace=False)))
    assert derive_seed(3, 7, 1) != derive_seed(3, 7, 2)


def test_score_file_names_are_relative_to_the_data_folder(tmp_path):
    """score writes image names relative to --data, as an audit does, never the absolute --data prefix."""
    from PIL import Image

    from model_helpers import tiny_unet
    from qmia_fast.models import save_model
    from qmia_fast.schedule import linear_schedule

    save_model(tiny_unet(1, 8, attn=(), perturb=0), tmp_path / "model", linear_schedule())
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8), i * 10, np.uint8)).save(tmp_path / "imgs" / "sub" / f"{i}.png")
    result = CliRunner().invoke(cli, ["score", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "imgs"),
                                      "--out", str(tmp_path / "s.npz"), "--method", "loss", "--device", "cpu",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "s.npz") as saved:
        assert list(saved["files"]) == [f"sub/{i}.png" for i in range(4)]
