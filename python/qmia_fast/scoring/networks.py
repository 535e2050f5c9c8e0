"""The modules a scorer calls, prepared once for a run plan (resident half weights, layout, fused GroupNorm, Winograd layers), and the one call site."""
from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch

from ..errors import ConfigError
from ..precision import autocast_context, matmul_precision, resident_weights


class Networks:
    """One module per call precision of a plan, all on its device and memory format.

    ``__call__(x, t, cond, call)`` runs the denoiser at call precision `call` and returns a
    float32 prediction in x's memory format: the trajectory between UNet calls stays float32
    whatever precision the UNet runs in.
    """

    def __init__(self, model, calls: Iterable[str], *, device: torch.device, channels_last: bool,
                 fast_layers: bool, fused: bool | None, compile: bool = False):
        self.model = model.to(device).eval()
        self.channels_last = bool(channels_last)
        self._fused_request = fused
        self.model.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.nets: dict[str, Any] = {}
        for call in dict.fromkeys(calls):
            net = resident_weights(self.model, call) or self.model
            self.nets[call] = torch.compile(net, dynamic=False) if compile else net
        self.layers = None
        if fast_layers:
            from ..kernels.winograd import WinogradConvs

            self.layers = WinogradConvs()
        self.fused = set_fused(self.nets.values(), fused)

    def activate(self) -> None:
        """Re-apply this setting's memory format and fusion to the shared model (another Networks over the same
        model may have changed them in place): what the run-plan probe does before timing each variant."""
        self.model.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        set_fused(self.nets.values(), self._fused_request)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond, call: str) -> torch.Tensor:
        net = self.nets.get(call, self.model)  # an fp32 redo of a half-precision plan runs the model itself
        with autocast_context(call, x.device), matmul_precision(call), (self.layers or contextlib.nullcontext()):
            pred = net(x, t) if cond is None else net(x, t, cond)
        if pred.dtype != torch.float32:
            pred = pred.float()
        if pred.stride() != x.stride():
            pred = pred.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return pred


    def encode(self, latent, x: torch.Tensor, call: str) -> torch.Tensor:
        """The VAE's latents of x (in [-1, 1]) at call precision `call`, as float32."""
        with autocast_context(call, x.device), matmul_precision(call):
            z = latent.encode(x)
        return z.float()


def set_fused(nets, fused: bool | None) -> bool | None:
    """Apply `fused` (True/False/None = the device's default) to every project UNet in `nets`.

    Returns what was asked where such a UNet exists, None where none does (other models are unaffected).
    """
    if fused is not None and not isinstance(fused, bool):
        raise ConfigError(f"fused = {fused!r} must be True, False or None (the device decides)")
    found = False
    for net in nets:
        for module in getattr(net, "modules", lambda: ())():
            if hasattr(module, "set_fused"):
                module.set_fused(fused)
                found = True
    return fused if found else None


def has_fusable_layers(model) -> bool:
    """Whether `model` holds a project UNet whose GroupNorms can run fused."""
    return any(hasattr(module, "set_fused") for module in getattr(model, "modules", lambda: ())())
