"""X-Omni behind gvu's unified-model adapter: config.py (settings, checks), lm.py (the Qwen2-based language model),
siglip_vq.py (the image tokenizer), flux_decoder.py (FLUX.1-dev glue), backend.py (the UnifiedModel), tiny.py
(tiny random X-Omni folders for tests)."""

from gvu.models.xomni.backend import XOmniBackend
from gvu.models.xomni.config import CheckpointError, XOmniBackendConfig, check_checkpoint

__all__ = ["CheckpointError", "XOmniBackend", "XOmniBackendConfig", "check_checkpoint"]
