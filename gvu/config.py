"""Configuration dataclasses: the single home of every default. Each field says what it is for.

Model-specific numbers (image tokens, default guidance scale, image size, pad ids, chat template) are not here:
they belong to the backend (gvu/models/janus.py: JanusBackendConfig).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from gvu.errors import UserError

REDUCTIONS = ("geometric_mean", "product", "min")
JUDGES = ("policy", "frozen", "ema")
TOKEN_WEIGHTS = ("uniform", "surprisal")
REWARD_KINDS = ("gvu", "oracle")
LOSS_LOGPROBS = ("conditional", "guided")
DTYPES = ("float32", "bfloat16", "auto")  # TrainConfig.dtype; auto is resolved when a run starts (gvu/master_weights.py)
ENGINES = ("eager", "static", "compiled")  # rollout decoding engines (gvu/models/decode_engines.py)


SEED_MAX = 2**32 - 1  # seeds are NumPy-compatible 32-bit values (torch takes 64, numpy.random.seed 32)
MAX_TRAIN_PROMPTS = 100_000  # the nano world's training pool is made up front (about 800 prompts a second on a busy 2-core CPU)


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message says which and how to fix it. The one config error of
    `gvu train` and `gvu pretrain` (their presets, --config files, --set items and validation): a UserError, so the
    CLI prints it and exits 2, and a ValueError for code that checks configs."""


