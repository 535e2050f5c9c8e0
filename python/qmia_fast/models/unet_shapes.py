"""The DDPM UNet's state-dict names and shapes computed from its config without building it, checked against the weights before any allocation."""
from __future__ import annotations

from typing import Any, Iterator, Mapping

from ..errors import ModelLoadError
from .config_io import MAX_IMAGE_SIDE

__all__ = [
    "unet_state_shapes", "check_unet_fits_file", "check_unet_state_shapes", "check_unet_image_size",
    "BYTES_PER_PARAMETER_MIN",
]

# fp16/bf16 are the narrowest dtypes a DDPM checkpoint stores, so a file of B bytes holds at most B/2 parameters.
BYTES_PER_PARAMETER_MIN = 2
# Must match models/unet.py: GroupNorm has no bearing on shapes, the time MLP is 4 x ch wide.
_TIME_MULT = 4
# How many names past the weights' own count the comparison walks before it stops.
_WALK_SLACK = 64

Shape = tuple[int, ...]


def _linear(prefix: str, out_f: int, in_f: int) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", (out_f, in_f)
    yield f"{prefix}.bias", (out_f,)


def _conv(prefix: str, out_ch: int, in_ch: int, kernel: int) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", (out_ch, in_ch, kernel, kernel)
    yield f"{prefix}.bias", (out_ch,)


def _norm(prefix: str, channels: int) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", (channels,)
    yield f"{prefix}.bias", (channels,)


def _resblock(prefix: str, in_ch: int, out_ch: int, tdim: int, attn: bool) -> Iterator[tuple[str, Shape]]:
    yield from _norm(f"{prefix}.block1.0", in_ch)
    yield from _conv(f"{prefix}.block1.2", out_ch, in_ch, 3)
    yield from _linear(f"{prefix}.temb_proj.1", out_ch, tdim)
    yield from _norm(f"{prefix}.block2.0", out_ch)
    yield from _conv(f"{prefix}.block2.3", out_ch, out_ch, 3)
    if in_ch != out_ch:
        yield from _conv(f"{prefix}.shortcut", out_ch, in_ch, 1)
    if attn:
        yield from _norm(f"{prefix}.attn.group_norm", out_ch)
        for proj in ("proj_q", "proj_k", "proj_v", "proj"):
            yield from _conv(f"{prefix}.attn.{proj}", out_ch, out_ch, 1)


def unet_state_shapes(config: Mapping[str, Any]) -> Iterator[tuple[str, Shape]]:
    """Yield (name, shape) of every state-dict entry of UNet(**config), in the module's order.

    `config` must be normalised (models.unet.normalize_unet_config). A generator, so callers
    can stop early: a config asking for a million blocks costs nothing until walked.
    """
    ch, tdim, levels = config["ch"], config["ch"] * _TIME_MULT, len(config["ch_mult"])
    attn_levels = set(config["attn"])
    yield "time_embedding.timembedding.0.weight", (config["T"], ch)
    yield from _linear("time_embedding.timembedding.1", tdim, ch)
    yield from _linear("time_embedding.timembedding.3", tdim, tdim)
    yield from _conv("head", ch, config["in_ch"], 3)

    skip_channels, now_ch, index = [ch], ch, 0
    for level, mult in enumerate(config["ch_mult"]):
        out_ch = ch * mult
        for _ in range(config["num_res_blocks"]):
            yield from _resblock(f"downblocks.{index}", now_ch, out_ch, tdim, level in attn_levels)
            now_ch, index = out_ch, index + 1
            skip_channels.append(now_ch)
        if level != levels - 1:
            yield from _conv(f"downblocks.{index}.main", now_ch, now_ch, 3)
            index += 1
            skip_channels.append(now_ch)

    yield from _resblock("middleblocks.0", now_ch, now_ch, tdim, attn=True)
    yield from _resblock("middleblocks.1", now_ch, now_ch, tdim, attn=False)

    index = 0
    for level in reversed(range(levels)):
        out_ch = ch * config["ch_mult"][level]
        for _ in range(config["num_res_blocks"] + 1):
            yield from _resblock(f"upblocks.{index}", skip_channels.pop() + now_ch, out_ch, tdim, level in attn_levels)
            now_ch, index = out_ch, index + 1
        if level != 0:
            yield from _conv(f"upblocks.{index}.main", now_ch, now_ch, 3)
            index += 1

    yield from _norm("tail.0", now_ch)
    yield from _conv("tail.2", config["in_ch"], now_ch, 3)


