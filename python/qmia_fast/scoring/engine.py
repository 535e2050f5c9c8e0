"""The streaming scorer: images (or latents) in fixed-size micro-batches through a score method, a run plan's networks and the fused kernels."""
from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import torch

from ..arrays import to_tensor
from ..errors import ConfigError, InputError, ScoreOverflowError
from ..precision import DEFAULT_PRECISION
from ..progress import progress_bar
from ..runtime import check_threads, torch_threads
from ..seeds import check_seed
from .conditions import Conditions, take
from .config import ScoreConfig, as_float, as_int, settings_text
from .graphs import GraphedBatch, Pending, start_download
from .images import sample_ids, to_model_range, validate_images
from .networks import Networks

INPUT_KINDS = ("pixels", "latents")


class Scorer:
    """A reusable scorer: fixed model, method and run plan; scores arrays or streams of image batches.

    Scores are float64 numpy arrays, lower = more likely a member. A sample's noise is keyed
    by (seed, global sample index): by default the image's position plus ``offset``, or
    ``indices[i]`` when a subset of a larger set is scored under its global identities.

    How it runs is the run plan's (``plan``: qmia_fast.plan.RunPlan; resolved from the
    keyword options here when not given): device, precision per UNet call, micro-batch,
    layout, fused GroupNorm, Winograd layers, CUDA graphs, threads. The UNet runs on
    micro-batches of ``unet_batch`` images; the last one of a step is padded up to the
    smallest of ``plan.micro_batches`` that holds it (only ``unet_batch`` itself, unless the
    plan verified on this machine that these sizes give every sample the same bits). So a
    score has the same bits whatever ``batch_size``, thread count, torchrun sharding or the
    other images in the call, for one plan (tests/test_determinism.py).

    Conditional models take each image's condition (``conditions=``: class labels, or
    captions for a text-conditioned model) in every denoiser call, or the null condition for
    every image with ``condition="null"``. Latent models (a VAE in front) encode each image
    once, to the posterior mean times the VAE's scaling factor, and score in latent space;
    ``encode`` returns those latents and ``score(..., inputs="latents")`` scores them.

    A micro-batch whose scores come out non-finite at bf16/fp16 (an overflow) is recomputed
    in fp32 and counted in ``recomputed_fp32``; a non-finite score at fp32 is a ScoreOverflowError.
    """

    def __init__(self, model, method: str = ScoreConfig.method, *, t_sec: int = ScoreConfig.t_sec,
                 k: int = ScoreConfig.k, t: int = ScoreConfig.t, p: float = ScoreConfig.p,
                 n_draws: int = ScoreConfig.n_draws, seed: int = ScoreConfig.seed, condition: str = "own",
                 plan=None, batch_size: int | None = None, unet_batch: int | None = None, device=None,
                 precision: str = DEFAULT_PRECISION, channels_last: bool | None = None, cuda_graphs: bool = True,
                 compile: bool = False, threads: int | None = None, fast_layers: bool | None = None,
                 fused: bool | None = None):
        if not callable(model) or not hasattr(model, "schedule"):
            raise InputError("model must be an eps-model from qmia_fast.load_model (callable (x, t) -> eps with .schedule)")
        method = str(method)
        config = ScoreConfig(method=method, t_sec=as_int(t_sec, "t_sec"), k=as_int(k, "k"), t=as_int(t, "t"),
                             p=as_float(p, "p"), n_draws=as_int(n_draws, "n_draws"), seed=check_seed(seed))
        config.check(model.schedule.T)
        if plan is None:
            from ..plan import resolve_plan

            plan = resolve_plan(model, method, device=device, precision=precision, unet_batch=unet_batch,
                                batch_size=batch_size, threads=check_threads(threads), fast_layers=fast_layers,
                                fused=fused, channels_last=channels_last, cuda_graphs=cuda_graphs, compile=compile,
                                calls_per_image=config.unet_calls)
        self.plan = plan
        self.config = ScoreConfig(**{**config.to_dict(), "precision": plan.precision})
        self.config.check(model.schedule.T)
        self.device = torch.device(plan.device)
        self.unet_batch, self.batch_size, self.threads = plan.unet_batch, plan.batch_size, plan.threads
        self.channels_last, self.fast_layers = plan.channels_last, plan.fast_layers
        self.cuda_graphs = plan.cuda_graphs
        self.model = model
        self.schedule = model.schedule
        self.method = self.config.score_method
        self.inversion, self.round_trip = plan.inversion, plan.round_trip
        self.networks = Networks(model, (self.inversion, self.round_trip), device=self.device,
                                 channels_last=plan.channels_last, fast_layers=plan.fast_layers, fused=plan.fused,
                                 compile=plan.compile)
        self.fused = self.networks.fused
        self.conditions = Conditions(model, condition)
        self._prepared = self.method.prepare(self.config, self.schedule)
        self._graphs: dict[tuple, GraphedBatch | None] = {}
        self._graph_warned = False
        self._timesteps: dict[tuple[int, int], torch.Tensor] = {}
        self.unet_calls = 0  # per image-batch call, for tests and reports
        self.recomputed_fp32 = 0  # micro-batches recomputed in fp32 after a half-precision overflow
        self._force: str | None = None

    # ------------------------------------------------------------------ public API

    def score(self, images, offset: int = 0, progress: bool = False, indices=None, conditions=None,
              inputs: str = "pixels") -> np.ndarray:
        """Scores of all images (array or tensor, N x C x H x W), float64 [N].

        indices: the images' global sample numbers (int [N]), so that a subset scores as it
        does inside the whole set; default offset, offset + 1, ... conditions: the images'
        class labels or captions (conditional models). inputs: "pixels", or "latents" from encode().
        """
        out = np.empty(len(images), dtype=np.float64)
        for start, values in self.iter_scores(images, offset=offset, indices=indices, progress=progress,
                                              conditions=conditions, inputs=inputs):
            out[start - offset:start - offset + len(values)] = values
        return out

    def iter_scores(self, images, offset: int = 0, progress: bool = False, validated: bool = False,
                    indices=None, conditions=None, inputs: str = "pixels") -> Iterator[tuple[int, np.ndarray]]:
        """Yield (offset + position of the step's first image, float64 scores) step by step; memory stays flat in N."""
        if not validated:
            self.check_images(images, inputs)
        n = len(images)
        ids = sample_ids(n, offset, indices)
        conds = self.conditions.check(conditions, n)
        bar = progress_bar(progress, n, f"scoring {n} images ({self.config.method})")
        with bar as ticker, torch_threads(self.threads):
            pending: list[Pending] = []
            for start in range(0, n, self.batch_size):
                stop = min(n, start + self.batch_size)
                pending.append(self._score_step(images[start:stop], ids[start:stop],
                                                take(conds, slice(start, stop)), offset + start, inputs))
                # Hand results back one step late, so the device never waits for the host.
                if len(pending) > 1:
                    done = self._finish(pending.pop(0), inputs)
                    ticker.update(len(done[1]))
                    yield done
            while pending:
                done = self._finish(pending.pop(0), inputs)
                ticker.update(len(done[1]))
                yield done

    def encode(self, images, progress: bool = False) -> np.ndarray:
        """float32 latents (N x c x h x w) of pixel images: the VAE posterior mean times its scaling factor.

        Run in the scorer's micro-batches, so an image's latent has the same bits whatever it
        was encoded with. For a pixel-space model, the images in [-1, 1].
        """
        self.check_images(images)
        n = len(images)
        out = np.empty((n, *self.model.input_shape), dtype=np.float32)
        with progress_bar(progress, n, f"encoding {n} images") as bar, torch_threads(self.threads), \
                torch.inference_mode():
            for start in range(0, n, self.unet_batch):
                rows = self._upload(images[start:start + self.unet_batch])
                real = rows.shape[0]
                latents = self._prepare(self._pad(rows, self._rung(real)), "pixels")[:real]
                out[start:start + real] = latents.float().cpu().numpy()
                bar.update(real)
        return out

    def score_batch(self, batch, offset: int = 0, indices=None, conditions=None) -> np.ndarray:
        """Scores of one batch whose first image has global index `offset` (or whose images are `indices`)."""
        return self.score(batch, offset=offset, indices=indices, conditions=conditions)

    def check_images(self, images, inputs: str = "pixels") -> None:
        if inputs not in INPUT_KINDS:
            raise ConfigError(f"inputs = {inputs!r} must be one of {', '.join(INPUT_KINDS)}")
        if inputs == "latents":
            shape = tuple(getattr(images, "shape", ()))
            if len(shape) != 4 or shape[1:] != tuple(self.model.input_shape):
                raise InputError(f"latents have shape {shape}; this model takes N x "
                                 f"{' x '.join(map(str, self.model.input_shape))} (from Scorer.encode)")
            return
        from ..models import check_image_shape

        validate_images(images)
        check_image_shape(self.model, tuple(images.shape))

    @property
    def truncated_captions(self) -> int:
        """Captions longer than the text encoder takes (truncated), so far."""
        return self.conditions.truncated

    # ------------------------------------------------------------------ what a method calls

    def pred(self, x: torch.Tensor, t: int, cond, call: str) -> torch.Tensor:
        """The denoiser's float32 prediction at timestep t (eps for a DDPM, the velocity for flow)."""
        return self.networks(x, self._timestep(x.shape[0], t, x.device), cond, self._force or call)

    # ------------------------------------------------------------------ internals

    def _rung(self, real: int) -> int:
        """The micro-batch size a group of `real` rows runs at: the smallest of the plan's sizes that holds it."""
        return next(size for size in self.plan.micro_batches if size >= real)

    @staticmethod
    def _pad(rows: torch.Tensor, size: int) -> torch.Tensor:
        if rows.shape[0] >= size:
            return rows
        return torch.cat([rows, rows.new_zeros((size - rows.shape[0], *rows.shape[1:]))])

    def _upload(self, batch) -> torch.Tensor:
        """The batch as it came (uint8 or float pixels, or latents) on the device; conversion happens in _prepare."""
        if not isinstance(batch, torch.Tensor):
            batch = to_tensor(np.asarray(batch))
        if self.device.type == "cuda" and batch.device.type == "cpu":
            # Pinned staging lets the copy run asynchronously; the caching host allocator
            # keeps the buffer alive until the copy has finished.
            return batch.contiguous().pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def _prepare(self, raw: torch.Tensor, inputs: str) -> torch.Tensor:
        """The micro-batch in the denoiser's input space: pixels to [-1, 1], then through the VAE for latent models."""
        if inputs == "latents":
            x0 = raw.to(torch.float32)
        else:
            x0 = to_model_range(raw)
            latent = getattr(self.model, "latent", None)
            if latent is not None:
                x0 = self.networks.encode(latent, x0, self._force or self.inversion)
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        return x0

    def _score_step(self, batch, ids: np.ndarray, conds, start: int, inputs: str) -> Pending:
        """Queue one step: its micro-batches run on the device; results are downloaded later by _finish."""
        raw = self._upload(batch)
        samples = torch.tensor(ids, dtype=torch.long).to(self.device, non_blocking=True)
        m = self.unet_batch
        results = []
        for first in range(0, raw.shape[0], m):
            rows, row_ids = raw[first:first + m], samples[first:first + m]
            real = rows.shape[0]
            size = self._rung(real)
            # Pad to the micro-batch size; the padding's results are dropped.
            rows = self._pad(rows, size)
            if real < size:
                row_ids = torch.cat([row_ids, row_ids[-1:].expand(size - real)])
            cond = self.conditions.tensor(take(conds, slice(first, first + real)), size, self.device)
            results.append(self._score_micro_batch(rows, row_ids, cond, inputs)[:real])
        result = torch.cat(results) if len(results) > 1 else results[0]
        return Pending(start, raw, samples, conds, *start_download(result))

    def _finish(self, item: Pending, inputs: str) -> tuple[int, np.ndarray]:
        if item.event is not None:
            item.event.synchronize()
        values = item.host.numpy().astype(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            values = self._recompute_non_finite(item, values, bad, inputs)
        return item.start, values

    def _recompute_non_finite(self, item: Pending, values: np.ndarray, bad: np.ndarray, inputs: str) -> np.ndarray:
        """Recompute, in strict fp32, the micro-batches of a step that overflowed at half precision."""
        m = self.unet_batch
        if self.config.precision in ("fp32", "tf32"):
            first = int(np.flatnonzero(bad)[0])
            raise ScoreOverflowError(
                f"the {self.config.method} score of image {item.start + first} (sample {int(item.samples[first])}) "
                f"is not finite in float32 ({settings_text(self.config)}); for pia use a smaller p, otherwise "
                "check the model's outputs on this image")
        for first in range(0, len(values), m):
            if not bad[first:first + m].any():
                continue
            rows, row_ids = item.raw[first:first + m], item.samples[first:first + m]
            real = rows.shape[0]
            size = self._rung(real)
            rows = self._pad(rows, size)
            if real < size:
                row_ids = torch.cat([row_ids, row_ids[-1:].expand(size - real)])
            cond = self.conditions.tensor(take(item.conditions, slice(first, first + real)), size, self.device)
            self._force = "fp32"
            try:
                with torch_threads(self.threads):
                    redone = self._compute(rows, row_ids, cond, inputs)[:real]
            finally:
                self._force = None
            values[first:first + real] = redone.cpu().numpy().astype(np.float64)
            self.recomputed_fp32 += 1
        if not np.isfinite(values).all():
            first = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ScoreOverflowError(
                f"the {self.config.method} score of image {item.start + first} is not finite even in float32 "
                f"({settings_text(self.config)}); check the model's outputs on this image")
        return values

    def _score_micro_batch(self, raw: torch.Tensor, samples: torch.Tensor, cond, inputs: str) -> torch.Tensor:
        """float32 [micro-batch] scores on the device (valid until the next micro-batch is scored)."""
        self.unet_calls += self.config.unet_calls
        if self.cuda_graphs:
            key = (tuple(raw.shape), raw.dtype, inputs, None if cond is None else (tuple(cond.shape), cond.dtype))
            if key not in self._graphs:
                self._graphs[key] = self._capture(raw, samples, cond, inputs)
            graphed = self._graphs[key]
            if graphed is not None:
                return graphed.run(raw, samples, cond).clone()
        return self._compute(raw, samples, cond, inputs)

    def _capture(self, raw, samples, cond, inputs):
        def whole_batch(static_raw, static_samples, static_cond):
            return self._compute(static_raw, static_samples, static_cond, inputs)

        try:
            return GraphedBatch(whole_batch, (raw, samples, cond))
        except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager
            self.cuda_graphs = False
            if not self._graph_warned:
                self._graph_warned = True
                warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); scoring eagerly instead",
                              RuntimeWarning, stacklevel=3)
            return None

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

    def _compute(self, raw: torch.Tensor, samples: torch.Tensor, cond, inputs: str) -> torch.Tensor:
        """float32 [n] scores of one micro-batch of raw inputs; the noise of row i is keyed by samples[i]."""
        with torch.inference_mode():
            x0 = self._prepare(raw, inputs)
            return self.method.compute(self, x0, samples, cond, self._prepared)


def score(model, images, method: str = ScoreConfig.method, t_sec: int = ScoreConfig.t_sec, k: int = ScoreConfig.k,
          t: int = ScoreConfig.t, p: float = ScoreConfig.p, seed: int = ScoreConfig.seed,
          batch_size: int | None = None, device=None, precision: str = DEFAULT_PRECISION,
          n_draws: int = ScoreConfig.n_draws, offset: int = 0, progress: bool = False, indices=None,
          conditions=None, condition: str = "own", **options) -> np.ndarray:
    """Membership scores (float64 [N], lower = more likely a member) of images under model; see Scorer."""
    validate_images(images)  # before the scorer is built: bad pixels cost no plan and no UNet call
    scorer = Scorer(model, method, t_sec=t_sec, k=k, t=t, p=p, n_draws=n_draws, seed=seed, condition=condition,
                    batch_size=batch_size, device=device, precision=precision, **options)
    return scorer.score(images, offset=offset, progress=progress, indices=indices, conditions=conditions)
