"""What number formats this machine computes fast. Light and neutral: `gvu train` and `gvu pretrain` both ask."""

from __future__ import annotations

import torch


def bf16_is_native(device: str = "cpu") -> bool:
    """Whether `device` computes bf16 matrix products in hardware: a CUDA GPU that supports bf16, or a CPU with
    AVX512-BF16 or AMX. Elsewhere torch converts in software: on a 2-core AMD EPYC (Zen 3, AVX2 only) a
    [2912, 768] x [768, 256] product took 955 ms in bf16 against 10 ms in fp32 (benchmarks/precision_speed.py)."""
    kind = torch.device(device).type
    if kind == "cuda":  # not counting emulation (which is_bf16_supported counts by default): a V100 or T4 emulates
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if kind == "cpu":
        flags = [getattr(torch.cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        if all(f is None for f in flags):  # a torch without these probes: keep the recipe's setting
            return True
        return any(f() for f in flags if f is not None)
    return True
