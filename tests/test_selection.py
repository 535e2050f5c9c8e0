"""Regressor selection on public data only: candidates, held-out pinball loss, determinism, explicit overrides, budgets."""
from __future__ import annotations

import numpy as np
import pytest

from qmia_fast.attack import QuantileAttack, synthetic_problem
from qmia_fast.regress import selection

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(width=4, depth=1, head_width=8, epochs=2, batch_size=64)


@pytest.fixture(scope="module")
def public():
    return synthetic_problem(600, 0, seed=7)


def test_auto_is_deterministic_for_a_seed_and_records_every_candidate(public):
    first = QuantileAttack(n_models=3, seed=3, **TINY).fit(public.images, public.scores)
    again = QuantileAttack(n_models=3, seed=3, **TINY).fit(public.images, public.scores)
    record = first.fit_info["selection"]
    assert record == {**again.fit_info["selection"], "candidates": record["candidates"]}
    assert [c["validation_pinball_loss"] for c in record["candidates"]] == \
           [c["validation_pinball_loss"] for c in again.fit_info["selection"]["candidates"]]
    names = [c["name"] for c in record["candidates"]]
    assert names[0] == selection.AUTO_CANDIDATES[0] and record["requested"] == "auto"
    fitted = [c for c in record["candidates"] if c["skipped"] is None]
    assert len(fitted) >= 2 and all(np.isfinite(c["validation_pinball_loss"]) for c in fitted)
    assert first.config.to_dict() == record["chosen_settings"]
    # Each later candidate was compared with the choice so far, image by image; it won only if clearly better.
    chosen = fitted[0]["name"]
    for candidate in fitted[1:]:
        comparison = candidate["comparison"]
        assert comparison["against"] == chosen and comparison["n"] > 0
        if -comparison["difference"] > selection.SWITCH_STANDARD_ERRORS * comparison["standard_error"]:
            chosen = candidate["name"]
    assert record["chosen"] == chosen
    # The default budget is in estimated work, so what was skipped says why, with no clock in it.
    assert all("default budget" in c["skipped"] for c in record["candidates"] if c["skipped"])


def test_selection_never_sees_the_calibration_part(public):
    attack = QuantileAttack(n_models=3, seed=1, **TINY).fit(public.images, public.scores)
    n_cal = attack.fit_info["calibration"]["n_calibration"]
    for candidate in attack.fit_info["selection"]["candidates"]:
        if candidate["skipped"] is None:
            assert candidate["n_validation"] <= 600 - n_cal


def test_explicit_options_override_every_candidate(public):
    attack = QuantileAttack(n_models=3, width=6, ensemble="full", **{k: v for k, v in TINY.items() if k != "width"})
    attack.fit(public.images, public.scores)
    for candidate in attack.fit_info["selection"]["candidates"]:
        assert candidate["settings"]["width"] == 6 and candidate["settings"]["ensemble"] == "full"
    # "full-wide" and "paper" became copies of "full" (and were dropped), so no name appears twice.
    names = [c["name"] for c in attack.fit_info["selection"]["candidates"]]
    assert "full-wide" not in names and "paper" not in names and len(names) == len(set(names))


def test_a_named_regressor_fits_that_setting_alone(public):
    attack = QuantileAttack(n_models=2, regressor="full-gaussian", **TINY).fit(public.images, public.scores)
    record = attack.fit_info["selection"]
    assert record["chosen"] == "full-gaussian" and len(record["candidates"]) == 1
    assert attack.config.head == "gaussian" and attack.config.ensemble == "full"


def test_levels_head_fits_extra_levels_but_decides_at_alpha(public):
    attack = QuantileAttack(alpha=0.02, n_models=2, regressor="full-levels", **TINY).fit(public.images, public.scores)
    assert attack.fitted_levels == [0.02, 0.06, 0.2, 0.5] and attack.levels == [0.02]
    result = attack.predict(public.images, public.scores)
    assert result.thresholds.shape == (2, 600)


