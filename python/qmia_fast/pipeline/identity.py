"""A run's identity: fingerprints of everything that changes a bit of a score (settings, execution, machine, model, data, conditions)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

IDENTITY_VERSION = 2
# Fields of the compiled core's build info that change its arithmetic (not its thread count).
CORE_FIELDS = ("version", "compiler", "compile_flags", "build_type", "simd_level", "openmp")
# Provenance in a model's config: where it was read from, not what it computes. Leaving these out lets
# ranks on nodes with other mount points, or a resume after moving a folder, agree.
_PROVENANCE_KEYS = ("path", "config_source", "scheduler_source", "metadata")
_ARCHIVE_LIMIT = 1 << 36


def fingerprint_array(array) -> str:
    """sha256 of an array's dtype, shape and bytes (streamed, so big data sets never get copied)."""
    digest = hashlib.sha256()
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    digest.update(f"{array.dtype.str}|{array.shape}|".encode())
    flat = np.ascontiguousarray(array).reshape(-1)
    step = max(1, (1 << 24) // max(1, flat.itemsize))
    for start in range(0, flat.size, step):
        digest.update(flat[start:start + step].tobytes())
    return digest.hexdigest()


def fingerprint_tensors(module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, values), each tensor hashed once."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(fingerprint_array(tensor.detach().to("cpu")).encode())
    return digest.hexdigest()


def model_identity(model) -> dict[str, Any]:
    """The whole resolved model: format, config (less provenance), prediction type, schedule, weights, code.

    Two models agree here only if they compute the same function: the same checkpoint read with
    another mean_type, or two TorchScript archives with equal parameters and different code, differ.
    """
    config = getattr(model, "config", None) or {}
    if isinstance(config, Mapping):
        config = {key: value for key, value in config.items() if key not in _PROVENANCE_KEYS}
    schedule = getattr(model, "schedule", None)
    identity = {
        "format": getattr(model, "format", type(model).__name__),
        "config": digest_json(config),
        "prediction_type": getattr(model, "prediction_type", None),
        "process": getattr(model, "process", None),
        "conditioning": _conditioning(model),
        "schedule": None if schedule is None else _schedule_digest(schedule),
        "weights": fingerprint_tensors(model),
    }
    code = _script_code(model)
    if code is not None:
        identity["code"] = code
    archive = _archive(model)
    if archive is not None:
        identity["archive"] = archive
    return identity


def fingerprint_model(model) -> str:
    """One sha256 of model_identity: equal for two models only if they compute the same function."""
    return digest_json(model_identity(model))


def execution_identity(scorer) -> dict[str, Any]:
    """How the scorer executes, as far as it changes bits: its run plan's bit identity (precision per call,
    micro-batches, layout, layers, fusion; not the batch size, threads or sharding) and the condition mode."""
    return {**scorer.plan.bit_identity(), "condition": scorer.conditions.describe()}


def machine_identity(device_type: str = "cpu") -> dict[str, Any]:
    """The machine the bits came from: CPU model and ISA, torch's version and build, the core's build, the GPU."""
    from .. import machine
    from ..build_info import _cpu_module

    core = _cpu_module()
    identity = {**machine.describe(),
                "core": {key: core.get(key) for key in CORE_FIELDS} if core.get("built") else None}
    if device_type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        identity["gpu"] = f"{props.name} sm_{props.major}{props.minor}"
    return identity


def conditions_fingerprint(conditions) -> str | None:
    """sha256 of per-sample conditions: an int64 array of class labels, or a list of caption strings."""
    if conditions is None:
        return None
    if isinstance(conditions, (list, tuple)) and all(isinstance(c, str) for c in conditions):
        digest = hashlib.sha256(f"captions|{len(conditions)}|".encode())
        for caption in conditions:
            encoded = caption.encode("utf-8", "surrogatepass")
            digest.update(len(encoded).to_bytes(8, "little") + encoded)
        return digest.hexdigest()
    from ..errors import InputError

    labels = np.asarray(conditions)
    if labels.dtype.kind not in "iu":
        raise InputError(f"conditions has dtype {labels.dtype}; pass an int64 array of labels or a list of captions")
    return "labels|" + fingerprint_array(labels.astype(np.int64))


def score_identity(scorer, model, images, indices, conditions=None, *, model_id: Mapping | None = None,
                   data: str | None = None) -> dict[str, Any]:
    """What decides the bits of a run's scores: a resumed run, and every torchrun rank, must match it exactly.

    `model_id` / `data` take a model_identity / fingerprint_array computed earlier, so that a
    caller hashes each weight and image once. `conditions`: per-sample labels or captions.
    """
    return {
        "version": IDENTITY_VERSION,
        "score": scorer.config.to_dict(),
        "execution": execution_identity(scorer),
        "machine": machine_identity(scorer.device.type),
        "model": dict(model_id) if model_id is not None else model_identity(model),
        "data": data if data is not None else fingerprint_array(images),
        "indices": fingerprint_array(np.asarray(indices, dtype=np.int64)),
        "conditions": conditions_fingerprint(conditions),
    }


def digest_json(obj: Any) -> str:
    """sha256 of an object's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def identity_key(identity: Mapping[str, Any]) -> str:
    return digest_json(identity)


def part_digests(identity: Mapping[str, Any]) -> dict[str, str]:
    """One digest per top-level part, and per field of the dict-valued parts: what ranks compare."""
    parts = {}
    for name, value in identity.items():
        if isinstance(value, Mapping):
            for key, item in value.items():
                parts[f"{name}.{key}"] = digest_json(item)
        else:
            parts[name] = digest_json(value)
    return parts


def identity_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Names of what differs between two identities ("execution.fused", "model.config", "data", ...)."""
    old_parts = part_digests(old) if isinstance(old, Mapping) else {}
    new_parts = part_digests(new)
    return sorted(name for name in set(old_parts) | set(new_parts) if old_parts.get(name) != new_parts.get(name))


def _schedule_digest(schedule) -> str:
    fingerprint = getattr(schedule, "fingerprint_bytes", None)
    data = fingerprint() if callable(fingerprint) else np.asarray(schedule.betas, dtype=np.float64).tobytes()
    return hashlib.sha256(data).hexdigest()


def _conditioning(model):
    conditioning = getattr(model, "conditioning", None)
    return None if conditioning is None else conditioning.to_dict()


def _script_code(model) -> str | None:
    # TorchScript code of every submodule: two archives with equal weights and different code differ.
    net = getattr(model, "net", model)
    if not isinstance(net, torch.jit.ScriptModule):
        return None
    digest = hashlib.sha256()
    for name, module in sorted(net.named_modules(), key=lambda item: item[0]):
        try:
            code = module.code
        except (AttributeError, RuntimeError):
            code = ""
        digest.update(f"{name}|{len(code)}|{code}".encode())
    return digest.hexdigest()


def _archive(model) -> str | None:
    """sha256 of a TorchScript archive's bytes, when the model was read from one."""
    config = getattr(model, "config", None) or {}
    if getattr(model, "format", None) != "torchscript" or not isinstance(config, Mapping) or not config.get("path"):
        return None
    from ..errors import ModelLoadError
    from ..safe_read import sha256_regular

    return sha256_regular(Path(config["path"]), "TorchScript model", ModelLoadError, limit=_ARCHIVE_LIMIT)


__all__ = ["fingerprint_array", "fingerprint_tensors", "fingerprint_model", "model_identity", "execution_identity",
           "machine_identity", "conditions_fingerprint", "score_identity", "identity_key", "part_digests",
           "identity_differences", "digest_json", "IDENTITY_VERSION"]
