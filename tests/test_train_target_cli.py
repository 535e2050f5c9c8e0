"""CLI tests of train-target's diffusers families: data, labels, captions and VAE data from files; one-line errors with exit 2."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("diffusers")

from qmia_fast.cli import cli  # noqa: E402
from qmia_fast.training import SUMMARY_NAME  # noqa: E402
from qmia_fast.training.captions import (FASHION_MNIST_CLASSES, captions_from_labels,  # noqa: E402
                                         write_captioned_folder)
from qmia_fast.errors import InputError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

TINY = ["--ch", "32", "--ch-mult", "1,2", "--attn", "1", "--num-res-blocks", "1", "--T", "40", "--batch-size", "4",
        "--warmup", "1", "--device", "cpu", "--steps", "2", "--threads", "1", "--dropout", "0"]
TINY_VAE = ["--vae-ch", "8,16", "--latent-channels", "2", "--vae-steps", "2", "--vae-batch-size", "4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 1, 8, 8), dtype=np.uint8)
    np.save(root / "images.npy", images)
    np.save(root / "vae.npy", rng.integers(0, 256, size=(10, 1, 8, 8), dtype=np.uint8))
    (root / "labels.txt").write_text("0 1 2 0 1 2 0 1\n")
    (root / "members.txt").write_text("0 1 2 3 4 5\n")
    captions = captions_from_labels(np.array([0, 1, 2, 0, 1, 2, 0, 1]), ["coat", "bag", "ankle boot"], seed=3)
    write_captioned_folder(images, captions, root / "folder")
    return root


def _run(args):
    return CliRunner().invoke(cli, ["train-target", *args])


def test_cli_class_target_with_a_labels_file(files, tmp_path):
    out = tmp_path / "run"
    result = _run(["--data", str(files / "images.npy"), "--members", str(files / "members.txt"), "--labels",
                   str(files / "labels.txt"), "--condition", "class", "--class-names", "coat,bag,ankle boot",
                   "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    conditioning = json.loads((out / "conditioning.json").read_text())
    assert conditioning["class_names"] == ["coat", "bag", "ankle boot"] and conditioning["null_label"] == 3
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["members_used"] == 6 and summary["metadata"]["threads"] == 1


def test_cli_builtin_data_gets_fashion_mnist_class_names(tmp_path):
    out = tmp_path / "run"
    result = _run(["--data", "builtin", "--condition", "class", "--out", str(out),
                   *[a if a != "4" else "2" for a in TINY], "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "conditioning.json").read_text())["class_names"] == list(FASHION_MNIST_CLASSES)
    assert json.loads((out / SUMMARY_NAME).read_text())["members_used"] == 200


def test_cli_text_target_reads_the_folders_metadata_jsonl(files, tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "run"
    result = _run(["--data", str(files / "folder"), "--members", str(files / "members.txt"), "--text",
                   "--vae-data", str(files / "vae.npy"), "--out", str(out), "--text-dim", "32", "--text-max-length",
                   "16", *TINY, *TINY_VAE])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / SUMMARY_NAME).read_text())
    captions = [json.loads(line)["text"] for line in (files / "folder" / "metadata.jsonl").read_text().splitlines()]
    import hashlib

    assert summary["captions_sha256"] == hashlib.sha256(json.dumps(captions[:6]).encode()).hexdigest()
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


@pytest.mark.parametrize("args,match", [
    (["--text", "--vae-data", "VAE"], "--text needs captions"),
    (["--condition", "class"], "--condition class needs one label per member"),
    (["--latent"], "--latent needs non-member images"),
    (["--latent", "--vae-data", "VAE", "--vae-ch", "8,16,16,16,16"], "--vae-ch: 5 levels down-sample"),
    (["--latent", "--vae-data", "IMAGES"], "equal member images"),
    (["--condition", "class", "--labels", "SHORT"], "--labels .*: holds 3 labels but --data has 8 images"),
    (["--labels", "LABELS"], "--labels applies to --condition class"),
    (["--denoiser", "dit", "--labels", "LABELS"], "add --latent"),
    (["--condition", "class", "--labels", "LABELS", "--cfg-dropout", "1.5"], "--cfg-dropout"),
    (["--condition", "class", "--labels", "LABELS", "--ch-mult", "1,2,2,2,2"], "--ch-mult: 5 levels"),
    (["--text", "--captions", "CAPTIONS", "--vae-data", "VAE"], "image folder"),
    (["--objective", "diffusion"], "--objective"),
])
def test_cli_bad_options_exit_2_with_one_line(files, tmp_path, args, match):
    (tmp_path / "short.txt").write_text("0 1 2\n")
    (tmp_path / "captions.jsonl").write_text('{"file_name": "0.png", "text": "a bag"}\n')
    swap = {"VAE": str(files / "vae.npy"), "IMAGES": str(files / "images.npy"), "SHORT": str(tmp_path / "short.txt"),
            "LABELS": str(files / "labels.txt"), "CAPTIONS": str(tmp_path / "captions.jsonl")}
    result = _run(["--data", str(files / "images.npy"), "--out", str(tmp_path / "run"), *TINY,
                   *[swap.get(a, a) for a in args]])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("qmia-fast: error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert re.search(match, errors[0]), errors[0]
    assert not (tmp_path / "run").exists()


def test_captions_are_seeded_per_image():
    labels = np.array([0, 1, 1, 0, 2])
    a = captions_from_labels(labels, ["x", "y", "z"], seed=0)
    assert a == captions_from_labels(labels, ["x", "y", "z"], seed=0)
    assert a[:3] == captions_from_labels(labels[:3], ["x", "y", "z"], seed=0)  # independent of the other images
    assert all(name in caption for name, caption in zip("xyyxz", a))
    assert a != captions_from_labels(labels, ["x", "y", "z"], seed=1) or len(set(a)) == 1
    with pytest.raises(InputError, match="3 class names"):
        captions_from_labels(np.array([3]), ["x", "y", "z"])


def test_a_captioned_folder_written_for_training_is_read_back_the_audits_way(files):
    """train-target --text and the audit read one folder the same way (data.load_data): the captions written with
    the images come back per image, in index order."""
    from qmia_fast.data import load_data

    metadata = files / "folder" / "metadata.jsonl"
    loaded = load_data(str(files / "folder"))
    assert loaded.captions == [json.loads(line)["text"] for line in metadata.read_text().splitlines()]
    assert loaded.file_names == tuple(f"{i:05d}.png" for i in range(len(loaded.captions)))


def test_the_fashion_mnist_caption_vocabulary_makes_each_word_one_token(tmp_path):
    pytest.importorskip("transformers")
    from qmia_fast.training.text_encoder import build_tokenizer, write_clip_vocabulary

    captions = captions_from_labels(np.arange(10).repeat(20), FASHION_MNIST_CLASSES, seed=0)
    write_clip_vocabulary(captions, tmp_path)
    tokenizer = build_tokenizer(tmp_path, 16)
    for caption in set(captions):
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(caption)["input_ids"])
        words = re.findall(r"[a-z]+|[^\sa-z]", caption)
        assert tokens[1:-1] == [w + "</w>" for w in words], (caption, tokens)
    # Words it has never seen still tokenize (byte symbols), never to an unknown token.
    ids = tokenizer("zebra 42")["input_ids"]
    assert tokenizer.unk_token_id not in ids[1:-1] and len(ids) > 4
