"""A run's identity covers everything that changes a bit of a score, and chunks are bound to it: nothing of another run is ever mixed in."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import qmia_fast as qf
from qmia_fast.errors import ResumeMismatchError
from qmia_fast.models import EpsModel, load_model
from qmia_fast.pipeline import ModelSpec, DataSpec, ScoreJob, ScoreSpec, run_score
from qmia_fast.pipeline.identity import (
    conditions_fingerprint, execution_identity, fingerprint_model, identity_differences, model_identity,
    score_identity,
)
from qmia_fast.pipeline.resumable import ChunkStore, score_indices
from qmia_fast.schedule import linear_schedule

from model_helpers import random_images, tiny_model, tiny_unet, write_tiny_target

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_target(tmp_path_factory.mktemp("identity"), 24)


def job(root, out, **score):
    settings = {"method": "loss", "device": "cpu", "unet_batch": 4, "batch_size": 4, **score}
    return ScoreJob(model=ModelSpec(str(root / "model")), data=DataSpec(str(root / "images.npy")),
                    score=ScoreSpec(**settings), out=str(out), chunk_size=8, keep_chunks=True)


def killed_run(root, out, **score):
    """A finished run whose output is deleted: its chunks are what a run killed before its last write leaves."""
    run_score(job(root, out, **score))
    out.unlink()


def test_fused_is_part_of_the_identity_so_a_resume_never_mixes_fused_and_plain_chunks(files, tmp_path):
    """A run resumed with another --fused setting is refused, naming execution.fused (the fused and plain
    GroupNorm paths round differently)."""
    out = tmp_path / "s.npy"
    killed_run(files, out, fused=True)
    with pytest.raises(ResumeMismatchError, match="execution.fused"):
        run_score(job(files, out, fused=False))
    run_score(job(files, out, fused=True))  # the same setting resumes


def test_another_kind_of_cpu_or_torch_build_is_refused_on_resume(files, tmp_path, monkeypatch):
    """The machine belongs to the identity: a resume on another CPU model (or torch build) is refused."""
    from qmia_fast import machine

    out = tmp_path / "s.npy"
    killed_run(files, out, precision="fp32")
    real = machine.describe()
    monkeypatch.setattr(machine, "describe", lambda: {**real, "cpu": "Some Other CPU"})
    with pytest.raises(ResumeMismatchError, match="machine.cpu"):
        run_score(job(files, out, precision="fp32"))
    monkeypatch.setattr(machine, "describe", lambda: {**real, "torch_git": "0" * 40})
    with pytest.raises(ResumeMismatchError, match="machine.torch_git"):
        run_score(job(files, out, precision="fp32"))


def test_execution_identity_names_every_bit_changing_setting():
    """The run plan's bit identity (precision, micro-batches, layout, layers, fusion) and the condition mode."""
    scorer = qf.Scorer(tiny_model(1, 8, attn=()), "loss", device="cpu", unet_batch=4)
    assert set(execution_identity(scorer)) == {"device_type", "precision", "unet_batch", "micro_batches",
                                               "channels_last", "fast_layers", "fused", "compile", "condition"}


def test_the_whole_resolved_model_is_in_the_identity():
    """The same weights read as an x0-predicting model (mean_type xstart) or with another config are another model."""
    net = tiny_unet(1, 8, attn=())
    eps = EpsModel(net, linear_schedule(), (1, 8, 8), {"unet": {"ch": 8}}, format="pytorch-ddpm")
    xstart = EpsModel(net, linear_schedule(), (1, 8, 8), {"unet": {"ch": 8}}, format="pytorch-ddpm",
                      prediction_type="sample")
    other_config = EpsModel(net, linear_schedule(), (1, 8, 8), {"unet": {"ch": 8}, "var_type": "fixedsmall"},
                            format="pytorch-ddpm")
    other_schedule = EpsModel(net, linear_schedule(T=500), (1, 8, 8), {"unet": {"ch": 8}}, format="pytorch-ddpm")
    moved = EpsModel(net, linear_schedule(), (1, 8, 8), {"unet": {"ch": 8}, "path": "/elsewhere"},
                     format="pytorch-ddpm")
    prints = [fingerprint_model(m) for m in (eps, xstart, other_config, other_schedule)]
    assert len(set(prints)) == 4
    assert identity_differences(model_identity(eps), model_identity(xstart)) == ["prediction_type"]
    # Where a model was read from is provenance, not computation: a moved folder is the same model.
    assert fingerprint_model(moved) == prints[0]


def test_torchscript_archives_with_equal_weights_and_other_code_are_other_models(tmp_path):
    """Two archives with the same parameters and different code never share an identity (hence scores)."""

    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x, t):
            return x * self.scale * 0.5

    class Double(Half):
        def forward(self, x, t):
            return x * self.scale * 2.0

    config = {"image_shape": [1, 8, 8], "schedule": {"kind": "linear", "T": 50}}
    models = []
    for cls in (Half, Double):
        path = tmp_path / f"{cls.__name__}.pt"
        torch.jit.script(cls()).save(str(path))
        models.append(load_model(path, format="torchscript", config=config))
    a, b = (model_identity(m) for m in models)
    assert a["weights"] == b["weights"]
    assert {"code", "archive"} <= set(identity_differences(a, b))


