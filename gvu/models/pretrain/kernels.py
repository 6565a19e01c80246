"""Speed-only kernel choices of the stages: bf16 autocast where the machine computes bf16 natively, torch.compile
where torch can compile, fp32 group norms in the VQ. None changes what a stage learns (up to float rounding), so a
run resumes under any of them (config.SPEED_ONLY)."""

from __future__ import annotations

import torch

from gvu import precision
from gvu.models.pretrain.config import PretrainConfig
from gvu.models.vq_train import compile_vq, fp32_group_norms


def compile_works(device: str = "cpu") -> str:
    """'' when torch.compile can build and run here what the stages compile (convolutions, group norm, a linear
    layer, forward and backward under bf16 autocast), else why not (on the CPU inductor needs a C++ compiler)."""
    try:
        with torch.random.fork_rng(devices=[]):  # the probe's random weights leave the run's random streams alone
            net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8), torch.nn.SiLU(),
                                      torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2)).to(device)
        net.compile()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = net(torch.ones(2, 3, 4, 4, device=device)).float().sum()
        loss.backward()
        torch._dynamo.reset()
        return ""
    except Exception as e:  # inductor raises many kinds (no compiler, unsupported Python, ...)
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


_BF16_CHECKED: dict[str, bool] = {}  # device -> precision.bf16_is_native(device), checked once a process


def use_bf16(cfg: PretrainConfig) -> bool:
    """Whether a stage runs under bf16 autocast: the recipe asks (bf16) and the device computes bf16 natively. The
    first time it does not, says so; the stages then run in fp32 (a speed-only field: they learn the same up to
    float rounding)."""
    if not cfg.bf16:
        return False
    if cfg.device not in _BF16_CHECKED:
        _BF16_CHECKED[cfg.device] = native = precision.bf16_is_native(cfg.device)
        if not native:
            print(f"bf16=true, but this {cfg.device} has no native bf16 (a CPU without AVX512-BF16 or AMX, or a GPU "
                  "without bf16), where bf16 autocast is many times slower than fp32: running the stages in fp32 "
                  "(same recipe; --set bf16=false says so and silences this)", flush=True)
    return _BF16_CHECKED[cfg.device]


_COMPILE_CHECKED: dict[str, str] = {}  # device -> compile_works(device), checked once a process


def use_compile(cfg: PretrainConfig) -> bool:
    """Whether a stage compiles: the recipe asks (torch_compile), it runs on the CPU (compiled stages were checked
    there only: benchmarks/vq_compile_check.py) and torch can compile. The first time it cannot, says so; the stages
    then run eagerly (a speed-only field: they learn the same)."""
    if not cfg.torch_compile or cfg.device != "cpu":
        return False
    if cfg.device not in _COMPILE_CHECKED:
        _COMPILE_CHECKED[cfg.device] = why = compile_works(cfg.device)
        if why:
            print(f"torch.compile does not work here ({why}); running the stages eagerly (slower, same recipe)",
                  flush=True)
    return not _COMPILE_CHECKED[cfg.device]


def vq_kernels(cfg: PretrainConfig, vq) -> None:
    """The recipe's speed-only kernel choices for a VQ that stage 1 or 1c trains: fp32 group norms, torch.compile."""
    if cfg.vq_norm_fp32:
        fp32_group_norms(vq)
    if use_compile(cfg):
        compile_vq(vq)
