"""Membership scores of images under a target DDPM (SecMI t-error, loss, PIA), streamed in batches through the fused kernels."""
from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import torch

from . import kernels
from .errors import ConfigError, InputError
from .precision import MIXED_INVERSION, autocast_context, resolve_precision, exact_fp32_matmul

__all__ = ["METHODS", "ScoreConfig", "Scorer", "score", "validate_images", "to_model_range"]

METHODS = ("secmi", "loss", "pia")


@dataclass(frozen=True)
class ScoreConfig:
    """Everything that decides a score's value; recorded in reports and resume manifests."""

    method: str = "secmi"
    t_sec: int = 100
    k: int = 10
    t: int = 200
    p: float = 4.0
    n_draws: int = 1
    seed: int = 0
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def unet_calls(self) -> int:
        """UNet evaluations per image."""
        if self.method == "secmi":
            return self.t_sec // self.k + 1
        if self.method == "loss":
            return self.n_draws
        return 2


def _check_config(cfg: ScoreConfig, T: int) -> None:
    """Every check that can fail on options alone, before any image is touched."""
    if cfg.method not in METHODS:
        raise ConfigError(f"method = {cfg.method!r} is unknown; use one of {', '.join(METHODS)}")
    if not isinstance(cfg.seed, (int, np.integer)) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed < 2**64:
        raise ConfigError(f"seed = {cfg.seed!r} must be an integer in [0, 2**64); pass a non-negative seed")
    if cfg.method == "secmi":
        if cfg.k < 1:
            raise ConfigError(f"k = {cfg.k} must be a positive number of timesteps per DDIM step (SecMI uses 10)")
        if cfg.t_sec < cfg.k or cfg.t_sec % cfg.k:
            raise ConfigError(
                f"t_sec = {cfg.t_sec} must be a positive multiple of k = {cfg.k} "
                f"(SecMI inverts in steps of k up to t_sec; e.g. t_sec = {max(cfg.k, cfg.t_sec // cfg.k * cfg.k)})"
            )
        if cfg.t_sec >= T:
            raise ConfigError(f"t_sec = {cfg.t_sec} is outside the schedule's timesteps [0, {T}); use t_sec < {T}")
    else:
        if not 0 <= cfg.t < T:
            raise ConfigError(f"t = {cfg.t} is outside the schedule's timesteps [0, {T}); use 0 <= t < {T}")
    if cfg.precision == "mixed" and cfg.method != "secmi":
        raise ConfigError(f"precision 'mixed' (bf16 inversion, fp32 round trip) applies to the secmi method only; "
                          f"use bf16 or fp32 for {cfg.method}")
    if cfg.method == "loss" and cfg.n_draws < 1:
        raise ConfigError(f"n_draws = {cfg.n_draws} must be at least 1")
    if cfg.method == "pia" and not (math.isfinite(cfg.p) and cfg.p > 0):
        raise ConfigError(f"p = {cfg.p} must be a positive finite exponent (PIA uses 4)")


