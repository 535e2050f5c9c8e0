"""A fitted bag of quantile regressors: predict per-image quantiles, shift them by calibration, take members apart, save and load."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..runtime import resolve_device, torch_threads
from .inputs import ChannelScaler, as_aux_tensor, as_image_tensor
from .network import BaggedResNet


@dataclass
class TrainHistory:
    """What training did, per member: epochs run, the epoch kept, its validation pinball loss."""

    epochs_run: list[int] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    best_val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


class QuantileBag:
    """A fitted bag of quantile regressors: network, input scaling and target scaling, ready to predict."""

    def __init__(self, network: BaggedResNet, scaler: ChannelScaler, levels: list[float],
                 target_mean: float, target_std: float, history: TrainHistory | None = None):
        self.network = network.eval()
        self.scaler = scaler
        self.levels = list(levels)
        self.target_mean = float(target_mean)
        self.target_std = float(target_std)
        self.history = history or TrainHistory()
        # Per member and level, added to the network's quantiles (log units); set by set_shifts().
        self.offsets = np.zeros((network.n_models, len(self.levels)))

    @property
    def n_models(self) -> int:
        return self.network.n_models

    def set_shifts(self, shifts) -> None:
        """Add one calibrated shift per level (log units) to every member's quantiles (see attack's conformal calibration)."""
        shifts = np.asarray(shifts, dtype=np.float64).reshape(1, -1)
        if shifts.shape[1] != len(self.levels):
            raise ConfigError(f"set_shifts needs one shift per level ({len(self.levels)}), got {shifts.shape[1]}")
        self.offsets = np.repeat(shifts, self.n_models, axis=0)

    def member(self, j: int) -> "QuantileBag":
        """Member j alone, as a bag of one (same input and target scaling, its own history and offsets)."""
        from .fit import _member_state

        single = BaggedResNet(1, **self.network.arch)
        single.load_state_dict(_member_state(self.network.state_dict(), j, self.n_models))
        device = next(self.network.parameters()).device
        h = self.history
        history = TrainHistory(h.epochs_run[j:j + 1], h.best_epoch[j:j + 1], h.best_val_loss[j:j + 1], 0.0)
        bag = QuantileBag(single.to(device), self.scaler, self.levels, self.target_mean, self.target_std, history)
        bag.offsets = self.offsets[j:j + 1].copy()
        return bag

    @torch.no_grad()
    def predict(self, images, aux=None, batch_size: int = 1024, device=None, threads: int | None = None,
                calibrated: bool = True) -> np.ndarray:
        """Quantiles of log-score per member: float64 [n_models, N, n_levels] (plus set_shifts()'s offsets).

        The offsets are added as they are, without re-sorting the levels: the decision at
        alpha must use exactly the calibrated alpha column (a p-value sorts for itself).
        """
        images_t = as_image_tensor(images)
        aux_t = as_aux_tensor(aux, images_t)
        self._check_inputs(images_t, aux_t)
        target = resolve_device(device, default="cpu") if device is not None else next(self.network.parameters()).device
        network = self.network.to(target).eval()
        chunks = []
        with torch_threads(threads):
            for start in range(0, images_t.shape[0], batch_size):
                stop = start + batch_size
                x = self.scaler.transform(images_t[start:stop].to(target),
                                          None if aux_t is None else aux_t[start:stop].to(target))
                chunks.append(network(x).double().cpu())
        standardised = torch.cat(chunks).permute(1, 0, 2).numpy()
        quantiles = standardised * self.target_std + self.target_mean
        if not calibrated or not self.offsets.any():
            return quantiles
        return quantiles + self.offsets[:, None, :]

    def _check_inputs(self, images: torch.Tensor, aux: torch.Tensor | None) -> None:
        n_aux = 0 if aux is None else aux.shape[1]
        expected_aux = self.scaler.n_channels - self.scaler.n_image_channels
        if images.shape[1] != self.scaler.n_image_channels or n_aux != expected_aux:
            raise InputError(f"the regressors were fitted on {self.scaler.n_image_channels} image channels and "
                             f"{expected_aux} aux channels; got {images.shape[1]} and {n_aux}")

    def state(self) -> dict:
        """Plain tensors and numbers only, so it loads with torch.load(weights_only=True)."""
        return {
            "arch": dict(self.network.arch, n_models=self.n_models),
            "weights": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "scaler": asdict(self.scaler),
            "levels": self.levels,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "offsets": torch.from_numpy(self.offsets.copy()),
            "history": asdict(self.history),
        }

    @classmethod
    def from_state(cls, state: dict) -> "QuantileBag":
        arch = dict(state["arch"])
        network = BaggedResNet(arch.pop("n_models"), **arch)
        network.load_state_dict(state["weights"])
        bag = cls(network, ChannelScaler(**state["scaler"]), state["levels"], state["target_mean"],
                  state["target_std"], TrainHistory(**state["history"]))
        bag.offsets = state["offsets"].numpy().astype(np.float64)
        return bag
