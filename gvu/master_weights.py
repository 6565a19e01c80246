"""Training precision: which dtype the weights are held in, and which dtype the forward passes compute in.

- dtype=float32: fp32 weights, fp32 compute.
- dtype=bfloat16 with LoRA (lora_r > 0): the frozen base weights are bf16 (half the memory); peft keeps the
  adapters, the only trained weights, in fp32.
- dtype=bfloat16 with full fine-tuning (lora_r = 0): fp32 master weights and fp32 AdamW state, bf16 compute.
  A bf16 weight has 8 bits of mantissa: an AdamW step of lr = 1e-6 on a weight of size 1 is 2^-20 of it, far below
  bf16's resolution (2^-8), so a bf16 weight would round every such update away. fp32 masters add it up.

How (the one mechanism for one process, DDP and FSDP2): the parameters stay fp32, and rollout, reward, the KL
reference, the update's forward and the evaluations run under torch.autocast(bfloat16), which computes matrix
products in bf16 from fp32 weights; the backward runs outside autocast (PyTorch's advice) and produces fp32
gradients for fp32 parameters, which DDP and FSDP2 reduce in fp32, and AdamW keeps fp32 state.
Checkpoints hold the fp32 masters with no change to gvu/checkpoint.py: they save the parameters as they are.

dtype=auto picks bfloat16 where the device computes bf16 natively (gvu.precision.bf16_is_native: a CPU with AMX or
AVX512-BF16, a CUDA GPU with bf16) and float32 elsewhere, where emulated bf16 would be many times slower. It is
resolved once, when a run starts (resolve_dtype), and the run's config.json records the concrete dtype, so a resumed
run keeps its precision on any machine.

Why not FSDP2's MixedPrecisionPolicy(param_dtype=bfloat16): it all-gathers bf16 copies of the parameters, and
gvu runs rollout, reward, evaluation and checkpoints inside dist.full_params() (the gathered parameters), so a
checkpoint would save the bf16 copies and a resumed run would lose the masters. Autocast keeps one precision rule
everywhere, at the price of fp32 all-gathers under FSDP (twice the bytes of bf16) and a bf16 cast of each weight as
it is used (cached inside one autocast region in eager mode; repeated every step inside a compiled rollout step).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import replace
from typing import Callable, ContextManager

import torch

from gvu.config import TrainConfig


def resolve_dtype(cfg: TrainConfig, resumed_dtype: str | None = None) -> TrainConfig:
    """cfg with dtype=auto made concrete: the dtype of the run being resumed (`resumed_dtype`, from its config.json),
    else bfloat16 where cfg.device computes bf16 natively, else float32. A concrete dtype passes through unchanged."""
    if cfg.dtype != "auto":
        return cfg
    if resumed_dtype in ("float32", "bfloat16"):
        return replace(cfg, dtype=resumed_dtype)
    from gvu.precision import bf16_is_native

    return replace(cfg, dtype="bfloat16" if bf16_is_native(cfg.device) else "float32")


def fp32_masters(cfg: TrainConfig) -> bool:
    """Whether the run keeps fp32 master weights under bf16 compute: dtype=bfloat16 with full fine-tuning."""
    return cfg.dtype == "bfloat16" and cfg.lora_r == 0


def weights_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype the model's weights are loaded and trained in."""
    return torch.bfloat16 if cfg.dtype == "bfloat16" and not fp32_masters(cfg) else torch.float32


def compute_context(cfg: TrainConfig) -> Callable[[], ContextManager]:
    """A factory of the context the forward passes run in: bf16 autocast on cfg.device for fp32 masters, else
    nothing (the weights' own dtype sets the compute)."""
    if not fp32_masters(cfg):
        return contextlib.nullcontext
    device_type = torch.device(cfg.device).type
    return functools.partial(torch.autocast, device_type, dtype=torch.bfloat16)
