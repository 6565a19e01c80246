"""`gvu train`: GvU self-training with GRPO. Read top to bottom: rollout -> reward -> advantages -> update -> log.

Which log-probs the loss uses (loss_logprobs): by default the conditional branch's log p(image tokens | prompt) at
the sampling temperature, recomputed by teacher forcing (JanusBackend.image_token_logprobs). Sampling used
classifier-free guidance, so the policy being optimised is the conditional branch, and guidance is applied on top
of it at sampling time. loss_logprobs=guided scores the guided distribution that sampling draws from instead (one
pass over conditional and unconditional rows, so twice the rows), which makes mu = 1 on-policy up to the top-k /
top-p / min-p filters (exactly so with none, as in the nano preset). With sampling.guidance False there is no
guidance: sampling draws from the conditional branch itself, which both settings then score.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import random
import time
from dataclasses import replace

import numpy as np
import torch

from gvu import checkpoint, dist, run_lock
from gvu.config import ConfigError, TrainConfig
from gvu.errors import SetupError
from gvu.evaluate import evaluate, sample_over_ranks, world_judgeable
from gvu.grpo import grpo_loss, zero_variance_groups
from gvu.master_weights import compute_context, resolve_dtype, weights_dtype
from gvu.models.adapter import decode_seeds
from gvu.reward import Judge, RewardOutput, compute_reward, gvu_reward
from gvu.rollout import default_micro_batch, rollout
from gvu.run_io import MetricsLog, save_grid, save_json, truncate_jsonl
from gvu.runs import check_run_dir, make_run_dir
from gvu.schedules import learning_rate


class TrainingDiverged(RuntimeError):
    """Loss or gradients became NaN/inf; the run stops and its last good checkpoint stays."""


# ----------------------------------------------------------------------------------------------- set-up

def load_prompts(cfg: TrainConfig) -> list[dict]:
    if cfg.prompts_file:
        from gvu.world.geneval_io import read_prompts
        return read_prompts(cfg.prompts_file, nano=False)
    from gvu.world.prompts import make_suite
    return make_suite(cfg.suite, cfg.train_split, cfg.train_prompts, seed=cfg.seed, progress=cfg.train_prompts > 5000)


def setup_trainable(backend, cfg: TrainConfig):
    """LoRA on the language model (peft, regex-targeted) or full fine-tuning of the generation path.
    Returns (params, adapter_off): adapter_off disables LoRA (the reference / frozen judge), None otherwise."""
    model = backend.model
    model.requires_grad_(False)
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        # get_peft_model injects LoRA layers into `model` in place; the backend keeps using `model` itself
        peft_model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                      target_modules=cfg.lora_target, init_lora_weights=True))
        backend.peft_model = peft_model
        adapter_off = peft_model.disable_adapter
    elif hasattr(backend, "full_finetune_modules"):  # a backend that names its own (X-Omni: the language model)
        for module in backend.full_finetune_modules():
            module.requires_grad_(True)
        adapter_off = None
    else:
        # the generation path: LLM, text embeddings (prompt), image-token embeddings/aligner and head.
        # The VQ tokenizer and the understanding encoder stay frozen (they get no gradient from this loss).
        for module in (model.model.language_model, model.model.generation_embeddings,
                       model.model.generation_aligner, model.model.generation_head):
            module.requires_grad_(True)
        adapter_off = None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"no trainable parameters: lora_target {cfg.lora_target!r} matched no module")
    return params, adapter_off


def torch_dtype(cfg: TrainConfig) -> torch.dtype:
    """The weights' dtype: bf16 for dtype=bfloat16 with LoRA, else fp32 (fp32 masters for bf16 full fine-tuning)."""
    return weights_dtype(cfg)


def precision_warning(cfg: TrainConfig) -> str:
    """A warning for dtype=bfloat16 on a CPU that emulates bf16 (no AVX512-BF16 or AMX), where its matrix products run
    many times slower than in float32 (benchmarks/precision_speed.py); '' otherwise."""
    from gvu.precision import bf16_is_native

    if cfg.dtype != "bfloat16" or not cfg.device.startswith("cpu") or bf16_is_native("cpu"):
        return ""
    return ("dtype=bfloat16 on a CPU without native bf16 (no AVX512-BF16 or AMX): torch emulates it, and a step runs "
            "many times slower than in float32 (benchmarks/precision_speed.py); a new run with --set dtype=float32 is "
            "faster here (a resumed run keeps the dtype it began with)")