def validate_images(images, name: str = "images") -> None:
    """Raise InputError unless images are uint8 in [0, 255] or floats in [0, 1], N x C x H x W, N > 0, finite."""
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4:
        raise InputError(f"{name} must be an N x C x H x W array, got shape {shape}; add the missing axes")
    if shape[0] == 0:
        raise InputError(f"{name} is empty (0 images); pass at least one image")
    if isinstance(images, torch.Tensor):
        dtype = images.dtype
        is_uint8 = dtype == torch.uint8
        is_float = dtype.is_floating_point
    else:
        dtype = np.asarray(images[:0]).dtype
        is_uint8 = dtype == np.uint8
        is_float = np.issubdtype(dtype, np.floating)
    if is_uint8:
        return
    if not is_float:
        raise InputError(
            f"{name} has dtype {dtype}; use uint8 pixels in [0, 255] or floats in [0, 1] "
            "(convert integer images with .astype('uint8'))"
        )
    # Chunked so that checking a memory-mapped data set never loads it all at once.
    step = max(1, (1 << 24) // max(1, int(np.prod(shape[1:]))))
    for start in range(0, shape[0], step):
        chunk = images[start:start + step]
        chunk = chunk.detach().float().cpu().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        if not np.isfinite(chunk).all():
            bad = start + int(np.nonzero(~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1))[0][0])
            raise InputError(f"{name}[{bad}] contains NaN or Inf pixels; clean or drop that image")
        lo, hi = float(chunk.min()), float(chunk.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(
                f"{name} holds float pixels in [{lo:g}, {hi:g}] but floats must lie in [0, 1]; "
                "divide 0-255 data by 255 or pass uint8 images (values in [-1, 1] must be mapped with (x + 1) / 2)"
            )


def to_model_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] pixels -> float32 in [-1, 1], the model's input range.

    Rounds exactly as SecMI's pipeline does (torchvision's ToTensor divides by 255, then
    x * 2 - 1), so the first UNet call sees bit-identical inputs.
    """
    if batch.dtype == torch.uint8:
        return batch.to(torch.float32).div_(255.0).mul_(2.0).sub_(1.0)
    return batch.to(torch.float32).mul(2.0).sub_(1.0)


class Scorer:
    """A reusable scorer: fixed model, method and precision; scores arrays or streams of image batches.

    Scores are float64 numpy arrays, lower = more likely a member. A sample's noise is keyed
    by (seed, global sample index), so its score does not depend on how the data are batched
    or sharded; pass ``offset`` (the index of the first image) when scoring a slice.

    Speed (measured by bench/bench_scoring.py): the UNet runs under inference mode with
    cached timestep tensors; on CUDA each batch size's whole computation (upload
    conversion, every UNet call, the fused steps and the reduction) is one CUDA graph,
    the loss method's noise included (its sample indices live in a device tensor that
    each replay refills); batches go up from pinned memory and results come back one
    batch late, so the host never waits inside a batch. ``threads`` sets torch's
    intra-op threads while scoring (None: leave them as they are).

    ``precision``: fp32 (exact float32: TF32 off), bf16 or fp16 (the UNet under autocast;
    all arithmetic between UNet calls stays float32), mixed (secmi only: bf16 inversion,
    fp32 round trip), or auto (precision.resolve_precision: mixed for secmi and bf16 for
    loss/pia where bf16 hardware is fast, else fp32).

    ``fast_layers`` (CPU, float32): run the UNet's 3x3 convolutions as Winograd
    F(4x4, 3x3) and its GroupNorms with our NHWC kernel, on channels_last activations
    (qmia_fast.fastconv). None turns it on where it was measured faster: CPU at fp32.
    Scores then differ from direct convolutions by float32 rounding (~1e-6 relative).
    ``compile`` wraps the model in torch.compile (off by default: on a 2-core CPU the
    compilation took longer than the demo's whole scoring job).
    """

    def __init__(self, model, method: str = "secmi", *, t_sec: int = 100, k: int = 10, t: int = 200,
                 p: float = 4.0, n_draws: int = 1, seed: int = 0, batch_size: int | None = None,
                 device=None, precision: str = "fp32", channels_last: bool | None = None,
                 cuda_graphs: bool = True, compile: bool = False, threads: int | None = None,
                 fast_layers: bool | None = None):
        if not callable(model) or not hasattr(model, "schedule"):
            raise InputError("model must be an eps-model from qmia_fast.load_model (callable (x, t) -> eps with .schedule)")
        self.device = _resolve_device(device, model)
        resolved = resolve_precision(precision, self.device, method=str(method))
        self.config = ScoreConfig(method=str(method), t_sec=int(t_sec), k=int(k), t=int(t), p=float(p),
                                  n_draws=int(n_draws), seed=_as_seed(seed), precision=resolved)
        _check_config(self.config, model.schedule.T)
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise ConfigError(f"batch_size = {batch_size} must be a positive integer (or omitted for the default)")
        if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
            raise ConfigError(f"threads = {threads} must be a positive integer (or omitted to keep torch's setting)")
        self.threads = None if threads is None else int(threads)
        self.batch_size = int(batch_size) if batch_size is not None else default_batch_size(self.device)
        self.model = model.to(self.device).eval()
        self.schedule = model.schedule
        if fast_layers is None:
            fast_layers = default_fast_layers(self.device, resolved) and not compile
        if fast_layers and (self.device.type != "cpu" or resolved != "fp32"):
            raise ConfigError("fast_layers applies to CPU scoring at fp32 only; leave it unset elsewhere")
        self.fast_layers = bool(fast_layers)
        self._layers = None
        if self.fast_layers:
            from .fastconv import WinogradConvs

            self._layers = WinogradConvs()
            channels_last = True  # the fast layers work on NHWC memory
        if channels_last is None:
            channels_last = default_channels_last(self.device, resolved)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._forward = self.model
        if compile:
            self._forward = torch.compile(self.model, dynamic=False)
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._graphs: dict[tuple, _GraphedBatch] = {}
        self._graph_warned = False
        self._timesteps: dict[tuple[int, int], torch.Tensor] = {}
        self._steps = self._plan()
        self.unet_calls = 0  # counted per image-batch call, for tests and reports

    # ------------------------------------------------------------------ public API

    def score(self, images, offset: int = 0, progress: bool = False) -> np.ndarray:
        """Scores of all images (array or tensor, N x C x H x W), float64 [N]."""
        self.check_images(images)
        out = np.empty(len(images), dtype=np.float64)
        for start, values in self.iter_scores(images, offset=offset, progress=progress, validated=True):
            out[start - offset:start - offset + len(values)] = values
        return out

    def iter_scores(self, images, offset: int = 0, progress: bool = False,
                    validated: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (global index of the batch's first image, float64 scores) batch by batch; memory stays flat in N."""
        if not validated:
            self.check_images(images)
        n = len(images)
        starts = range(0, n, self.batch_size)
        bar = _progress(progress, len(starts), f"scoring {n} images ({self.config.method})")
        with bar as ticker, _torch_threads(self.threads):
            pending: list[tuple[int, torch.Tensor, Any]] = []
            for start in starts:
                batch = images[start:start + self.batch_size]
                result = self._score_device_batch(self._upload(batch), offset + start)
                pending.append((offset + start, *_start_download(result)))
                # Hand results back one batch late, so the device never waits for the host.
                if len(pending) > 1:
                    yield _finish_download(pending.pop(0))
                ticker.update(1)
            while pending:
                yield _finish_download(pending.pop(0))

    def score_batch(self, batch, offset: int = 0) -> np.ndarray:
        """Scores of one batch whose first image has global index `offset`."""
        self.check_images(batch)
        with _torch_threads(self.threads):
            result = self._score_device_batch(self._upload(batch), offset)
            return _finish_download((offset, *_start_download(result)))[1]

    def check_images(self, images) -> None:
        from .models import check_image_shape

        validate_images(images)
        check_image_shape(self.model, tuple(images.shape))

    # ------------------------------------------------------------------ internals

    def _plan(self):
        """The per-batch sequence of (t_cur, t_next, c1, c2) DDIM steps for the secmi method."""
        cfg = self.config
        if cfg.method != "secmi":
            return []
        times = list(range(0, cfg.t_sec, cfg.k))  # 0, k, ..., t_sec - k
        steps = []
        for t_cur, t_next in zip(times[:-1], times[1:]):
            steps.append((t_cur, t_next, *self.schedule.ddim_coefficients(t_cur, t_next)))
        top = times[-1]
        up = (top, cfg.t_sec, *self.schedule.ddim_coefficients(top, cfg.t_sec))
        down = (cfg.t_sec, top, *self.schedule.ddim_coefficients(cfg.t_sec, top))
        return steps + [up, down]

    def _upload(self, batch) -> torch.Tensor:
        """The batch as it came (uint8 or float pixels) on the device; conversion happens in _prepare."""
        if not isinstance(batch, torch.Tensor):
            batch = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type == "cuda" and batch.device.type == "cpu":
            # Pinned staging lets the copy run asynchronously; the caching host allocator
            # keeps the buffer alive until the copy has finished.
            return batch.contiguous().pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def _prepare(self, raw: torch.Tensor) -> torch.Tensor:
        x0 = to_model_range(raw)
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        return x0

    def _score_device_batch(self, raw: torch.Tensor, offset: int) -> torch.Tensor:
        """float32 [n] scores on the device for one uploaded batch (valid until the next batch is scored)."""
        self.unet_calls += self.config.unet_calls
        if self.cuda_graphs:
            key = (tuple(raw.shape), raw.dtype)
            graphed = self._graphs.get(key)
            if graphed is None:
                graphed = self._capture(raw)
            if graphed is not None:
                return graphed.run(raw, offset)
        return self._compute(self._prepare(raw), offset)

    def _capture(self, raw: torch.Tensor):
        def whole_batch(static_raw: torch.Tensor, static_samples: torch.Tensor) -> torch.Tensor:
            return self._compute(self._prepare(static_raw), 0, samples=static_samples)

        try:
            graphed = _GraphedBatch(whole_batch, raw)
        except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager
            self.cuda_graphs = False
            if not self._graph_warned:
                self._graph_warned = True
                warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); scoring eagerly instead",
                              RuntimeWarning, stacklevel=3)
            return None
        self._graphs[(tuple(raw.shape), raw.dtype)] = graphed
        return graphed

    def _timestep(self, n: int, t: int, device: torch.device) -> torch.Tensor:
        # One int64 [n] tensor per (batch size, t), made once: no fill per UNet call, and a
        # graph captures a tensor that stays alive.
        key = (n, t)
        ts = self._timesteps.get(key)
        if ts is None:
            self.schedule.check_timestep(t)
            ts = torch.full((n,), t, dtype=torch.long, device=device)
            self._timesteps[key] = ts
        return ts

    def _eps(self, x: torch.Tensor, t: int, precision: str | None = None) -> torch.Tensor:
        ts = self._timestep(x.shape[0], t, x.device)
        precision = precision or self.config.precision
        with autocast_context(precision, x.device), (self._layers or contextlib.nullcontext()):
            eps = self._forward(x, ts)
        # The trajectory stays in float32 whatever precision the UNet runs in.
        if eps.dtype != torch.float32:
            eps = eps.float()
        if eps.stride() != x.stride():
            eps = eps.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return eps

    def _compute(self, x0: torch.Tensor, offset: int, samples: torch.Tensor | None = None) -> torch.Tensor:
        """float32 [n] scores of x0 (in [-1, 1]); the loss noise is keyed by offset + i, or samples[i] if given."""
        cfg = self.config
        with torch.inference_mode(), exact_fp32_matmul(cfg.precision in ("fp32", "mixed")):
            if cfg.method == "secmi":
                # mixed: the inversion only has to land near x~; the round trip's two calls,
                # whose difference is the score, run in fp32.
                mixed = cfg.precision == "mixed"
                inversion_precision = MIXED_INVERSION if mixed else None
                round_trip_precision = "fp32" if mixed else None
                x = x0
                *inversion, (t_up, _, c1_up, c2_up), (t_down, _, c1_dn, c2_dn) = self._steps
                for t_cur, _t_next, c1, c2 in inversion:
                    x = kernels.ddim_step(x, self._eps(x, t_cur, inversion_precision), c1, c2)
                x_tilde = x
                x_up = kernels.ddim_step(x_tilde, self._eps(x_tilde, t_up, round_trip_precision), c1_up, c2_up)
                eps_down = self._eps(x_up, t_down, round_trip_precision)
                return kernels.ddim_step_sqerr(x_up, eps_down, c1_dn, c2_dn, x_tilde)
            if cfg.method == "loss":
                a = float(self.schedule.sqrt_abar_at(cfg.t))
                b = float(self.schedule.sqrt_one_minus_abar_at(cfg.t))
                keys = {"offset": offset} if samples is None else {"samples": samples}
                total = None
                for draw in range(cfg.n_draws):
                    x_t = kernels.noise_inject(x0, a, b, cfg.seed, stream=draw, **keys)
                    err = kernels.eps_sq_error(self._eps(x_t, cfg.t), cfg.seed, stream=draw, **keys)
                    total = err if total is None else total + err
                return total / cfg.n_draws if cfg.n_draws > 1 else total
            # pia
            eps0 = self._eps(x0, 0)
            a = float(self.schedule.sqrt_abar_at(cfg.t))
            b = float(self.schedule.sqrt_one_minus_abar_at(cfg.t))
            x_t = kernels.ddim_step(x0, eps0, a, b)
            return kernels.pnorm_error(self._eps(x_t, cfg.t), eps0, cfg.p)


