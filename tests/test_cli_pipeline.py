"""`qmia-fast score` and `qmia-fast attack` through click's CliRunner: data formats, splits, outputs and one-line errors."""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from qmia_fast.cli import cli
from qmia_fast.models import save_model
from qmia_fast.schedule import linear_schedule
from model_helpers import tiny_unet
from data_builders import cifar_pickle, idx_bytes, png_bytes
from cli_helpers import one_line_error as assert_one_line_error, run

N_IMAGES = 60
SIZE = 8


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny target (1 x 8 x 8 and 3 x 8 x 8) and the same 60 images in every supported data format."""
    root = tmp_path_factory.mktemp("cli")
    for channels in (1, 3):
        save_model(tiny_unet(channels, SIZE, attn=(), perturb=0), root / f"model{channels}", linear_schedule())
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(N_IMAGES, 1, SIZE, SIZE), dtype=np.uint8)
    color = rng.integers(0, 256, size=(N_IMAGES, 3, SIZE, SIZE), dtype=np.uint8)
    np.save(root / "gray_nchw.npy", gray)
    np.save(root / "color_nhwc.npy", color.transpose(0, 2, 3, 1))
    np.save(root / "color_float.npy", color.astype(np.float32) / 255.0)
    np.savez(root / "gray.npz", images=gray)
    (root / "idx").mkdir()
    (root / "idx" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(gray[:, 0])))
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir()
    for b in range(5):
        part = color[b * 12:(b + 1) * 12]
        (cifar / f"data_batch_{b + 1}").write_bytes(cifar_pickle(part, list(range(len(part)))))
    (cifar / "test_batch").write_bytes(cifar_pickle(color[:12], list(range(12))))
    (root / "pngs").mkdir()
    for i in range(N_IMAGES):
        (root / "pngs" / f"{i:03d}.png").write_bytes(png_bytes(color[i].transpose(1, 2, 0)))
    members = np.arange(0, N_IMAGES, 3)
    nonmembers = np.setdiff1d(np.arange(N_IMAGES), members)
    np.savez(root / "secmi_split.npz", mia_train_idxs=members, mia_eval_idxs=nonmembers, ratio=np.array(0.5))
    (root / "own_split.json").write_text(json.dumps({"members": members.tolist(),
                                                     "public": nonmembers[::2].tolist(),
                                                     "holdout": nonmembers[1::2].tolist()}))
    np.save(root / "members.npy", members)
    return {"root": root, "gray": gray, "color": color}






FAST = ["--t-sec", "20", "--k", "10", "--batch-size", "16", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("data,model,extra", [
    ("gray_nchw.npy", "model1", []),
    ("gray.npz", "model1", []),
    ("idx", "model1", []),
    ("color_nhwc.npy", "model3", []),
    ("color_float.npy", "model3", ["--layout", "nchw"]),
    ("cifar-10-batches-py", "model3", []),
    ("pngs", "model3", []),
])
def test_score_reads_every_data_format_the_same(workspace, tmp_path, data, model, extra):
    root = workspace["root"]
    out = tmp_path / "scores.npy"
    run("score", "--model", root / model, "--data", root / data, "--out", out, *FAST, *extra)
    values = np.load(out)
    assert values.shape == (N_IMAGES,) and np.isfinite(values).all() and (values > 0).all()
    # Every format holds the same pixels, so it gives the same scores as the reference array.
    reference = tmp_path / "reference.npy"
    source = "gray_nchw.npy" if model == "model1" else "color_nhwc.npy"
    run("score", "--model", root / model, "--data", root / source, "--out", reference, *FAST)
    np.testing.assert_array_equal(values, np.load(reference))
    assert not (tmp_path / "scores.npy.chunks").exists()


def test_score_outputs_npz_and_csv_and_subsets(workspace, tmp_path):
    root = workspace["root"]
    base = ["score", "--model", root / "model1", "--data", root / "gray_nchw.npy", *FAST]
    run(*base, "--out", tmp_path / "all.npy")
    everything = np.load(tmp_path / "all.npy")
    run(*base, "--split", root / "secmi_split.npz", "--subset", "members", "--out", tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        np.testing.assert_array_equal(f["indices"], np.arange(0, N_IMAGES, 3))
        # A subset is scored under its global sample indices: the same bits as inside the whole set.
        np.testing.assert_array_equal(f["scores"], everything[f["indices"]])
        metadata = json.loads(str(f["metadata"]))
        assert metadata["score"]["method"] == "secmi" and metadata["direction"] == "lower_is_member"
        assert "t" not in metadata["score"] and metadata["score"]["t_sec"] == 20  # only the method's settings
        np.testing.assert_array_equal(f["labels"], np.ones(len(f["indices"])))
    run(*base, "--members", root / "members.npy", "--subset", "holdout", "--out", tmp_path / "h.csv")
    lines = (tmp_path / "h.csv").read_text().splitlines()
    # The CSV is plain (csv.DictReader and pandas read it as it is); its metadata is in h.csv.json beside it.
    assert lines[0] == "index,score,label"
    sidecar = json.loads((tmp_path / "h.csv.json").read_text())
    assert sidecar["metadata"]["direction"] == "lower_is_member" and sidecar["sidecar_of"] == "h.csv"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 20
    for index, value, label in rows:
        assert float(value) == everything[int(index)] and label == "0"


@pytest.mark.parametrize("split_option", [["--split", "secmi_split.npz"], ["--split", "own_split.json"],
                                          ["--members", "members.npy"]])
def test_attack_with_split_files_writes_every_output(workspace, tmp_path, split_option):
    root = workspace["root"]
    out = tmp_path / "out"
    result = run("attack", "--model", root / "model1", "--data", root / "gray_nchw.npy",
                 split_option[0], root / split_option[1], "--reg-epochs", "2", "--n-models", "3",
                 "--out", out, *FAST)
    for name in ("report.json", "scores.npz", "roc.png", "roc_log.png", "attack.pt"):
        assert (out / name).is_file(), name
    assert not (out / "scores.chunks").exists()
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"qmia_bag", "single_regressor", "marginal_threshold"}
    assert report["config"]["score"]["method"] == "secmi" and report["config"]["attack"]["n_models"] == 3
    assert report["sets"]["members"] == 20
    assert "QMIA-bag" in result.output and "marginal threshold" in result.output
    with np.load(out / "scores.npz") as f:
        assert f["labels"].sum() == 20 and len(f["labels"]) == 20 + report["sets"]["holdout"]


def test_attack_config_file_and_command_line_override(workspace, tmp_path):
    root = workspace["root"]
    config = tmp_path / "attack.yaml"
    config.write_text(f"model: {root / 'model1'}\ndata: {root / 'gray_nchw.npy'}\nmembers: {root / 'members.npy'}\n"
                      "t-sec: 20\nk: 10\nn_models: 3\nreg_epochs: 1\nalpha: 0.05\ndevice: cpu\nprogress: false\n")
    out = tmp_path / "out"
    run("attack", "--config", config, "--alpha", "0.1", "--out", out)
    report = json.loads((out / "report.json").read_text())
    assert report["alpha"] == 0.1 and report["config"]["spec"]["attack"]["alpha"] == 0.1  # the command line wins
    assert "alpha" not in report["config"]["attack"] and "alpha" not in report["methods"]["qmia_bag"]["decision"]
    assert report["config"]["attack"]["n_models"] == 3 and report["config"]["score"]["t_sec"] == 20  # from the file
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no_such_option": 1}))
    assert_one_line_error(CliRunner().invoke(cli, ["attack", "--config", str(bad)]), "no_such_option")


@pytest.mark.parametrize("args,needles", [
    (["score", "--data", "{root}/nope.npy", "--out", "{tmp}/s.npy"], ["--data", "nope.npy"]),
    (["score", "--model", "{root}/nope", "--data", "{root}/gray_nchw.npy", "--out", "{tmp}/s.npy"], ["nope"]),
    (["score", "--model", "{root}/model1", "--data", "{root}/gray_nchw.npy", "--out", "{tmp}/s.txt"], [".npy"]),
    (["score", "--model", "{root}/model3", "--data", "{root}/gray_nchw.npy", "--out", "{tmp}/s.npy"], ["channel"]),
    (["score", "--model", "{root}/model1", "--data", "{root}/gray_nchw.npy", "--out", "{tmp}/s.npy",
      "--t-sec", "25"], ["multiple of k"]),
    (["score", "--model", "{root}/model1", "--data", "{root}/gray_nchw.npy", "--out", "{tmp}/s.npy",
      "--method", "loss", "--t", "1000"], ["outside"]),
    (["score", "--model", "{root}/model1", "--data", "{root}/gray_nchw.npy", "--out", "{tmp}/s.npy",
      "--batch-size", "0"], ["--batch-size"]),
    (["score", "--model", "{root}/model1", "--data", "{root}/gray_nchw.npy", "--out", "{tmp}/s.npy",
      "--seed", "-3"], ["seed"]),
    (["score", "--model", "{root}/model1", "--data", "{root}/gray_nchw.npy", "--out", "{tmp}/s.npy",
      "--method", "nope"], ["nope"]),
    (["score", "--model", "{root}/model1", "--data", "{root}/gray_nchw.npy", "--out", "{tmp}/s.npy",
      "--subset", "members"], ["--split"]),
    (["score", "--model", "{root}/model1", "--data", "{root}/malformed.npy", "--out", "{tmp}/s.npy"],
     ["malformed.npy"]),
    (["score", "--model", "{root}/model1", "--data", "{root}/gray_nchw.npy", "--split", "{root}/bad_split.npz",
      "--out", "{tmp}/s.npy"], ["bad_split.npz"]),
    (["attack", "--model", "{root}/model1", "--data", "{root}/gray_nchw.npy", "--out", "{tmp}/o"], ["--split"]),
    (["attack", "--model", "{root}/model1", "--data", "{root}/gray_nchw.npy", "--members", "{root}/members.npy",
      "--alpha", "1.5", "--out", "{tmp}/o"], ["alpha"]),
    (["attack", "--no-such-option"], ["no-such-option"]),
    (["attack", "--model", "{root}/model1", "--data", "{root}/gray_nchw.npy", "--members", "{root}/members.npy",
      "--model-format", "torchscript", "--out", "{tmp}/o"], ["model1"]),
])
def test_bad_input_exits_2_with_one_line(workspace, tmp_path, args, needles):
    root = workspace["root"]
    (root / "malformed.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    np.savez(root / "bad_split.npz", mia_train_idxs=np.array([0, 1, 999]), mia_eval_idxs=np.array([2, 3]))
    argv = [a.format(root=root, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(cli, argv)
    assert_one_line_error(result, *needles)


def test_demo_runs_with_no_model_or_data_options(tmp_path):
    """`qmia-fast attack` on the shipped demo (reduced: 40 images per set, a short bag fit)."""
    out = tmp_path / "demo"
    result = run("attack", "--max-per-set", "40", "--reg-epochs", "2", "--n-models", "3", "--no-progress",
                 "--out", out)
    report = json.loads((out / "report.json").read_text())
    assert report["sets"] == {"members": 40, "public": 40, "holdout": 40}
    assert report["model"]["format"] == "qmia"
    assert report["config"]["score"]["method"] == "loss"  # the model folder's recommended score
    assert "QMIA-bag" in result.output


def test_python_m_runs_the_same_cli():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "qmia_fast", "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0
    for command in ("attack", "score", "train-target", "evaluate", "bench", "info"):
        assert command in proc.stdout


def test_model_recommended_score_settings_apply_unless_given(workspace, tmp_path):
    root = workspace["root"]
    folder = save_model(tiny_unet(1, SIZE, attn=(), seed=1, perturb=0), tmp_path / "recommending", linear_schedule(),
                        metadata={"recommended_score": {"method": "loss", "t": 300, "why": "test target"}})
    base = ["score", "--model", folder, "--data", root / "gray_nchw.npy", "--device", "cpu", "--no-progress"]
    result = run(*base, "--out", tmp_path / "rec.npz")
    with np.load(tmp_path / "rec.npz") as f:
        score_config = json.loads(str(f["metadata"]))["score"]
    assert score_config["method"] == "loss" and score_config["t"] == 300
    assert "recommended score settings (method=loss, t=300): test target" in result.stderr
    run(*base, "--method", "secmi", "--t-sec", "20", "--out", tmp_path / "explicit.npz")
    with np.load(tmp_path / "explicit.npz") as f:
        score_config = json.loads(str(f["metadata"]))["score"]
    # The recommendation is for loss only; secmi's own settings are listed, t does not apply to it.
    assert score_config["method"] == "secmi" and score_config["t_sec"] == 20 and "t" not in score_config
