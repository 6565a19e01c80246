"""Is bf16 autocast faster than fp32 on this machine? Matrix products and one nano-Janus training step, timed both ways.

Pretraining runs under bf16 autocast only where the device computes bf16 natively (gvu.models.pretrain.use_bf16: a CPU
with AVX512-BF16 or AMX, a CUDA GPU with bf16). This prints what torch reports of the CPU, then a table: the matrix
products of the nano language model's linear layers (a stage-2 batch's 2,912 rows; forward x @ W^T and the two
backward layouts) and one forward and backward pass of the understanding branch on 32 rows of the shipped model, in fp32
and under bf16 autocast (median of --repeats runs after one warm-up).

Usage: python -m benchmarks.precision_speed [--model models/nano-janus] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from gvu.measure import cpu_name
from gvu.models.pretrain import bf16_is_native


def timed_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def matmuls(repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    for name, (m, k, n) in {"x @ W^T (forward)": (2912, 256, 768), "dy @ W (grad of x)": (2912, 768, 256),
                            "dy^T @ x (grad of W)": (768, 2912, 256)}.items():
        ms = []
        for dt in (torch.float32, torch.bfloat16):
            if name.startswith("x @ W^T"):  # a linear layer's own layout: W is [n, k], used transposed
                a, b = torch.randn(m, k, dtype=dt), torch.randn(n, k, dtype=dt).t()
            elif name.startswith("dy^T"):
                a, b = torch.randn(k, m, dtype=dt).t(), torch.randn(k, n, dtype=dt)
            else:
                a, b = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
            ms.append(timed_ms(lambda: a @ b, repeats))
        rows.append((f"{name} [{m}, {k}] x [{k}, {n}]", *ms))
    return rows


def model_step(model_dir: str, repeats: int) -> tuple[str, float, float]:
    import random

    from gvu.models.janus import JanusBackend, text_logits
    from gvu.models.janus_format import left_pad
    from gvu.models.pretrain import to_pixels, train_scene
    from gvu.world.captions import REWARD_QUERY, describe
    from gvu.world.scene import render

    b = JanusBackend.from_pretrained(model_dir)
    b.model.train()
    rng = random.Random(0)
    scenes = [train_scene(rng)[1] for _ in range(32)]
    seqs = [b._understanding_prefix(REWARD_QUERY) + b.answer_ids(describe(sc, rng, "full")) for sc in scenes]
    batch = left_pad(seqs, b.ids["pad"])
    pixels = b.pixel_values(to_pixels([render(sc) for sc in scenes]))
    ms = []
    for bf16 in (False, True):
        def step():
            b.model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = text_logits(b.model, batch, pixels)
            logits.float().logsumexp(-1).mean().backward()
        ms.append(timed_ms(step, repeats))
    return f"understanding forward + backward, 32 rows x {batch.ids.shape[1]} tokens ({model_dir})", *ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/nano-janus")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.repeats < 1 or args.threads < 1:
        ap.error("--repeats and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    flags = {f: getattr(torch.cpu, f"_is_{f}_supported", lambda: None)() for f in ("avx512", "avx512_bf16", "amx_tile")}
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads; CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          + ", ".join(f"{k} {v}" for k, v in flags.items())
          + f"; pretraining uses bf16 here: {bf16_is_native('cpu')}")
    rows = matmuls(args.repeats) + [model_step(args.model, args.repeats)]
    print("\n| operation | fp32 ms | bf16 ms | bf16 / fp32 |\n|---|---:|---:|---:|")
    for name, f32, b16 in rows:
        print(f"| {name} | {f32:.1f} | {b16:.1f} | {b16 / f32:.2f} |")


if __name__ == "__main__":
    main()
