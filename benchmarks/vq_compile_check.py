"""Does a compiled VQ still learn? Gradients of one stage-1 step, eager and compiled, under bf16 autocast.

Builds the preset's VQ (fresh weights, fp32 group norms as the preset has them) and takes one stage-1 loss on a batch
of world images three ways: eager; torch.compile of the encoder and decoder with the library's upsampling
(F.interpolate); and compiled as pretraining compiles it (vq_train.compile_vq, which swaps in NearestUpsample2x).
Prints the gradient norm of each part of the VQ per way, and its cosine with the eager gradient. An eager step without
autocast (fp32) shows how far bf16 rounding alone moves the gradient.

With --steps N it then trains N stage-1 steps eagerly and compiled (the fix in), from the same weights on the same
batches, and prints the mean loss over each 20 steps and the median seconds a step.

Usage: python -m benchmarks.vq_compile_check [--preset nano] [--steps 0] [--threads 2]
About 3 minutes on the 2-core CPU without --steps (most of it compiling); 200 steps add about 4.
"""

from __future__ import annotations

import argparse
import copy
import random
import tempfile
import time

import torch
import torch.nn.functional as F

from gvu.models.pretrain import PRESETS, render, stage0, to_pixels, train_scene
from gvu.models.vq_train import compile_vq, fp32_group_norms, vq_loss

PARTS = ("encoder", "quant_conv", "post_quant_conv", "decoder.conv_in", "decoder.mid", "decoder.up.0", "decoder.up.1",
         "decoder.up.2", "decoder.up.3", "decoder.conv_out")


def batch(rng: random.Random, n: int) -> torch.Tensor:
    return to_pixels([render(train_scene(rng)[1]) for _ in range(n)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--steps", type=int, default=0, help="also train this many steps each way (0: gradients only)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cfg = PRESETS[args.preset]
    torch.set_num_threads(args.threads)
    from transformers import JanusVQVAE

    with tempfile.TemporaryDirectory() as out:
        _, _, config = stage0(cfg, out)
    torch.manual_seed(0)
    base = fp32_group_norms(JanusVQVAE(config.vq_config)).train()
    pixels = batch(random.Random(1), cfg.vq_batch)

    def library_compiled(vq):
        vq.encoder.compile()
        vq.decoder.compile()
        return vq

    ways = {"eager": lambda vq: vq, "eager, fp32 (no autocast)": lambda vq: vq,
            "compiled, F.interpolate": library_compiled, "compiled, NearestUpsample2x": compile_vq}
    grads = {}
    for name, make in ways.items():
        vq = make(copy.deepcopy(base))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="fp32" not in name):
            loss = vq_loss(vq, pixels, fg_weight=cfg.vq_fg_weight, edge_weight=cfg.vq_edge_weight)[0]
        loss.backward()
        grads[name] = {p: torch.cat([t.grad.flatten() for n, t in vq.named_parameters()
                                     if n.startswith(p + ".") and t.grad is not None]) for p in PARTS}
    print(f"\none stage-1 step of the {args.preset} VQ under bf16 autocast, batch {cfg.vq_batch}, torch {torch.__version__}")
    print("\n| part | " + " | ".join(ways) + " |\n|---|" + "---:|" * len(ways))
    for p in PARTS:
        cells = []
        for name in ways:
            g, ref = grads[name][p], grads["eager"][p]
            cos = F.cosine_similarity(g, ref, dim=0).item() if g.norm() > 0 else float("nan")
            cells.append(f"{g.norm():.2e}" + ("" if name == "eager" else f" (cos {cos:.2f})"))
        print(f"| {p} | " + " | ".join(cells) + " |")

    if args.steps:
        curves, times = {}, {}
        for name in ("eager", "compiled, NearestUpsample2x"):
            vq = ways[name](copy.deepcopy(base))
            opt = torch.optim.Adam([p for p in vq.parameters() if p.requires_grad], lr=cfg.vq_lr)
            rng, losses, ts = random.Random(5), [], []
            for _ in range(args.steps):
                px = batch(rng, cfg.vq_batch)
                t = time.time()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = vq_loss(vq, px, fg_weight=cfg.vq_fg_weight, edge_weight=cfg.vq_edge_weight)[0]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                ts.append(time.time() - t)
                losses.append(loss.item())
            curves[name] = [sum(losses[i:i + 20]) / len(losses[i:i + 20]) for i in range(0, args.steps, 20)]
            later = sorted(ts[3:]) or ts  # the first steps hold the compilation
            times[name] = later[len(later) // 2]
        print(f"\n{args.steps} steps from the same weights on the same batches (Adam, lr {cfg.vq_lr}; no codebook EMA)")
        print("\n| steps | " + " | ".join(curves) + " |\n|---|" + "---:|" * len(curves))
        for i in range(len(curves["eager"])):
            print(f"| {20 * i + 1}-{min(20 * i + 20, args.steps)} | " + " | ".join(f"{c[i]:.4f}" for c in curves.values()) + " |")
        print("| median s/step | " + " | ".join(f"{t:.3f}" for t in times.values()) + " |")


if __name__ == "__main__":
    main()
