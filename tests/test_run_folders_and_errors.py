"""A run folder holds one whole run, bad settings are one-line errors before any work, overflows are redone or refused, warnings are one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import qmia_fast as qf
from qmia_fast.attack import QuantileAttack
from qmia_fast.cli import cli
from qmia_fast.errors import ConfigError, InputError, OutputError
from qmia_fast.pipeline import AttackSpec, AuditSpec, DataSpec, ModelSpec, ScoreSpec, run_audit, verify_audit_folder

from model_helpers import random_images, tiny_model, write_tiny_target
import cli_helpers
from cli_helpers import invoke


# --- an output folder is one whole run ---------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_tiny_target(tmp_path_factory.mktemp("small"), 60, member_step=3, perturb=0)


def small_spec(root, out, seed=0, overwrite=False):
    return AuditSpec(model=ModelSpec(str(root / "model")),
                     data=DataSpec(str(root / "images.npy"), members=str(root / "members.npy")),
                     score=ScoreSpec(method="loss", device="cpu", unet_batch=8),
                     attack=AttackSpec(n_models=3, reg_epochs=1), seed=seed, out=str(out), overwrite=overwrite)


def test_a_finished_audit_is_refused_without_overwrite(small, tmp_path):
    out = tmp_path / "audit"
    run_audit(small_spec(small, out))
    before = (out / "report.json").read_bytes()
    with pytest.raises(OutputError, match="finished audit.*--overwrite"):
        run_audit(small_spec(small, out, seed=1))
    assert (out / "report.json").read_bytes() == before
    result = CliRunner().invoke(cli, ["attack", "--model", str(small / "model"), "--data", str(small / "images.npy"),
                                      "--members", str(small / "members.npy"), "--out", str(out), "--no-progress"])
    assert result.exit_code == 2 and "--overwrite" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_rerun_killed_while_writing_leaves_no_report_describing_other_files(small, tmp_path, monkeypatch):
    out = tmp_path / "audit"
    run_audit(small_spec(small, out))
    verify_audit_folder(out)

    def killed(self, path):
        raise KeyboardInterrupt  # as if the process died after scores.npz and the plots

    monkeypatch.setattr(QuantileAttack, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        run_audit(small_spec(small, out, seed=1, overwrite=True))
    assert not (out / "report.json").exists()  # visibly unfinished, never a mix
    with pytest.raises(OutputError, match="unfinished"):
        verify_audit_folder(out)
    monkeypatch.undo()
    run_audit(small_spec(small, out, seed=1, overwrite=True))
    report = verify_audit_folder(out)
    assert report["seed"] == 1 and "attack.pt" in report["files"]


def test_verify_detects_a_file_from_another_run(small, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_audit(small_spec(small, a, seed=0))
    run_audit(small_spec(small, b, seed=1))
    (a / "attack.pt").write_bytes((b / "attack.pt").read_bytes())
    with pytest.raises(OutputError, match="mixes two runs"):
        verify_audit_folder(a)


# --- one-line errors, found before any work --------------------------------------------------

def one_line_error(args, *needles):
    return cli_helpers.one_line_error(invoke(*args), *needles)


def test_attack_out_that_is_a_file_is_refused_before_work(small, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    one_line_error(["attack", "--model", small / "model", "--data", small / "images.npy", "--members",
                    small / "members.npy", "--out", blocker], "not a folder")
    one_line_error(["attack", "--model", small / "model", "--data", small / "images.npy", "--members",
                    small / "members.npy", "--out", blocker / "sub"], "is a file")


def test_score_out_that_is_a_folder_is_refused_before_scoring(small, tmp_path):
    folder = tmp_path / "scores.npy"
    folder.mkdir()
    one_line_error(["score", "--model", small / "model", "--data", small / "images.npy", "--out", folder],
                   "is a folder")
    assert not (tmp_path / "scores.npy.chunks").exists()


def test_a_full_disk_is_a_one_line_error(small, tmp_path, monkeypatch):
    import errno

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", no_space)  # where a full disk shows up: flushing a written file
    one_line_error(["score", "--model", small / "model", "--data", small / "images.npy", "--out",
                    tmp_path / "s.npy", "--method", "loss", "--no-progress"], "No space left", "s.npy")


@pytest.mark.parametrize("values,needle", [
    ({"max_per_set": [1, 2]}, "max_per_set"),
    ({"out": ["a", "b"]}, "out"),
    ({"n_models": {"a": 1}}, "n_models"),
    ({"overwrite": "yes"}, "overwrite"),
    ({"alpha": "lots"}, "alpha"),
])
def test_config_values_of_the_wrong_kind_are_one_line_errors(small, tmp_path, values, needle):
    config = tmp_path / "audit.json"
    config.write_text(json.dumps(values))
    one_line_error(["attack", "--config", config, "--model", small / "model"], needle)
    assert not any(p.name.startswith("[") for p in tmp_path.iterdir())


@pytest.mark.parametrize("p", ["1e-300", "200", "nan"])
def test_pia_exponents_that_overflow_or_underflow_are_refused(small, tmp_path, p):
    one_line_error(["score", "--model", small / "model", "--data", small / "images.npy", "--out",
                    tmp_path / "s.npy", "--method", "pia", "--p", p], "p")
    assert not (tmp_path / "s.npy").exists()


def test_a_non_finite_fp32_score_is_an_error_not_an_output(monkeypatch):
    model = tiny_model(1, 8)
    scorer = qf.Scorer(model, "loss", device="cpu", unet_batch=4)
    scorer = qf.Scorer(model, "loss", device="cpu", unet_batch=4, precision="fp32")
    monkeypatch.setattr(scorer, "_compute", lambda raw, samples, cond, inputs: torch.full((raw.shape[0],), float("inf")))
    with pytest.raises(qf.QmiaError, match="not finite"):
        scorer.score(random_images(4, channels=1))


def test_a_half_precision_overflow_is_recomputed_in_fp32_and_counted(monkeypatch):
    model = tiny_model(1, 8)
    scorer = qf.Scorer(model, "loss", device="cpu", unet_batch=2, precision="bf16")
    exact = qf.Scorer(model, "loss", device="cpu", unet_batch=2, precision="fp32", fast_layers=False)
    real = scorer._compute

    def overflow_once(raw, samples, cond, inputs):
        out = real(raw, samples, cond, inputs)
        if scorer._force is None and int(samples[0]) == 2:  # the second micro-batch overflows at bf16
            out = out.clone().fill_(float("inf"))
        return out

    monkeypatch.setattr(scorer, "_compute", overflow_once)
    images = random_images(6, channels=1)
    values = scorer.score(images)
    assert scorer.recomputed_fp32 == 1 and np.isfinite(values).all()
    np.testing.assert_allclose(values[2:4], exact.score(images)[2:4], rtol=1e-5)


# --- the attack's own inputs ------------------------------------------------------------------

def test_quantile_attack_seeds_share_the_cli_bound():
    QuantileAttack(seed=2**63 - 1)
    for bad in (2**63, 2**64, -1):
        with pytest.raises(ConfigError, match="2\\*\\*63"):
            QuantileAttack(seed=bad)


def test_predict_refuses_images_of_another_size_than_fitted():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 1, 8, 8), dtype=np.uint8)
    attack = QuantileAttack(n_models=1, baselines=False, width=4, depth=1, head_width=8, epochs=1,
                            stem_stride=2).fit(images, rng.uniform(1, 2, 40))
    with pytest.raises(InputError, match="fitted on 1x8x8"):
        attack.predict(rng.integers(0, 256, size=(5, 1, 16, 16), dtype=np.uint8), np.ones(5))


def test_warnings_reach_the_user_as_one_line_without_source_lines():
    import subprocess
    import sys

    code = "\n".join([
        "import warnings",
        "import qmia_fast.cli as cli",
        "import qmia_fast.commands.info as info",
        "show = info.info.callback",
        "def noisy(*args, **kwargs):",
        "    warnings.warn('careful:\\n  two lines', UserWarning)",
        "    return show(*args, **kwargs)",
        "info.info.callback = noisy",
        "cli.main(['info'])",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "qmia-fast: warning: careful: two lines" in done.stderr.splitlines()
    assert ".py:" not in done.stderr


@pytest.mark.parametrize("preset", [{}, {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}])
def test_importing_the_package_makes_openmp_threads_sleep_unless_told(preset):
    """The Python API runs as the CLI does: importing qmia_fast before torch sets OMP_WAIT_POLICY=PASSIVE."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(preset)
    code = ("import os, qmia_fast; import torch; "
            "print(os.environ['OMP_WAIT_POLICY'], os.environ.get('OMP_NUM_THREADS', 'unset'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    policy, threads = done.stdout.split()
    if preset:
        assert (policy, threads) == ("ACTIVE", "3")
    else:
        assert (policy, threads) == ("PASSIVE", "unset")  # the thread count stays torch's
