"""GPU check: a Janus-Pro-sized model with random weights, one GvU-GRPO step at a preset's settings, timed per phase.

  python -m benchmarks.gpu_check --out OUT                    Janus-Pro-1B, preset janus-pro-1b, CUDA, bf16
  python -m benchmarks.gpu_check --sizes 1b,7b --out OUT      then Janus-Pro-7B (preset janus-pro-7b, LoRA)
  python -m benchmarks.gpu_check --tiny --out OUT             tiny look-alike on CPU (seconds; for tests)

The model is built from Janus-Pro's config (gvu.models.janus_pro) with random weights, with the look-alike tokenizer
(Janus-Pro's special tokens and ids, vocabulary padded to 102400). Phases, each timed and with its peak memory:
  rollout  our KV-cached CFG sampler (CFG 5, 576 tokens), rows in the preset's rollout_micro_batch, + VQ decode
  reward   the GvU reward: one batched teacher-forced understanding pass per text_batch_size rows
  update   one GRPO update: LoRA (peft, TrainConfig.lora_target), gradient checkpointing, grad_accum micro-batches,
           k3 KL to the adapter-free reference (beta), AdamW
Random weights make the images noise; time and memory do not depend on what the weights are. --prompts B keeps the
preset's micro-batch sizes (so the peak memory is the preset's) with fewer prompts (so it runs in less time).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import torch


PROMPTS = ["a photo of a red bench and a blue cup", "a photo of three teddy bears", "a photo of a purple dog",
           "a photo of a laptop left of a giraffe", "a photo of a black toaster and a white sink",
           "a photo of two oranges below a wine glass", "a photo of a green surfboard", "a photo of four books"]


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Phase:
    """Times a block and records the peak memory allocated inside it (CUDA), in GiB."""

    def __init__(self, name, device, rows, results):
        self.name, self.device, self.rows, self.results = name, device, rows, results

    def __enter__(self):
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        s = time.perf_counter() - self.t0
        r = {"seconds": round(s, 3), "rows": self.rows, "images_per_s": round(self.rows / s, 3)}
        if self.device.type == "cuda":
            r["peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        self.results[self.name] = r
        print(f"  {self.name:<14} {s:8.2f} s  {r['images_per_s']:8.2f} images/s"
              + (f"  peak {r['peak_gib']:.2f} GiB" if "peak_gib" in r else ""), flush=True)


def build(size: str, device, dtype):
    from gvu.models import janus_pro as jp
    from gvu.models.janus import JanusBackend, JanusBackendConfig

    t0 = time.perf_counter()
    model, tok = jp.build_random("tiny" if size == "tiny" else size, device=str(device), dtype=dtype)
    backend = JanusBackend(model, tok, JanusBackendConfig.janus_pro())
    n = sum(p.numel() for p in model.parameters())
    print(f"built {size}: {n / 1e9:.3f}B parameters, {backend.num_image_tokens} image tokens, "
          f"{backend.image_size} px, in {time.perf_counter() - t0:.1f} s", flush=True)
    return backend, n


def grpo_update(backend, ro, adv, cfg, params, optimizer, adapter_off, checkpointing: bool) -> dict:
    """One GRPO update as the loop does it (mu = 1): micro-batches of M / grad_accum rows, loss on the conditional
    branch's log-probs, k3 KL to the reference (LoRA disabled), clipping, AdamW."""
    from gvu.grpo import grpo_loss

    rows, m = ro.row_prompts, len(ro.row_prompts)
    size = m // cfg.grad_accum
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for s in range(0, m, size):
        sl = slice(s, s + size)
        if cfg.beta > 0:
            with torch.no_grad(), adapter_off():
                ref = backend.image_token_logprobs(rows[sl], ro.tokens[sl], cfg.sampling.temperature)
        else:
            ref = None
        if checkpointing:
            with backend.checkpointed():
                logp = backend.image_token_logprobs(rows[sl], ro.tokens[sl], cfg.sampling.temperature)
        else:
            logp = backend.image_token_logprobs(rows[sl], ro.tokens[sl], cfg.sampling.temperature)
        loss, _ = grpo_loss(logp, logp.detach(), adv[sl].to(logp.device), torch.ones_like(logp, dtype=torch.bool),
                            ref, cfg.beta, cfg.eps_low, cfg.eps_high, cfg.aggregation)
        (loss / cfg.grad_accum).backward()
        total += loss.item() / cfg.grad_accum
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    optimizer.step()
    return {"loss": total, "grad_norm": grad_norm}