def lr_at(step: int, cfg: TrainConfig) -> float:
    return learning_rate(step, cfg.lr, cfg.steps, cfg.warmup_steps, cfg.schedule)


def prompts_for_step(pool: list[dict], step: int, cfg: TrainConfig) -> list[dict]:
    """B prompts for `step`, a pure function of (seed, step) so that resuming draws the same ones."""
    return random.Random(cfg.seed * 1_000_003 + step).sample(pool, cfg.batch_prompts)  # train() checked the pool's size


# ----------------------------------------------------------------------------------------------- one step

def block_types(model) -> tuple[type, ...]:
    """FSDP2 units: the language model's decoder layers and the vision encoder's layers."""
    found = {type(getattr(model.model, "language_model", model.model).layers[0])}  # Janus's LM, or X-Omni's stack
    vision = getattr(model.model, "vision_model", None)
    layers = getattr(getattr(vision, "encoder", None), "layers", None)
    if layers is not None and len(layers):
        found.add(type(layers[0]))
    return tuple(found)


def loss_guidance(backend, cfg: TrainConfig) -> float | None:
    """The guidance scale of the distribution the loss scores: None for the conditional branch."""
    if cfg.loss_logprobs == "conditional" or not cfg.sampling.guidance:
        return None  # without guidance the conditional branch is the distribution sampling draws from
    return cfg.sampling.cfg_scale if cfg.sampling.cfg_scale is not None else backend.default_cfg_scale


def reference_logprobs(backend, ref_model, adapter_off, prompts, tokens, temperature, guidance=None):
    with torch.no_grad():
        if adapter_off is not None:
            with adapter_off():
                return backend.image_token_logprobs(prompts, tokens, temperature, guidance)
        live = backend.model
        backend.model = ref_model
        try:
            return backend.image_token_logprobs(prompts, tokens, temperature, guidance)
        finally:
            backend.model = live


def micro_batches(rows: int, grad_accum: int) -> list[slice]:
    """The row slices of update()'s micro-batches (grad_accum of them; the config checks that it divides the rows)."""
    size = rows // grad_accum
    return [slice(s, s + size) for s in range(0, rows, size)]


