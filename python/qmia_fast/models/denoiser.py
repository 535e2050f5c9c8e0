"""wrap_denoiser: any PyTorch denoiser of the user's own, denoiser(x, t[, condition]) -> prediction, as an EpsModel."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..errors import InputError
from ..schedule import FlowSchedule, Schedule
from .conditions import check_labels
from .config_io import MAX_IMAGE_SIDE
from .wrapper import Conditioning, EpsModel, _call_plain

__all__ = ["wrap_denoiser"]


class _UserConditionCall:
    """net(x, t, condition); without a condition the null one (the null label, the empty prompt's states) where
    the model has it."""

    def __init__(self, conditioning: Conditioning, text_encoder):
        self.conditioning = conditioning
        self.text_encoder = text_encoder
        self._null: dict[tuple, torch.Tensor] = {}

    def __call__(self, net, x, t, cond=None):
        if self.conditioning.kind == "class":
            if cond is None:
                if self.conditioning.null_label is None:
                    raise InputError("this model is class-conditional and has no null class; pass cond, an int64 "
                                     "tensor [N] of class labels")
                cond = torch.full((x.shape[0],), self.conditioning.null_label, dtype=torch.long, device=x.device)
            else:
                cond = check_labels(cond, self.conditioning, x.device)
        elif cond is None:
            key = (str(x.device), x.dtype)
            if key not in self._null:
                states, _ = self.text_encoder.encode([self.text_encoder.null_caption])
                self._null[key] = states.to(device=x.device, dtype=x.dtype)
            cond = self._null[key].expand(x.shape[0], -1, -1)
        return net(x, t, cond)


def _shape(image_shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in image_shape)
        exact = all(int(v) == v for v in image_shape)
    except (TypeError, ValueError):
        shape, exact = (), False
    if len(shape) != 3 or not exact or not all(1 <= v <= MAX_IMAGE_SIDE for v in shape):
        raise InputError(f"image_shape = {image_shape!r:.60} must be (channels, height, width), positive integers of "
                         f"at most {MAX_IMAGE_SIDE}")
    return shape


def _device_dtype(module) -> tuple[torch.device, torch.dtype]:
    for tensor in module.parameters():
        return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def wrap_denoiser(module: nn.Module, schedule, image_shape, *, prediction_type: str = "epsilon",
                  conditioning: Conditioning | None = None, latent: Any = None, text_encoder: Any = None,
                  call: Callable[..., Any] | None = None) -> EpsModel:
    """Wrap a denoiser of your own as the EpsModel every scorer takes: model(x, t, cond) -> prediction.

    module: an nn.Module called as ``module(x, t)`` (unconditional) or ``module(x, t, condition)``;
        x is N x C x h x w in the denoiser's input space, t int64 [N] timestep indices; it returns
        the prediction (or [prediction, variance] stacked on channels).
    schedule: a qmia_fast.schedule.Schedule (DDPM family; prediction_type "epsilon", "v_prediction"
        or "sample", converted to eps) or a FlowSchedule (prediction_type "flow": v = eps - x0).
    image_shape: (C, H, W) of the pixels the data has.
    conditioning: None, Conditioning(kind="class", num_classes=K, null_label=K or None) (condition:
        int64 [N] labels) or Conditioning(kind="text") (condition: float [N, L, D] states from
        text_encoder.encode(captions)); called without a condition, the null label or the empty
        prompt stands in.
    latent: an object with ``encode(x in [-1, 1]) -> z0`` (an nn.Module to move with the model);
        the denoiser then takes encode's output shape.
    text_encoder: for text conditioning, an object with ``encode(list of str) -> (float32 [n, L, D],
        number truncated)`` and ``null_caption``.
    call: ``call(module, x, t[, cond])`` where the module's signature differs from the above.

    The wrapper runs the denoiser once on zeros (and the latent codec once) to check that the
    shapes fit, so mistakes show up here rather than in the middle of scoring.

    Example::

        import torch
        from qmia_fast.models import Conditioning, wrap_denoiser
        from qmia_fast.schedule import linear_schedule

        class LabelledDenoiser(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
                self.label = torch.nn.Embedding(11, 3)     # 10 classes + the null class 10

            def forward(self, x, t, condition):
                return self.conv(x) + self.label(condition)[:, :, None, None]

        model = wrap_denoiser(LabelledDenoiser(), linear_schedule(), (3, 32, 32),
                              conditioning=Conditioning("class", num_classes=10, null_label=10))
        eps = model(torch.zeros(2, 3, 32, 32), torch.tensor([10, 200]), torch.tensor([3, 7]))
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"module must be a torch.nn.Module (got {type(module).__name__}); wrap a function in one")
    if not isinstance(schedule, (Schedule, FlowSchedule)):
        raise InputError(f"schedule must be a qmia_fast.schedule.Schedule or FlowSchedule, got {type(schedule).__name__}")
    shape = _shape(image_shape)
    if conditioning is not None and not isinstance(conditioning, Conditioning):
        raise InputError("conditioning must be a qmia_fast.models.Conditioning or None")
    if conditioning is not None and conditioning.kind == "class" and conditioning.num_classes is None:
        raise InputError("class conditioning needs num_classes (Conditioning('class', num_classes=K))")
    if text_encoder is not None and not callable(getattr(text_encoder, "encode", None)):
        raise InputError("text_encoder must have encode(captions) -> (states [n, L, D], number truncated)")
    if latent is not None and not callable(getattr(latent, "encode", None)):
        raise InputError("latent must have encode(x) -> z0 (pixels in [-1, 1] to the denoiser's input)")
    if call is not None and not callable(call):
        raise InputError("call must be a function call(module, x, t[, cond])")
    if call is None:
        call = _call_plain if conditioning is None else _UserConditionCall(conditioning, text_encoder)
    input_shape = shape if latent is None else _latent_shape(latent, shape)
    model = EpsModel(module, schedule, shape, _describe(module, schedule, prediction_type, conditioning, latent,
                                                        text_encoder, shape, input_shape),
                     format="python", prediction_type=prediction_type, call=call, conditioning=conditioning,
                     latent=latent, input_shape=input_shape, text_encoder=text_encoder)
    _trial_call(model, input_shape)
    return model


def _latent_shape(latent, shape) -> tuple[int, int, int]:
    device, dtype = _device_dtype(latent) if isinstance(latent, nn.Module) else (torch.device("cpu"), torch.float32)
    try:
        with torch.no_grad():
            z = latent.encode(torch.zeros(1, *shape, device=device, dtype=dtype))
    except Exception as exc:  # noqa: BLE001 - the user's codec; whatever it raises, it cannot take these images
        raise InputError(f"latent.encode failed on a 1 x {' x '.join(map(str, shape))} batch of zeros "
                         f"({type(exc).__name__}: {str(exc)[:160]}); check image_shape") from None
    if not isinstance(z, torch.Tensor) or z.dim() != 4 or z.shape[0] != 1:
        raise InputError("latent.encode must return an N x c x h x w tensor")
    return tuple(int(v) for v in z.shape[1:])


def _trial_call(model: EpsModel, input_shape) -> None:
    device, dtype = _device_dtype(model.net)
    x = torch.zeros(1, *input_shape, device=device, dtype=dtype)
    cond = None
    if model.conditioning is not None and model.conditioning.kind == "class":
        cond = torch.zeros(1, dtype=torch.long)
    try:
        with torch.no_grad():
            out = model(x, 0, cond)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module; report what it raised in one line
        raise InputError(f"the denoiser failed on a trial call with x of shape {tuple(x.shape)}, t = 0"
                         f"{'' if cond is None else ' and a condition'} ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]}); check image_shape, call and the module") from None
    if tuple(out.shape) != tuple(x.shape):
        raise InputError(f"the denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}; it must return "
                         "one prediction per input element (or prediction + variance on channels)")


def _describe(module, schedule, prediction_type, conditioning, latent, text_encoder, shape, input_shape) -> dict:
    return {
        "format": "python",
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "schedule": schedule.to_dict(),
        "prediction_type": prediction_type,
        "conditioning": None if conditioning is None else conditioning.to_dict(),
        "latent": None if latent is None else type(latent).__qualname__,
        "text_encoder": None if text_encoder is None else type(text_encoder).__qualname__,
        "image_shape": list(shape),
        "input_shape": list(input_shape),
        "parameters": int(sum(p.numel() for p in module.parameters())),
    }
