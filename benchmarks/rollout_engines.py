"""Rollout engines (sampling.engine: eager | static | compiled): images/s and ms per decoding step, one table.

  python -m benchmarks.rollout_engines                          nano-Janus on CPU, every engine
  python -m benchmarks.rollout_engines --device cuda            also Janus-Pro-1B and -7B with random weights (bf16)
                                                                at 32, 64 and 128 rows, with peak memory and the
                                                                fraction of the memory-bandwidth floor reached
  python -m benchmarks.rollout_engines --device cuda --sizes 1b --rows 64 --engines eager,compiled
  python -m benchmarks.rollout_engines --sizes xomni-tiny       the tiny random X-Omni (gvu/models/xomni/tiny.py)
  python -m benchmarks.rollout_engines --device cuda --sizes xomni-7b --rows 32 --engines eager,compiled --repeats 1
                                                                X-Omni-En-sized random weights (bf16), 1,296 tokens

Rows are CFG rows (conditional + unconditional), as the issue's timings count them: R rows sample R/2 images.
A decoding step is one image token for every row: ms/step = rollout seconds / N (the prompt's prefill included).
The compiled engine is timed after its compile (which is printed separately: it is paid once per shape).

The floor is what one step must read from memory at the GPU's bandwidth (--bandwidth, H100 SXM 3.35 TB/s):
the weights a step uses (language model, generation embeddings, aligner and head) plus the KV cache up to the mean
position of the rollout (prompt + N/2 tokens). floor = floor ms / measured ms: 1.0 would be bandwidth-bound.
Random weights make the images noise; time does not depend on the weights' values. X-Omni samples with guidance
here (scale 3; its official setting has none) so that its rows count as Janus's do; xomni-7b has Qwen2.5-7B's layers
and X-Omni's 16,384 codes, but the tiny tokenizer's 300 text ids: an image step gathers one embedding row and never
reads lm_head, so the text vocabulary changes the memory, not the time.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from gvu.config import SamplingConfig
from gvu.models.janus import JanusBackend, JanusBackendConfig
from gvu.models.xomni.backend import XOmniBackend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a green triangle above a cross",
           "a photo of a yellow star", "a photo of three purple hearts", "a photo of an orange square left of a star",
           "a photo of a white circle and a black cross", "a photo of two red stars below a blue heart"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# X-Omni-En's language model as the GvU memory table assumes it (Qwen2.5-7B dimensions; docs/xomni.md)
XOMNI_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "max_position_embeddings": 32768, "rope_theta": 1e6, "num_mm_adap_layers": 4,
            "num_mm_head_layers": 4, "mm_vocab_size": 16448, "image_vocab_size": 16384}


def load_xomni(size: str, device: torch.device) -> XOmniBackend:
    """The tiny random X-Omni (fp32), or xomni-7b: X-Omni-En-sized random weights in bf16, built on the device."""
    from gvu.models.xomni.config import XOmniBackendConfig
    from gvu.models.xomni.lm import XOmniForCausalLM, qwen2_config
    from gvu.models.xomni.siglip_vq import SiglipVQ, TokenizerConfig
    from gvu.models.xomni.tiny import generation_backend, lm_config, xomni_tokenizer

    if size == "xomni-tiny":
        backend = generation_backend(seed=0)
        backend.model.to(device)
        return backend
    cfg = {**lm_config(), **XOMNI_7B}
    encoder = {**cfg["vision_config"]["encoder"], "codebook_size": cfg["image_vocab_size"]}
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = XOmniForCausalLM(qwen2_config(cfg))
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)  # transformers' initializer_range
    return XOmniBackend(model.eval(), xomni_tokenizer(cfg["image_vocab_size"]), SiglipVQ(TokenizerConfig.from_encoder(
        encoder)), None, XOmniBackendConfig())


def load(size: str, device: torch.device) -> JanusBackend | XOmniBackend:
    if size.startswith("xomni"):
        return load_xomni(size, device)
    if size == "nano":
        return JanusBackend.from_pretrained(os.path.join(REPO, "models", "nano-janus"), device=str(device))
    from gvu.models import janus_pro as jp

    model, tok = jp.build_random(size, seed=0, device=str(device), dtype=torch.bfloat16)
    return JanusBackend(model, tok, JanusBackendConfig.janus_pro())


def step_bytes(backend: JanusBackend | XOmniBackend, rows: int, prompt_len: int) -> float:
    """Bytes one decoding step reads at least: the weights it uses plus the KV cache to the rollout's mean position.
    X-Omni's step reads its layers, mm_norm and mm_head; its embeddings give one row a token."""
    m = backend.model.model
    if isinstance(backend, XOmniBackend):
        parts, t = [m.layers, m.mm_norm, backend.model.mm_head], backend.model.config
    else:
        parts = [m.language_model, m.generation_embeddings, m.generation_aligner, m.generation_head]
        t = backend.model.config.text_config
    weights = sum(p.numel() * p.element_size() for part in parts for p in part.parameters())
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    kv_heads = getattr(t, "num_key_value_heads", None) or t.num_attention_heads
    elem = next(parts[0].parameters()).element_size()
    kv = 2 * t.num_hidden_layers * rows * kv_heads * head_dim * (prompt_len + backend.num_image_tokens / 2) * elem
    return weights + kv


