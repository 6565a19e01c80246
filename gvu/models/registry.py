"""Which backend a checkpoint folder needs: its config.json's model_type decides ("janus" -> JanusBackend, "x-omni" ->
XOmniBackend), so the trainer names no backend and a TrainConfig needs no backend field."""

from __future__ import annotations

import os

import torch

XOMNI = "x-omni"


def model_type(path: str) -> str | None:
    """The model_type of a local folder's config.json (None when it has none, or for a hub id). A config.json that
    is not a JSON object also gives None: the Janus checks then say what is wrong with it."""
    from gvu.models.model_files import read_json_file

    cfg = os.path.join(path, "config.json")
    if not os.path.exists(cfg):
        return None
    d = read_json_file(cfg, "the model's config", "give the checkpoint's own config.json")
    return d.get("model_type") if isinstance(d, dict) else None


def check_model(path: str) -> None:
    """Check a checkpoint folder's files, no weights read; raises a ValueError that says how to fix it."""
    if model_type(path) == XOMNI:
        from gvu.models.xomni.config import XOmniBackendConfig, check_checkpoint
        from gvu.models.xomni.flux_decoder import check_flux_dir

        check_flux_dir(XOmniBackendConfig.load(path, check_checkpoint(path)).flux_dir)
        return
    from gvu.models.janus import check_checkpoint, resolve_checkpoint

    check_checkpoint(resolve_checkpoint(path))


def load_backend(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The UnifiedModel for a checkpoint folder (see the module docstring)."""
    if model_type(path) == XOMNI:
        from gvu.models.xomni import XOmniBackend

        return XOmniBackend.from_pretrained(path, device=device, dtype=dtype)
    from gvu.models.janus import JanusBackend

    return JanusBackend.from_pretrained(path, device=device, dtype=dtype)
