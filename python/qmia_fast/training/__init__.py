"""Training target models on member images: the built-in DDPM (train_ddpm) and the diffusers families (train_diffusers_target)."""
from __future__ import annotations

from .common import CHECKPOINT_NAME, SUMMARY_NAME
from .ddpm import TRAIN_DEFAULTS, train_ddpm
from .targets import DIFFUSERS_DEFAULTS, train_diffusers_target

__all__ = ["train_ddpm", "TRAIN_DEFAULTS", "CHECKPOINT_NAME", "SUMMARY_NAME", "train_diffusers_target",
           "DIFFUSERS_DEFAULTS"]
