"""EpsModel: one calling convention, pred = model(x, t, cond), over every supported denoiser, with its schedule, condition and latent space."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..schedule import Schedule

__all__ = ["EpsModel", "Conditioning", "check_image_shape", "PREDICTION_TYPES", "CONDITION_KINDS"]

# "flow": the network predicts the flow-matching velocity v = eps - x0 (schedule.process == "flow").
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")
CONDITION_KINDS = ("class", "text")


@dataclass(frozen=True)
class Conditioning:
    """What a conditional denoiser takes besides x and t.

    kind "class": cond is an int64 [N] tensor of class labels in [0, num_classes); the null
    label (classifier-free guidance's unconditional class) is ``null_label`` where the model
    was trained with one, else None.
    kind "text": cond is a float tensor [N, L, D] of text-encoder hidden states (the
    model's ``text_encoder`` turns captions into them; the empty prompt is the null condition).
    """

    kind: str
    num_classes: int | None = None
    null_label: int | None = None
    # Names of classes 0..num_classes-1 where the model says them (conditioning.json, DiT's id2label).
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.kind not in CONDITION_KINDS:
            raise InputError(f"conditioning kind {self.kind!r} is unknown; use one of {', '.join(CONDITION_KINDS)}")
        for name in ("num_classes", "null_label"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InputError(f"conditioning {name} = {value!r} must be a non-negative integer or None")
        if self.kind == "class" and self.num_classes is not None and self.num_classes < 1:
            raise InputError("conditioning num_classes must be at least 1 for class conditioning")
        if self.class_names is not None:
            names = tuple(self.class_names)
            if not all(isinstance(n, str) for n in names) or len(names) != self.num_classes:
                raise InputError(f"conditioning class_names must be {self.num_classes} strings, one per class")
            object.__setattr__(self, "class_names", names)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["class_names"] is not None:
            out["class_names"] = list(out["class_names"])
        return out


def _call_plain(net: nn.Module, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
    return net(x, t) if cond is None else net(x, t, cond)


class EpsModel(nn.Module):
    """A denoiser pred_theta(x, t[, cond]) for x in the model's input space (N x C x h x w) and integer timesteps t.

    Attributes: ``net`` (the wrapped module), ``schedule`` (a Schedule, or a FlowSchedule
    for flow-matching models), ``image_shape`` (C, H, W of the pixels the data must have),
    ``input_shape`` (what the denoiser takes: the latent shape behind a VAE, else
    image_shape), ``process`` ("ddpm": the prediction is eps; "flow": the velocity
    v = eps - x0), ``conditioning`` (None or a Conditioning), ``latent`` (None or a codec
    with ``encode(x in [-1, 1]) -> z0``: the posterior mean times the VAE's scaling factor),
    ``text_encoder`` (None or an object with ``encode(list of captions) -> (float32 [n, L, D],
    number truncated)``), ``config`` (JSON-serialisable description recorded in reports),
    ``format``. DDPM networks that predict v or x0 are converted to eps with the schedule;
    networks with learned variance (2C output channels) keep the first C channels.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        image_shape: tuple[int, int, int],
        config: dict[str, Any],
        format: str,
        prediction_type: str = "epsilon",
        call: Callable[..., Any] = _call_plain,
        conditioning: Conditioning | None = None,
        latent: Any = None,
        input_shape: tuple[int, int, int] | None = None,
        text_encoder: Any = None,
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise InputError(
                f"prediction_type = {prediction_type!r} is not supported; use one of {', '.join(PREDICTION_TYPES)}"
            )
        process = getattr(schedule, "process", "ddpm")
        if (process == "flow") != (prediction_type == "flow"):
            raise InputError(f"prediction_type = {prediction_type!r} does not fit a {process} schedule; a flow-matching "
                             "model predicts the velocity (prediction_type 'flow') with a FlowSchedule")
        if conditioning is not None and not isinstance(conditioning, Conditioning):
            raise InputError("conditioning must be a qmia_fast.models.Conditioning or None")
        if conditioning is not None and conditioning.kind == "text" and text_encoder is None:
            raise InputError("a text-conditioned model needs its text_encoder (captions -> hidden states)")
        self.net = net
        self.schedule = schedule
        self.process = process
        self.image_shape = tuple(int(v) for v in image_shape)
        self.input_shape = tuple(int(v) for v in (input_shape or image_shape))
        self.config = config
        self.format = format
        self.prediction_type = prediction_type
        self.conditioning = conditioning
        # Submodules when they are modules, so that .to(device) and .eval() reach them.
        self.latent = latent
        self.text_encoder = text_encoder
        self._call = call
        if process == "ddpm":
            # float32 tables for converting v / x0 predictions; buffers so that .to(device) moves them.
            self.register_buffer("_sqrt_abar", torch.from_numpy(np.sqrt(schedule.abar)).float(), persistent=False)
            self.register_buffer(
                "_sqrt_one_minus_abar", torch.from_numpy(np.sqrt(1.0 - schedule.abar)).float(), persistent=False
            )

    @property
    def device(self) -> torch.device:
        for tensor in self.net.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for tensor in self.net.parameters():
            return tensor.dtype
        return torch.float32

    def timesteps(self, t, batch: int, device: torch.device) -> torch.Tensor:
        """t as an int64 tensor [batch] on device, checked against [0, T) when the check needs no device sync."""
        if isinstance(t, torch.Tensor):
            if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
                raise InputError(f"t must be an integer tensor (int64), got dtype {t.dtype}")
            if t.device.type == "cpu" and t.numel():
                self.schedule.check_timestep(t)
            t = t.to(device=device, dtype=torch.long)
            if t.dim() == 0:
                t = t.expand(batch)
            elif t.shape != (batch,):
                raise InputError(f"t has shape {tuple(t.shape)}; expected ({batch},) or a scalar")
            return t
        self.schedule.check_timestep(t)
        return torch.full((batch,), int(t), dtype=torch.long, device=device)

    def forward(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        if x.dim() != 4:
            raise InputError(f"x must be N x C x H x W, got shape {tuple(x.shape)}")
        t = self.timesteps(t, x.shape[0], x.device)
        if cond is not None and self.conditioning is None:
            raise InputError("this model is unconditional; call it without a condition")
        if cond is None:
            out = self._call(self.net, x, t)
        else:
            if cond.shape[0] != x.shape[0]:
                raise InputError(f"cond has {cond.shape[0]} rows for {x.shape[0]} images; pass one condition per image")
            out = self._call(self.net, x, t, cond)
        out = _first_tensor(out)
        channels = x.shape[1]
        if out.shape[1] == 2 * channels:  # learned variance: [eps, variance] stacked on channels
            out = out[:, :channels]
        if self.prediction_type in ("epsilon", "flow"):
            return out
        sqrt_abar = self._sqrt_abar[t].view(-1, 1, 1, 1).to(out.dtype)
        sqrt_one_minus = self._sqrt_one_minus_abar[t].view(-1, 1, 1, 1).to(out.dtype)
        if self.prediction_type == "v_prediction":
            # v = sqrt(abar) eps - sqrt(1 - abar) x0 and x = sqrt(abar) x0 + sqrt(1 - abar) eps
            return sqrt_abar * out + sqrt_one_minus * x.to(out.dtype)
        # "sample": the network predicts x0
        return (x.to(out.dtype) - sqrt_abar * out) / sqrt_one_minus

    def extra_repr(self) -> str:
        extra = "" if self.conditioning is None else f", conditioning={self.conditioning.kind!r}"
        if self.latent is not None:
            extra += f", latent={self.input_shape}"
        return (f"format={self.format!r}, image_shape={self.image_shape}, T={self.schedule.T}, "
                f"prediction={self.prediction_type!r}{extra}")


def _first_tensor(out) -> torch.Tensor:
    # diffusers returns an output object with .sample; TorchScript exports sometimes return tuples.
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and isinstance(out.get("sample"), torch.Tensor):
        return out["sample"]
    raise InputError(f"the model returned {type(out).__name__}; expected a tensor of noise predictions")


def check_image_shape(model, image_shape) -> None:
    """Raise InputError unless images of image_shape ((N,) C, H, W) fit the model's expected C x H x W."""
    shape = tuple(int(v) for v in tuple(image_shape)[-3:])
    expected = tuple(getattr(model, "image_shape", shape))
    if len(shape) != 3:
        raise InputError(f"images must be N x C x H x W, got shape {tuple(image_shape)}")
    if shape[0] != expected[0]:
        raise InputError(
            f"images have {shape[0]} channel(s) but the model expects {expected[0]} "
            f"(model input C x H x W = {expected[0]} x {expected[1]} x {expected[2]}); "
            "convert the data or pick the matching model"
        )
    if shape[1:] != expected[1:]:
        raise InputError(
            f"images are {shape[1]} x {shape[2]} pixels but the model was trained on "
            f"{expected[1]} x {expected[2]}; resize the data or pick the matching model"
        )
