"""numpy arrays handed to torch: C-contiguous, of the wanted dtype, and writable (a read-only array is copied)."""
from __future__ import annotations

import numpy as np
import torch


def to_tensor(array, dtype=None) -> torch.Tensor:
    """A CPU tensor over `array`'s memory, or over a copy where torch could not share it safely.

    torch.from_numpy on a read-only array (a memory map, a split's frozen indices) warns that
    writes would be undefined; such arrays, and non-contiguous ones or another dtype, are
    copied instead, which is what that warning asks for.
    """
    return torch.from_numpy(np.require(array, dtype=dtype, requirements=["C", "W"]))
