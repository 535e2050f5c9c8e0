"""Membership scores of images under a target DDPM (SecMI t-error, loss, PIA), streamed in fixed-size UNet micro-batches through the fused kernels."""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator

import numpy as np
import torch

from . import kernels
from .arrays import to_tensor
from .errors import ConfigError, InputError, ScoreOverflowError
from .precision import (
    autocast_context, call_precisions, matmul_precision, resident_weights, resolve_precision,
)
from .runtime import check_threads, progress_bar, resolve_device, torch_threads
from .seeds import check_seed

__all__ = ["METHODS", "SCORE_SETTINGS", "ScoreConfig", "Scorer", "score", "score_defaults", "validate_images",
           "to_model_range", "default_unet_batch"]

METHODS = ("secmi", "loss", "pia")
# The settings that define a score's value, besides seed and precision.
SCORE_SETTINGS = ("method", "t_sec", "k", "t", "p", "n_draws")
# Which settings each method reads; the others do not apply to it.
METHOD_SETTINGS = {"secmi": ("t_sec", "k"), "loss": ("t", "n_draws"), "pia": ("t", "p")}
# PIA's exponent: beyond this the float32 sum of |eps error|^p overflows on ordinary images.
P_RANGE = (0.25, 32.0)


@dataclass(frozen=True)
class ScoreConfig:
    """Everything that decides a score's value; its defaults are the package's score defaults."""

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

    def applicable(self) -> dict[str, Any]:
        """The method, the settings it reads, seed and precision (what a report should list)."""
        names = ("method", *METHOD_SETTINGS.get(self.method, ()), "seed", "precision")
        return {name: getattr(self, name) for name in names}

    @property
    def unet_calls(self) -> int:
        """UNet evaluations per image."""
        if self.method == "secmi":
            return self.t_sec // self.k + 1
        if self.method == "loss":
            return self.n_draws
        return 2


def score_defaults() -> dict[str, Any]:
    """The default of every score setting (SCORE_SETTINGS), read off ScoreConfig."""
    return {f.name: f.default for f in fields(ScoreConfig) if f.name in SCORE_SETTINGS}


def _check_config(cfg: ScoreConfig, T: int) -> None:
    """Every check that can fail on options alone, before any image is touched."""
    if cfg.method not in METHODS:
        raise ConfigError(f"method = {cfg.method!r} is unknown; use one of {', '.join(METHODS)}")
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
    if cfg.precision.startswith("mixed") and cfg.method != "secmi":
        raise ConfigError(f"precision {cfg.precision!r} (bf16 inversion, full-precision round trip) applies to the "
                          f"secmi method only; use fp16, bf16, tf32 or fp32 for {cfg.method}")
    if cfg.method == "loss" and cfg.n_draws < 1:
        raise ConfigError(f"n_draws = {cfg.n_draws} must be at least 1")
    if cfg.method == "pia" and not (math.isfinite(cfg.p) and P_RANGE[0] <= cfg.p <= P_RANGE[1]):
        raise ConfigError(f"p = {cfg.p} must be in [{P_RANGE[0]:g}, {P_RANGE[1]:g}] (PIA uses 4; larger exponents "
                          "overflow float32 sums of |error|^p)")


def _as_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} = {value!r} must be an integer")
    return int(value)


def _as_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} = {value!r} must be a number")
    return float(value)


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


