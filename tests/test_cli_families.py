"""`qmia-fast attack` and `score` on each model family from local folders, with the conditions taken from the data."""
from __future__ import annotations

import json

import numpy as np
import pytest
import diffusers_builders as build
from cli_helpers import one_line_error, run

pytest.importorskip("diffusers")

SCORE = ["--device", "cpu", "--no-progress", "--precision", "fp32"]
QUICK = [*SCORE, "--n-models", "1", "--reg-epochs", "1", "--reg-width", "4", "--reg-depth", "1"]


def method_options(method):
    """--method with short settings of its own (SecMI's t_sec and k do not apply to the loss, which would warn)."""
    return ["--method", method, *(["--t-sec", "20", "--k", "10"] if method == "secmi" else [])]


def write_data(root, n=36, size=8, labels=None, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    arrays = {"images": images}
    if labels is not None:
        arrays["labels"] = labels
    np.savez(root / "data.npz", **arrays)
    np.save(root / "members.npy", np.arange(0, n, 3))
    return root / "data.npz", root / "members.npy"


@pytest.mark.parametrize("method", ["secmi", "loss"])
def test_a_class_conditional_unet_is_audited_with_the_datas_labels(tmp_path, method):
    model = build.build_class_unet(tmp_path / "model", num_classes=10)
    data, members = write_data(tmp_path, labels=np.arange(36) % 10)
    out = tmp_path / "audit"
    run("attack", "--model", model, "--data", data, "--members", members, *method_options(method), "--out", out,
        *QUICK)
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["score"]["condition"]["kind"] == "class"
    assert report["config"]["score"]["condition"]["mode"] == "own"
    # The null condition is another score; a labels file overrides the data's own labels.
    null = tmp_path / "null.npz"
    run("score", "--model", model, "--data", data, *method_options(method), "--condition", "null", "--out", null,
        *SCORE)
    own = tmp_path / "own.npz"
    run("score", "--model", model, "--data", data, *method_options(method), "--out", own, *SCORE)
    assert not np.array_equal(np.load(null)["scores"], np.load(own)["scores"])  # the tiny model's classes move little
    np.save(tmp_path / "labels.npy", (np.arange(36) + 1) % 10)
    relabelled = tmp_path / "relabelled.npz"
    run("score", "--model", model, "--data", data, "--labels", tmp_path / "labels.npy", *method_options(method),
        "--out", relabelled, *SCORE)
    assert not np.array_equal(np.load(relabelled)["scores"], np.load(own)["scores"])


def test_labels_that_do_not_fit_the_model_or_are_missing_are_one_line_errors(tmp_path):
    model = build.build_class_unet(tmp_path / "model", num_classes=10)
    data, members = write_data(tmp_path)
    one_line_error(run("score", "--model", model, "--data", data, "--out", tmp_path / "s.npz", *SCORE, expect=2),
                   "class-conditional", "--labels")
    np.save(tmp_path / "labels.npy", np.arange(36) % 12)
    one_line_error(run("score", "--model", model, "--data", data, "--labels", tmp_path / "labels.npy",
                       "--out", tmp_path / "s.npz", *SCORE, expect=2), "class")
    np.save(tmp_path / "short.npy", np.arange(30) % 10)
    one_line_error(run("score", "--model", model, "--data", data, "--labels", tmp_path / "short.npy",
                       "--out", tmp_path / "s.npz", *SCORE, expect=2), "short.npy")


def test_a_latent_model_and_a_dit_are_audited_in_latent_space(tmp_path):
    for name, folder in (("latent", build.build_latent_unet(tmp_path / "latent", vae="kl")),
                         ("dit", build.build_dit(tmp_path / "dit", num_classes=10))):
        data, members = write_data(tmp_path, size=16, labels=np.arange(36) % 10)
        out = tmp_path / f"audit-{name}"
        run("attack", "--model", folder, "--data", data, "--members", members, "--method", "loss", "--out", out,
            *QUICK)
        report = json.loads((out / "report.json").read_text())
        assert report["methods"]["qmia_bag"]["auc"] is not None


def test_a_text_to_image_pipeline_reads_captions_from_the_folders_metadata(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    model = build.build_text_to_image(tmp_path / "sd")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        side = int(rng.integers(16, 40))  # mixed sizes: resized and centre-cropped to the pipeline's 16
        PIL.fromarray(rng.integers(0, 256, size=(side, side + 3, 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.png")
        rows.append({"file_name": f"img_{i:02d}.png", "text": ["a shoe", "a bag", "a coat"][i % 3]})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "members.txt").write_text("".join(f"img_{i:02d}.png\n" for i in range(0, 30, 3)))
    out = tmp_path / "audit"
    run("attack", "--model", model, "--data", folder, "--members", tmp_path / "members.txt", "--method", "loss",
        "--out", out, *QUICK)
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["score"]["condition"]["kind"] == "text"
    # Without captions the text model says where captions come from.
    (folder / "metadata.jsonl").unlink()
    one_line_error(run("score", "--model", model, "--data", folder, "--out", tmp_path / "s.npz", *SCORE,
                       expect=2), "captions")


def test_a_latent_models_chunks_keep_their_latents_so_a_resumed_run_encodes_only_what_is_missing(tmp_path, monkeypatch):
    """Latents are encoded once per image and kept, sealed, beside the score chunks; a rerun after a kill reuses them,
    and the scores equal those of an uninterrupted run."""
    import qmia_fast as qf
    from qmia_fast.pipeline import DataSpec, ModelSpec, ScoreJob, ScoreSpec, run_score
    from qmia_fast.scoring import engine

    model = build.build_latent_unet(tmp_path / "m", vae="kl")
    data, _ = write_data(tmp_path, n=20, size=16)
    job = ScoreJob(model=ModelSpec(str(model)), data=DataSpec(str(data)),
                   score=ScoreSpec(method="loss", device="cpu", precision="fp32", unet_batch=4),
                   out=str(tmp_path / "s.npy"), chunk_size=8, keep_chunks=True)
    whole = run_score(job).scores
    chunks = tmp_path / "s.npy.chunks"
    assert sorted(p.name for p in chunks.glob("latents_*.npy")) == ["latents_000000.npy", "latents_000001.npy",
                                                                   "latents_000002.npy"]
    (tmp_path / "s.npy").unlink()
    (chunks / "chunk_000001.npy").unlink()  # as if killed after encoding chunk 1 but before its scores
    encoded = []
    real = engine.Scorer.encode
    monkeypatch.setattr(engine.Scorer, "encode", lambda self, images, progress=False: encoded.append(len(images))
                        or real(self, images, progress))
    again = run_score(ScoreJob(**{**job.__dict__, "overwrite": False})).scores
    assert encoded == [] and np.array_equal(again, whole)
    # A tampered latent chunk is encoded again, not trusted.
    (tmp_path / "s.npy").unlink()
    (chunks / "chunk_000002.npy").unlink()
    latents = np.load(chunks / "latents_000002.npy")
    np.save(chunks / "latents_000002.npy", latents + 1)
    third = run_score(ScoreJob(**{**job.__dict__})).scores
    assert encoded == [4] and np.array_equal(third, whole)
    assert qf.load_model(model).latent is not None
