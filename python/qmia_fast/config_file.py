"""Option values from a YAML or JSON file (`--config FILE`): read bounded, parsed safely, keys as the long option names."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError, require_extra
from .safe_read import parse_json, read_bytes


def read_config_file(path: str) -> dict[str, Any]:
    """Options from a YAML or JSON file; keys mirror the long option names (dashes or underscores).

    Read through the bounded reader: a FIFO, a device or a folder is named as such, not waited on.
    """
    file = Path(path)
    data = read_bytes(file, 1 << 20, "--config", ConfigError)
    text = data.decode("utf-8", errors="replace")
    if file.suffix.lower() in (".yaml", ".yml"):
        yaml = require_extra("yaml", "yaml", "a YAML --config file")
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({' '.join(str(exc).split())})") from None
        except RecursionError:
            raise ConfigError(f"--config {path}: nested too deeply to be a config file") from None
    else:
        try:
            values = parse_json(text, f"--config {path}", ConfigError)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; use a .yaml name for YAML") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option names to values")
    return {str(key).replace("-", "_"): value for key, value in values.items()}
