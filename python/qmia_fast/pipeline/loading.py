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
    conditions: Any = None     # each image's condition (int64 labels or captions), None for the null or no condition

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
    image_shape = getattr(target, "image_shape", None)
    loaded = data.load(seed, expected_shape=image_shape, resolution=_training_resolution(target))
    validate_images(loaded.images)
    check_image_shape(target, tuple(loaded.images.shape))
    conditions = image_conditions(target, loaded, score.condition, data)
    settings, note = score.resolve(target)
    plan = score.plan(target, settings, device=distributed.device_for_rank(score.device, ctx), log=log)
    scorer = score.scorer(target, settings, seed, plan)
    return Loaded(target, loaded, settings, note, plan, scorer, conditions)


def _training_resolution(target) -> int | None:
    """The side an image folder is resized and centre-cropped to by default: a latent or text-to-image pipeline's
    training resolution (pixel models take the images as they are, or refuse their size)."""
    if getattr(target, "latent", None) is None and getattr(target, "text_encoder", None) is None:
        return None
    shape = getattr(target, "image_shape", None)
    return int(shape[1]) if shape and shape[1] == shape[2] else None


def image_conditions(target, loaded, mode: str, data: DataSpec):
    """Each image's condition for the target (checked against it), or None (unconditional model, or the null one).

    A conditional model without conditions in the data is a one-line error saying where they come from;
    conditions given for an unconditional model are not used, and a warning says so.
    """
    import warnings

    from ..data import check_labels
    from ..errors import ConfigError

    spec = getattr(target, "conditioning", None)
    if spec is None:
        if data.labels or data.captions:
            warnings.warn(f"--{'labels' if data.labels else 'captions'} is not used: the model is unconditional")
        return None
    if mode == "null":
        return None
    if spec.kind == "class":
        if loaded.labels is None:
            raise ConfigError(f"the model is class-conditional ({spec.num_classes} classes) but --data has no class "
                              "labels; pass --labels FILE (one label per image), or --condition null to score every "
                              "image under the null class")
        return check_labels(loaded.labels, spec.num_classes, "--labels" if data.labels else "the data's labels",
                            names=loaded.file_names)
    if loaded.captions is None:
        raise ConfigError("the model is text-conditional but --data has no captions; put a metadata.jsonl "
                          "(file_name + text) in the image folder, pass --captions FILE, or --condition null to "
                          "score every image under the empty prompt")
    return loaded.captions