def _sample_ids(n: int, offset, indices) -> np.ndarray:
    """int64 [n] global sample identities: `indices` as given, or offset, offset + 1, ..."""
    if indices is not None:
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        ids = np.asarray(indices)
        if ids.shape != (n,) or (ids.size and ids.dtype.kind not in "iu"):
            raise InputError(f"indices must be an integer array with one entry per image ({n}), "
                             f"got shape {ids.shape} and dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0):
            raise InputError(f"indices must be >= 0 (global sample numbers), got {int(ids.min())}")
        if offset:
            raise InputError("pass either indices or offset, not both")
        return ids
    offset = _as_int(offset, "offset")
    if offset < 0 or offset + n >= 2**63:
        raise InputError(f"offset = {offset} must be >= 0 with offset + N below 2**63")
    return np.arange(offset, offset + n, dtype=np.int64)


class Scorer:
    """A reusable scorer: fixed model, method and precision; scores arrays or streams of image batches.

    Scores are float64 numpy arrays, lower = more likely a member. A sample's noise is keyed
    by (seed, global sample index): by default the image's position plus ``offset``, or
    ``indices[i]`` when a subset of a larger set is scored under its global identities.

    Determinism: the UNet always runs on micro-batches of exactly ``unet_batch`` images
    (the last one of a job padded), and a sample's result does not depend on its position
    in a micro-batch or on the other images in it. So a score has the same bits whatever
    ``batch_size``, thread count or torchrun sharding, for one ``unet_batch``, device and
    precision (tests/test_scoring_determinism.py). ``batch_size`` is how many images go
    to the device per step (rounded up to a multiple of ``unet_batch``); results come back
    one step late, so the host never waits inside a step.

    On CUDA each micro-batch's whole computation (upload conversion, every UNet call, the
    fused steps and the reduction) is one CUDA graph, replayed with the batch and its
    sample indices copied in. ``threads`` sets torch's intra-op threads while scoring
    (None: leave them as they are).

    ``precision``: fp32 (strict float32: TF32 off), tf32 (CUDA: TF32 matrix inputs),
    bf16 or fp16 (the UNet under autocast, with its convolution and linear weights
    resident in that dtype: cast once, not per call), mixed / mixed-tf32 (secmi only:
    bf16 inversion, fp32 / TF32 round trip), or auto (precision.resolve_precision).
    Arithmetic between UNet calls stays float32. A micro-batch whose scores come out
    non-finite at bf16/fp16 (an overflow) is recomputed in fp32 and counted in
    ``recomputed_fp32``; a non-finite score at fp32 is a ScoreOverflowError.

    ``fused``: run the project UNet's GroupNorms with the add before and the SiLU after them as
    one kernel (models.unet.UNet.set_fused). None: the device decides (models.unet.
    FUSED_BY_DEFAULT: on for CPU, off for CUDA until a GPU run has validated it); True / False
    force it. Models of other classes are unaffected. ``self.fused`` records what runs.

    ``fast_layers`` (CPU, float32): run the UNet's 3x3 convolutions as Winograd
    F(4x4, 3x3) and its GroupNorms with our NHWC kernel, on channels_last activations
    (qmia_fast.kernels.winograd). None turns it on where it was measured faster: CPU at fp32.
    ``compile`` wraps the model in torch.compile (off by default: on a 2-core CPU the
    compilation took longer than the demo's whole scoring job).
    """

    def __init__(self, model, method: str = ScoreConfig.method, *, t_sec: int = ScoreConfig.t_sec,
                 k: int = ScoreConfig.k, t: int = ScoreConfig.t, p: float = ScoreConfig.p,
                 n_draws: int = ScoreConfig.n_draws, seed: int = ScoreConfig.seed, batch_size: int | None = None,
                 unet_batch: int | None = None, device=None, precision: str = ScoreConfig.precision,
                 channels_last: bool | None = None, cuda_graphs: bool = True, compile: bool = False,
                 threads: int | None = None, fast_layers: bool | None = None, fused: bool | None = None):
        if not callable(model) or not hasattr(model, "schedule"):
            raise InputError("model must be an eps-model from qmia_fast.load_model (callable (x, t) -> eps with .schedule)")
        self.device = resolve_device(device, default="auto")
        resolved = resolve_precision(precision, self.device, method=str(method))
        self.config = ScoreConfig(method=str(method), t_sec=_as_int(t_sec, "t_sec"), k=_as_int(k, "k"),
                                  t=_as_int(t, "t"), p=_as_float(p, "p"), n_draws=_as_int(n_draws, "n_draws"),
                                  seed=check_seed(seed), precision=resolved)
        _check_config(self.config, model.schedule.T)
        self.threads = check_threads(threads)
        self.unet_batch = _positive(unet_batch, "unet_batch") or default_unet_batch(self.device)
        requested = _positive(batch_size, "batch_size") or self.unet_batch
        self.batch_size = -(-requested // self.unet_batch) * self.unet_batch
        self.model = model.to(self.device).eval()
        self.schedule = model.schedule
        if fast_layers is None:
            fast_layers = default_fast_layers(self.device, resolved) and not compile
        if fast_layers and (self.device.type != "cpu" or resolved != "fp32"):
            raise ConfigError("fast_layers applies to CPU scoring at fp32 only; leave it unset elsewhere")
        self.fast_layers = bool(fast_layers)
        self._layers = None
        if self.fast_layers:
            from .kernels.winograd import WinogradConvs

            self._layers = WinogradConvs()
            channels_last = True  # the fast layers work on NHWC memory
        if channels_last is None:
            channels_last = default_channels_last(self.device, resolved)
        self.channels_last = bool(channels_last)
        self._nets = self._networks(compile)
        self.fused = _set_fused(self._nets.values(), fused, self.device, self.channels_last)
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._graphs: dict[tuple, _GraphedBatch] = {}
        self._graph_warned = False
        self._timesteps: dict[tuple[int, int], torch.Tensor] = {}
        self._steps = self._plan()
        self.unet_calls = 0  # per image-batch call, for tests and reports
        self.recomputed_fp32 = 0  # micro-batches recomputed in fp32 after a half-precision overflow

    # ------------------------------------------------------------------ public API

    def score(self, images, offset: int = 0, progress: bool = False, indices=None) -> np.ndarray:
        """Scores of all images (array or tensor, N x C x H x W), float64 [N].

        indices: the images' global sample numbers (int [N]), so that a subset scores as it
        does inside the whole set; default offset, offset + 1, ...
        """
        self.check_images(images)
        out = np.empty(len(images), dtype=np.float64)
        for start, values in self.iter_scores(images, offset=offset, indices=indices, progress=progress,
                                              validated=True):
            out[start - offset:start - offset + len(values)] = values
        return out

    def iter_scores(self, images, offset: int = 0, progress: bool = False, validated: bool = False,
                    indices=None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (offset + position of the step's first image, float64 scores) step by step; memory stays flat in N."""
        if not validated:
            self.check_images(images)
        n = len(images)
        ids = _sample_ids(n, offset, indices)
        starts = range(0, n, self.batch_size)
        bar = progress_bar(progress, n, f"scoring {n} images ({self.config.method})")
        with bar as ticker, torch_threads(self.threads):
            pending: list[_Pending] = []
            for start in starts:
                stop = min(n, start + self.batch_size)
                pending.append(self._score_step(images[start:stop], ids[start:stop], offset + start))
                # Hand results back one step late, so the device never waits for the host.
                if len(pending) > 1:
                    done = self._finish(pending.pop(0))
                    ticker.update(len(done[1]))
                    yield done
            while pending:
                done = self._finish(pending.pop(0))
                ticker.update(len(done[1]))
                yield done

    def score_batch(self, batch, offset: int = 0, indices=None) -> np.ndarray:
        """Scores of one batch whose first image has global index `offset` (or whose images are `indices`)."""
        return self.score(batch, offset=offset, indices=indices)

    def check_images(self, images) -> None:
        from .models import check_image_shape

        validate_images(images)
        check_image_shape(self.model, tuple(images.shape))

    # ------------------------------------------------------------------ internals

    def _networks(self, compile: bool) -> dict[str, Any]:
        """The module each call precision runs: the model itself, or a copy with resident half-precision weights."""
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        inversion, round_trip = call_precisions(self.config.precision)
        nets: dict[str, Any] = {}
        for call in {inversion, round_trip}:
            net = resident_weights(self.model, call) or self.model
            nets[call] = torch.compile(net, dynamic=False) if compile else net
        return nets

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
            batch = to_tensor(np.asarray(batch))
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

    def _score_step(self, batch, ids: np.ndarray, start: int) -> "_Pending":
        """Queue one step: its micro-batches run on the device; results are downloaded later by _finish."""
        raw = self._upload(batch)
        samples = torch.tensor(ids, dtype=torch.long).to(self.device, non_blocking=True)
        m = self.unet_batch
        results = []
        for first in range(0, raw.shape[0], m):
            rows, row_ids = raw[first:first + m], samples[first:first + m]
            real = rows.shape[0]
            if real < m:  # pad the last micro-batch; the padding's results are dropped
                rows = torch.cat([rows, rows.new_zeros((m - real, *rows.shape[1:]))])
                row_ids = torch.cat([row_ids, row_ids[-1:].expand(m - real)])
            results.append(self._score_micro_batch(rows, row_ids)[:real])
        result = torch.cat(results) if len(results) > 1 else results[0]
        return _Pending(start, raw, samples, *_start_download(result))

    def _finish(self, item: "_Pending") -> tuple[int, np.ndarray]:
        if item.event is not None:
            item.event.synchronize()
        values = item.host.numpy().astype(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            values = self._recompute_non_finite(item, values, bad)
        return item.start, values

    def _recompute_non_finite(self, item: "_Pending", values: np.ndarray, bad: np.ndarray) -> np.ndarray:
        """Recompute, in strict fp32, the micro-batches of a step that overflowed at half precision."""
        m = self.unet_batch
        if self.config.precision in ("fp32", "tf32"):
            first = int(np.flatnonzero(bad)[0])
            raise ScoreOverflowError(
                f"the {self.config.method} score of image {item.start + first} (sample {int(item.samples[first])}) "
                f"is not finite in float32 ({_settings_text(self.config)}); for pia use a smaller p, otherwise "
                "check the model's outputs on this image")
        for first in range(0, len(values), m):
            if not bad[first:first + m].any():
                continue
            rows, row_ids = item.raw[first:first + m], item.samples[first:first + m]
            real = rows.shape[0]
            if real < m:
                rows = torch.cat([rows, rows.new_zeros((m - real, *rows.shape[1:]))])
                row_ids = torch.cat([row_ids, row_ids[-1:].expand(m - real)])
            with torch_threads(self.threads):
                redone = self._compute(self._prepare(rows), row_ids, force="fp32")[:real]
            values[first:first + real] = redone.cpu().numpy().astype(np.float64)
            self.recomputed_fp32 += 1
        if not np.isfinite(values).all():
            first = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ScoreOverflowError(
                f"the {self.config.method} score of image {item.start + first} is not finite even in float32 "
                f"({_settings_text(self.config)}); check the model's outputs on this image")
        return values

    def _score_micro_batch(self, raw: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """float32 [unet_batch] scores on the device (valid until the next micro-batch is scored)."""
        self.unet_calls += self.config.unet_calls
        if self.cuda_graphs:
            key = (tuple(raw.shape), raw.dtype)
            graphed = self._graphs.get(key)
            if graphed is None:
                graphed = self._capture(raw, samples)
            if graphed is not None:
                return graphed.run(raw, samples).clone()
        return self._compute(self._prepare(raw), samples)

    def _capture(self, raw: torch.Tensor, samples: torch.Tensor):
        def whole_batch(static_raw: torch.Tensor, static_samples: torch.Tensor) -> torch.Tensor:
            return self._compute(self._prepare(static_raw), static_samples)

        try:
            graphed = _GraphedBatch(whole_batch, raw, samples)
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

    def _eps(self, x: torch.Tensor, t: int, call: str) -> torch.Tensor:
        ts = self._timestep(x.shape[0], t, x.device)
        net = self._nets.get(call, self.model)
        with autocast_context(call, x.device), matmul_precision(call), (self._layers or contextlib.nullcontext()):
            eps = net(x, ts)
        # The trajectory stays in float32 whatever precision the UNet runs in.
        if eps.dtype != torch.float32:
            eps = eps.float()
        if eps.stride() != x.stride():
            eps = eps.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return eps

    def _compute(self, x0: torch.Tensor, samples: torch.Tensor, force: str | None = None) -> torch.Tensor:
        """float32 [n] scores of x0 (in [-1, 1]); the loss noise of row i is keyed by samples[i].

        force: run every UNet call at this precision (the fp32 recomputation of an overflow).
        """
        cfg = self.config
        inversion, round_trip = (force, force) if force else call_precisions(cfg.precision)
        with torch.inference_mode():
            if cfg.method == "secmi":
                # The inversion only has to land near x~; the round trip's two calls, whose
                # difference is the score, may run at a higher precision (the mixed variants).
                x = x0
                *steps, (t_up, _, c1_up, c2_up), (t_down, _, c1_dn, c2_dn) = self._steps
                for t_cur, _t_next, c1, c2 in steps:
                    x = kernels.ddim_step(x, self._eps(x, t_cur, inversion), c1, c2)
                x_tilde = x
                x_up = kernels.ddim_step(x_tilde, self._eps(x_tilde, t_up, round_trip), c1_up, c2_up)
                eps_down = self._eps(x_up, t_down, round_trip)
                return kernels.ddim_step_sqerr(x_up, eps_down, c1_dn, c2_dn, x_tilde)
            a = float(self.schedule.sqrt_abar_at(cfg.t))
            b = float(self.schedule.sqrt_one_minus_abar_at(cfg.t))
            if cfg.method == "loss":
                total = None
                for draw in range(cfg.n_draws):
                    x_t = kernels.noise_inject(x0, a, b, cfg.seed, stream=draw, samples=samples)
                    err = kernels.eps_sq_error(self._eps(x_t, cfg.t, inversion), cfg.seed, stream=draw,
                                               samples=samples)
                    total = err if total is None else total + err
                return total / cfg.n_draws if cfg.n_draws > 1 else total
            eps0 = self._eps(x0, 0, inversion)  # pia
            x_t = kernels.ddim_step(x0, eps0, a, b)
            return kernels.pnorm_error(self._eps(x_t, cfg.t, inversion), eps0, cfg.p)


class _Pending:
    """A queued step: where it starts, its uploaded pixels and sample ids (for an fp32 redo), and its download."""

    __slots__ = ("start", "raw", "samples", "host", "event")

    def __init__(self, start, raw, samples, host, event):
        self.start, self.raw, self.samples, self.host, self.event = start, raw, samples, host, event


class _GraphedBatch:
    """One micro-batch's whole computation captured as a CUDA graph, replayed with new pixels and sample ids copied in."""

    def __init__(self, fn, example: torch.Tensor, samples: torch.Tensor):
        device = example.device
        self.static_raw = example.clone()
        self.static_samples = samples.clone()
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: lazy module loading, cuDNN autotuning, allocator pools, compilation
                fn(self.static_raw, self.static_samples)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = fn(self.static_raw, self.static_samples)

    def run(self, raw: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """The scores of `raw`, in a tensor that the next replay overwrites (the caller copies what it keeps)."""
        self.static_raw.copy_(raw)
        self.static_samples.copy_(samples)
        self.graph.replay()
        return self.static_output


def _start_download(result: torch.Tensor):
    if result.device.type == "cuda":
        host = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
        host.copy_(result, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event
    return result, None


def _set_fused(nets, fused: bool | None, device: torch.device, channels_last: bool) -> bool | None:
    """Apply `fused` to every project UNet inside `nets`; what runs: True/False, or None without such a UNet."""
    from .models.unet import FUSED_BY_DEFAULT

    if fused is not None and not isinstance(fused, bool):
        raise ConfigError(f"fused = {fused!r} must be True, False or None (the device decides)")
    found = False
    for net in nets:
        for module in getattr(net, "modules", lambda: ())():
            if hasattr(module, "set_fused"):
                module.set_fused(fused)
                found = True
    if not found:
        return None
    if fused is not None:
        return fused
    return bool(FUSED_BY_DEFAULT.get(device.type, False) and channels_last)


def _settings_text(cfg: ScoreConfig) -> str:
    return ", ".join(f"{name}={value}" for name, value in cfg.applicable().items())


def _positive(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ConfigError(f"{name} = {value!r} must be a positive integer (or omitted for the default)")
    return int(value)


def default_unet_batch(device: torch.device) -> int:
    """Images per UNet call when none is given: the batch the scorer was measured fastest at (bench/README.md)."""
    return 256 if device.type == "cuda" else 64


def default_batch_size(device: torch.device) -> int:
    """Images per scoring step when none is given: one UNet micro-batch."""
    return default_unet_batch(device)


def default_channels_last(device: torch.device, precision: str) -> bool:
    """Memory format of the UNet's activations when the caller does not choose one."""
    return device.type == "cuda" or precision != "fp32"


def default_fast_layers(device: torch.device, precision: str) -> bool:
    """Whether the Winograd/NHWC-GroupNorm CPU layers are used when the caller does not choose."""
    return device.type == "cpu" and precision == "fp32"


def score(model, images, method: str = ScoreConfig.method, t_sec: int = ScoreConfig.t_sec, k: int = ScoreConfig.k,
          t: int = ScoreConfig.t, p: float = ScoreConfig.p, seed: int = ScoreConfig.seed,
          batch_size: int | None = None, device=None, precision: str = ScoreConfig.precision,
          n_draws: int = ScoreConfig.n_draws, offset: int = 0, progress: bool = False, indices=None,
          **options) -> np.ndarray:
    """Membership scores (float64 [N], lower = more likely a member) of images under model; see Scorer."""
    scorer = Scorer(model, method, t_sec=t_sec, k=k, t=t, p=p, n_draws=n_draws, seed=seed,
                    batch_size=batch_size, device=device, precision=precision, **options)
    return scorer.score(images, offset=offset, progress=progress, indices=indices)
