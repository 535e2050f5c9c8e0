"""torchrun plumbing: join the process group, agree on a run's identity, wait for peers (failures reach every rank), gather scores as plain float64 tensors."""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from .errors import ConfigError, PeerError, QmiaError

# How long a rank waits for a peer that neither reports progress nor a failure: joining the group, a
# heartbeat, a collective. Waiting for a peer that is still scoring is not bounded by it.
TIMEOUT_ENV = "QMIA_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
_PREFIX = "qmia-fast/"
# Peer messages travel through the rendezvous store as UTF-8 JSON of bounded size, never as pickles.
_MAX_MESSAGE = 1 << 16


@dataclass(frozen=True)
class Context:
    """Where this process stands in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


_CONTEXT: Context | None = None
_STORE = None
_HEARTBEAT: threading.Event | None = None
_SEQUENCE: dict[str, int] = {}


def timeout_s() -> float:
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} = {os.environ[TIMEOUT_ENV]!r} must be a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV} = {value} must be a positive number of seconds")
    return value


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str = "cpu") -> Context:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); a one-process context otherwise.

    A rank that does not join within the timeout (it failed before starting, or was never
    launched) makes every rank that did fail with one line, instead of waiting for hours.
    """
    global _CONTEXT, _STORE
    if _CONTEXT is not None:
        return _CONTEXT
    if not launched_by_torchrun():
        _CONTEXT = Context()
        return _CONTEXT
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run without torchrun")
    limit = timeout_s()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=limit))
        except (RuntimeError, ValueError, dist.DistError) as exc:
            raise PeerError(f"torchrun rank {rank} of {world}: not every rank joined within {limit:g} s "
                            f"({_short(exc)}); a rank may have failed before it started: read its output, fix "
                            "the cause and rerun (the scores already computed are kept)") from None
    try:  # the rendezvous store the group was built on: peers exchange JSON messages through it
        _STORE = distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError) as exc:
        raise PeerError(f"torchrun rank {rank}: this torch build gives no access to the rendezvous store "
                        f"({_short(exc)}); run without torchrun") from None
    _CONTEXT = Context(rank=rank, world_size=world, local_rank=local_rank)
    _start_heartbeat(_CONTEXT, limit)
    return _CONTEXT


def context() -> Context:
    return _CONTEXT if _CONTEXT is not None else Context()


def device_for_rank(device: str, ctx: Context) -> str:
    """Each rank of a CUDA job takes the GPU of its local rank unless one was named."""
    if ctx.active and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return device


def report_failure(ctx: Context, message: str) -> None:
    """Tell every other rank that this one stopped, and why (one line); never raises."""
    if not ctx.active or _STORE is None:
        return
    try:
        _STORE.set(f"{_PREFIX}failed/{ctx.rank}", " ".join(str(message).split())[:_MAX_MESSAGE])
    except Exception:  # noqa: BLE001 - the store may be gone with the rank that hosted it
        pass


@contextlib.contextmanager
def reporting_failures(ctx: Context):
    """Whatever stops this rank (a user error, Ctrl-C, a bug) is told to the other ranks before it propagates."""
    try:
        yield
    except PeerError:
        raise  # a peer's failure: every rank already knows
    except QmiaError as exc:
        report_failure(ctx, str(exc))
        raise
    except KeyboardInterrupt:
        report_failure(ctx, "interrupted")
        raise
    except Exception as exc:  # noqa: BLE001 - reported, then re-raised unchanged
        report_failure(ctx, f"internal error: {type(exc).__name__}: {exc}")
        raise


