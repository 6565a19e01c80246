"""Typed settings, the one reader behind `gvu train` and `gvu pretrain`: JSON preset files and `--set KEY=VALUE`
items applied over a config dataclass's defaults. Text is read by the dataclass field's annotation (config.py and
pretrain/config.py annotate with strings such as "float | None") and checked against it; every problem is a
ConfigError (a UserError: exit 2) naming the item. Light: no torch, so the CLI stays fast."""

from __future__ import annotations

import json
import os
from dataclasses import fields, is_dataclass, replace

from gvu.config import ConfigError


def allowed_types(annotation) -> list[str]:
    """The type names of a field annotation such as "float | None" (config.py's annotations are strings)."""
    return [a.strip() for a in str(annotation).split("|")]


def coerce(value: str, annotation: str, where: str):
    """A --set value, read by the field's annotation (e.g. "str | None"): none/null -> None where None is allowed,
    the raw text for strings, true/false for bools, else JSON (numbers, lists); check_type then checks the result."""
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
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
    except RecursionError:  # a deeply nested value: check_type would refuse it anyway, as a traceback
        raise ConfigError(f"{where}: the value nests JSON too deeply; expected {' or '.join(allowed)}") from None


_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def check_type(value, annotation: str, where: str):
    """value checked against a field annotation such as "float | None"; an int is accepted for a float, and a JSON
    list of integers for a "tuple[int, ...]" field (returned as a tuple)."""
    allowed = allowed_types(annotation)
    if value is None:
        if "None" in allowed:
            return value
    else:
        for a in allowed:
            if a.startswith("tuple"):
                if isinstance(value, (list, tuple)) and all(type(x) is int for x in value):
                    return tuple(value)
                raise ConfigError(f"{where}: expected a list of integers such as [1, 2, 2], got {value!r}")
            t = _TYPES.get(a)
            if t is None:  # a type this check does not know: leave it to the dataclass's own validation
                return value
            if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if type(value) is t:
                return value
    raise ConfigError(f"{where}: expected {' or '.join(allowed)}, got {value!r}")


def apply_dict(cfg, d: dict, where: str):
    """Return cfg with the fields of d (nested dicts for nested dataclasses); keys starting with "_" are comments.
    Unknown keys and values of the wrong type are ConfigErrors."""
    names = {f.name: f for f in fields(cfg)}
    changes = {}
    for k, v in d.items():
        if k.startswith("_"):
            continue
        if k not in names:
            raise ConfigError(f"{where}: unknown setting {k!r}; known: {', '.join(sorted(names))}")
        cur = getattr(cfg, k)
        if is_dataclass(cur):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: {k!r} is a settings group; give its fields (e.g. --set {k}.FIELD=VALUE)")
            changes[k] = apply_dict(cur, v, f"{where}.{k}")
        else:
            changes[k] = check_type(v, names[k].type, f"{where}: {k}")
    return replace(cfg, **changes)


def parse_sets(items, cls, flag: str = "--set") -> dict:
    """KEY=VALUE strings -> {field: value} for the dataclass cls (or an instance of it), dotted keys for fields of
    nested dataclasses (reward.judge=frozen -> {"reward": {"judge": "frozen"}}); each value read by coerce and
    checked by check_type. Raises ConfigError naming the bad item; nothing has run yet when it does."""
    out: dict = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"{flag} {item}: no value; expected KEY=VALUE (e.g. {flag} {key or 'FIELD'}=...)")
        parts = key.split(".")
        obj = cls
        for p in parts[:-1]:
            sub = {f.name: f for f in fields(obj)}.get(p)
            group = getattr(obj, p, None) if not isinstance(obj, type) else None
            if sub is None or not (is_dataclass(group) or (group is None and is_dataclass(sub.default_factory))):
                raise ConfigError(f"{flag} {key}: {p!r} is not a settings group")
            obj = group if group is not None else sub.default_factory
        known = {f.name: f for f in fields(obj)}
        name = parts[-1]
        if name not in known:
            raise ConfigError(f"{flag} {key}: {name!r} is not a {getattr(obj, '__name__', type(obj).__name__)} "
                              f"field; known: {', '.join(sorted(known))}")
        cur = None if isinstance(obj, type) else getattr(obj, name)
        if is_dataclass(cur) or is_dataclass(getattr(known[name], "default_factory", None)):
            raise ConfigError(f"{flag} {key}: {name!r} is a settings group; give its fields "
                              f"(e.g. {flag} {key}.FIELD=VALUE)")
        where = f"{flag} {key}"
        value = check_type(coerce(text, known[name].type, where), known[name].type, where)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[name] = value
    return out


MAX_SETTINGS_BYTES = 1 << 20  # a settings file is a few hundred bytes; a larger one is not a config


def read_settings_file(path, where: str, what: str) -> dict:
    """A JSON object of settings from the file `path` (a preset or --config), or a ConfigError that says what is
    wrong with it. what: the config class's name, for the messages."""
    if not os.path.exists(path):
        raise ConfigError(f"{where}: no such file {path}")
    if os.path.isdir(path):
        raise ConfigError(f"{where}: {path} is a folder; give a JSON file of {what} fields")
    with open(path, "rb") as f:
        data = f.read(MAX_SETTINGS_BYTES + 1)
    if len(data) > MAX_SETTINGS_BYTES:
        raise ConfigError(f"{where}: {path} is over {MAX_SETTINGS_BYTES >> 20} MiB, not a {what} JSON file")
    try:
        d = json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not a text file (not UTF-8); give a JSON object of {what} "
                          "fields") from None
    except RecursionError:
        raise ConfigError(f"{where}: {path} nests JSON too deeply; give a flat JSON object of {what} fields") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: {path} must hold a JSON object of {what} fields, not a {type(d).__name__}")
    return d


def layered(cfg, files, sets, flag: str = "--set"):
    """cfg with each settings file applied in turn (files: (path, where) pairs, None paths skipped), then the
    --set items: the one order in which `gvu train` and `gvu pretrain` build their configs."""
    what = type(cfg).__name__
    for path, where in files:
        if path is not None:
            cfg = apply_dict(cfg, read_settings_file(path, where, what), where)
    return apply_dict(cfg, parse_sets(sets, cfg, flag), flag)