def update(policy, ro, adv, cfg, params, optimizer, refs: list | None, recompute=contextlib.nullcontext,
           compute=contextlib.nullcontext) -> dict:
    """mu inner passes of GRPO over this rank's rows (grad_accum micro-batches each); returns metrics.
    policy: backend.image_token_logprobs (with the loss's guidance bound, see loss_guidance) wrapped as a module
    (DDP or FSDP under torchrun).
    refs: the KL reference's log-probs per micro-batch (reference_batches), or None when beta is 0.
    recompute: the context each micro-batch's forward and backward run in (backend.checkpointed for
    cfg.gradient_checkpointing).
    compute: the context of the forward alone (gvu.master_weights.compute_context: bf16 autocast over fp32 masters)."""
    rows = ro.row_prompts
    temp = cfg.sampling.temperature
    metrics: dict = {}
    for _ in range(cfg.mu):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i, sl in enumerate(micro_batches(len(rows), cfg.grad_accum)):
            with recompute():
                with compute():
                    logp = policy(rows[sl], ro.tokens[sl], temp)
                old = ro.old_logprobs[sl] if ro.old_logprobs is not None else logp.detach()  # mu = 1: ratio 1
                ref = refs[i] if refs is not None else None
                loss, mm = grpo_loss(logp, old, adv[sl].to(logp.device), torch.ones_like(logp, dtype=torch.bool), ref,
                                     cfg.beta, cfg.eps_low, cfg.eps_high, cfg.aggregation)
                (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
            for k, v in mm.items():
                metrics[k] = metrics.get(k, 0.0) + v / cfg.grad_accum / cfg.mu
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP
        if not math.isfinite(total) or not math.isfinite(grad_norm):
            raise TrainingDiverged(f"loss {total} / gradient norm {grad_norm} is not finite")
        optimizer.step()
    metrics.update({"loss/total": total, "policy/grad_norm": grad_norm})
    return metrics


class TimedReward:
    """rollout's scorer in training: compute_reward on one micro-batch, its time summed in .seconds (perf/reward_s,
    taken out of perf/rollout_s)."""

    def __init__(self, cfg: TrainConfig, judge: Judge | None):
        self.cfg, self.judge, self.seconds = cfg, judge, 0.0

    def __call__(self, pixels: torch.Tensor, row_metadata: list[dict]) -> RewardOutput:
        t = time.time()
        out = compute_reward(self.cfg.reward, self.judge, pixels, row_metadata,
                             evaluator_workers=self.cfg.evaluator_workers)
        self.seconds += time.time() - t
        return out


def reference_batches(backend, ref_model, adapter_off, ro, cfg, guidance: float | None) -> list | None:
    """The KL reference's log-probs for each of update()'s micro-batches, computed once per step (the reference
    does not change while the policy updates); None when beta is 0."""
    if cfg.beta <= 0:
        return None
    return [reference_logprobs(backend, ref_model, adapter_off, ro.row_prompts[sl], ro.tokens[sl], cfg.sampling.temperature,
                               guidance)
            for sl in micro_batches(len(ro.row_prompts), cfg.grad_accum)]


# ----------------------------------------------------------------------------------------------- the loop

@contextlib.contextmanager
def setup_errors():
    """Re-raise a ValueError (a bad prompt, model folder or --out) as a SetupError: a UserError that is still a
    ValueError, so callers that catch ValueError keep working. A ConfigError (a bad setting) passes as it is."""
    try:
        yield
    except (SetupError, ConfigError):
        raise
    except ValueError as e:
        raise SetupError(str(e)) from e


def train(cfg: TrainConfig, run_dir: str, resume: bool = False, overwrite: bool = False, progress: bool = True,
          resume_from: int | None = None, trust_pickle: bool = False) -> dict:
    """Run (or resume) GvU-GRPO. Under torchrun every rank runs this and takes its share of the evaluations;
    rank 0 logs, writes the evaluations and checkpoints, and holds the run folder's lock (gvu.run_lock) from before
    it changes anything there until the run ends.
    resume_from: the checkpoint step to resume from (default: the one checkpoints/latest names).
    trust_pickle: allow an old-format checkpoint (a pickle) to be unpickled on resume."""
    lock = run_lock.RunLock(run_dir)
    try:
        return _train(cfg, run_dir, resume, overwrite, progress, resume_from, trust_pickle, lock)
    finally:
        lock.release()


def _train(cfg: TrainConfig, run_dir: str, resume: bool, overwrite: bool, progress: bool, resume_from: int | None,
           trust_pickle: bool, lock: run_lock.RunLock) -> dict:
    from gvu.models.registry import check_model, load_backend

    with setup_errors():  # checks, loads, then makes the run folder; a ValueError from the loop below is a bug
        cfg.validate()
        asked_dtype = cfg.dtype
        cfg = resolve_dtype(cfg, saved_dtype(run_dir) if resume else None)  # dtype=auto made concrete, once
        world = int(os.environ.get("WORLD_SIZE", "1"))  # checked before joining the process group
        dist.check_divisible(cfg.batch_prompts * cfg.group_size, world)
        rows_per_rank = cfg.batch_prompts * cfg.group_size // world
        if rows_per_rank % cfg.grad_accum:
            raise ValueError(f"grad_accum ({cfg.grad_accum}) must divide the rows each rank holds ({rows_per_rank})")
        pool = load_prompts(cfg)  # the prompts' own checks come before the model loads and before the run folder exists
        if len(pool) < cfg.batch_prompts:
            raise ValueError(f"{len(pool)} training prompts, fewer than batch_prompts={cfg.batch_prompts}: every step "
                             f"draws B distinct prompts. Give more prompts or --set batch_prompts={len(pool)}")
        nano = world_judgeable(pool)
        if cfg.reward.kind == "oracle" and not nano:
            raise ValueError("the oracle reward needs nano-world prompts (it is the nano world's exact evaluator)")
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={cfg.device!r}, but this torch sees no GPU (torch {torch.__version__}); "
                             "--set device=cpu, or install a CUDA build of torch")
        # every rank checks the run folder (read-only); rank 0 changes it only once the model, its reference copies
        # and the optimiser are set up, so a start that fails there leaves an existing run (even under --overwrite)
        # as it was
        if os.environ.get("RANK", "0") == "0":
            run_lock.check_free(run_dir)  # another process's run here: say so (with its pid) before anything else
        folder_plan = check_run_dir(run_dir, cfg, resume, overwrite)
        if os.environ.get("RANK", "0") == "0" and os.path.isdir(run_dir):
            lock.acquire()  # before a resume reads its checkpoint, and long before --overwrite deletes anything
            if resume:
                checkpoint.clean_stale(run_dir)  # what a save cut short by a kill left behind
        # the checkpoint to resume from, checked (manifest, format) before the model loads
        ckpt = checkpoint.resume_point(run_dir, resume_from, trust_pickle) if resume else None
        check_model(cfg.model)  # config, tokenizer (and X-Omni's FLUX folder) only: no weights are read yet
        info = dist.init(cfg.device, timeout_min=cfg.dist_timeout_min)
        compute = compute_context(cfg)  # bf16 autocast over fp32 masters (gvu.master_weights), else a no-op
        torch.set_num_threads(cfg.threads)
        if asked_dtype != cfg.dtype:
            why = "the resumed run's" if resume else (
                "bf16 is native on this device" if cfg.dtype == "bfloat16" else "this device has no native bf16")
            dist.print0(f"[gvu] dtype auto: {cfg.dtype} ({why})")
        warning = precision_warning(cfg)
        if warning:
            dist.print0(f"[gvu] warning: {warning}")
        torch.manual_seed(cfg.seed)  # the same on every rank: identical initial weights (and LoRA init)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)  # NumPy's global RNG too, so that a checkpoint's RNG states are the run's own
        backend = load_backend(cfg.model, device=str(info.device), dtype=torch_dtype(cfg))
        backend.check_prompts([m["prompt"] for m in pool])  # bad prompts fail before any work
        eval_md, grid_md = eval_sets(cfg, nano)

        params, adapter_off = setup_trainable(backend, cfg)
        # copies of the starting weights are made before FSDP replaces the parameters by shards
        ref_model = None
        if cfg.beta > 0 and adapter_off is None:
            ref_model = copy.deepcopy(backend.model).eval().requires_grad_(False)
        judge = Judge(backend, cfg.reward, adapter_off) if cfg.reward.kind == "gvu" else None

        start, low_signal = 0, 0  # low_signal: steps in a row without a learning signal (the alarm's count)
        if ckpt:  # weights now (unsharded), the optimiser once it exists
            start, extra, tensors = checkpoint.load(ckpt, backend.model, None, trust_pickle)
            low_signal = extra.get("low_signal", 0)  # 0 for a checkpoint that holds no count
            if judge is not None and judge.mode == "ema":
                judge.load_ema_tensors(tensors)

        # log-probs go through the wrapped module's forward, where DDP's and FSDP's gradient hooks fire (gvu/dist.py)
        guidance = loss_guidance(backend, cfg)
        policy = dist.PolicyForward(backend.model, functools.partial(backend.image_token_logprobs, guidance=guidance))
        if cfg.parallel == "fsdp":
            policy = dist.fsdp2(policy, info, block_types(backend.model))
            params = [p for p in policy.parameters() if p.requires_grad]
        else:
            policy = dist.ddp(policy, info)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if ckpt:
            dist.load_optimizer_state(policy, optimizer, checkpoint.read_optimizer_state(ckpt, trust_pickle))
        if info.is_main:  # set-up is done: now the run folder is made (or an old run replaced under --overwrite)
            lock.acquire()  # a no-op when held; makes a new run's folder
            make_run_dir(run_dir, cfg, folder_plan, lock)
    dist.barrier()
    log = MetricsLog(run_dir) if info.is_main else None
    if log and resume:  # lines after the step resumed from are written again (all of them without a checkpoint)
        log.truncate(start if ckpt else -1)
        truncate_jsonl(os.path.join(run_dir, "diagnostics.jsonl"), start if ckpt else -1)
    # evaluations: every rank generates and scores its share (gvu.evaluate), rank 0 writes them
    if not ckpt and cfg.final_eval and nano:
        with dist.full_params(policy), compute():
            before = final_tables(backend, cfg, info)
            if info.is_main:
                save_json(run_dir, "before.json", before)
            dist.barrier()

    if start == 0 and cfg.eval_every:
        with dist.full_params(policy), compute():
            periodic(backend, cfg, 0, eval_md, grid_md, run_dir, log, info)
            dist.barrier()
    micro = cfg.rollout_micro_batch
    if micro is None:  # sized once, from the pool's longest prompt and the memory free with the weights in place
        with dist.full_params(policy):
            rows = len(range(info.rank, cfg.batch_prompts * cfg.group_size, info.world))  # this rank's rows a step
            micro = default_micro_batch(backend, cfg.sampling, [m["prompt"] for m in pool], rows)
        dist.print0(f"[gvu] rollout micro-batch: {micro} of {rows} rows, sized from the model and the free memory "
                    "(set rollout_micro_batch to override)")
    bar = make_bar(cfg, start, progress and info.is_main)
    for step in range(start, cfg.steps):
        t0 = time.time()
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg)
        md = prompts_for_step(pool, step, cfg)
        # 1. rollout: G images per prompt (this rank's rows), with guidance, seeded by (seed, step, global row)
        # 2. reward: the model's own understanding branch scores each micro-batch's images as they are decoded (or
        #    the oracle, for comparisons), so no more than a micro-batch of pixels is ever held
        # (under FSDP the full weights are gathered for rollout, reward and the KL reference, then sharded again)
        scorer = TimedReward(cfg, judge)
        with dist.full_params(policy), compute():
            ro = rollout(backend, md, cfg.group_size, replace(cfg.sampling, seed=cfg.seed * 1_000_003 + step * 7919),
                         with_old_logprobs=cfg.mu > 1, old_logprobs_guidance=guidance,
                         micro_batch=micro, rank=info.rank, world=info.world, score=scorer)
            rew = ro.rewards
            rollout_s = time.time() - t0 - scorer.seconds
            refs = reference_batches(backend, ref_model, adapter_off, ro, cfg, guidance)
        # 3. advantages, group-relative, over whole groups (rewards gathered across ranks first)
        d = dist.global_advantages(rew.rewards, cfg.group_size, cfg.advantage_scale, cfg.advantage_eps)
        zero_var = zero_variance_groups(d.rewards, cfg.group_size)
        # 4. update
        metrics = update(policy, ro, d.advantages, cfg, params, optimizer, refs,
                         backend.checkpointed if cfg.gradient_checkpointing else contextlib.nullcontext, compute)
        if judge is not None:
            with dist.full_params(policy):
                judge.update()
        # 5. log, guard, evaluate, checkpoint
        low_signal = low_signal + 1 if (zero_var == len(md) or metrics["policy/grad_norm"] == 0.0) else 0
        metrics.update({"step": step + 1, "reward/mean": float(d.rewards.mean()), "reward/std": float(d.rewards.std()),
                        "reward/zero_variance_groups": zero_var, "policy/lr": lr_at(step, cfg),
                        "perf/step_s": time.time() - t0, "perf/rollout_s": rollout_s, "perf/reward_s": scorer.seconds,
                        "perf/images_per_s": len(ro.tokens) * info.world / rollout_s})
        if rew.correct is not None:
            metrics["reward/oracle_correct"] = float(rew.correct.float().mean())
        metrics = dist.reduce_metrics(metrics)
        if low_signal >= cfg.guard_patience:
            metrics["alarm"] = (f"{low_signal} steps with every group's rewards equal or a zero gradient: "
                                "no learning signal (check the reward, the sampling temperature, or the group size)")
            dist.print0(f"\n[gvu] warning at step {step + 1}: {metrics['alarm']}")
        s = step + 1
        eval_now = bool(cfg.eval_every) and (s % cfg.eval_every == 0 or s == cfg.steps)
        evaluate_now = eval_now or (cfg.grid_every and s % cfg.grid_every == 0) or s == cfg.steps
        save_now = (cfg.checkpoint_every and s % cfg.checkpoint_every == 0) or s == cfg.steps
        optim_state = dist.full_optimizer_state(policy, optimizer) if save_now else None  # collective under FSDP
        with dist.full_params(policy) if (evaluate_now or save_now) else contextlib.nullcontext():
            if info.is_main and (s % cfg.log_every == 0 or s == cfg.steps or "alarm" in metrics):
                log.write(metrics)
            if evaluate_now:
                with compute():
                    periodic(backend, cfg, s, eval_md if eval_now else None, grid_md, run_dir, log, info)
            if info.is_main:
                if save_now:
                    tensors = judge.ema_tensors() if judge else None
                    checkpoint.save(run_dir, s, backend.model, optimizer, extra={"low_signal": low_signal},
                                    extra_tensors=tensors, optimizer_state=optim_state)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/mean']:.4f}", eval=log.last_eval, step_s=f"{metrics['perf/step_s']:.1f}")
            dist.barrier()
    bar.close()
    summary = {"run_dir": run_dir, "steps": cfg.steps}
    with dist.full_params(policy), compute():
        if cfg.final_eval and nano:
            summary.update(finish(backend, cfg, run_dir, info))
        dist.barrier()
    return summary