def check_numbers(cfg, prefix: str = "", infinite_ok: tuple[str, ...] = ()) -> None:
    """Every float field of a config dataclass finite (NaN and inf pass most range checks unnoticed: NaN compares
    false both ways), except those in infinite_ok, whose own check (> 0) refuses NaN; every int field an int."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        name = prefix + f.name
        if isinstance(v, float) and f.name not in infinite_ok:
            if not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number (got {v})")
        elif "int" in str(f.type) and "float" not in str(f.type) and v is not None and (
                not isinstance(v, int) or isinstance(v, bool)):
            raise ConfigError(f"{name} must be an integer (got {v!r})")


def check_seed(name: str, seed) -> None:
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{name} must be in 0..{SEED_MAX} (2**32 - 1), got {seed}")


@dataclass(frozen=True)
class SamplingConfig:
    """How rollout samples image tokens."""

    cfg_scale: float | None = None  # classifier-free guidance u + s (c - u); None: the backend's default; must be > 1 for Janus
    guidance: bool = True  # False: sample from the conditional branch alone, as the official GvU code trains (no unconditional rows: half the rollout's compute); cfg_scale must then be unset
    temperature: float = 1.0  # softmax temperature on the guided logits
    top_k: int = 0  # keep the k most likely tokens; 0 disables
    top_p: float = 1.0  # nucleus sampling; 1.0 disables
    min_p: float = 0.0  # drop tokens whose probability is below min_p x the top probability (official GvU: 0.03)
    seed: int = 0  # rollout RNG seed; the same seed and inputs give the same tokens
    engine: str = "eager"  # how decoding steps run (gvu/models/decode_engines.py; Janus and X-Omni): eager (growing cache) | static (preallocated cache, fixed-shape step) | compiled (static under torch.compile; CUDA graphs on CUDA); in float32 all draw the same tokens, under bf16 they may differ at near-tied draws

    def validate(self) -> None:
        check_numbers(self, "sampling.")
        check_seed("sampling.seed", self.seed)
        if not self.guidance and self.cfg_scale is not None:  # first: with guidance off, any scale is the mistake
            raise ConfigError(f"cfg_scale is {self.cfg_scale} but guidance is off; unset one of them "
                              "(sampling.cfg_scale=null or sampling.guidance=true)")
        if self.cfg_scale is not None and self.cfg_scale <= 1:
            raise ConfigError(f"cfg_scale must be > 1 (got {self.cfg_scale}); for no guidance set guidance to false")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (got {self.temperature})")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (got {self.top_k}); 0 disables it")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (got {self.top_p}); 1 disables it")
        if not 0 <= self.min_p < 1:
            raise ConfigError(f"min_p must be in [0, 1) (got {self.min_p}); 0 disables it")
        if self.engine not in ENGINES:
            raise ConfigError(f"sampling engine must be one of {ENGINES} (got {self.engine!r})")


@dataclass(frozen=True)
class RewardConfig:
    """The reward: GvU's intrinsic understanding reward, or the nano world's exact evaluator (for comparisons)."""

    kind: str = "gvu"  # "gvu" (the paper's) or "oracle" (exact evaluator; nano world only)
    query: str = "Describe the image in detail."  # the paper's query to the understanding branch
    reduction: str = "geometric_mean"  # per-token log p -> reward: geometric_mean = exp(mean log p) (paper), product = exp(sum), min
    token_weights: str = "uniform"  # "uniform" (paper: every prompt token counts alike) or "surprisal" (see gvu.reward)
    judge: str = "policy"  # whose understanding scores: "policy" (live model, as the official code does), "frozen" (start weights), "ema"
    ema_decay: float = 0.99  # for judge="ema": judge <- decay * judge + (1 - decay) * policy once per training step (after its mu updates)

    def validate(self) -> None:
        check_numbers(self, "reward.")
        if self.kind not in REWARD_KINDS:
            raise ConfigError(f"reward kind must be one of {REWARD_KINDS} (got {self.kind!r})")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"reward reduction must be one of {REDUCTIONS} (got {self.reduction!r})")
        if self.token_weights not in TOKEN_WEIGHTS:
            raise ConfigError(f"reward token_weights must be one of {TOKEN_WEIGHTS} (got {self.token_weights!r})")
        if self.token_weights != "uniform" and self.reduction != "geometric_mean":
            raise ConfigError(f"reward token_weights={self.token_weights!r} weights the mean of log-probs, so it needs "
                              f"reduction=geometric_mean (got {self.reduction!r}); or set token_weights=uniform")
        if self.judge not in JUDGES:
            raise ConfigError(f"reward judge must be one of {JUDGES} (got {self.judge!r})")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (got {self.ema_decay})")
        if not self.query.strip():
            raise ConfigError("the reward query must not be empty")


@dataclass(frozen=True)
class TrainConfig:
    """A GvU-GRPO run. Presets (configs/*.json) are partial dicts of these fields; CLI overrides come last."""

    # model and data
    model: str = "models/nano-janus"  # a local Janus checkpoint directory (transformers format)
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bfloat16 (LoRA: bf16 base weights; full fine-tuning: fp32 master weights and AdamW state, bf16 compute; gvu/master_weights.py) | auto (bfloat16 where the device computes bf16 natively, else float32; the run's config.json records the choice)
    parallel: str = "ddp"  # under torchrun: ddp (replicated weights) | fsdp (FSDP2: weights, gradients and optimiser state sharded)
    dist_timeout_min: float = 120.0  # under torchrun: how long a collective waits (the ranks wait while rank 0 saves)
    suite: str = "geneval"  # nano world: prompt suite for training and evaluation
    train_split: str = "train"
    train_prompts: int = 2000  # size of the training prompt pool (nano world), or...
    prompts_file: str | None = None  # ...a GenEval-format jsonl of training prompts (real models)
    # GRPO
    steps: int = 200  # optimiser steps (one rollout batch each when mu = 1)
    batch_prompts: int = 8  # B prompts per step
    group_size: int = 8  # G images per prompt (official GvU: 2)
    mu: int = 1  # inner updates per rollout batch; 1 = on-policy (the paper's)
    advantage_scale: str = "group"  # group | batch | none
    advantage_eps: float = 1e-4
    eps_low: float = 0.2  # ratio clipping below 1
    eps_high: float = 0.2  # ratio clipping above 1
    beta: float = 0.0  # k3 KL coefficient to the reference policy (official GvU: 0.03)
    aggregation: str = "sequence_mean"  # sequence_mean | token_mean | constant (Dr.GRPO)
    loss_logprobs: str = "conditional"  # the policy the loss scores: conditional (the branch guidance is applied to) | guided (what sampling draws from)
    # optimisation
    lora_r: int = 0  # LoRA rank; 0 = full fine-tuning
    lora_alpha: int = 16
    lora_dropout: float = 0.0  # must stay 0: sampling and the loss must score one network
    # the language model only: the vision tower's attention layers carry the same names (q_proj, k_proj, v_proj)
    lora_target: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    lr: float = 2e-5  # small: guidance (s * cond - (s - 1) * uncond) amplifies every weight change that parts the branches
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: str = "constant"  # constant | cosine (after warmup)
    grad_accum: int = 1  # micro-batches per step (rows split evenly)
    max_grad_norm: float = 1.0  # gradient clipping (global norm); must be > 0 (float("inf") measures without clipping)
    gradient_checkpointing: bool = False  # recompute each language-model layer in the update's backward (memory; docs/gpu.md)
    rollout_micro_batch: int | None = None  # rows sampled, decoded and scored at once (memory bound); None = sized from the model and the free memory (gvu.rollout.default_micro_batch)
    # sampling and reward
    sampling: SamplingConfig = SamplingConfig()
    reward: RewardConfig = RewardConfig()
    # logging, evaluation, checkpoints
    seed: int = 0
    threads: int = 2
    evaluator_workers: int = 0  # processes for the nano world's exact evaluator (oracle reward, evaluations); 0 or 1 = in this process
    log_every: int = 1  # steps between metrics lines (metrics.jsonl, TensorBoard); the last step and alarms are always written
    eval_every: int = 50  # steps between evaluations (nano world: exact evaluator + intrinsic reward); 0 = off
    eval_prompts: int = 96  # eval-split prompts per periodic evaluation
    eval_images_per_prompt: int = 2
    eval_batch: int = 64  # images generated and scored at once in evaluations; under torchrun the ranks share the batches
    grid_every: int = 25  # steps between sample grids of the fixed prompts
    grid_prompts: int = 8
    checkpoint_every: int = 50  # steps between checkpoints; 0 = only the last step's
    guard_patience: int = 5  # steps of all-equal rewards or zero gradients before the alarm
    final_eval: bool = True  # before/after table on the eval and ood splits at the end (nano world)
    final_eval_prompts: int | None = None  # None = the whole split
    final_images_per_prompt: int = 4

    def validate(self) -> None:
        from gvu.grpo import AGGREGATIONS, SCALES

        self.sampling.validate()
        self.reward.validate()
        check_numbers(self, infinite_ok=("max_grad_norm",))
        check_seed("seed", self.seed)
        checks = [
            (self.lora_alpha > 0, f"lora_alpha must be > 0 (got {self.lora_alpha}): LoRA scales its update by "
                                  "lora_alpha / lora_r, so 0 would train adapters that change nothing"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0 (got {self.warmup_steps}); 0 starts at the full lr"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0 (got {self.weight_decay})"),
            (1 <= self.train_prompts <= MAX_TRAIN_PROMPTS,
             f"train_prompts must be in 1..{MAX_TRAIN_PROMPTS:,} (got {self.train_prompts:,}): the pool is made "
             "before training starts; a larger pool would only take longer to make (steps draw B prompts each)"),
            (self.steps <= 10**9 and self.batch_prompts <= 10**6 and self.group_size <= 10**6,
             "steps (at most 1e9), batch_prompts and group_size (at most 1e6) are out of range"),
            (self.group_size >= 2, f"group_size must be >= 2 (got {self.group_size}): GRPO compares images of one prompt"),
            (self.batch_prompts >= 1, f"batch_prompts must be >= 1 (got {self.batch_prompts})"),
            (self.steps >= 1, f"steps must be >= 1 (got {self.steps})"),
            (self.mu >= 1, f"mu must be >= 1 (got {self.mu})"),
            (self.evaluator_workers >= 0, f"evaluator_workers must be >= 0 (got {self.evaluator_workers}); 0 evaluates "
                                          "in the training process"),
            (self.advantage_scale in SCALES, f"advantage_scale must be one of {SCALES} (got {self.advantage_scale!r})"),
            (self.loss_logprobs in LOSS_LOGPROBS, f"loss_logprobs must be one of {LOSS_LOGPROBS} (got {self.loss_logprobs!r})"),
            (self.aggregation in AGGREGATIONS, f"aggregation must be one of {AGGREGATIONS} (got {self.aggregation!r})"),
            (self.beta >= 0, f"beta must be >= 0 (got {self.beta})"),
            (self.lr > 0, f"lr must be > 0 (got {self.lr})"),
            (self.lora_r >= 0, f"lora_r must be >= 0 (got {self.lora_r}); 0 means full fine-tuning"),
            (self.lora_dropout == 0, f"lora_dropout must be 0 (got {self.lora_dropout}): sampling and the loss must "
                                     "score one network, and dropout would act in the update's pass only"),
            (self.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (got {self.checkpoint_every}); 0 saves only "
                                         "the last step"),
            (self.schedule in ("constant", "cosine"), f"schedule must be constant or cosine (got {self.schedule!r})"),
            (self.dtype in DTYPES, f"dtype must be one of {DTYPES} (got {self.dtype!r})"),
            (self.parallel in ("ddp", "fsdp"), f"parallel must be ddp or fsdp (got {self.parallel!r})"),
            (self.dist_timeout_min > 0, f"dist_timeout_min must be > 0 minutes (got {self.dist_timeout_min})"),
            (self.grad_accum >= 1 and (self.batch_prompts * self.group_size) % self.grad_accum == 0,
             f"grad_accum ({self.grad_accum}) must divide the rows per step B*G = {self.batch_prompts * self.group_size}"),
            (0 <= self.eps_low < 1 and self.eps_high >= 0, "eps_low must be in [0, 1) and eps_high >= 0"),
            (self.advantage_eps > 0, f"advantage_eps must be > 0 (got {self.advantage_eps}): it keeps a group whose "
                                     "rewards are all equal at advantage 0 instead of 0/0"),
            (self.max_grad_norm > 0, f"max_grad_norm must be > 0 (got {self.max_grad_norm}): clipping to 0 zeroes every "
                                     "gradient and a negative norm flips them; for no clipping use a large value or inf"),
            (self.rollout_micro_batch is None or self.rollout_micro_batch >= 1,
             f"rollout_micro_batch must be >= 1 or null (sized from the model and the free memory); got {self.rollout_micro_batch}"),
            (self.threads >= 1, f"threads must be >= 1 (got {self.threads})"),
            (self.log_every >= 1, f"log_every must be >= 1 (got {self.log_every})"),
            (self.eval_every >= 0 and self.grid_every >= 0,
             f"eval_every and grid_every must be >= 0 (got {self.eval_every}, {self.grid_every}); 0 turns them off"),
            (self.eval_prompts >= 0 and self.grid_prompts >= 0 and self.eval_images_per_prompt >= 1,
             f"eval_prompts and grid_prompts must be >= 0 and eval_images_per_prompt >= 1 (got {self.eval_prompts}, "
             f"{self.grid_prompts}, {self.eval_images_per_prompt})"),
            (self.eval_batch >= 1, f"eval_batch must be >= 1 image (got {self.eval_batch})"),
            ((self.final_eval_prompts is None or self.final_eval_prompts >= 1) and self.final_images_per_prompt >= 1,
             f"final_eval_prompts must be >= 1 or null for the whole split, and final_images_per_prompt >= 1 (got "
             f"{self.final_eval_prompts}, {self.final_images_per_prompt})"),
            (self.guard_patience >= 1, f"guard_patience must be >= 1 (got {self.guard_patience})"),
            (self.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", self.device) is not None,
             f"device must be cpu, cuda or cuda:N (got {self.device!r})"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        if self.lora_r > 0:
            try:
                re.compile(self.lora_target)
            except re.error as e:
                raise ConfigError(f"lora_target {self.lora_target!r} is not a regular expression ({e})") from None
