"""Reliability guarantees end to end: torchrun sharding is bit-identical, kill -9 resumes exactly, outputs are atomic."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qmia_fast import atomic_io
from qmia_fast.errors import ResumeMismatchError
from qmia_fast.models import save_model
from qmia_fast.pipeline.resumable import ChunkStore
from qmia_fast.schedule import linear_schedule

from model_helpers import tiny_unet

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    save_model(tiny_unet(3, 16, perturb=0), root / "model", linear_schedule())
    images = np.random.default_rng(0).integers(0, 256, size=(96, 3, 16, 16), dtype=np.uint8)
    np.save(root / "images.npy", images)
    np.save(root / "members.npy", np.arange(0, 96, 2))
    return root


def qmia(*args, cwd=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "qmia_fast", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600, **kwargs)


def score_args(root: Path, out: Path, *extra, batch: int = 8):
    return ["score", "--model", root / "model", "--data", root / "images.npy", "--out", out, "--device", "cpu",
            "--batch-size", str(batch), "--unet-batch", "8", "--chunk-size", "16", "--no-progress", *extra]


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_give_the_same_bits_as_one_process(job, tmp_path):
    one = tmp_path / "one.npy"
    done = qmia(*score_args(job, one, "--method", "loss", "--seed", "11", batch=64))
    assert done.returncode == 0, done.stderr
    two = tmp_path / "two.npy"
    # Two ranks, another batch size and two threads per rank: still the same bits.
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "-m", "qmia_fast", *map(str, score_args(job, two, "--method", "loss", "--seed", "11", batch=5))]
    done = subprocess.run(launch, capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": "2"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 ranks" in done.stderr
    np.testing.assert_array_equal(np.load(two), np.load(one))


@pytest.mark.slow
def test_sigkill_midway_then_rerun_equals_an_uninterrupted_run(job, tmp_path):
    reference = tmp_path / "reference.npy"
    done = qmia(*score_args(job, reference))
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed.npy"
    chunks = tmp_path / "killed.npy.chunks"
    proc = subprocess.Popen([sys.executable, "-m", "qmia_fast", *map(str, score_args(job, out))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(chunks.glob("chunk_*.npy"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make the job bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    finished = sorted(chunks.glob("chunk_*.npy"))
    assert 2 <= len(finished) < 6 and not out.exists()

    again = qmia(*score_args(job, out))
    assert again.returncode == 0, again.stderr
    assert f"resuming: {len(finished)} of 6 chunks already scored" in again.stderr
    np.testing.assert_array_equal(np.load(out), np.load(reference))
    assert not chunks.exists()


@pytest.mark.slow
def test_changed_config_or_data_is_refused_not_mixed(job, tmp_path):
    out = tmp_path / "s.npy"
    chunks = tmp_path / "s.npy.chunks"
    # Leave partial chunks behind (--keep-chunks keeps the folder after success too).
    assert qmia(*score_args(job, out, "--keep-chunks")).returncode == 0
    assert (chunks / "manifest.json").exists()
    out.unlink()  # as if the run had been killed before writing its output
    changed = qmia(*score_args(job, out, "--t-sec", "50"))
    assert changed.returncode == 2
    errors = [line for line in changed.stderr.splitlines() if line.startswith("qmia-fast: error:")]
    assert len(errors) == 1 and "Traceback" not in changed.stderr
    assert "different run" in errors[0] and "score" in errors[0] and "--overwrite" in errors[0]
    other = job / "images_other.npy"
    np.save(other, np.load(job / "images.npy")[::-1].copy())
    changed_data = qmia(*score_args(job, out)[:4], other, *score_args(job, out)[5:])
    assert changed_data.returncode == 2 and "data" in changed_data.stderr
    assert qmia(*score_args(job, out, "--t-sec", "50", "--overwrite")).returncode == 0


def test_chunk_store_rejects_a_foreign_manifest(tmp_path):
    ChunkStore(tmp_path / "c", {"score": {"method": "secmi"}}, 10, 5).open()
    with pytest.raises(ResumeMismatchError, match="method|score"):
        ChunkStore(tmp_path / "c", {"score": {"method": "loss"}}, 10, 5).open()
    (tmp_path / "c" / "manifest.json").write_text("{ not json")
    with pytest.raises(ResumeMismatchError, match="unreadable"):
        ChunkStore(tmp_path / "c", {"score": {"method": "secmi"}}, 10, 5).open()


def test_a_truncated_or_altered_chunk_is_recomputed_not_trusted(tmp_path):
    store = ChunkStore(tmp_path / "c", {"k": 1}, 15, 5).open()
    store.write_chunk(0, np.arange(5.0))
    store.chunk_path(1).write_bytes(b"\x93NUMPY")  # as if a non-atomic writer died
    assert store.load_chunk(0) is not None and store.load_chunk(1) is None
    # A valid .npy put in place of a chunk (or a chunk with no recorded hash) is not reused.
    store.write_chunk(2, np.arange(5.0))
    np.save(store.chunk_path(2), np.arange(5.0) + 1)
    assert store.load_chunk(2) is None
    np.save(store.chunk_path(1), np.arange(5.0))
    assert store.load_chunk(1) is None


def test_atomic_write_never_leaves_a_partial_file_under_the_final_name(tmp_path):
    final = tmp_path / "report.json"
    atomic_io.write_json(final, {"complete": True})
    with pytest.raises(RuntimeError):
        with atomic_io.atomic_path(final) as tmp:
            tmp.write_text('{"complete": fal')
            raise RuntimeError("killed mid-write")
    assert json.loads(final.read_text()) == {"complete": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert oct(final.stat().st_mode & 0o777) != oct(0o600)


@pytest.mark.slow
def test_sigkilled_attack_reruns_to_complete_valid_outputs(job, tmp_path):
    out = tmp_path / "attack"
    args = ["attack", "--model", job / "model", "--data", job / "images.npy", "--members", job / "members.npy",
            "--device", "cpu", "--batch-size", "8", "--unet-batch", "8", "--chunk-size", "16", "--n-models", "3",
            "--reg-epochs", "2",
            "--no-progress", "--out", out]
    proc = subprocess.Popen([sys.executable, "-m", "qmia_fast", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / "scores.chunks").glob("chunk_*.npy"))) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    for path in out.glob("*"):
        assert path.name.startswith(".") or path.name == "scores.chunks", f"{path.name} exists before the run ended"
    done = qmia(*args)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["n_members"] == 48
    with np.load(out / "scores.npz") as arrays:
        assert len(arrays["labels"]) == report["n_samples"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["attack.pt", "leakpro.json", "report.json", "roc.png", "roc_log.png", "score_histogram.png", "scores.csv",
         "scores.csv.json", "scores.npz", "threshold_scatter.png"]