def finish(backend, cfg: TrainConfig, run_dir: str, info=None) -> dict:
    """The after-training tables (every rank its share), the before/after summary and the curves (rank 0 writes
    them; other ranks return {})."""
    from gvu.run_io import before_after_table, plot_curves

    after = final_tables(backend, cfg, info)
    if info is not None and not info.is_main:
        return {}
    save_json(run_dir, "after.json", after)
    with open(os.path.join(run_dir, "before.json")) as f:
        before = json.load(f)
    table = before_after_table(before, after)
    with open(os.path.join(run_dir, "summary.md"), "w") as f:
        f.write(table + "\n")
    plot_curves(run_dir)
    return {"table": table}


# ----------------------------------------------------------------------------------------------- helpers

def eval_sets(cfg: TrainConfig, nano: bool) -> tuple[list[dict], list[dict]]:
    if not nano:
        pool = load_prompts(cfg)
        return pool[: cfg.eval_prompts], pool[: cfg.grid_prompts]
    from gvu.world.prompts import make_suite
    full = make_suite(cfg.suite, "eval", seed=0)
    return full[: cfg.eval_prompts], full[: cfg.grid_prompts]


def periodic(backend, cfg, step, eval_md, grid_md, run_dir, log, info=None) -> None:
    """Evaluation (exact + intrinsic), the sample grid of the fixed prompts, and per-token diagnostics. Under
    torch.distributed every rank calls it (info: its DistInfo), evaluates its share of the evaluation and samples its
    share of the grid; rank 0 writes the results, decodes the grid and scores its diagnostics."""
    fixed = replace(cfg.sampling, seed=424242)
    res = evaluate(backend, eval_md, cfg.eval_images_per_prompt, fixed, cfg.reward,
                   batch=cfg.eval_batch, evaluator_workers=cfg.evaluator_workers, **shard(info)) if eval_md else None
    per = 4  # grid images per prompt
    grid = [m["prompt"] for m in grid_md for _ in range(per)] if grid_md and cfg.grid_every else []
    grid_tokens = sample_over_ranks(backend, grid, fixed, **shard(info)) if grid else None
    if info is not None and not info.is_main:
        return
    if res is not None:
        log.write({"step": step, **{f"eval/{k}": v for k, v in res.items() if k in ("overall", "reward")},
                   **{f"eval/{t}": v for t, v in res.get("per_tag", {}).items()}})
    if grid_tokens is not None:
        with torch.no_grad():
            px = backend.decode_images(grid_tokens, grid, decode_seeds(fixed.seed, torch.arange(len(grid))))
            diag = gvu_reward(backend, px[::per], [m["prompt"] for m in grid_md], replace(cfg.reward, kind="gvu"))
        save_grid(os.path.join(run_dir, "grids", f"step_{step:06d}.png"), px, [m["prompt"] for m in grid_md], per)
        tl = diag.token_logprobs
        with open(os.path.join(run_dir, "diagnostics.jsonl"), "a") as f:
            for i, m in enumerate(grid_md):
                words = tl.tokens_as_text(backend.tokenizer, i)
                lps = tl.logprobs[i][tl.mask[i]].tolist()
                f.write(json.dumps({"step": step, "prompt": m["prompt"], "reward": float(diag.rewards[i]),
                                    "tokens": [[w, round(lp, 3)] for w, lp in zip(words, lps)]}) + "\n")


