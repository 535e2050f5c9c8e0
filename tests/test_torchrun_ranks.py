"""What torchrun ranks check: they agree on the run before any work, never unpickle what peers send, and a rank's failure reaches every rank as one line."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qmia_fast import distributed
from qmia_fast.errors import PeerError
from qmia_fast.models import save_model
from qmia_fast.schedule import linear_schedule

from model_helpers import random_images, tiny_unet

TIMEOUT = "5"  # QMIA_DIST_TIMEOUT for these runs: a dead or silent peer is noticed within seconds


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    save_model(tiny_unet(1, 8, attn=(), perturb=0.2), root / "model", linear_schedule())
    images = random_images(64, channels=1)
    np.save(root / "images.npy", images)
    np.save(root / "other.npy", images[::-1].copy())  # the same shape, another node's copy
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(rank_args: list[list[str]], port: int, python_code: dict[int, str] | None = None):
    """Start one process per rank as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR/PORT), each with its own args."""
    procs = []
    for rank, args in enumerate(rank_args):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "WORLD_SIZE": str(len(rank_args)),
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "QMIA_DIST_TIMEOUT": TIMEOUT, "PYTHONUNBUFFERED": "1"}
        code = (python_code or {}).get(rank)
        command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "qmia_fast", *map(str, args)]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    return procs


def finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"a rank hung: {err[-2000:]}")
    return proc.returncode, err


def score_args(job: Path, out: Path, data: str = "images.npy", *extra):
    return ["score", "--model", job / "model", "--data", job / data, "--out", out, "--method", "loss", "--device",
            "cpu", "--unet-batch", "8", "--chunk-size", "8", "--no-progress", *extra]


def one_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("qmia-fast: error:")]
    assert len(errors) == 1 and "Traceback" not in err and "internal error" not in err, err[-3000:]
    return errors[0]


@pytest.mark.slow
def test_ranks_holding_different_data_refuse_before_any_work(job, tmp_path):
    """Nodes with different copies of the data disagree on the run's identity: every rank exits 2 naming data,
    and nothing is scored or written."""
    out = tmp_path / "s.npy"
    procs = launch([score_args(job, out), score_args(job, out, "other.npy")], free_port())
    for proc in procs:
        code, err = finish(proc)
        assert code == 2 and "disagree" in one_line(err) and "data" in one_line(err)
    assert not out.exists() and not list((tmp_path / "s.npy.chunks").glob("chunk_*"))


@pytest.mark.slow
def test_a_rank_that_fails_before_joining_stops_the_others_within_the_timeout(job, tmp_path):
    """A rank that exits on a user error before joining the group: rank 0 says so in one line, in seconds."""
    out = tmp_path / "s.npy"
    started = time.monotonic()
    procs = launch([score_args(job, out), score_args(job, out, "images.npy", "--unet-batch", "0")], free_port())
    code1, err1 = finish(procs[1])
    code0, err0 = finish(procs[0])
    assert code1 == 2 and code0 == 2
    assert "joined" in one_line(err0)
    assert time.monotonic() - started < 120


@pytest.mark.slow
def test_a_rank_that_fails_after_joining_is_named_on_every_rank(job, tmp_path):
    """A user error on one rank (its data is missing) reaches rank 0 as one line naming that rank and the cause."""
    out = tmp_path / "s.npy"
    procs = launch([score_args(job, out), score_args(job, out, "missing.npy")], free_port())
    code1, err1 = finish(procs[1])
    code0, err0 = finish(procs[0])
    assert code1 == 2 and code0 == 2
    assert "rank 1 failed" in one_line(err0) and "missing.npy" in one_line(err0)


@pytest.mark.slow
def test_a_peer_killed_mid_run_is_one_line_on_rank_0(job, tmp_path):
    """kill -9 of rank 1 while scoring: rank 0 exits 2 with one line (no gloo traceback), within the timeout."""
    out = tmp_path / "s.npy"
    procs = launch([score_args(job, out, "images.npy", "--batch-size", "8"),
                    score_args(job, out, "images.npy", "--batch-size", "8")], free_port())
    chunks = tmp_path / "s.npy.chunks"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (chunks / "manifest.json").exists() and procs[0].poll() is None:
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    code0, err0 = finish(procs[0])
    finish(procs[1])
    assert code0 == 2, err0[-2000:]
    line = one_line(err0)
    assert "rank 1" in line or "lost" in line


ROGUE = """
import os, torch.distributed as dist
dist.init_process_group("gloo")
class Exploit:
    def __reduce__(self):
        return (open, (os.environ["QMIA_EXPLOIT"], "w"))
dist.gather_object(Exploit(), None, dst=0)
"""


@pytest.mark.slow
def test_a_rogue_rank_cannot_run_code_in_rank_0(job, tmp_path):
    """A process that joins as rank 1 and sends a pickle: rank 0 never unpickles (peers speak JSON through the store
    and float64 tensors), so no code runs; rank 0 exits 2 in one line instead of writing all-zero scores."""
    out = tmp_path / "s.npy"
    exploit = tmp_path / "exploited"
    os.environ["QMIA_EXPLOIT"] = str(exploit)
    try:
        procs = launch([score_args(job, out), []], free_port(), python_code={1: ROGUE})
        code0, err0 = finish(procs[0])
        procs[1].kill()
        finish(procs[1])
    finally:
        del os.environ["QMIA_EXPLOIT"]
    assert code0 == 2 and "rank 1" in one_line(err0)
    assert not exploit.exists() and not out.exists()


def test_gathered_parts_are_checked_for_owner_length_and_finiteness(monkeypatch):
    """Rank 0 accepts a part only with its rank's header, the expected length and finite values."""
    import torch.distributed as dist

    ctx = distributed.Context(rank=0, world_size=2)
    bounds = [(0, 2), (2, 4), (4, 5)]
    mine = {0: np.array([1.0, 2.0]), 2: np.array([5.0])}

    def fake_gather(sent, parts, dst):
        parts[0].copy_(sent)
        parts[1].copy_(peer)

    monkeypatch.setattr(dist, "gather", fake_gather)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    width = 2 + 3
    good = torch.tensor([1.0, 2.0, 3.0, 4.0, float("nan")], dtype=torch.float64)
    peer = good
    gathered = distributed.gather_chunks(ctx, mine, bounds)
    np.testing.assert_array_equal(gathered[1], [3.0, 4.0])
    for bad in ([0.0, 2.0, 3.0, 4.0, 0.0], [1.0, 3.0, 3.0, 4.0, 1.0], [1.0, 2.0, float("inf"), 4.0, 0.0]):
        peer = torch.tensor(bad, dtype=torch.float64)
        assert len(bad) == width
        with pytest.raises(PeerError, match="rank 1"):
            distributed.gather_chunks(ctx, mine, bounds)


def test_no_pickle_based_collective_is_used():
    """The package never calls torch.distributed's object collectives, which unpickle what peers send."""
    package = Path(distributed.__file__).parent
    for path in package.rglob("*.py"):
        text = path.read_text()
        for name in ("gather_object", "broadcast_object_list", "all_gather_object", "scatter_object_list",
                     "recv_object_list"):
            assert name not in text, f"{path.name} uses {name}"