def test_a_seconds_budget_skips_what_would_not_fit(public):
    attack = QuantileAttack(n_models=3, fit_budget=1e-3, **TINY).fit(public.images, public.scores)
    record = attack.fit_info["selection"]
    assert record["budget"] == {"kind": "seconds", "seconds": 1e-3}
    fitted = [c for c in record["candidates"] if c["skipped"] is None]
    assert len(fitted) == 1 and record["chosen"] == fitted[0]["name"]  # the first always runs
    assert all("--fit-budget" in c["skipped"] for c in record["candidates"][1:])


def test_a_noise_win_does_not_displace_the_earlier_candidate():
    from qmia_fast.regress.config import RegressorConfig

    first = selection.Candidate("a", RegressorConfig(), [0.01], image_index=np.arange(100),
                                image_loss=np.linspace(0.0, 1.0, 100))
    noisy = np.random.default_rng(0).normal(0.0, 1.0, 100)
    slightly = selection.Candidate("b", RegressorConfig(), [0.01], image_index=np.arange(100),
                                   image_loss=first.image_loss - 0.01 + 0.1 * noisy)
    clearly = selection.Candidate("c", RegressorConfig(), [0.01], image_index=np.arange(100),
                                  image_loss=first.image_loss - 0.2 + 0.1 * noisy)
    for candidate, wins in ((slightly, False), (clearly, True)):
        result = selection.compare(candidate, first)
        assert result["n"] == 100 and result["difference"] < 0
        assert (-result["difference"] > selection.SWITCH_STANDARD_ERRORS * result["standard_error"]) == wins


def test_fine_stem_halves_the_automatic_patch():
    config = selection.named_config("full-fine", {}, (28, 28))
    assert config.stem_stride == 2 and selection.named_config("full", {}, (28, 28)).stem_stride == 4
    assert selection.named_config("full-fine", {"stem_stride": 4}, (28, 28)).stem_stride == 4


# --- the CLI ----------------------------------------------------------------------------------

def _attack(tmp_path, *extra):
    from click.testing import CliRunner

    from qmia_fast.cli import cli

    args = ["attack", "--max-per-set", "120", "--method", "loss", "--t", "100", "--reg-epochs", "1", "--n-models",
            "2", "--no-progress", "--out", str(tmp_path / "out"), *extra]
    return CliRunner().invoke(cli, args)


def test_cli_defaults_calibrate_and_select_and_say_so(tmp_path):
    import json

    result = _attack(tmp_path, "--alpha", "0.05")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    calibration = report["fit"]["calibration"]
    assert calibration["method"] == "conformal" and calibration["n_calibration"] == 24   # 20% of 120 public
    assert report["config"]["spec"]["attack"]["regressor"] == "auto"
    assert report["fit"]["selection"]["chosen"] in selection.NAMED
    assert "calibration: split conformal on 24 public images" in " ".join(result.output.split())


def test_cli_raw_rule_and_too_small_public_set_warn(tmp_path):
    import json

    result = _attack(tmp_path, "--regressor", "paper", "--fit-budget", "30")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    # 120 public images cannot calibrate at alpha = 0.01 (99 needed, at most half held out): said, not silent.
    assert report["fit"]["calibration"]["method"] == "none"
    assert any("conformal calibration at alpha = 0.01 needs at least 99" in w for w in report["warnings"])
    assert "calibration: none (the public set has 120 images" in " ".join(result.output.split())


@pytest.mark.parametrize("args, needle", [
    (["--calibration", "cross"], "--calibration"),
    (["--regressor", "huge"], "--regressor"),
    (["--fit-budget", "0"], "--fit-budget"),
])
def test_cli_bad_attack_options_exit_2(tmp_path, args, needle):
    result = _attack(tmp_path, *args)
    assert result.exit_code == 2 and needle in result.output