def shard(info) -> dict:
    """evaluate()'s rank and world size for this process (one process without info)."""
    return {"rank": info.rank, "world": info.world} if info is not None else {}


def final_tables(backend, cfg: TrainConfig, info=None) -> dict:
    """Eval and ood splits: per-tag exact accuracy and the mean intrinsic reward (the before/after table). Under
    torch.distributed every rank calls it with its DistInfo, evaluates its share and gets the whole table."""
    from gvu.world.prompts import make_suite

    fixed = replace(cfg.sampling, seed=777)
    out = {}
    for split in ("eval", "ood"):
        md = make_suite(cfg.suite, split, seed=0)[: cfg.final_eval_prompts]
        out[split] = evaluate(backend, md, cfg.final_images_per_prompt, fixed, cfg.reward, batch=cfg.eval_batch,
                              progress=info is None or info.is_main, evaluator_workers=cfg.evaluator_workers,
                              **shard(info))
    return out


def make_bar(cfg, start, progress):
    from tqdm import tqdm
    return tqdm(total=cfg.steps, initial=start, desc="gvu train", unit="step", disable=not progress)


def read_run_config(run_dir: str) -> TrainConfig:
    """The TrainConfig a run was made with (its config.json; fields added since it began get their defaults)."""
    from gvu.config import RewardConfig, SamplingConfig
    from gvu.runs import with_defaults

    with open(os.path.join(run_dir, "config.json")) as f:
        d = with_defaults(json.load(f))
    d["sampling"], d["reward"] = SamplingConfig(**d["sampling"]), RewardConfig(**d["reward"])
    return TrainConfig(**d)