def wait_all(ctx: Context, stage: str, payload: Mapping | None = None) -> list[dict]:
    """Block until every rank reached `stage`; returns each rank's JSON `payload` in rank order.

    While waiting, a rank that reported a failure, or whose heartbeat stopped for the timeout
    (killed, its machine gone), is a PeerError naming it, so no rank waits for a dead one.
    """
    if not ctx.active:
        return [dict(payload or {})]
    sequence = _SEQUENCE.get(stage, 0)
    _SEQUENCE[stage] = sequence + 1
    base = f"{_PREFIX}{stage}/{sequence}/"
    message = json.dumps(dict(payload or {}), sort_keys=True)
    if len(message) > _MAX_MESSAGE:
        raise ConfigError(f"{stage}: the message to the other ranks is {len(message)} bytes; too big")
    _store_call(ctx, stage, lambda: _STORE.set(base + str(ctx.rank), message))
    limit = timeout_s()
    seen: dict[int, tuple[str, float]] = {}
    keys = [base + str(r) for r in range(ctx.world_size)]
    delay = 0.01
    while True:
        if _store_call(ctx, stage, lambda: _STORE.check(keys)):
            break
        now = time.monotonic()
        for r in range(ctx.world_size):
            if r == ctx.rank:
                continue
            failed = f"{_PREFIX}failed/{r}"
            if _store_call(ctx, stage, lambda: _STORE.check([failed])):
                text = _store_call(ctx, stage, lambda: _STORE.get(failed)).decode("utf-8", "replace")
                raise PeerError(f"torchrun rank {r} failed: {text[:2000]}")
            beat = f"{_PREFIX}alive/{r}"
            value = _store_call(ctx, stage, lambda: _STORE.get(beat)).decode() \
                if _store_call(ctx, stage, lambda: _STORE.check([beat])) else ""
            last = seen.get(r)
            if last is None or last[0] != value:
                seen[r] = (value, now)
            elif now - last[1] > limit:
                raise PeerError(f"torchrun rank {r} stopped responding for {limit:g} s while this rank waited at "
                                f"{stage!r} (killed, or its machine went down); rerun the command to resume")
        time.sleep(delay)
        delay = min(0.25, delay * 1.5)
    out = []
    for r, key in enumerate(keys):
        raw = _store_call(ctx, stage, lambda: _STORE.get(key))
        try:
            value = json.loads(raw.decode("utf-8")) if len(raw) <= _MAX_MESSAGE else None
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise PeerError(f"torchrun rank {r} sent a malformed message at {stage!r}; rerun every rank with the "
                            "same qmia-fast")
        out.append(value)
    return out


def agree(ctx: Context, parts: Mapping[str, str], what: str = "the run") -> None:
    """Every rank must hold the same `parts` (name -> digest: config, model, data, ...) before any work.

    A difference is a PeerError on every rank naming the parts and ranks that differ (say,
    nodes holding different copies of the data), so nothing is scored and nothing is mixed.
    """
    if not ctx.active:
        return
    mine = {str(k): str(v) for k, v in parts.items()}
    everyone = wait_all(ctx, "agree", mine)
    differs = {}
    for r, theirs in enumerate(everyone):
        for name in sorted(set(theirs) | set(mine)):
            if theirs.get(name) != everyone[0].get(name):
                differs.setdefault(name, []).append(r)
    if differs:
        listed = "; ".join(f"{name} (rank {', '.join(map(str, ranks))} vs rank 0)" for name, ranks in differs.items())
        raise PeerError(f"the torchrun ranks disagree about {what}: {listed}; give every node the same model, data "
                        "and settings (and the same kind of machine) before rerunning")