def measure(backend: JanusBackend | XOmniBackend, engine: str, rows: int, repeats: int, bandwidth: float) -> dict:
    """Time `repeats` rollouts of R = rows CFG rows with `engine` after one untimed rollout (warm-up or compile)."""
    device = backend.device
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(max(1, rows // 2))]
    guided = {"cfg_scale": 3.0} if isinstance(backend, XOmniBackend) else {}  # X-Omni's default scale is 1: none
    sampling = SamplingConfig(engine=engine, seed=0, **guided)
    sync(device)
    t0 = time.perf_counter()
    backend.sample_image_tokens(prompts, sampling)  # warm-up: kernels, allocator, the compile
    sync(device)
    first = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for r in range(repeats):
        backend.sample_image_tokens(prompts, SamplingConfig(engine=engine, seed=r + 1, **guided))
    sync(device)
    seconds = (time.perf_counter() - t0) / repeats
    n = backend.num_image_tokens
    out = {"engine": engine, "rows": 2 * len(prompts), "images_per_s": len(prompts) / seconds,
           "ms_per_step": 1000 * seconds / n, "first_call_s": first}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        prompt_len = max(len(backend.prompt_ids(p)) for p in prompts)
        floor_ms = 1000 * step_bytes(backend, 2 * len(prompts), prompt_len) / bandwidth
        out["floor_ms"], out["of_floor"] = floor_ms, floor_ms / out["ms_per_step"]
    return out


def table(results: list[dict]) -> str:
    cols = ["model", "engine", "rows", "images_per_s", "ms_per_step", "speedup", "first_call_s", "peak_gib",
            "floor_ms", "of_floor"]
    cols = [c for c in cols if any(c in r for r in results)]
    lines = [" ".join(f"{c:>13}" for c in cols)]
    for r in results:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:>13.3f}" if isinstance(v, float) else f"{v!s:>13}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (nano-Janus) or cuda (also Janus-Pro-1B and -7B)")
    ap.add_argument("--engines", default="eager,static,compiled")
    ap.add_argument("--sizes", default=None, help="models, comma-separated: nano, 1b, 7b (Janus-Pro), xomni-tiny, "
                                                  "xomni-7b (default: nano on cpu; nano,1b,7b on cuda)")
    ap.add_argument("--rows", default=None, help="CFG rows, comma-separated (default: 16 on cpu; 32,64,128 on cuda)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rollouts per cell (default: 3 on cpu, 2 on cuda)")
    ap.add_argument("--bandwidth", type=float, default=3.35e12, help="GPU memory bandwidth in bytes/s (H100 SXM "
                                                                     "3.35e12, H200 4.8e12)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: a contended machine slows more threads down)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sizes = (args.sizes or ("nano,1b,7b" if cuda else "nano")).split(",")
    rows = [int(r) for r in (args.rows or ("32,64,128" if cuda else "16")).split(",")]
    repeats = args.repeats or (2 if cuda else 3)
    engines = args.engines.split(",")
    env = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
           "threads": args.threads, "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    print(json.dumps(env), flush=True)
    results = []
    for size in sizes:
        backend = load(size, device)
        for r in rows:
            eager = None
            for engine in engines:
                try:
                    res = {"model": size, **measure(backend, engine, r, repeats, args.bandwidth)}
                except torch.OutOfMemoryError:
                    res = {"model": size, "engine": engine, "rows": r, "images_per_s": "OOM"}
                    torch.cuda.empty_cache()
                if engine == "eager" and isinstance(res["images_per_s"], float):
                    eager = res["images_per_s"]
                if eager and isinstance(res["images_per_s"], float):
                    res["speedup"] = res["images_per_s"] / eager
                results.append(res)
                print(table([res]).splitlines()[1], flush=True)
        del backend
        if cuda:
            torch.cuda.empty_cache()
    env["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(table(results))
    print(json.dumps(env))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