def saved_dtype(run_dir: str) -> str | None:
    """The dtype in a run folder's config.json, or None where there is none to read (check_run_dir then says why)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return json.load(f).get("dtype")
    except (OSError, ValueError, AttributeError):
        return None


def load_trained(run_dir: str, step: int | None = None, device: str | None = None, dtype: str | None = None):
    """The policy of a run (its latest checkpoint, or `step`), as its backend, ready for evaluation.
    device, dtype: where and in which precision to load it (default: the run's own). A bf16 full fine-tuning run
    trained fp32 master weights under bf16 autocast; its policy is handed back in bf16 weights, so that what
    generate and export use (and record) is the dtype asked for."""
    from gvu.master_weights import fp32_masters
    from gvu.models.registry import load_backend

    cfg = read_run_config(run_dir)
    cfg = replace(cfg, device=device or cfg.device, dtype=dtype or cfg.dtype)
    backend = load_backend(cfg.model, device=cfg.device, dtype=torch_dtype(cfg))  # as the run trained
    setup_trainable(backend, cfg)
    ckpt = checkpoint.resume_point(run_dir, step or None)  # manifest checked; never an old-format pickle
    if ckpt is None:
        raise ValueError(f"{run_dir} has no checkpoint yet")
    checkpoint.load_weights(ckpt, backend.model)
    if fp32_masters(cfg):
        backend.model.to(torch.bfloat16)
    backend.model.eval()
    return backend
