"""What every run loads before it scores: the target, its images (checked against it), the resolved score settings and a scorer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .. import distributed
from .specs import DataSpec, ModelSpec, ScoreSpec


@dataclass
class Loaded:
    """A target with the images it will score and the scorer that will do it."""

    target: Any
    data: Any                  # data.LoadedData: images, split, description, files, format
    settings: dict[str, Any]   # resolved score settings
    note: str | None           # where the settings came from, when not from the user
    plan: Any                  # plan.RunPlan: how the run executes
    scorer: Any

    @property
    def images(self):
        return self.data.images

    def announce(self, log: Callable[[str], None]) -> None:
        """What was read, where the score settings came from when not from the user, and how the run executes."""
        log(f"data: {self.data.description}")
        if self.note:
            log(self.note)
        log(self.plan.describe())

    def describe_scorer(self) -> str:
        scorer = self.scorer
        calls = scorer.config.unet_calls
        return f"{scorer.config.method} ({calls} UNet call{'' if calls == 1 else 's'} per image)"


def load_for_scoring(model: ModelSpec, data: DataSpec, score: ScoreSpec, seed: int,
                     ctx: distributed.Context, log: Callable[[str], None] | None = None) -> Loaded:
    """Load the target and its data, resolve the score settings and the run plan, and build the scorer on this rank's device.

    Images are checked against the model (shape, channels, pixel range) before the plan is
    resolved and before any UNet call.
    """
    from ..models import check_image_shape
    from ..scoring import validate_images

    target = model.load()
    loaded = data.load(seed, expected_shape=getattr(target, "image_shape", None))
    validate_images(loaded.images)
    check_image_shape(target, tuple(loaded.images.shape))
    settings, note = score.resolve(target)
    plan = score.plan(target, settings, device=distributed.device_for_rank(score.device, ctx), log=log)
    scorer = score.scorer(target, settings, seed, plan)
    return Loaded(target, loaded, settings, note, plan, scorer)
