"""What qmia-fast may delete or overwrite: only files it wrote, in folders it marked, never an input, never unasked; one run per folder."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from qmia_fast.attack import QuantileAttack
from qmia_fast.errors import OutputError
from qmia_fast.pipeline import AttackSpec, AuditSpec, DataSpec, ModelSpec, ScoreSpec, run_audit, verify_audit_folder

from model_helpers import write_tiny_target

from cli_helpers import invoke, one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")
FAST = ["--method", "loss", "--device", "cpu", "--unet-batch", "8", "--no-progress"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_tiny_target(tmp_path_factory.mktemp("ownership"), 40, member_step=2)




def score(root, out, *extra):
    return invoke("score", "--model", root / "model", "--data", root / "images.npy", "--out", out, *FAST, *extra)


def attack(root, out, *extra):
    return invoke("attack", "--model", root / "model", "--data", root / "images.npy", "--members",
                  root / "members.npy", "--out", out, "--n-models", "1", "--reg-epochs", "1", *FAST, *extra)


# --- 1: --work-dir is never deleted with what it holds ------------------------------------------

def test_work_dir_holding_other_files_is_refused_and_left_alone(root, tmp_path):
    """score --work-dir DIR writes chunks only into a new, empty or qmia-fast folder; a folder with the user's
    files (the current folder, the data's) is refused before work and keeps every file."""
    mine = tmp_path / "work"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    one_line_error(score(root, tmp_path / "s.npy", "--work-dir", mine), "--work-dir", "did not write")
    one_line_error(score(root, tmp_path / "s.npy", "--work-dir", mine, "--overwrite"), "did not write")
    assert (mine / "notes.txt").read_text() == "keep me" and not (tmp_path / "s.npy").exists()


def test_work_dir_dot_never_deletes_the_current_folder(root, tmp_path, monkeypatch):
    """--work-dir . (the current folder, with the data and the score file in it) is refused; nothing is deleted."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "images.npy", np.load(root / "images.npy"))
    result = invoke("score", "--model", root / "model", "--data", "images.npy", "--out", "s.npy", "--work-dir", ".",
                    *FAST)
    one_line_error(result, "--work-dir")
    assert (tmp_path / "images.npy").is_file()


def test_a_work_dir_made_by_the_tool_goes_after_success_one_given_empty_stays(root, tmp_path):
    """The tool removes a chunk folder it made; a folder the user gave (empty) is emptied of chunks, not removed."""
    assert score(root, tmp_path / "a.npy", "--work-dir", tmp_path / "new").exit_code == 0
    assert not (tmp_path / "new").exists()
    (tmp_path / "given").mkdir()
    assert score(root, tmp_path / "b.npy", "--work-dir", tmp_path / "given").exit_code == 0
    assert (tmp_path / "given").is_dir() and list((tmp_path / "given").iterdir()) == []


# --- 3: no output is, or lies inside, an input ----------------------------------------------------

def test_an_output_that_is_an_input_is_refused_before_work(root, tmp_path):
    """score --out DATA, evaluate X --out (the folder holding X as scores.npz), attack --out MODEL_FOLDER."""
    data = tmp_path / "d.npy"
    np.save(data, np.load(root / "images.npy"))
    before = data.read_bytes()
    one_line_error(invoke("score", "--model", root / "model", "--data", data, "--out", data, *FAST, "--overwrite"),
                   "--out", "data")
    assert data.read_bytes() == before
    np.savez(tmp_path / "scores.npz", scores=np.arange(10.0), labels=np.arange(10) % 2)
    one_line_error(invoke("evaluate", tmp_path / "scores.npz", "--lower-is-member", "--out", tmp_path, "--overwrite"),
                   "input")
    one_line_error(attack(root, root / "model"), "model")
    one_line_error(attack(root, root / "model" / "audit"), "lies inside", "model")


# --- replacing earlier results needs --overwrite, everywhere ----------------------------------------

def test_score_out_is_replaced_only_with_overwrite(root, tmp_path):
    """score, like attack and experiment, refuses to replace an existing output unless --overwrite is given."""
    out = tmp_path / "s.npz"
    assert score(root, out).exit_code == 0
    before = out.read_bytes()
    one_line_error(score(root, out, "--seed", "3"), "--overwrite")
    assert out.read_bytes() == before
    assert score(root, out, "--seed", "3", "--overwrite").exit_code == 0
    assert out.read_bytes() != before


def test_evaluate_into_a_finished_audit_needs_overwrite_and_leaves_no_stale_file(root, tmp_path):
    """evaluate --out into an audit folder is refused without --overwrite; with it the audit's attack.pt goes,
    so the folder is evaluate's run alone and verifies."""
    out = tmp_path / "audit"
    assert attack(root, out).exit_code == 0
    np.savez(tmp_path / "in.npz", scores=np.arange(20.0), labels=np.arange(20) % 2)
    one_line_error(invoke("evaluate", tmp_path / "in.npz", "--lower-is-member", "--out", out, "--no-plots"),
                   "--overwrite")
    assert invoke("evaluate", tmp_path / "in.npz", "--lower-is-member", "--out", out, "--no-plots",
                  "--overwrite").exit_code == 0
    assert not (out / "attack.pt").exists()
    verify_audit_folder(out)


# --- 17, 23: every output path is checked before work ---------------------------------------------

def test_bad_chunk_folders_are_one_line_errors_before_work(root, tmp_path):
    """--work-dir naming a file or a path under a file, or a file where OUT.chunks goes: refused before scoring."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    one_line_error(score(root, tmp_path / "s.npy", "--work-dir", blocker), "not a folder")
    one_line_error(score(root, tmp_path / "s.npy", "--work-dir", blocker / "sub"), "is a file")
    (tmp_path / "t.npy.chunks").write_text("x")
    one_line_error(score(root, tmp_path / "t.npy"), "t.npy.chunks", "not a folder")


def test_audit_output_paths_of_the_wrong_kind_are_refused_before_work(root, tmp_path):
    """DIR/scores.npz or DIR/report.json a folder, DIR/scores.chunks a file or a symlink, --out under /proc."""
    for name, make in (("scores.npz", "dir"), ("report.json", "dir"), ("scores.chunks", "file")):
        out = tmp_path / f"bad-{name}"
        out.mkdir()
        (out / name).mkdir() if make == "dir" else (out / name).write_text("x")
        one_line_error(attack(root, out), name)
    target = tmp_path / "elsewhere"
    target.mkdir()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "scores.chunks").symlink_to(target)
    one_line_error(attack(root, linked), "symbolic link")
    assert list(target.iterdir()) == []
    if os.path.isdir("/proc/self"):
        one_line_error(attack(root, "/proc/qmia-fast-test-out"), "/proc")


def test_a_killed_writes_temporaries_are_cleaned_on_the_next_run(root, tmp_path):
    """.NAME.xxxxxxxx.tmp.* files a kill -9 left in the audit folder and its chunk folder are removed by the rerun."""
    out = tmp_path / "audit"
    (out / "scores.chunks").mkdir(parents=True)
    (out / "scores.chunks" / ".qmia-fast").write_text("{}")
    stale = [out / ".scores.npz.abcd1234.tmp.npz", out / "scores.chunks" / ".chunk_000000.npy.abcd1234.tmp.npy"]
    for path in stale:
        path.write_bytes(b"half")
    (out / "user.txt").write_text("not ours")
    assert attack(root, out).exit_code == 0
    assert not any(p.exists() for p in stale)
    assert (out / "user.txt").read_text() == "not ours"


# --- 11: one run per folder; the report lists what this run wrote ---------------------------------

def spec(root, out, overwrite=False):
    return AuditSpec(model=ModelSpec(str(root / "model")),
                     data=DataSpec(str(root / "images.npy"), members=str(root / "members.npy")),
                     score=ScoreSpec(method="loss", device="cpu", unet_batch=8),
                     attack=AttackSpec(n_models=1, reg_epochs=1), out=str(out), overwrite=overwrite)


def test_a_second_run_into_a_locked_folder_is_refused(root, tmp_path):
    """While another process holds the folder's lock, a run into it is refused and writes nothing."""
    out = tmp_path / "audit"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"), str(out / ".qmia-fast")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match="another qmia-fast run"):
            run_audit(spec(root, out))
        assert sorted(p.name for p in out.iterdir()) == [".qmia-fast"]
    finally:
        holder.kill()
        holder.wait()
    run_audit(spec(root, out))
    verify_audit_folder(out)


def test_the_report_lists_the_hashes_of_what_this_run_wrote(root, tmp_path, monkeypatch):
    """A file replaced by another process after this run wrote it is not listed under its new hash: verify fails."""
    out = tmp_path / "audit"
    save = QuantileAttack.save

    def save_then_race(self, path):
        save(self, path)
        (out / "scores.npz").write_bytes(b"another run's bytes")

    monkeypatch.setattr(QuantileAttack, "save", save_then_race)
    run_audit(spec(root, out))
    with pytest.raises(OutputError, match="scores.npz"):
        verify_audit_folder(out)


@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_experiment_out_never_replaces_or_deletes_what_is_not_its_own(root, tmp_path, monkeypatch, extra):
    """experiment --out . with the user's report.md/results.json, or a cache/ folder that is not qmia-fast's: refused
    with or without --overwrite, and every file of the user's is kept."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.md").write_text("my notes")
    (tmp_path / "results.json").write_text("{}")
    command = ["experiment", "oracle", "--out", ".", "--budget", "tiny", "--no-progress", *extra]
    one_line_error(invoke(*command), "report.md")
    assert (tmp_path / "report.md").read_text() == "my notes"
    (tmp_path / "report.md").unlink()
    (tmp_path / "results.json").unlink()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "precious.bin").write_bytes(b"1")
    one_line_error(invoke(*command), "cache")
    assert (tmp_path / "cache" / "precious.bin").read_bytes() == b"1"


def test_an_audit_folder_holding_files_of_the_users_names_is_refused_even_with_overwrite(root, tmp_path):
    """A scores.npz or report.json in --out that qmia-fast did not write is never replaced."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "scores.npz").write_bytes(b"my scores")
    (out / "report.json").write_text('{"mine": true}')
    one_line_error(attack(root, out, "--overwrite"), "did not write")
    assert (out / "scores.npz").read_bytes() == b"my scores"


def test_an_audit_of_images_with_odd_names_writes_every_output(root, tmp_path):
    """Image names that are not UTF-8, hold a CR or start with '=' are written escaped and prefixed: the audit
    finishes (no failure after scoring and fitting) and its scores.csv has one row per image."""
    import csv

    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    images = np.load(root / "images.npy")
    odd = [os.fsdecode(b"caf\xc3.png"), "line\rbreak.png", "=sum(A1).png"]
    names = odd + [f"img{i:02d}.png" for i in range(len(images) - len(odd))]
    for name, image in zip(names, images):
        Image.fromarray(image[0]).save(folder / name, format="PNG")
    # Sorted, the odd names are images 0 ('='), 1 ('caf') and 39 ('line'): make them members, so they are evaluated.
    members = np.array(sorted({0, 1, 39} | set(range(2, 36, 2))))
    np.save(tmp_path / "members.npy", members)
    result = invoke("attack", "--model", root / "model", "--data", folder, "--members", tmp_path / "members.npy",
                    "--out", tmp_path / "audit", "--n-models", "1", "--reg-epochs", "1", *FAST)
    assert result.exit_code == 0, result.output
    with open(tmp_path / "audit" / "scores.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    files = {row["file"] for row in rows}
    assert len(rows) == len(members) + 10 and all(row["label"] in ("0", "1") for row in rows)
    assert {"caf\\xc3.png", "line\\x0dbreak.png", "'=sum(A1).png"} <= files
    verify_audit_folder(tmp_path / "audit")