class _GraphedBatch:
    """One batch's whole computation captured as a CUDA graph, replayed with a new batch and sample offset copied in.

    fn(static_raw, static_samples) -> float32 [n]; static_samples holds the batch's global
    sample indices (offset + i), refilled on the device before every replay.
    """

    def __init__(self, fn, example: torch.Tensor):
        device = example.device
        self.static_raw = example.clone()
        self.rows = torch.arange(example.shape[0], dtype=torch.long, device=device)
        self.static_samples = self.rows.clone()
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: lazy module loading, cuDNN autotuning, allocator pools, compilation
                fn(self.static_raw, self.static_samples)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = fn(self.static_raw, self.static_samples)

    def run(self, raw: torch.Tensor, offset: int) -> torch.Tensor:
        """The scores of `raw`, in a tensor that the next replay overwrites (stream order keeps a queued copy safe)."""
        self.static_raw.copy_(raw)
        torch.add(self.rows, offset, out=self.static_samples)
        self.graph.replay()
        return self.static_output


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's intra-op thread count set to `threads` for the duration (None: unchanged)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _start_download(result: torch.Tensor):
    if result.device.type == "cuda":
        host = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
        host.copy_(result, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event
    return result, None


def _finish_download(item) -> tuple[int, np.ndarray]:
    start, host, event = item
    if event is not None:
        event.synchronize()
    return start, host.numpy().astype(np.float64)


def _progress(enabled: bool, length: int, label: str):
    if not enabled:
        return contextlib.nullcontext(_NoTicker())
    import click

    return click.progressbar(length=length, label=label, file=sys.stderr, show_eta=True, show_pos=True)


class _NoTicker:
    def update(self, n: int) -> None:
        pass


def _resolve_device(device, model) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device = {device!r} is not a device name ({exc}); use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {device!r} but CUDA is not available here; use --device cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"device = {device!r} is not supported; use cpu or cuda")
    return resolved


