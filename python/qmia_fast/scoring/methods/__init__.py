"""The score methods: one module each; adding a method is one module and one line here."""
from __future__ import annotations

from .base import ScoreMethod
from .loss import METHOD as LOSS
from .pia import METHOD as PIA, P_RANGE
from .secmi import METHOD as SECMI

REGISTRY: dict[str, ScoreMethod] = {method.name: method for method in (SECMI, LOSS, PIA)}

__all__ = ["REGISTRY", "ScoreMethod", "P_RANGE"]
