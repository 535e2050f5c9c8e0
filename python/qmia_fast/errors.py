"""User-facing error types: every bad input raises a QmiaError that names the argument and the fix."""
from __future__ import annotations


class QmiaError(ValueError):
    """Base class of every error caused by the user's input or environment.

    The message names the offending argument and says how to fix it; the CLI prints
    it as a single line and exits with status 2.
    """


class InputError(QmiaError):
    """A tensor or array argument has the wrong dtype, device, shape, layout or values."""


class ConfigError(QmiaError):
    """An option value is out of range or inconsistent with another option."""


class ModelLoadError(QmiaError):
    """A model checkpoint is missing, malformed, or does not match the architecture."""


class UnsafeCheckpointError(ModelLoadError):
    """A checkpoint needs unpickling of arbitrary objects and --trust-checkpoint was not given."""


class DataError(QmiaError):
    """A data file is missing, malformed, or holds images we cannot interpret."""


class SplitError(DataError):
    """A member/non-member split file is malformed or inconsistent with the data."""


class ScoreOverflowError(QmiaError):
    """A score came out infinite or NaN even in float32 (an overflowing exponent, a broken model)."""


class OutputError(QmiaError):
    """An output path cannot be written: it exists as the wrong kind, is not writable, or the disk is full."""


class ResumeMismatchError(QmiaError):
    """An output folder holds partial results of a different configuration or dataset."""


class PeerError(QmiaError):
    """Another torchrun rank failed, disappeared, or disagrees with this one about the run."""


class MissingExtraError(QmiaError):
    """An optional dependency is needed for this feature and is not installed."""


def require_extra(module: str, extra: str, feature: str):
    """Import an optional dependency, or raise a MissingExtraError naming the pip extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            f"{feature} needs the optional package '{module}': "
            f"install the package's '{extra}' extra with  pip install '.[{extra}]'  from the qmia-fast checkout "
            f"({exc})"
        ) from None