def check_unet_image_size(config: Mapping[str, Any], source: str) -> None:
    """img_size is the one setting the weights do not bound; scoring allocates images of that side."""
    if config["img_size"] > MAX_IMAGE_SIDE:
        raise ModelLoadError(
            f"{source}: img_size = {config['img_size']} is larger than the largest supported image side "
            f"({MAX_IMAGE_SIDE}); fix the model config"
        )


def _numel(shape: Shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def check_unet_fits_file(config: Mapping[str, Any], file_bytes: int, source: str) -> int:
    """Raise ModelLoadError when the configured UNet has more parameters than a file of `file_bytes` can hold.

    The walk stops as soon as the bound is passed, so an absurd config costs no more than a
    sensible one. Returns the parameter count when it fits.
    """
    limit = max(file_bytes, 0) // BYTES_PER_PARAMETER_MIN
    total = 0
    for _name, shape in unet_state_shapes(config):
        total += _numel(shape)
        if total > limit:
            raise ModelLoadError(
                f"{source}: the configured UNet (T {config['T']}, ch {config['ch']}, ch_mult {_short(config['ch_mult'])}, "
                f"{config['num_res_blocks']} res blocks) has more than {limit} parameters, but the {file_bytes}-byte "
                "weights file can hold at most that many; the config does not describe these weights, fix it"
            )
    return total


def check_unet_state_shapes(config: Mapping[str, Any], shapes: Mapping[str, Shape], source: str) -> None:
    """Compare the configured UNet's names and shapes with the weights' (name -> shape), without building the UNet.

    Raises ModelLoadError naming missing/unexpected keys or the first shape mismatch, in the
    words load_state_dict_checked uses once the module exists.
    """
    present = {str(name): tuple(int(d) for d in shape) for name, shape in shapes.items()}
    expected: set[str] = set()
    missing: list[str] = []
    mismatch = None
    cut_short = False
    for name, shape in unet_state_shapes(config):
        expected.add(name)
        have = present.get(name)
        if have is None:
            missing.append(name)
        elif have != shape and mismatch is None:
            mismatch = (name, have, shape)
        # Far more entries expected than the weights hold: the verdict is known, and a config of
        # absurd depth stops here instead of listing millions of names.
        if len(expected) > len(present) + _WALK_SLACK:
            cut_short = True
            break
    unexpected = set() if cut_short else set(present) - expected
    if missing or unexpected:
        parts = []
        if missing:
            count = f"more than {len(missing)}" if cut_short else str(len(missing))
            parts.append(f"missing keys: {_few(missing, count)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected, str(len(unexpected)))}")
        raise ModelLoadError(
            f"{source}: the weights do not match the architecture ({'; '.join(parts)}); "
            "check the model config (--model-config) and --model-format"
        )
    if mismatch is not None:
        name, have, shape = mismatch
        raise ModelLoadError(
            f"{source}: shape mismatch for {name}: checkpoint has {have}, the configured architecture expects "
            f"{shape}; check the model config (--model-config)"
        )


def _few(names, count: str, limit: int = 5) -> str:
    shown = sorted(names)[:limit]
    return ", ".join(shown) + (f", ... ({count} in all)" if len(names) > limit else "")


def _short(values) -> str:
    text = ",".join(str(v) for v in values[:8])
    return text + (",..." if len(values) > 8 else "")
