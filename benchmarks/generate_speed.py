"""Throughput of `gvu generate` (images/s, the geneval layout, after the model has loaded): nano-Janus on the CPU at 1
and 2 threads; with --device cuda also Janus-Pro-1B-sized random weights (gvu/models/janus_pro.py) in bfloat16,
and the time that rate gives for GenEval's 2,212 images (553 prompts x 4). Prints a markdown table.

Random weights sample as fast as real ones (the same shapes, 576 tokens an image, CFG doubling the rows); what
they cannot show is image quality.

Usage: python -m benchmarks.generate_speed [--prompts 16] [--batch-size 16] [--threads 1 2]
       [--device cuda [--janus-pro 1b|7b] --gpu-prompts 16 --gpu-batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from gvu.config import SamplingConfig
from gvu.generate import GenerateRequest, ModelRef, plan_generation, run_generation
from gvu.prompt_sources import read_source
from gvu.world.prompts import make_suite

GENEVAL_IMAGES = 2212  # GenEval: 553 prompts x 4 images
NANO = str(Path(__file__).resolve().parents[1] / "models" / "nano-janus")


def write_prompts(folder: Path, n: int) -> Path:
    """n prompts of the nano world's GenEval-shaped eval split (GenEval's templates and lengths)."""
    import json

    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in make_suite("geneval", "eval", n, seed=0)))
    return path


def cpu_row(prompts: Path, out: Path, threads: int, batch_size: int) -> dict:
    from gvu.generate import load_backend

    torch.set_num_threads(threads)
    req = plan_generation(prompts=str(prompts), out=str(out), model=NANO, device="cpu", batch_size=batch_size)
    backend = load_backend(req.model, "cpu", req.dtype)
    run_generation(replace_out(req, out.with_name(out.name + "-warmup"), limit=1), backend, progress=False)
    cpu0 = time.process_time()
    result = run_generation(req, backend, progress=False)
    cpu = time.process_time() - cpu0
    return {"device": f"CPU ({platform.machine()}, {os.cpu_count()} cores)", "model": "nano-Janus (64 tokens, 64 px)",
            "threads": threads, "batch": batch_size, "images": result.images, "seconds": result.seconds,
            "rate": result.images_per_s, "cpu_per_image": cpu / max(result.images, 1)}


def replace_out(req: GenerateRequest, out: Path, limit: int | None = None) -> GenerateRequest:
    from dataclasses import replace

    return replace(req, out=out, items=req.items[:limit] if limit else req.items)


def janus_pro_row(prompts: Path, out: Path, spec: str, device: str, batch_size: int) -> dict:
    """Random Janus-Pro-shaped weights (bfloat16 on a GPU, float32 on the CPU) with Janus-Pro's backend settings."""
    from gvu.models import janus_pro as jp
    from gvu.models.janus import JanusBackend, JanusBackendConfig

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tok = jp.build_random(spec, device=device, dtype=dtype)
    backend = JanusBackend(model, tok, JanusBackendConfig.janus_pro())
    source = read_source(prompts)
    ref = ModelRef("model", f"random Janus-Pro-{spec}-sized weights", None, {"random": f"janus-pro-{spec}"},
                   SamplingConfig(), None, None)
    req = GenerateRequest(ref, source, source.items, "geneval", 4, SamplingConfig(seed=0), out, batch_size, device,
                          str(dtype).removeprefix("torch."))
    run_generation(replace_out(req, out.with_name(out.name + "-warmup"), limit=1), backend, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    result = run_generation(req, backend, progress=False)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    return {"device": name, "model": f"Janus-Pro-{spec}-sized, random ({backend.num_image_tokens} tokens, "
                                     f"{backend.image_size} px, {str(dtype).removeprefix('torch.')})",
            "threads": torch.get_num_threads() if device == "cpu" else "-", "batch": batch_size,
            "images": result.images, "seconds": result.seconds, "rate": result.images_per_s, "cpu_per_image": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16, help="nano-Janus prompts (4 images each)")
    ap.add_argument("--batch-size", type=int, default=16, help="gvu generate's --batch-size on the CPU")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="where the Janus-Pro-sized row runs; cuda adds that row by default")
    ap.add_argument("--janus-pro", default=None, choices=("none", "tiny", "1b", "7b"),
                    help="the Janus-Pro-sized row's spec (default: 1b with --device cuda, none on the CPU; tiny "
                         "checks the row's code on a CPU in seconds)")
    ap.add_argument("--gpu-prompts", type=int, default=16, help="Janus-Pro-sized prompts (4 images each)")
    ap.add_argument("--gpu-batch-size", type=int, default=64)
    args = ap.parse_args()
    spec = args.janus_pro or ("1b" if args.device == "cuda" else "none")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompts = write_prompts(tmp, args.prompts)
        for threads in args.threads:
            rows.append(cpu_row(prompts, tmp / f"cpu-{threads}", threads, args.batch_size))
        if spec != "none":
            (tmp / "jp").mkdir()
            rows.append(janus_pro_row(write_prompts(tmp / "jp", args.gpu_prompts), tmp / "jp-out", spec, args.device,
                                      args.gpu_batch_size))
    load = f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}{load}; `gvu generate`, geneval layout, 4 images a prompt, CFG on, seconds after "
          "the model loaded (one warm-up prompt first); CPU s/image: this process's CPU time (all its threads) per "
          "image, which other processes on the machine inflate less than the wall clock\n")
    print("| device | model | threads | batch | images | seconds | images/s | CPU s/image | GenEval's 2,212 images |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        total = GENEVAL_IMAGES / r["rate"] if r["rate"] else float("nan")
        cpu = "-" if r["cpu_per_image"] is None else f"{r['cpu_per_image']:.3f}"
        print(f"| {r['device']} | {r['model']} | {r['threads']} | {r['batch']} | {r['images']} | {r['seconds']:.1f} | "
              f"{r['rate']:.2f} | {cpu} | {total / 60:.1f} min |")


if __name__ == "__main__":
    main()
