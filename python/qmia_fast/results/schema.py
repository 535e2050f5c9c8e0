"""A small JSON Schema validator for the subset our report schema uses (no dependency): type, properties, required,
additionalProperties, items, enum, const, minimum, maximum, minItems, maxItems, pattern, anyOf, $ref to #/$defs."""
from __future__ import annotations

import re
from typing import Any, Mapping

from ..errors import InputError

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    # JSON has one number type; bool is not a number even though Python says it is an int.
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}
_KNOWN = {"$schema", "$id", "$defs", "$comment", "title", "description", "type", "properties", "required",
          "additionalProperties", "items", "enum", "const", "minimum", "maximum", "minItems", "maxItems",
          "pattern", "anyOf", "$ref", "examples"}


def validate(instance: Any, schema: Mapping, name: str = "document") -> None:
    """Raise InputError at the first place where `instance` departs from `schema` (path in the message).

    A keyword outside the supported subset is an error in the schema, never silently ignored.
    """
    _check(instance, schema, schema, name)


def _resolve(schema: Mapping, root: Mapping) -> Mapping:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    if not ref.startswith("#/$defs/"):
        raise InputError(f"schema: only local references #/$defs/NAME are supported, got {ref!r}")
    target = (root.get("$defs") or {}).get(ref[len("#/$defs/"):])
    if target is None:
        raise InputError(f"schema: reference {ref!r} names no definition")
    return target


def _check(value: Any, schema: Mapping, root: Mapping, path: str) -> None:
    schema = _resolve(schema, root)
    unknown = set(schema) - _KNOWN
    if unknown:
        raise InputError(f"schema at {path}: unsupported keyword(s) {', '.join(sorted(unknown))}")
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                _check(value, option, root, path)
                break
            except InputError as exc:
                errors.append(str(exc))
        else:
            raise InputError(f"{path}: matches none of the allowed forms ({'; '.join(errors)})")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_TYPES[kind](value) for kind in kinds):
            raise InputError(f"{path}: expected {' or '.join(kinds)}, got {type(value).__name__} {value!r:.60}")
    if "const" in schema and value != schema["const"]:
        raise InputError(f"{path}: must be {schema['const']!r}, got {value!r:.60}")
    if "enum" in schema and value not in schema["enum"]:
        raise InputError(f"{path}: must be one of {schema['enum']!r}, got {value!r:.60}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            raise InputError(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise InputError(f"{path}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        raise InputError(f"{path}: {value!r:.60} does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise InputError(f"{path}: {len(value)} items, fewer than {schema['minItems']}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise InputError(f"{path}: {len(value)} items, more than {schema['maxItems']}")
        if "items" in schema:
            for index, item in enumerate(value):
                _check(item, schema["items"], root, f"{path}[{index}]")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                raise InputError(f"{path}: missing required key {key!r}")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], root, f"{path}.{key}")
            elif extra is False:
                raise InputError(f"{path}: unexpected key {key!r} (allowed: {', '.join(properties)})")
            elif isinstance(extra, Mapping):
                _check(item, extra, root, f"{path}.{key}")
