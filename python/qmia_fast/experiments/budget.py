"""How much each experiment runs: the full grids, the --quick ones (all in under 10 minutes on 2 cores), and a tiny one for tests."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import ConfigError


@dataclass(frozen=True)
class Budget:
    """Grids and sizes of every experiment; `seeds` bag seeds per setting where training noise matters."""

    name: str
    seeds: int                       # alpha, bag-size, oracle
    sweep_seeds: int                 # timestep, mismatch, defence, targets (many settings each)
    max_per_set: int | None          # at most this many members / public / holdout images (None: all)
    reg_epochs: int | None           # None: RegressorConfig's default (early stopping ends most fits sooner)
    alphas: tuple[float, ...]
    bag_sizes: tuple[int, ...]
    widths: tuple[int, ...]
    secmi_t: tuple[int, ...]         # SecMI t_sec, at k = secmi_k
    secmi_k: int
    loss_t: tuple[int, ...]
    pia_t: tuple[int, ...]
    timestep_max_per_set: int | None  # the timestep sweep's own (smaller) sets: SecMI costs t_sec / k + 1 calls
    shift_kinds: tuple[str, ...]
    shift_fractions: tuple[float, ...]
    sigmas: tuple[float, ...]
    utility_t: tuple[int, ...]
    utility_images: int
    variants: tuple[str, ...]        # targets trained with train_ddpm when none are given
    train_steps: int
    oracle_public: int               # synthetic problem: public non-members; evaluation has as many of each class
    oracle_size: int

    def with_seeds(self, seeds: int | None) -> "Budget":
        if seeds is None:
            return self
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"seeds = {seeds!r} must be a positive integer (bag seeds per setting)")
        return replace(self, seeds=seeds, sweep_seeds=seeds)


SHIFT_KINDS = ("classes", "brightness", "contrast", "noise")

FULL = Budget(
    name="full", seeds=5, sweep_seeds=3, max_per_set=None, reg_epochs=None,
    alphas=(0.001, 0.005, 0.01, 0.05, 0.1), bag_sizes=(1, 3, 5, 7, 10, 15), widths=(8, 16, 32),
    secmi_t=(20, 50, 100, 200, 300), secmi_k=10, loss_t=(10, 50, 100, 200, 400, 700), pia_t=(50, 100, 200, 400),
    timestep_max_per_set=500, shift_kinds=SHIFT_KINDS, shift_fractions=(0.0, 0.25, 0.5, 0.75, 1.0),
    sigmas=(0.0, 0.01, 0.03, 0.1, 0.3, 1.0), utility_t=(10, 100, 200, 500, 900), utility_images=1000,
    variants=("linear", "linear-long", "cosine", "small"), train_steps=800, oracle_public=20000, oracle_size=8,
)

QUICK = Budget(
    name="quick", seeds=2, sweep_seeds=2, max_per_set=400, reg_epochs=6,
    alphas=(0.01, 0.1), bag_sizes=(1, 3, 7), widths=(8,),
    secmi_t=(20, 50), secmi_k=10, loss_t=(50, 200), pia_t=(200,),
    timestep_max_per_set=250, shift_kinds=SHIFT_KINDS, shift_fractions=(0.0, 1.0),
    sigmas=(0.0, 0.1, 1.0), utility_t=(100, 500), utility_images=100,
    variants=("linear",), train_steps=20, oracle_public=2000, oracle_size=8,
)

# For the test suite: every code path, seconds not minutes.
TINY = Budget(
    name="tiny", seeds=2, sweep_seeds=2, max_per_set=30, reg_epochs=1,
    alphas=(0.1,), bag_sizes=(1, 3), widths=(8,),
    secmi_t=(20,), secmi_k=10, loss_t=(200,), pia_t=(50,),
    timestep_max_per_set=20, shift_kinds=SHIFT_KINDS, shift_fractions=(0.0, 1.0),
    sigmas=(0.0, 1.0), utility_t=(100,), utility_images=20,
    variants=("linear",), train_steps=2, oracle_public=200, oracle_size=8,
)

BUDGETS = {b.name: b for b in (FULL, QUICK, TINY)}