def test_conditions_are_hashed_into_the_identity():
    """Per-sample labels or captions change the identity; their absence is recorded as such."""
    scorer = qf.Scorer(tiny_model(1, 8, attn=()), "loss", device="cpu", unet_batch=4)
    images, idx = random_images(4, channels=1), np.arange(4)
    base = score_identity(scorer, scorer.model, images, idx)
    labels = score_identity(scorer, scorer.model, images, idx, conditions=np.array([0, 1, 2, 3]))
    captions = score_identity(scorer, scorer.model, images, idx, conditions=["a", "b", "c", "d"])
    assert base["conditions"] is None
    assert len({json.dumps(x, sort_keys=True) for x in (base, labels, captions)}) == 3
    assert conditions_fingerprint(["a", "bc"]) != conditions_fingerprint(["ab", "c"])


def test_a_chunk_and_its_hash_copied_from_another_run_or_slot_are_recomputed(tmp_path):
    """The chunk hash covers the run's key and the chunk's position, not only its bytes."""
    store_100 = ChunkStore(tmp_path / "t100", {"score": {"t": 100}}, 10, 5).open()
    store_200 = ChunkStore(tmp_path / "t200", {"score": {"t": 200}}, 10, 5).open()
    store_100.write_chunk(0, np.arange(5.0))
    for name in ("chunk_000000.npy", "chunk_000000.npy.sha256"):
        (store_200.folder / name).write_bytes((store_100.folder / name).read_bytes())
    assert store_100.load_chunk(0) is not None and store_200.load_chunk(0) is None
    # Moved to another position of the same run: recomputed too.
    for suffix in (".npy", ".npy.sha256"):
        (store_100.folder / f"chunk_000001{suffix}").write_bytes((store_100.folder / f"chunk_000000{suffix}").read_bytes())
    assert store_100.load_chunk(1) is None


def test_a_fifo_or_a_link_to_dev_zero_in_the_chunk_folder_is_recomputed_not_read(tmp_path):
    """Chunks and their hashes are read as bounded regular files: a FIFO cannot hang, /dev/zero cannot fill memory."""
    import os

    store = ChunkStore(tmp_path / "c", {"k": 1}, 10, 5).open()
    store.write_chunk(0, np.arange(5.0))
    os.mkfifo(store.chunk_path(1))
    store.hash_path(1).write_text("0" * 64)
    assert store.load_chunk(1) is None
    store.chunk_path(0).unlink()
    store.chunk_path(0).symlink_to("/dev/zero")
    assert store.load_chunk(0) is None
    (tmp_path / "c" / "manifest.json").unlink()
    (tmp_path / "c" / "manifest.json").symlink_to("/dev/zero")
    with pytest.raises(ResumeMismatchError, match="not a regular file"):
        ChunkStore(tmp_path / "c", {"k": 1}, 10, 5).open()


def test_rerunning_the_same_overwrite_command_keeps_the_chunks_of_the_same_run(tmp_path):
    """--overwrite discards chunks of another run only; the same command rerun after a kill computes only what
    is missing."""
    scorer = qf.Scorer(tiny_model(1, 8, attn=()), "loss", device="cpu", unet_batch=4)
    images = random_images(16, channels=1)
    identity = score_identity(scorer, scorer.model, images, np.arange(16))
    report = {}
    first = score_indices(scorer, images, np.arange(16), work_dir=tmp_path / "c", identity=identity, chunk_size=4,
                          overwrite=True, report=report)
    assert report["scored_now"] == 16
    (tmp_path / "c" / "chunk_000003.npy").unlink()  # as if killed before the last chunk
    again = score_indices(scorer, images, np.arange(16), work_dir=tmp_path / "c", identity=identity, chunk_size=4,
                          overwrite=True, report=report)
    assert report["scored_now"] == 4
    np.testing.assert_array_equal(first, again)
    other = {**identity, "score": {**identity["score"], "t": 100}}
    score_indices(scorer, images, np.arange(16), work_dir=tmp_path / "c", identity=other, chunk_size=4,
                  overwrite=True, report=report)
    assert report["scored_now"] == 16  # another run's chunks were discarded


def test_precision_auto_resumes_its_own_run_when_a_new_probe_would_disagree(files, tmp_path, monkeypatch):
    """'auto' on a CPU is measured once per machine and read back: the same command resumes its own run at the
    precision that run used, however a new measurement on a busy machine would come out."""
    from qmia_fast import machine, plan, plan_probe

    monkeypatch.setenv(plan_probe.CACHE_ENV, str(tmp_path / "plans.json"))
    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda: True)

    def timings(bf16):
        def measure(model, unet_batch, rungs, build, variants=plan_probe.VARIANTS):
            names = [v[0] for v in variants]
            return {"seconds_per_image_call": {n: (bf16 if n == "bf16" else 1.0) for n in names},
                    "micro_batch_invariant": {n: False for n in names}}
        return measure

    monkeypatch.setattr(plan_probe, "measure_variants", timings(0.2))
    out = tmp_path / "s.npy"
    killed_run(files, out, precision="auto")
    (tmp_path / "s.npy.chunks" / "chunk_000002.npy").unlink()
    monkeypatch.setattr(plan_probe, "measure_variants", timings(5.0))  # a new probe would say fp32
    plan._BYTES_SEEN.clear()
    said = []
    result = run_score(job(files, out, precision="auto"), log=said.append)
    assert any("resuming: 2 of 3" in line for line in said)
    assert result.metadata["score"]["precision"] == "bf16"


def test_run_score_hashes_the_weights_once(files, tmp_path, monkeypatch):
    """The identity and the score file's model_sha256 come from one pass over the weights."""
    import qmia_fast.pipeline.identity as identity

    calls = []
    real = identity.fingerprint_tensors
    monkeypatch.setattr(identity, "fingerprint_tensors", lambda module: calls.append(1) or real(module))
    result = run_score(job(files, tmp_path / "s.npz"))
    assert len(calls) == 1 and len(result.metadata["model_sha256"]) == 64
