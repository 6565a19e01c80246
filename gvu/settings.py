"""Typed KEY=VALUE settings, as `--set` gives them (gvu train and gvu pretrain): text read by the dataclass field's
annotation (config.py and pretrain.py annotate with strings such as "float | None") and checked against it. Light:
no torch, so the CLI stays fast."""

from __future__ import annotations

import json

from gvu.errors import UserError


def allowed_types(annotation) -> list[str]:
    """The type names of a field annotation such as "float | None" (config.py's annotations are strings)."""
    return [a.strip() for a in str(annotation).split("|")]


def coerce(value: str, annotation: str, where: str):
    """A --set value, read by the field's annotation (e.g. "str | None"): none/null -> None where None is allowed,
    the raw text for strings, true/false for bools, else JSON (numbers); check_type then checks the result."""
    allowed = allowed_types(annotation)
    if "None" in allowed and value.lower() in ("none", "null"):
        return None
    if "str" in allowed:
        return value
    if "bool" in allowed:
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise UserError(f"{where}: expected true or false, got {value!r}")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
    except RecursionError:  # a deeply nested value: check_type would refuse it anyway, as a traceback
        raise UserError(f"{where}: the value nests JSON too deeply; expected {' or '.join(allowed)}") from None


_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def check_type(value, annotation: str, where: str):
    """value checked against a field annotation such as "float | None"; an int is accepted for a float."""
    allowed = allowed_types(annotation)
    if value is None:
        if "None" in allowed:
            return value
    else:
        for a in allowed:
            t = _TYPES.get(a)
            if t is None:  # a type this check does not know: leave it to the dataclass's own validation
                return value
            if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if type(value) is t:
                return value
    raise UserError(f"{where}: expected {' or '.join(allowed)}, got {value!r}")