def gather_chunks(ctx: Context, results: Mapping[int, np.ndarray], bounds: list[tuple[int, int]]
                  ) -> dict[int, np.ndarray] | None:
    """Every rank's chunks on rank 0 (None elsewhere), sent as one fixed-layout float64 tensor per rank.

    Rank r owns the chunks i with i % world == r; the layout is [rank, count, values...] padded
    with NaN to the longest share. Rank 0 checks each part's rank, length and finiteness.
    """
    if not ctx.active:
        return dict(results)
    import torch.distributed as dist

    world = ctx.world_size
    owned = [[i for i in range(len(bounds)) if i % world == r] for r in range(world)]
    lengths = [sum(bounds[i][1] - bounds[i][0] for i in chunks) for chunks in owned]
    width = 2 + max(lengths)
    mine = np.full(width, np.nan, dtype=np.float64)
    mine[0], mine[1] = ctx.rank, lengths[ctx.rank]
    at = 2
    for i in owned[ctx.rank]:
        values = np.asarray(results[i], dtype=np.float64)
        mine[at:at + len(values)] = values
        at += len(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    tensor = torch.from_numpy(mine).to(device)
    parts = [torch.empty_like(tensor) for _ in range(world)] if ctx.is_main else None
    _collective(ctx, "gathering the scores", lambda: dist.gather(tensor, parts, dst=0))
    if not ctx.is_main:
        return None
    out: dict[int, np.ndarray] = {}
    for r, part in enumerate(parts):
        values = part.cpu().numpy()
        if values[0] != r or values[1] != lengths[r]:
            raise PeerError(f"torchrun rank {r} sent scores for rank {values[0]:g} with {values[1]:g} values; "
                            f"expected rank {r} with {lengths[r]}: rerun every rank with the same command")
        body = values[2:2 + lengths[r]]
        if not np.isfinite(body).all():
            raise PeerError(f"torchrun rank {r} sent non-finite scores; rerun every rank with the same qmia-fast")
        at = 0
        for i in owned[r]:
            size = bounds[i][1] - bounds[i][0]
            out[i] = body[at:at + size].copy()
            at += size
    return out


# How long the rank hosting the store waits at exit for the others to leave it (they may still be reading).
_LEAVE_WAIT_S = 10.0


def _leave_together(ctx: Context) -> None:
    """Rank 0 hosts the store: it waits (bounded) until every other rank has left or failed, so a rank still
    reading the last message (say, the disagreement that stops all of them) does not lose the connection and
    report that instead of the real reason. Never raises."""
    try:
        if ctx.rank != 0:
            _STORE.set(f"{_PREFIX}left/{ctx.rank}", "1")
            return
        deadline = time.monotonic() + min(timeout_s(), _LEAVE_WAIT_S)
        waiting = set(range(1, ctx.world_size))
        while waiting and time.monotonic() < deadline:
            waiting = {r for r in waiting if not _STORE.check([f"{_PREFIX}left/{r}"])
                       and not _STORE.check([f"{_PREFIX}failed/{r}"])}
            if waiting:
                time.sleep(0.05)
    except Exception:  # noqa: BLE001 - a peer or the store already gone must not turn an exit into a crash
        pass


def shutdown() -> None:
    global _CONTEXT, _STORE, _HEARTBEAT
    if _CONTEXT is not None and _CONTEXT.active and _STORE is not None:
        _leave_together(_CONTEXT)
    if _HEARTBEAT is not None:
        _HEARTBEAT.set()
        _HEARTBEAT = None
    if _CONTEXT is not None and _CONTEXT.active:
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a peer already gone must not turn an exit into a crash
                pass
    _CONTEXT = None
    _STORE = None
    _SEQUENCE.clear()


def _start_heartbeat(ctx: Context, limit: float) -> None:
    global _HEARTBEAT
    stop = threading.Event()
    _HEARTBEAT = stop
    store, key, period = _STORE, f"{_PREFIX}alive/{ctx.rank}", max(0.05, limit / 6)

    def beat():
        count = 0
        while not stop.is_set():
            try:
                store.set(key, str(count))
            except Exception:  # noqa: BLE001 - the store went away: the main thread will notice
                return
            count += 1
            stop.wait(period)

    threading.Thread(target=beat, name="qmia-fast-heartbeat", daemon=True).start()


def _store_call(ctx: Context, stage: str, call):
    try:
        return call()
    except QmiaError:
        raise
    except Exception as exc:  # noqa: BLE001 - the store's host (a rank or torchrun's agent) is gone
        raise PeerError(f"torchrun rank {ctx.rank}: lost the connection to the other ranks at {stage!r} "
                        f"({_short(exc)}); a peer was killed or its machine went down: rerun the command to resume"
                        ) from None


def _collective(ctx: Context, what: str, call):
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - gloo and NCCL report a lost peer as RuntimeError or DistError
        raise PeerError(f"torchrun rank {ctx.rank}: a peer was lost while {what} ({_short(exc)}); rerun the "
                        "command to resume (the scores already computed are kept)") from None


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
