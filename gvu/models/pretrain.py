"""`gvu pretrain`: build and train nano-Janus from scratch on the nano world. Resumable; logs to <out>/log.jsonl.

  stage 0  tokenizer (BPE on the world's texts), processor and JanusConfig -> <out>/tokenizer, <out>/config.json
  stage 1  VQ tokenizer (gvu.models.vq_train) on world images                 -> <out>/stage1.pt
  stage 2  language model, jointly on understanding (image -> caption, image + question -> answer) and
           generation (prompt -> image tokens, prompt dropout for guidance)   -> <out>/stage2.pt
  final    the whole model directory (safetensors + tokenizer + processor)    -> <out>/model
Each stage checkpoints every `save_every` steps (atomically); rerunning the same command continues where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from gvu.models import nano
from gvu.models.vq_train import CodebookEMA, normalise_codebook, restart_dead_codes, vq_loss
from gvu.world.prompts import make_prompt, split_of, HELD_OUT_PAIRS
from gvu.world.sampler import sample_scene
from gvu.world.scene import render
from gvu.world.vocab import SUITES


@dataclass(frozen=True)
class PretrainConfig:
    """A pretraining recipe. Presets: PRESETS below."""

    spec: str = "nano"  # model sizes, a key of gvu.models.nano.SPECS
    device: str = "cpu"  # "cuda" trains on a GPU (data are still made on the CPU)
    seed: int = 0
    threads: int = 2  # torch CPU threads
    bf16: bool = True  # bf16 autocast (CPU: 1.3-3.6x faster than fp32, JANUS-NOTES)
    save_every: int = 200  # steps between checkpoints
    # stage 1: VQ
    vq_steps: int = 1200
    vq_batch: int = 32
    vq_lr: float = 1e-3
    vq_restart_every: int = 50  # restart codes unused over this many steps
    # stage 2: language model
    lm_steps: int = 2600
    gen_batch: int = 24  # prompt -> image-token sequences per step
    und_batch: int = 32  # image -> text sequences per step (understanding gets more data: GvU needs a strong teacher)
    lm_lr: float = 1e-3
    lm_warmup: int = 200
    prompt_dropout: float = 0.1  # fraction of generation prompts replaced by the unconditional layout (for CFG)


PRESETS = {
    "nano": PretrainConfig(),
    "smoke": PretrainConfig(spec="smoke", vq_steps=30, vq_batch=8, lm_steps=30, gen_batch=8, und_batch=8,
                            lm_warmup=5, save_every=20, bf16=False),
}


# ----------------------------------------------------------------------------------------------- data

def train_prompt(rng: random.Random) -> dict:
    """A random prompt from the train split of either suite (held-out compositions never appear)."""
    while True:
        suite = rng.choice(list(SUITES))
        m = make_prompt(suite, rng.choice(SUITES[suite]), rng)
        if "train" in split_of(m, suite):
            return m


def train_scene(rng: random.Random):
    """(prompt metadata, scene) for training: scenes avoid held-out colour-shape pairs altogether."""
    m = train_prompt(rng)
    return m, sample_scene(m, rng, forbid=HELD_OUT_PAIRS)


def to_pixels(images: list) -> torch.Tensor:
    """PIL images -> float [B, 3, H, W] in [-1, 1] (the VQ's and the image processor's range)."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------- utils

def atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def log(out: str, record: dict) -> None:
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def cosine_lr(step: int, total: int, base: float, warmup: int = 0) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def restore(state: dict, model, opt, data_rng: random.Random) -> int:
    """Resume a stage from its checkpoint dict: weights, optimiser, RNGs; returns the step."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    data_rng.setstate(state["data_rng"])
    return state["step"]


# ----------------------------------------------------------------------------------------------- stages

def stage0(cfg: PretrainConfig, out: str):
    """Tokenizer, processor and config (deterministic from the seed)."""
    from transformers import AutoTokenizer, JanusConfig

    spec = nano.SPECS[cfg.spec]
    tok_dir = os.path.join(out, "tokenizer")
    if not os.path.exists(os.path.join(out, "config.json")):
        tok = nano.build_tokenizer(spec, nano.corpus(seed=cfg.seed))
        config = nano.build_config(spec, tok)
        tok.save_pretrained(tok_dir)
        config.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    return spec, tok, JanusConfig.from_pretrained(out)


def stage1(cfg: PretrainConfig, out: str, config) -> dict:
    """Train the VQ tokenizer; returns its state dict."""
    from transformers import JanusVQVAE

    path = os.path.join(out, "stage1.pt")
    state = torch.load(path, weights_only=False, map_location=cfg.device) if os.path.exists(path) else None
    if state is not None and state["step"] >= cfg.vq_steps:
        return state["model"]
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    vq = JanusVQVAE(config.vq_config).to(dev)
    vq.train()  # JanusVQVAE.__init__ calls eval() (JANUS-NOTES pitfall 5)
    ema = CodebookEMA(vq)  # the codebook moves by EMA, not by the optimiser
    opt = torch.optim.Adam([p for p in vq.parameters() if p.requires_grad], lr=cfg.vq_lr)
    rng = random.Random(cfg.seed + 1)
    step = 0
    if state is not None:
        step = restore(state, vq, opt, rng)
        ema.load_state_dict(state["ema"])
    usage = torch.zeros(config.vq_config.num_embeddings, dtype=torch.long)
    bar = tqdm(total=cfg.vq_steps, initial=step, desc="stage 1: VQ", unit="step")
    t0 = time.time()
    while step < cfg.vq_steps:
        pixels = to_pixels([render(train_scene(rng)[1]) for _ in range(cfg.vq_batch)]).to(dev)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.vq_steps, cfg.vq_lr)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, metrics, idx, z = vq_loss(vq, pixels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(vq, z, idx)
        usage += torch.bincount(idx.flatten().cpu(), minlength=len(usage))
        step += 1
        if step % cfg.vq_restart_every == 0:
            metrics["vq/codes_used"] = int((usage > 0).sum())
            metrics["vq/restarted"] = restart_dead_codes(vq, usage, pixels, ema)
            usage.zero_()
        bar.update(1)
        bar.set_postfix(mse=f"{metrics['vq/mse']:.4f}")
        if step % 20 == 0 or step == cfg.vq_steps:
            log(out, {"stage": 1, "step": step, "time": time.time() - t0, **metrics})
        if step % cfg.save_every == 0 or step == cfg.vq_steps:
            if step == cfg.vq_steps:
                normalise_codebook(vq)
            atomic_save({"model": vq.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(), "step": step,
                         "rng": rng_state(), "data_rng": rng.getstate()}, path)
    bar.close()
    return vq.state_dict()


# ----------------------------------------------------------------------------------------------- stage 2

UNDERSTANDING_QUERIES = ("What is in the image?", "List the objects in the image.")


class Stage2Data:
    """Builds stage-2 batches: generation (prompt -> image tokens) and understanding (image + query -> answer)."""

    def __init__(self, tokenizer, spec, cfg: PretrainConfig, rng: random.Random):
        from gvu.models.janus_format import JanusTemplate

        self.tok, self.spec, self.cfg, self.rng = tokenizer, spec, cfg, rng
        self.template = JanusTemplate()
        self.ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in
                    {"bos": nano.BOS, "eos": nano.EOS, "pad": nano.PAD, "boi": nano.BOI}.items()}
        self.und_prefix: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return self.tok(text).input_ids  # adds BOS

    def answer(self, text: str) -> list[int]:
        return self.tok(" " + text, add_special_tokens=False).input_ids + [self.ids["eos"]]

    def generation(self, vq_encode) -> tuple:
        """-> (prompt Batch [B, T], image tokens [B, N]); prompt_dropout of the rows are unconditional."""
        from gvu.models.janus_format import left_pad, unconditional

        pairs = [train_scene(self.rng) for _ in range(self.cfg.gen_batch)]
        prompt = left_pad([self.encode(self.template.generation(m["prompt"])) for m, _ in pairs], self.ids["pad"])
        drop = torch.tensor([self.rng.random() < self.cfg.prompt_dropout for _ in pairs])
        uncond = unconditional(prompt.ids, prompt.mask, self.ids["bos"], self.ids["boi"], self.ids["pad"])
        prompt.ids = torch.where(drop[:, None], uncond, prompt.ids)
        tokens = vq_encode(to_pixels([render(s) for _, s in pairs]))
        return prompt, tokens

    def understanding(self) -> tuple:
        """-> (Batch [B, T], labels [B, T] with -100 outside answers, pixel_values [B, 3, H, W])."""
        from gvu.models.janus_format import left_pad
        from gvu.world.captions import REWARD_QUERY, describe, questions

        seqs, answer_lens, images = [], [], []
        for _ in range(self.cfg.und_batch):
            _, scene = train_scene(self.rng)
            u = self.rng.random()
            if u < 0.5:  # the reward's own query, with varied true answers
                query, ans = REWARD_QUERY, describe(scene, self.rng, self.rng.choice(("geneval", "geneval", "full", "partial")))
            elif u < 0.6:
                query, ans = self.rng.choice(UNDERSTANDING_QUERIES), describe(scene, self.rng, "full")
            else:
                _, query, ans = questions(scene, self.rng, 1)[0]
            if query not in self.und_prefix:
                self.und_prefix[query] = self.encode(self.template.understanding(query, self.spec.num_image_tokens))
            a = self.answer(ans)
            seqs.append(self.und_prefix[query] + a)
            answer_lens.append(len(a))
            images.append(render(scene))
        batch = left_pad(seqs, self.ids["pad"])
        labels = torch.full_like(batch.ids, -100)
        for i, k in enumerate(answer_lens):
            labels[i, -k:] = batch.ids[i, -k:]
        return batch, labels, to_pixels(images)


def stage2(cfg: PretrainConfig, out: str, spec, tok, config, vq_state: dict):
    """Train the language model (vision encoder, aligners, LLM, generation embeddings and head); VQ frozen."""
    import torch.nn.functional as F
    from transformers import JanusForConditionalGeneration

    from gvu.models.janus import image_token_logits, text_logits
    from gvu.models.vq_train import quantize

    path = os.path.join(out, "stage2.pt")
    state = torch.load(path, weights_only=False, map_location=cfg.device) if os.path.exists(path) else None
    torch.manual_seed(cfg.seed + 2)
    dev = torch.device(cfg.device)
    model = JanusForConditionalGeneration(config).to(dev)
    vq = model.model.vqmodel
    vq.load_state_dict(vq_state)
    vq.eval().requires_grad_(False)
    with torch.no_grad():  # image-token input embeddings start as the VQ codes themselves (JANUS-NOTES pitfall 9)
        model.model.generation_embeddings.weight.copy_(vq.quantize.embedding.weight)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lm_lr, weight_decay=0.01, betas=(0.9, 0.95))
    data_rng = random.Random(cfg.seed + 3)
    step = restore(state, model, opt, data_rng) if state is not None else 0
    data = Stage2Data(tok, spec, cfg, data_rng)
    vq_encode = lambda px: quantize(vq, px.to(dev))[2]  # noqa: E731  (no grad: vq is frozen)
    model.train()
    vq.eval()
    bar = tqdm(total=cfg.lm_steps, initial=step, desc="stage 2: LM", unit="step")
    t0 = time.time()
    while step < cfg.lm_steps:
        with torch.no_grad():
            prompt, tokens = data.generation(vq_encode)
        und, labels, pixels = data.understanding()
        prompt, und = prompt.to(dev), und.to(dev)
        labels, pixels = labels.to(dev), pixels.to(dev)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.lm_steps, cfg.lm_lr, cfg.lm_warmup)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            gen_logits = image_token_logits(model, prompt, tokens)
            gen_loss = F.cross_entropy(gen_logits.float().flatten(0, 1), tokens.flatten())
            logits = text_logits(model, und, pixels)
            und_loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        loss = gen_loss + und_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(gen=f"{gen_loss.item():.3f}", und=f"{und_loss.item():.3f}")
        if step % 20 == 0 or step == cfg.lm_steps:
            log(out, {"stage": 2, "step": step, "time": time.time() - t0, "loss/gen": gen_loss.item(),
                      "loss/und": und_loss.item(), "lr": opt.param_groups[0]["lr"]})
        if step % cfg.save_every == 0 or step == cfg.lm_steps:
            atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                         "rng": rng_state(), "data_rng": data_rng.getstate()}, path)
    bar.close()
    return model


def save_model(model, tok, spec, out_dir: str) -> None:
    """The whole model directory, loadable offline with from_pretrained (safetensors, tokenizer, processor)."""
    tmp = out_dir + ".tmp"
    model.eval().cpu()
    model.save_pretrained(tmp, safe_serialization=True)
    nano.build_processor(spec, tok).save_pretrained(tmp)
    from gvu.models.janus import JanusBackendConfig
    # guidance 3: the JANUS-NOTES probe found it best for this model family (5 over-saturates a small model)
    JanusBackendConfig(default_cfg_scale=3.0).save(tmp)
    if os.path.exists(out_dir):
        import shutil
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def pretrain(preset: str | PretrainConfig, out: str, **overrides) -> str:
    """Run (or resume) every stage; returns the model directory."""
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    cfg = replace(cfg, **overrides)
    os.makedirs(out, exist_ok=True)
    meta = os.path.join(out, "pretrain_config.json")
    if os.path.exists(meta):
        with open(meta) as f:
            saved = json.load(f)
        if saved != asdict(cfg):
            raise ValueError(f"{out} holds a pretraining run with a different config; pick another --out "
                             f"or delete it. Differences: { {k: (saved.get(k), v) for k, v in asdict(cfg).items() if saved.get(k) != v} }")
    else:
        with open(meta, "w") as f:
            json.dump(asdict(cfg), f, indent=2)
    torch.set_num_threads(cfg.threads)
    spec, tok, config = stage0(cfg, out)
    vq_state = stage1(cfg, out, config)
    model = stage2(cfg, out, spec, tok, config, vq_state)
    model_dir = os.path.join(out, "model")
    save_model(model, tok, spec, model_dir)
    return model_dir
