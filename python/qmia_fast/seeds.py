"""Seeds: the one range every seed must lie in, its check, and independent derived streams."""
from __future__ import annotations

import numbers

import numpy as np

from .errors import ConfigError

# int64-representable, so a seed survives torch tensors, JSON readers and every CLI parser;
# the noise kernels key Philox with it as an unsigned 64-bit value.
SEED_LIMIT = 2**63


def check_seed(seed, name: str = "seed") -> int:
    """`seed` as a Python int in [0, 2**63), or a ConfigError naming `name`."""
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.integer)):
        raise ConfigError(f"{name} = {seed!r} must be an integer in [0, 2**63); pass a non-negative integer seed")
    value = int(seed)
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{name} = {value} must be in [0, 2**63); pass a non-negative seed below 2**63")
    return value


def derive_seed(seed: int, *path: int) -> int:
    """A 63-bit seed for the random stream named `path` under `seed`: streams are independent of each other."""
    state = np.random.SeedSequence([int(seed), *(int(p) for p in path)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))
