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
    scorer: Any

    @property
    def images(self):
        return self.data.images

    def announce(self, log: Callable[[str], None]) -> None:
        """What was read, and where the score settings came from when not from the user."""
        log(f"data: {self.data.description}")
        if self.note:
            log(self.note)

    def describe_scorer(self) -> str:
        scorer = self.scorer
        return (f"{scorer.config.method} on {scorer.device} ({scorer.config.precision}, batch {scorer.batch_size}, "
                f"UNet micro-batch {scorer.unet_batch}, {scorer.config.unet_calls} UNet calls per image)")


def load_for_scoring(model: ModelSpec, data: DataSpec, score: ScoreSpec, seed: int,
                     ctx: distributed.Context) -> Loaded:
    """Load the target and its data, resolve the score settings and build the scorer on this rank's device.

    Images are checked against the model (shape, channels, pixel range) before any UNet call.
    """
    target = model.load()
    loaded = data.load(seed, expected_shape=getattr(target, "image_shape", None))
    settings, note = score.resolve(target)
    scorer = score.scorer(target, settings, seed, device=distributed.device_for_rank(score.device, ctx))
    scorer.check_images(loaded.images)
    return Loaded(target, loaded, settings, note, scorer)