def _as_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed = {seed!r} must be an integer in [0, 2**64)")
    if not 0 <= int(seed) < 2**64:
        raise ConfigError(f"seed = {seed} must be in [0, 2**64); negative seeds are not allowed")
    return int(seed)


def default_batch_size(device: torch.device) -> int:
    """Batch size used when none is given (chosen by bench/bench_scoring.py on the reference machines)."""
    return 256 if device.type == "cuda" else 64


def default_channels_last(device: torch.device, precision: str) -> bool:
    """Memory format of the UNet's activations when the caller does not choose one."""
    return device.type == "cuda" or precision != "fp32"


def default_fast_layers(device: torch.device, precision: str) -> bool:
    """Whether the Winograd/NHWC-GroupNorm CPU layers are used when the caller does not choose."""
    return device.type == "cpu" and precision == "fp32"


def score(model, images, method: str = "secmi", t_sec: int = 100, k: int = 10, t: int = 200, p: float = 4.0,
          seed: int = 0, batch_size: int | None = None, device=None, precision: str = "fp32",
          n_draws: int = 1, offset: int = 0, progress: bool = False, **options) -> np.ndarray:
    """Membership scores (float64 [N], lower = more likely a member) of images under model; see Scorer."""
    scorer = Scorer(model, method, t_sec=t_sec, k=k, t=t, p=p, n_draws=n_draws, seed=seed,
                    batch_size=batch_size, device=device, precision=precision, **options)
    started = time.perf_counter()
    values = scorer.score(images, offset=offset, progress=progress)
    scorer.elapsed = time.perf_counter() - started
    return values
