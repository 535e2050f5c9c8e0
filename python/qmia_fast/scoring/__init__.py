"""Membership scores of images under a target diffusion model (SecMI t-error, loss, PIA): the streaming engine, one module per method, and their settings."""
from __future__ import annotations

from .conditions import CONDITION_MODES
from .config import METHOD_SETTINGS, METHODS, SCORE_SETTINGS, ScoreConfig, score_defaults
from .engine import Scorer, score
from .images import to_model_range, validate_images
from .methods import P_RANGE, REGISTRY

__all__ = ["METHODS", "SCORE_SETTINGS", "METHOD_SETTINGS", "CONDITION_MODES", "ScoreConfig", "Scorer", "score",
           "score_defaults", "validate_images", "to_model_range", "default_unet_batch", "REGISTRY", "P_RANGE"]


def default_unet_batch(device) -> int:
    """Images per UNet call when none is given and memory allows (the run plan may choose fewer for big models)."""
    import torch

    from ..plan import DEFAULT_UNET_BATCH

    return DEFAULT_UNET_BATCH.get(torch.device(device).type, 64)
