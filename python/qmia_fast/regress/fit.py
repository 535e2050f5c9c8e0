"""Training a bag: bootstrap plans, the pinball loss, and one grouped network trained with early stopping per member."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..progress import progress_bar
from ..runtime import resolve_device, torch_threads
from .bag import QuantileBag, TrainHistory
from .config import RegressorConfig, check_levels
from .inputs import ChannelScaler, as_aux_tensor, as_image_tensor
from .network import BaggedResNet, auto_stem_stride, gaussian_nll, stack_models


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


def full_data_plans(n: int, seeds: Sequence[int], holdout_frac: float, fold_seed: int) -> list[SamplePlan]:
    """Members on the whole set but one fold each: a seeded partition into max(B, ceil(1 / holdout_frac)) folds.

    Member j stops early on fold j and trains on everything else, so every member sees
    (1 - 1/folds) of the images and the folds are disjoint: each held-out image is
    predicted by exactly one member that never trained on it (the selection's
    validation loss). Folds are cut to one common size (the images cut go to training),
    so the bag trains as one grouped network.
    """
    n_folds = max(len(seeds), math.ceil(1.0 / holdout_frac - 1e-9))
    n_val = n // n_folds
    if n_val < 1:
        raise InputError(f"images: {n} are too few for {n_folds} early-stopping folds; "
                         f"use fewer regressors (n_models) or a larger public set")
    order = np.random.default_rng(fold_seed).permutation(n)
    plans = []
    for j in range(len(seeds)):
        val = order[j * n_val:(j + 1) * n_val]
        train = np.sort(np.concatenate([order[:j * n_val], order[(j + 1) * n_val:]]))
        plans.append(SamplePlan(train, val))
    return plans


def holdout_plan(n: int, seed: int, holdout_frac: float) -> SamplePlan:
    """Train on all but a random `holdout_frac` slice of the public set, which stops training early."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(math.ceil(holdout_frac * n), n - 1)
    return SamplePlan(np.sort(order[n_val:]), order[:n_val])



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


def _init_member(seed: int, in_channels: int, levels: Sequence[float], config: RegressorConfig, stem_stride: int,
                 init_quantiles):
    n_levels = len(levels)
    # Each member's weights depend only on its own seed, so a bag trained as one grouped
    # network and one trained model by model start from the same point.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        member = BaggedResNet(1, in_channels, n_levels, config.width, config.depth,
                              config.head_width, config.monotone, stem_stride, head=config.network_head,
                              levels=levels)
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
    members = [_init_member(s, batcher.scaler.n_channels, levels, config, stem_stride, init_quantiles)
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
            # Summed over members so that each member's gradient is exactly its own mean loss's.
            if config.network_head == "gaussian":
                loss = gaussian_nll(model.head_outputs(x), y).mean(dim=0).sum()
            else:
                loss = pinball_loss(model(x), y.unsqueeze(-1), levels_t).mean(dim=(0, 2)).sum()
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
    """Per member: its training objective on its validation images (pinball at the levels, or the Gaussian NLL)."""
    model.eval()
    total = torch.zeros(val_index.shape[0], dtype=torch.float64, device=batcher.device)
    for start in range(0, val_index.shape[1], batch_size):
        x, y = batcher.batch(val_index[:, start:start + batch_size])
        if model.head == "gaussian":
            total += gaussian_nll(model.head_outputs(x), y).double().sum(dim=0)
        else:
            total += pinball_loss(model(x), y.unsqueeze(-1), levels_t).double().mean(dim=2).sum(dim=0)
    return (total / val_index.shape[1]).tolist()



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
    device = resolve_device(config.device, default="cpu")
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
    with progress_bar(progress, len(groups) * config.epochs, f"training {label}") as bar, torch_threads(config.threads):
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

    Yes on every device: on CPU the grouped network was faster per epoch at the demo's and
    CIFAR's image sizes (bench/bench_attack.py; figures in bench/README.md), and on CUDA
    one network for all B members does 1/B of the small kernels' launches.
    """
    return True
