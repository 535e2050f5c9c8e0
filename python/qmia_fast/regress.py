"""Quantile regressors of log-scores on images: a small residual CNN, a bag of them as one grouped network, pinball training."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError, InputError


# --- configuration -----------------------------------------------------------------------------

@dataclass
class RegressorConfig:
    """Architecture and training settings of every regressor in a bag (defaults measured in bench/bench_attack.py)."""

    width: int = 16            # channels of the first stage; each further stage doubles them
    depth: int = 2             # stages of one residual block; each stage after the first halves the resolution
    stem_stride: int | None = None  # patch size of the stem; None: the power of two that leaves >= 7 x 7
    head_width: int = 64       # hidden units of the MLP head
    epochs: int = 12           # upper bound; early stopping usually ends sooner
    batch_size: int = 128
    lr: float = 3e-3           # AdamW peak learning rate, cosine-decayed to zero over `epochs`
    weight_decay: float = 1e-4
    holdout_frac: float = 0.1  # share of the public set used for early stopping
    patience: int = 4          # epochs without a better validation loss before a model stops
    monotone: bool = True      # several levels: predict increments so quantiles never cross
    device: str = "cpu"
    batched: bool | None = None  # None: one grouped network for the bag where measured faster
    # torch intra-op threads for training and prediction on CPU (None: torch's own setting).
    # On the idle 2-core development machine the demo bag fit took 17 s with torch's 2
    # threads against 29 s with one (2026-11-28); on a machine shared with other jobs,
    # spinning threads were 3-15x slower than one, so pass threads=1 (or set
    # OMP_NUM_THREADS=1) there.
    threads: int | None = None

    def validate(self) -> "RegressorConfig":
        if self.stem_stride is not None and (not isinstance(self.stem_stride, (int, np.integer))
                                             or isinstance(self.stem_stride, bool) or self.stem_stride < 1):
            raise ConfigError(f"stem_stride must be None (automatic) or a positive integer, got {self.stem_stride!r}")
        if self.threads is not None and (not isinstance(self.threads, (int, np.integer))
                                         or isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"threads must be None (torch's setting) or a positive integer, got {self.threads!r}")
        for name in ("width", "depth", "head_width", "epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.depth > 6:
            raise ConfigError(f"depth must be at most 6 (each stage after the first halves the image), "
                              f"got {self.depth}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if not (0.0 < self.holdout_frac < 0.5):
            raise ConfigError(f"holdout_frac must be in (0, 0.5), got {self.holdout_frac!r}")
        resolve_device(self.device)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or None (cpu) -> torch.device, with a clear error where CUDA is absent."""
    try:
        resolved = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:index]', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but no CUDA device is available; use device='cpu'")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:index]', got {device!r}")
    return resolved


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run a block with `threads` torch intra-op threads (None: unchanged), restoring the setting after."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def check_levels(levels: Sequence[float]) -> list[float]:
    """Quantile levels: a non-empty, strictly increasing list of numbers in (0, 1)."""
    try:
        values = [float(v) for v in levels]
    except (TypeError, ValueError):
        raise ConfigError(f"levels must be a sequence of numbers in (0, 1), got {levels!r}") from None
    if not values or any(not (0.0 < v < 1.0) for v in values):
        raise ConfigError(f"levels must be numbers strictly between 0 and 1, got {levels!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(f"levels must be strictly increasing, got {levels!r}")
    return values


# --- inputs ------------------------------------------------------------------------------------

def as_image_tensor(images, name: str = "images") -> torch.Tensor:
    """uint8 N x C x H x W, or floats in [0, 1], from numpy or torch -> a CPU tensor (uint8 kept as is)."""
    if isinstance(images, np.ndarray):
        if images.dtype.kind not in "uif":
            raise InputError(f"{name} must be uint8 or float, got dtype {images.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.Tensor):
        tensor = images.detach().cpu()
    else:
        raise InputError(f"{name} must be a numpy array or torch tensor, got {type(images).__name__}")
    if tensor.ndim != 4:
        raise InputError(f"{name} must be N x C x H x W, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or min(tensor.shape[1:]) == 0:
        raise InputError(f"{name} is empty (shape {tuple(tensor.shape)})")
    if tensor.dtype == torch.uint8:
        return tensor.contiguous()
    if not tensor.is_floating_point():
        raise InputError(f"{name} must be uint8 in [0, 255] or float in [0, 1], got dtype {tensor.dtype}")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise InputError(f"{name} holds NaN or infinite values")
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0.0 or high > 1.0:
        raise InputError(f"float {name} must lie in [0, 1] (got [{low:.3g}, {high:.3g}]); "
                         "pass uint8 pixels or divide by 255")
    return tensor.contiguous()


def as_aux_tensor(aux, images: torch.Tensor, name: str = "aux") -> torch.Tensor | None:
    """Optional extra per-pixel feature channels N x K x H x W, finite floats, matching the images."""
    if aux is None:
        return None
    tensor = torch.from_numpy(np.ascontiguousarray(aux)) if isinstance(aux, np.ndarray) else aux
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"{name} must be a numpy array or torch tensor, got {type(aux).__name__}")
    tensor = tensor.detach().cpu().float()
    if tensor.ndim != 4 or tensor.shape[0] != images.shape[0] or tensor.shape[2:] != images.shape[2:]:
        raise InputError(f"{name} must be N x K x H x W with the images' N, H, W "
                         f"{(images.shape[0], images.shape[2], images.shape[3])}, got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise InputError(f"{name} holds NaN or infinite values")
    return tensor.contiguous()


@dataclass
class ChannelScaler:
    """Per-channel standardisation of image (after scaling to [0, 1]) and aux channels, fitted on the public set."""

    mean: list[float]
    std: list[float]
    n_image_channels: int

    @classmethod
    def fit(cls, images: torch.Tensor, aux: torch.Tensor | None) -> "ChannelScaler":
        means, stds = [], []
        for channel in _channels_01(images):
            means.append(float(channel.mean()))
            stds.append(float(channel.std()) if channel.numel() > 1 else 1.0)
        for channel in (aux.unbind(1) if aux is not None else ()):
            means.append(float(channel.mean()))
            stds.append(float(channel.std()) if channel.numel() > 1 else 1.0)
        # A constant channel carries no information; dividing by ~0 would only amplify noise.
        stds = [s if s > 1e-6 else 1.0 for s in stds]
        return cls(means, stds, int(images.shape[1]))

    @property
    def n_channels(self) -> int:
        return len(self.mean)

    def transform(self, images: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        """Images (+ aux) of one batch -> standardised float32 N x (C + K) x H x W on the images' device."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if aux is not None:
            x = torch.cat([x, aux.float()], dim=1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _channels_01(images: torch.Tensor):
    for channel in images.unbind(1):
        yield channel.double() / 255.0 if images.dtype == torch.uint8 else channel.double()


# --- the network -------------------------------------------------------------------------------

def _grouped_conv(n_models: int, c_in: int, c_out: int, kernel: int, stride: int = 1, bias: bool = False):
    # groups=n_models keeps the bag's members apart: model j sees only its own channel block.
    return nn.Conv2d(n_models * c_in, n_models * c_out, kernel, stride=stride, padding=kernel // 2,
                     groups=n_models, bias=bias)


class _ResidualBlock(nn.Module):
    def __init__(self, n_models: int, channels: int):
        super().__init__()
        self.conv1 = _grouped_conv(n_models, channels, channels, 3)
        self.norm1 = nn.BatchNorm2d(n_models * channels)
        self.conv2 = _grouped_conv(n_models, channels, channels, 3)
        self.norm2 = nn.BatchNorm2d(n_models * channels)
        # The block starts as the identity, which keeps early training of a deep stack stable.
        nn.init.zeros_(self.norm2.weight)

    def forward(self, x):
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(out)))


class BaggedResNet(nn.Module):
    """`n_models` independent residual CNNs run as one network through grouped convolutions.

    Input: N x (n_models * C) x H x W, channel block j being model j's input (or N x C x H x W,
    shared by all). Output: N x n_models x n_levels quantiles, in standardised target units.
    With n_models = 1 it is a plain residual CNN; the bag's parameters are the members'
    parameters concatenated, so members can be trained apart and stacked (`stack_models`).
    """

    def __init__(self, n_models: int, in_channels: int, n_levels: int, width: int = 16,
                 depth: int = 2, head_width: int = 64, monotone: bool = True, stem_stride: int = 1):
        super().__init__()
        self.n_models, self.in_channels, self.n_levels = n_models, in_channels, n_levels
        self.arch = dict(in_channels=in_channels, n_levels=n_levels, width=width, depth=depth,
                         head_width=head_width, monotone=monotone, stem_stride=stem_stride)
        self.monotone = monotone and n_levels > 1
        # A patchifying stem: full-resolution convolutions would cost most of the compute
        # for little gain in predicting one number per image.
        if stem_stride == 1:
            self.stem = _grouped_conv(n_models, in_channels, width, 3)
        else:
            self.stem = nn.Conv2d(n_models * in_channels, n_models * width, stem_stride, stride=stem_stride,
                                  groups=n_models, bias=False)
        self.stem_norm = nn.BatchNorm2d(n_models * width)
        stages = []
        channels = width
        for stage in range(depth):
            out_channels = width * 2 ** stage
            if stage > 0:
                stages += [_grouped_conv(n_models, channels, out_channels, 3, stride=2),
                           nn.BatchNorm2d(n_models * out_channels), nn.ReLU()]
            stages.append(_ResidualBlock(n_models, out_channels))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.head_hidden = _grouped_conv(n_models, channels, head_width, 1, bias=True)
        self.head_out = _grouped_conv(n_models, head_width, n_levels, 1, bias=True)
        # Start near a constant prediction, which `init_output` then sets to the marginal quantiles.
        with torch.no_grad():
            self.head_out.weight.mul_(0.1)

    def forward(self, x):
        if x.shape[1] == self.in_channels and self.n_models > 1:
            x = x.repeat(1, self.n_models, 1, 1)
        h = F.relu(self.stem_norm(self.stem(x)))
        h = self.stages(h)
        h = h.mean(dim=(2, 3), keepdim=True)
        out = self.head_out(F.relu(self.head_hidden(h)))
        out = out.view(x.shape[0], self.n_models, self.n_levels)
        if self.monotone:
            out = torch.cat([out[..., :1], out[..., :1] + torch.cumsum(F.softplus(out[..., 1:]), -1)], -1)
        return out

    @torch.no_grad()
    def init_output(self, quantiles: Sequence[float]) -> None:
        """Set every member's output bias so that it starts at the given (standardised) quantiles."""
        values = torch.tensor(list(quantiles), dtype=torch.float32)
        if self.monotone:
            steps = torch.clamp(values[1:] - values[:-1], min=1e-3)
            values = torch.cat([values[:1], steps + torch.log(-torch.expm1(-steps))])  # softplus^-1
        self.head_out.bias.copy_(values.repeat(self.n_models))


def auto_stem_stride(height: int, width: int) -> int:
    """The largest power-of-two patch size that still leaves the first stage at least 7 x 7 pixels."""
    stride = 1
    while min(height, width) // (2 * stride) >= 7:
        stride *= 2
    return stride


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def stack_models(members: Sequence[BaggedResNet]) -> BaggedResNet:
    """One grouped network holding the given members (each itself a bag, usually of one) in order."""
    arch = members[0].arch
    stacked = BaggedResNet(sum(m.n_models for m in members), **arch)
    states = [m.state_dict() for m in members]
    merged = {}
    for key, value in stacked.state_dict().items():
        if value.ndim == 0:  # BatchNorm's step counter
            merged[key] = states[0][key]
        else:
            merged[key] = torch.cat([s[key] for s in states], dim=0)
    stacked.load_state_dict(merged)
    return stacked.to(next(members[0].parameters()).device)


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """rho_a(u) = max(a u, (a - 1) u) with u = target - pred, elementwise (levels broadcast on the last axis)."""
    residual = target - pred
    return torch.maximum(levels * residual, (levels - 1.0) * residual)


# --- sampling plans ----------------------------------------------------------------------------

@dataclass
class SamplePlan:
    """Indices into the public set: what one regressor trains on and what stops it early."""

    train: np.ndarray
    val: np.ndarray


def bootstrap_plans(n: int, seeds: Sequence[int], holdout_frac: float) -> list[SamplePlan]:
    """One bootstrap resample (n draws with replacement) per seed; early stopping on its out-of-bag images.

    Validation sets are cut to one common size so the bag can be evaluated as one batch;
    they are out of bag, so they never overlap the model's training draws.
    """
    draws, out_of_bag = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        train = rng.integers(0, n, size=n)
        oob = np.setdiff1d(np.arange(n), train)
        draws.append(train)
        out_of_bag.append(rng.permutation(oob))
    n_val = min(math.ceil(holdout_frac * n), *(len(o) for o in out_of_bag))
    return [SamplePlan(train, oob[:n_val]) for train, oob in zip(draws, out_of_bag)]


def holdout_plan(n: int, seed: int, holdout_frac: float) -> SamplePlan:
    """Train on all but a random `holdout_frac` slice of the public set, which stops training early."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(math.ceil(holdout_frac * n), n - 1)
    return SamplePlan(np.sort(order[n_val:]), order[:n_val])


def derive_seed(seed: int, *path: int) -> int:
    """A 63-bit seed for the random stream named `path` under `seed`: streams are independent of each other."""
    state = np.random.SeedSequence([int(seed), *(int(p) for p in path)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


# --- training ----------------------------------------------------------------------------------

@dataclass
class TrainHistory:
    """What training did, per member: epochs run, the epoch kept, its validation pinball loss."""

    epochs_run: list[int] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    best_val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


class _Batcher:
    """Gathers model-specific minibatches from the public set and lays them out for the grouped network."""

    def __init__(self, images, aux, targets, scaler: ChannelScaler, device):
        self.images = images.to(device)
        self.aux = aux.to(device) if aux is not None else None
        self.targets = targets.to(device)
        self.scaler = scaler
        self.device = device

    def batch(self, index: np.ndarray):
        """index [B, n] -> (x [n, B * C, H, W], y [n, B])."""
        n_models, n = index.shape
        flat = torch.from_numpy(np.ascontiguousarray(index.T).reshape(-1)).to(self.device)
        x = self.scaler.transform(self.images[flat], None if self.aux is None else self.aux[flat])
        x = x.view(n, n_models * x.shape[1], *x.shape[2:])
        return x, self.targets[flat].view(n, n_models)


def _init_member(seed: int, in_channels: int, n_levels: int, config: RegressorConfig, stem_stride: int,
                 init_quantiles):
    # Each member's weights depend only on its own seed, so a bag trained as one grouped
    # network and one trained model by model start from the same point.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        member = BaggedResNet(1, in_channels, n_levels, config.width, config.depth,
                              config.head_width, config.monotone, stem_stride)
    member.init_output(init_quantiles)
    return member


def _member_state(state: dict, position: int, n_models: int) -> dict:
    """The state dict of one member of a grouped network, as a network of one."""
    single = {}
    for key, value in state.items():
        if value.ndim == 0:  # BatchNorm's step counter
            single[key] = value.clone()
        else:
            block = value.view(n_models, -1)[position]
            single[key] = block.clone().view(value.shape[0] // n_models, *value.shape[1:])
    return single


def _keep_members(model: BaggedResNet, optimizer, positions: list[int], lr: float, weight_decay: float):
    """A smaller grouped network (and its AdamW state) holding only the members at `positions`.

    Stopped members would otherwise keep costing compute until the last one stops; the
    optimizer moments are sliced along, so the survivors train on exactly as before.
    """
    n_models = model.n_models
    state = model.state_dict()
    members = []
    for position in positions:
        member = BaggedResNet(1, **model.arch)
        member.load_state_dict(_member_state(state, position, n_models))
        members.append(member)
    kept = stack_models(members).to(next(model.parameters()).device)
    kept_optimizer = torch.optim.AdamW(kept.parameters(), lr=lr, weight_decay=weight_decay)
    index = torch.tensor(positions)
    for old, new in zip(model.parameters(), kept.parameters()):
        old_state = optimizer.state.get(old)
        if not old_state:
            continue
        moved = {}
        for key, value in old_state.items():
            if torch.is_tensor(value) and value.shape == old.shape:
                blocks = value.view(n_models, -1)[index.to(value.device)]
                moved[key] = blocks.reshape(new.shape).clone()
            else:
                moved[key] = value.clone() if torch.is_tensor(value) else value
        kept_optimizer.state[new] = moved
    return kept, kept_optimizer


def _train_group(batcher: _Batcher, plans, seeds, levels, config: RegressorConfig,
                 init_quantiles, on_epoch) -> tuple[BaggedResNet, TrainHistory]:
    n_members = len(plans)
    device = batcher.device
    height, width = batcher.images.shape[2:]
    stem_stride = config.stem_stride or auto_stem_stride(height, width)
    if stem_stride > min(height, width):
        raise ConfigError(f"stem_stride={stem_stride} is larger than the {height} x {width} images")
    members = [_init_member(s, batcher.scaler.n_channels, len(levels), config, stem_stride, init_quantiles)
               for s in seeds]
    model = stack_models(members).to(device)
    levels_t = torch.tensor(levels, dtype=torch.float32, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_train = len(plans[0].train)
    batch_size = min(config.batch_size, n_train)
    steps_per_epoch = max(1, n_train // batch_size)  # the short last batch is dropped: tiny batches upset BatchNorm
    total_steps = config.epochs * steps_per_epoch
    rngs = [np.random.default_rng(s) for s in seeds]
    has_val = len(plans[0].val) > 0

    active = list(range(n_members))  # members still training, in the order the network holds them
    best_state = [_member_state(model.state_dict(), j, n_members) for j in range(n_members)]
    best_loss = [math.inf] * n_members
    best_epoch = [0] * n_members
    stale = [0] * n_members
    epochs_run = [0] * n_members
    step_count = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = np.stack([plans[j].train[rngs[j].permutation(n_train)] for j in active])
        for step in range(steps_per_epoch):
            # Cosine decay of the learning rate over the planned steps, set by hand so that it
            # survives rebuilding the optimizer when members stop.
            for group in optimizer.param_groups:
                group["lr"] = config.lr * 0.5 * (1.0 + math.cos(math.pi * step_count / total_steps))
            x, y = batcher.batch(order[:, step * batch_size:(step + 1) * batch_size])
            pred = model(x)
            # Summed over members so that each member's gradient is exactly its own mean loss's.
            loss = pinball_loss(pred, y.unsqueeze(-1), levels_t).mean(dim=(0, 2)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_count += 1
        state = model.state_dict()
        val_loss = (_validation_loss(model, batcher, np.stack([plans[j].val for j in active]), levels_t,
                                     config.batch_size) if has_val else [-math.inf] * len(active))
        for position, j in enumerate(active):
            epochs_run[j] = epoch
            if val_loss[position] < best_loss[j] or not has_val:
                best_loss[j], best_epoch[j], stale[j] = val_loss[position], epoch, 0
                best_state[j] = _member_state(state, position, len(active))
            else:
                stale[j] += 1
        on_epoch(epoch)
        still = [position for position, j in enumerate(active) if stale[j] < config.patience]
        if not still:
            break
        if len(still) < len(active):
            model, optimizer = _keep_members(model, optimizer, still, config.lr, config.weight_decay)
            active = [active[position] for position in still]
    finished = []
    for j in range(n_members):
        member = BaggedResNet(1, **model.arch)
        member.load_state_dict(best_state[j])
        finished.append(member)
    network = stack_models(finished).to(device).eval()
    history = TrainHistory(epochs_run, best_epoch, [float(v) if has_val else math.nan for v in best_loss])
    return network, history


@torch.no_grad()
def _validation_loss(model, batcher: _Batcher, val_index: np.ndarray, levels_t, batch_size: int) -> list[float]:
    model.eval()
    total = torch.zeros(val_index.shape[0], dtype=torch.float64, device=batcher.device)
    for start in range(0, val_index.shape[1], batch_size):
        x, y = batcher.batch(val_index[:, start:start + batch_size])
        total += pinball_loss(model(x), y.unsqueeze(-1), levels_t).double().mean(dim=2).sum(dim=0)
    return (total / val_index.shape[1]).tolist()


# --- the fitted bag ----------------------------------------------------------------------------

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
        # Per member and level, added to the network's quantiles (log units); set by calibrate().
        self.offsets = np.zeros((network.n_models, len(self.levels)))

    @property
    def n_models(self) -> int:
        return self.network.n_models

    def calibrate(self, images, targets, held_out: Sequence[np.ndarray], aux=None, threads: int | None = None
                  ) -> np.ndarray:
        """Shift each member's quantiles so that on images it never trained on the right share falls below.

        Conformalised quantile regression (Romano, Patterson and Candes, 2019), member by
        member: offset[j, k] is the levels[k]-quantile of y - q_jk(x) over held_out[j]. A
        network's errors in the tail push the share of y below its predicted alpha-quantile
        above alpha (the conditional CDF is convex there); the shift removes that bias.
        Returns the offsets [n_models, n_levels].
        """
        targets = np.asarray(targets, dtype=np.float64)
        if len(held_out) != self.n_models:
            raise ConfigError(f"calibrate needs one held-out index set per member ({self.n_models}), "
                              f"got {len(held_out)}")
        raw = self.predict(images, aux, threads=threads, calibrated=False)
        offsets = np.zeros_like(self.offsets)
        for member, index in enumerate(held_out):
            index = np.asarray(index, dtype=np.int64)
            if index.size == 0:
                continue
            residual = targets[index, None] - raw[member, index, :]
            offsets[member] = [np.quantile(residual[:, k], level) for k, level in enumerate(self.levels)]
        self.offsets = offsets
        return offsets

    @torch.no_grad()
    def predict(self, images, aux=None, batch_size: int = 1024, device=None, threads: int | None = None,
                calibrated: bool = True) -> np.ndarray:
        """Quantiles of log-score per member: float64 [n_models, N, n_levels] (with calibrate()'s offsets)."""
        images_t = as_image_tensor(images)
        aux_t = as_aux_tensor(aux, images_t)
        self._check_inputs(images_t, aux_t)
        target = resolve_device(device) if device is not None else next(self.network.parameters()).device
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
        quantiles = quantiles + self.offsets[:, None, :]
        # Different shifts per level could make neighbouring quantiles cross; a CDF cannot.
        return np.maximum.accumulate(quantiles, axis=2)

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


def fit_bag(images, targets, plans: Sequence[SamplePlan], seeds: Sequence[int], levels: Sequence[float],
            config: RegressorConfig | None = None, aux=None, progress: bool = False,
            label: str = "quantile regressors") -> QuantileBag:
    """Train one regressor per (plan, seed) on y = targets with the pinball loss at `levels`.

    images: uint8 N x C x H x W or floats in [0, 1]; targets: finite float [N] (log-scores);
    plans index into them. The bag trains as one grouped network (`config.batched`, default
    by measurement) or member by member; either way member j depends only on plans[j] and
    seeds[j], and the result is the same up to float rounding.
    """
    config = (config or RegressorConfig()).validate()
    levels = check_levels(levels)
    if len(plans) != len(seeds) or not plans:
        raise ConfigError("fit_bag needs one seed per sample plan, and at least one plan")
    images_t = as_image_tensor(images)
    aux_t = as_aux_tensor(aux, images_t)
    targets_t = torch.as_tensor(np.asarray(targets, dtype=np.float64))
    if targets_t.shape != (images_t.shape[0],) or not torch.isfinite(targets_t).all():
        raise InputError(f"targets must be finite floats, one per image ({images_t.shape[0]})")
    device = resolve_device(config.device)
    started = time.perf_counter()

    scaler = ChannelScaler.fit(images_t, aux_t)
    target_mean = float(targets_t.mean())
    target_std = float(targets_t.std()) if targets_t.numel() > 1 else 1.0
    target_std = target_std if target_std > 1e-12 else 1.0
    standardised = ((targets_t - target_mean) / target_std).float()
    init_quantiles = np.quantile(standardised.numpy(), levels).tolist()
    batcher = _Batcher(images_t, aux_t, standardised, scaler, device)

    batched = default_batched(device) if config.batched is None else bool(config.batched)
    groups = [list(range(len(plans)))] if batched else [[j] for j in range(len(plans))]
    with _progress_bar(progress, len(groups) * config.epochs, label) as bar, torch_threads(config.threads):
        trained, histories = [], []
        for group in groups:
            done = [0]

            def on_epoch(epoch, done=done):
                bar.update(epoch - done[0])
                done[0] = epoch

            network, history = _train_group(batcher, [plans[j] for j in group], [seeds[j] for j in group],
                                            levels, config, init_quantiles, on_epoch)
            bar.update(config.epochs - done[0])  # early stopping skips the rest of this group's epochs
            trained.append(network)
            histories.append(history)
    network = trained[0] if len(trained) == 1 else stack_models(trained)
    history = TrainHistory(sum((h.epochs_run for h in histories), []), sum((h.best_epoch for h in histories), []),
                           sum((h.best_val_loss for h in histories), []), time.perf_counter() - started)
    return QuantileBag(network.eval(), scaler, levels, target_mean, target_std, history)


def default_batched(device: torch.device) -> bool:
    """Train the bag as one grouped network rather than member by member?

    On CPU (bench/bench_attack.py, B = 7, torch's 2 threads on an idle 2-core machine,
    2026-11-28) the grouped network was 1.70x faster per epoch at the demo size
    (1 x 28 x 28, N = 2000) and 1.32x at 3 x 32 x 32, N = 5000. (At one thread on a busy
    machine it had been 1.2x and 0.9x.) On CUDA the members' small kernels are launch-bound, so one network for all
    B does 1/B of the launches (not measured: no GPU was available).
    """
    return True


class _NullBar:
    def update(self, n):
        pass


@contextlib.contextmanager
def _progress_bar(enabled: bool, length: int, label: str):
    if not enabled:
        yield _NullBar()
        return
    import sys

    import click

    with click.progressbar(length=length, label=f"training {label}", file=sys.stderr) as bar:
        yield bar
