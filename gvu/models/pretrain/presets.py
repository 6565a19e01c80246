"""Pretraining presets: JSON files of PretrainConfig fields, read over its defaults (the shipped recipe).

  configs/pretrain-NAME.json          the presets in use: nano (the shipped model) and smoke (seconds, for tests)
  configs/archive/pretrain-NAME.json  recipes of earlier models and candidates, kept so that their commands rerun

`gvu pretrain --preset NAME` looks in both; `--config FILE` reads any such file. A recipe is built as `gvu train`
builds its config (gvu.settings.layered): defaults, then the preset, then --config, then --set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from gvu.config import ConfigError
from gvu.models.pretrain.config import PretrainConfig, validate
from gvu.settings import apply_dict, layered, parse_sets, read_settings_file

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
PRESET_DIRS = (CONFIG_DIR, CONFIG_DIR / "archive")
PREFIX = "pretrain-"


def preset_path(name: str) -> Path:
    """configs/pretrain-NAME.json, else configs/archive/pretrain-NAME.json; a ConfigError listing the presets."""
    for folder in PRESET_DIRS:
        path = folder / f"{PREFIX}{name}.json"
        if path.is_file():
            return path
    raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())} "
                      "(or give a recipe file with --config FILE)")


def preset_names() -> list[str]:
    """In-use presets first, then the archive's, each sorted."""
    return [p.stem[len(PREFIX):] for folder in PRESET_DIRS for p in sorted(folder.glob(f"{PREFIX}*.json"))]


def load_preset(name: str) -> PretrainConfig:
    """PretrainConfig's defaults with the preset's fields (not validated: resolve does that)."""
    path = preset_path(name)
    return apply_dict(PretrainConfig(), read_settings_file(path, f"preset {name}", "PretrainConfig"),
                      f"preset {name} ({path})")


class _Presets(Mapping):
    """{name: PretrainConfig} over the preset files, each read when asked for (a file edited since is read anew)."""

    def __getitem__(self, name: str) -> PretrainConfig:
        if not isinstance(name, str) or name not in preset_names():
            raise KeyError(name)
        return load_preset(name)

    def __iter__(self):
        return iter(preset_names())

    def __len__(self) -> int:
        return len(preset_names())


PRESETS: Mapping[str, PretrainConfig] = _Presets()


def parse_overrides(items, cls=None, flag: str = "--set") -> dict:
    """KEY=VALUE strings -> {field: value} for the dataclass cls (default PretrainConfig), each read and checked by
    the field's type as `gvu train --set` reads its fields (gvu.settings.parse_sets: 4000, 2e-3, true/false, text;
    a JSON list for a tuple field). Raises ConfigError naming the bad item; nothing has run yet when it does."""
    return parse_sets(items, cls or PretrainConfig, flag)


def resolve(preset: str | PretrainConfig, **overrides) -> PretrainConfig:
    """A preset (name or config) with fields replaced, validated (ConfigError before any work)."""
    cfg = load_preset(preset) if isinstance(preset, str) else preset
    cfg = replace(cfg, **overrides)
    validate(cfg)
    return cfg


def resolve_files(preset: str | None, config: str | None, sets: list[str], **flags) -> PretrainConfig:
    """What `gvu pretrain` runs: defaults, the preset (by name), the --config file, the --set items, then the flags
    that stand for fields (--threads, --device, --from-model, --vq-from; None: not given); validated."""
    path = preset_path(preset) if preset else None
    cfg = layered(PretrainConfig(), [(path, f"preset {preset}"), (config, f"--config {config}")], sets)
    return resolve(cfg, **{k: v for k, v in flags.items() if v is not None})