def check(size: str, preset: str, prompts: int | None, device, dtype, checkpointing: bool, warm: bool,
          compare: bool = False, engine: str | None = None) -> dict:
    from peft import LoraConfig, get_peft_model

    from gvu.config import RewardConfig
    from gvu.grpo import group_advantages
    from gvu.model_cli import resolve_train_config
    from gvu.reward import gvu_reward
    from gvu.rollout import rollout

    cfg = resolve_train_config(preset, None, [])
    if prompts:  # fewer prompts, same micro-batches: the update's rows per micro-batch stay the preset's
        rows_per_micro = cfg.batch_prompts * cfg.group_size // cfg.grad_accum
        cfg = replace(cfg, batch_prompts=prompts, grad_accum=max(1, prompts * cfg.group_size // rows_per_micro))
    if size == "tiny":  # a CPU-sized step with the same code path
        cfg = replace(cfg, batch_prompts=2, group_size=2, rollout_micro_batch=4, grad_accum=2)
    cfg.validate()
    m = cfg.batch_prompts * cfg.group_size
    print(f"\n== {size}: preset {preset}, B={cfg.batch_prompts} x G={cfg.group_size} = {m} images, rollout micro-batch "
          f"{cfg.rollout_micro_batch}, update micro-batch {m // cfg.grad_accum}, LoRA r={cfg.lora_r}, beta {cfg.beta}, "
          f"gradient checkpointing {checkpointing}", flush=True)
    backend, n_params = build(size, device, dtype)
    out = {"size": size, "preset": preset, "parameters": n_params, "images_per_step": m,
           "rollout_micro_batch": cfg.rollout_micro_batch, "update_micro_batch": m // cfg.grad_accum,
           "num_image_tokens": backend.num_image_tokens, "cfg_scale": backend.default_cfg_scale,
           "gradient_checkpointing": checkpointing, "phases": {}}
    if device.type == "cuda":
        out["weights_gib"] = round(torch.cuda.memory_allocated(device) / 2**30, 2)

    peft_model = get_peft_model(backend.model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                          target_modules=cfg.lora_target, lora_dropout=0.0))
    backend.model.requires_grad_(False)
    params = [p for n, p in backend.model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    out["trainable"] = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)

    metadata = [{"prompt": PROMPTS[i % len(PROMPTS)]} for i in range(cfg.batch_prompts)]
    sampling = replace(cfg.sampling, engine=engine) if engine else cfg.sampling  # the rollout engine (sampling.engine)
    out["engine"] = sampling.engine
    ph = out["phases"]
    if warm:  # CUDA kernels, cuBLAS handles and the allocator warm up on one micro-batch
        with Phase("warmup", device, min(m, cfg.rollout_micro_batch or m), ph):
            rollout(backend, metadata[: max(1, (cfg.rollout_micro_batch or m) // cfg.group_size)], cfg.group_size,
                    sampling, micro_batch=cfg.rollout_micro_batch)
    with Phase("rollout", device, m, ph), torch.no_grad():
        ro = rollout(backend, metadata, cfg.group_size, sampling, micro_batch=cfg.rollout_micro_batch)
    with Phase("reward", device, m, ph):
        rew = gvu_reward(backend, ro.pixels, [r["prompt"] for r in ro.row_metadata], RewardConfig())
    adv = group_advantages(rew.rewards, cfg.group_size, cfg.advantage_scale, cfg.advantage_eps)
    with Phase("update", device, m, ph):
        out["update"] = grpo_update(backend, ro, adv, cfg, params, optimizer, peft_model.disable_adapter, checkpointing)
    if compare and checkpointing:  # the same update without gradient checkpointing: what checkpointing saves
        try:
            with Phase("update_no_ckpt", device, m, ph):
                grpo_update(backend, ro, adv, cfg, params, optimizer, peft_model.disable_adapter, False)
        except torch.OutOfMemoryError:
            ph["update_no_ckpt"] = {"oom": True}
            print("  update_no_ckpt: out of memory", flush=True)
            torch.cuda.empty_cache()
    steps = {k: ph[k]["seconds"] for k in ("rollout", "reward", "update")}  # the step as configured
    out["step_seconds"] = round(sum(steps.values()), 2)
    out["step_images_per_s"] = round(m / sum(steps.values()), 3)
    if device.type == "cuda":
        out["max_memory_allocated_gib"] = round(max(ph[k]["peak_gib"] for k in ("rollout", "reward", "update")), 2)
        out["max_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    print(f"  step: {out['step_seconds']} s, {out['step_images_per_s']} images/s"
          + (f", max_memory_allocated {out['max_memory_allocated_gib']} GiB" if device.type == "cuda" else ""), flush=True)
    del backend, peft_model, optimizer, ro, rew
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def nccl_smoke(device) -> dict:
    """gvu.dist's CUDA paths in a one-rank nccl group: metric reduction, row gathering, FSDP2 on a small module."""
    import torch.distributed as tdist
    from torch import nn

    from gvu import dist as gd

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    tdist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    try:
        info = gd.DistInfo(0, 1, device.index or 0, device, "nccl")
        m = gd.reduce_metrics({"a": 1.5})
        rows = gd.gather_rows(torch.arange(4.0, device=device))
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)).to(device)
        ref = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)).to(device)
        ref.load_state_dict(net.state_dict())
        x = torch.randn(4, 8, device=device)
        ref(x).square().mean().backward()
        gd.fsdp2(net, info, (nn.Linear,))(x).square().mean().backward()
        err = max((p.grad.full_tensor() - q.grad).abs().max().item() for p, q in zip(net.parameters(), ref.parameters()))
        return {"reduce_ok": m["a"] == 1.5, "gather_ok": rows.tolist() == [0, 1, 2, 3], "fsdp2_grad_err": err}
    finally:
        tdist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny look-alike on CPU, float32 (for tests)")
    ap.add_argument("--sizes", default="1b", help="comma-separated: 1b, 7b")
    ap.add_argument("--prompts", type=str, default=None, help="B per size, e.g. 16,8 (default: the preset's)")
    ap.add_argument("--no-checkpointing", action="store_true", help="update without gradient checkpointing")
    ap.add_argument("--nccl", action="store_true", help="also run the one-rank nccl smoke check of gvu.dist")
    ap.add_argument("--compare", action="store_true", help="repeat the update without checkpointing (memory saved)")
    ap.add_argument("--budget-s", type=float, default=420, help="skip sizes that start after half this many seconds")
    ap.add_argument("--engine", default=None, help="rollout engine: eager, static or compiled (default: the preset's)")
    ap.add_argument("--out", default=None, help="write results.json here")
    args = ap.parse_args()

    torch.set_num_threads(1 if args.tiny else min(8, os.cpu_count() or 1))
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    sizes = ["tiny"] if args.tiny else args.sizes.split(",")
    prompts = [int(x) for x in args.prompts.split(",")] if args.prompts else [None] * len(sizes)
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "dtype": str(dtype)}
    import transformers
    env["transformers"] = transformers.__version__
    print(json.dumps(env), flush=True)
    results = {"env": env, "runs": []}
    t0 = time.perf_counter()
    for size, b in zip(sizes, prompts):
        if time.perf_counter() - t0 > args.budget_s / 2:
            print(f"skipping {size}: over half the time budget used", flush=True)
            continue
        preset = "janus-pro-7b" if size == "7b" else "janus-pro-1b"
        results["runs"].append(check(size, preset, b, device, dtype, not args.no_checkpointing,
                                     warm=device.type == "cuda", compare=args.compare, engine=args.engine))
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump(results, f, indent=2)
    if args.nccl and device.type == "cuda":
        try:
            results["nccl_smoke"] = nccl_smoke(device)
        except Exception as e:  # keep the measurements above even if this fails
            results["nccl_smoke"] = {"error": f"{type(e).__name__}: {e}"}
        print("nccl smoke:", results["nccl_smoke"], flush=True)
    print(f"total {time.perf_counter() - t0:.1f} s", flush=True)
    if args.out:
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
