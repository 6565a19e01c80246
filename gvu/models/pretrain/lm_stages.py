"""The language-model stages: 2 (the language model, jointly on understanding and generation, the VQ frozen) and 3
(stage 2 continued with part of the understanding images shown as their VQ reconstructions)."""

from __future__ import annotations

import os
import random
import time

import torch
from tqdm import tqdm

from gvu.models.pretrain.config import PretrainConfig
from gvu.models.pretrain.data import Stage2Data, stage2_batches
from gvu.models.pretrain.files import atomic_save, load_stage, log, restore, stage_rngs, trim_log
from gvu.models.pretrain.kernels import use_bf16, use_compile
from gvu.models.pretrain.measure import PatchProbe, PositionProbe, RelationProbe, ranking_loss, reconstruct_checked, \
    sequence_logprobs
from gvu.schedules import learning_rate

def stage2(cfg: PretrainConfig, out: str, spec, tok, config, vq_state: dict, vision_state: dict | None = None):
    """Train the language model (vision encoder, aligners, LLM, generation embeddings and head); VQ frozen."""
    from transformers import JanusForConditionalGeneration

    torch.manual_seed(cfg.seed + 2)
    dev = torch.device(cfg.device)
    model = JanusForConditionalGeneration(config).to(dev)
    vq = model.model.vqmodel
    vq.load_state_dict(vq_state)
    # Janus embeds image tokens for generation through its own small table (generation_embeddings), apart from the VQ
    # codebook; it starts as the (unit-norm) codes themselves, so that from the first step a token's input says what
    # its patch looks like and similar patches get similar inputs. Trained from random rows, generation learned slower
    with torch.no_grad():
        model.model.generation_embeddings.weight.copy_(vq.quantize.embedding.weight)
    probe = PatchProbe(config.vision_config.hidden_size).to(dev) if cfg.aux_weight else None
    if vision_state is not None:  # stage 1b's encoder (and its probe, which keeps the shape features in place)
        model.model.vision_model.load_state_dict(vision_state["vision"])
        if probe is not None:
            probe.load_state_dict(vision_state["probe"])
    rel_probe = None
    if cfg.rel_weight:  # stage 1b's relation head when it trained one
        with torch.random.fork_rng(devices=[]):  # a fresh head draws apart from the model's own initialisation
            torch.manual_seed(cfg.seed + 30)
            rel_probe = RelationProbe(config.vision_config.hidden_size).to(dev)
        if vision_state is not None and "rel" in vision_state:
            rel_probe.load_state_dict(vision_state["rel"])
    data = Stage2Data(tok, spec, cfg, random.Random())
    return lm_stage(cfg, out, model, probe, data, name="2", steps=cfg.lm_steps, lr=cfg.lm_lr, warmup=cfg.lm_warmup,
                    rel_probe=rel_probe)


def stage3(cfg: PretrainConfig, out: str, spec, tok, model):
    """Stage 3: stage 2's data and losses continued from stage 2's model for s3_steps (a fresh AdamW, warmup
    and cosine), with und_recon of the understanding and ranking images replaced by their VQ reconstructions.

    Why: the reward's judge reads decoded images, but stages 1b and 2 showed it only clean renderings. On a model made
    without stage 3, 4-way caption choice fell from 0.74 on renderings to 0.65 on their reconstructions (counting 0.76 -> 0.48; 200 eval
    prompts, `benchmarks/nano_model_eval.py --only understanding,understanding_recon`). The probe is off here: it is
    not part of a saved model, so a run continued from a model directory has none."""
    if not cfg.s3_steps:
        return model
    data = Stage2Data(tok, spec, cfg, random.Random(), recon=cfg.und_recon, seed_base=7)
    return lm_stage(cfg, out, model, None, data, name="3", steps=cfg.s3_steps, lr=cfg.s3_lr, warmup=cfg.s3_warmup)


def lm_stage(cfg: PretrainConfig, out: str, model, probe, data: Stage2Data, name: str, steps: int, lr: float,
             warmup: int, rel_probe=None):
    """The language-model loop of stages 2 and 3 (checkpoint <out>/stage<name>.pt, resumable). probe and rel_probe
    (a PatchProbe, a RelationProbe, or None) read the vision encoder's output of the understanding images."""
    import torch.nn.functional as F

    from gvu.models.janus import image_token_logits, text_logits
    from gvu.models.vq_train import quantize_indices

    path = os.path.join(out, f"stage{name}.pt")
    state = load_stage(path, cfg.device)
    dev = torch.device(cfg.device)
    vq = model.model.vqmodel
    vq.requires_grad_(False)  # frozen; put in eval mode below, after model.train()
    grid = int(model.config.vision_config.num_image_tokens ** 0.5)
    pos_probe = None
    if cfg.pos_weight:  # its own seed: a stage resumed before its first save starts from the same probe
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 20 + int(name))
            pos_probe = PositionProbe(model.config.text_config.hidden_size, grid).to(dev)
    params = [p for p in model.parameters() if p.requires_grad] + (list(probe.parameters()) if probe else []) \
        + (list(pos_probe.parameters()) if pos_probe else []) + (list(rel_probe.parameters()) if rel_probe else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    step = 0
    if state is not None:
        step = restore(state, model, opt)  # stage-2 data are seeded per step (Stage2Data.step)
        if probe is not None:
            probe.load_state_dict(state["probe"])
        if pos_probe is not None:
            pos_probe.load_state_dict(state["pos_probe"])
        if rel_probe is not None:
            rel_probe.load_state_dict(state["rel_probe"])
    trim_log(out, int(name), step)
    features = {}  # the vision features of the current understanding pass (aligner input and output), for the probes
    hooks = [model.model.aligner.register_forward_pre_hook(lambda mod, args: features.__setitem__("v", args[0])),
             model.model.aligner.register_forward_hook(lambda mod, args, out: features.__setitem__("aligned", out))]
    # On the CPU, eager attention (matmul + softmax): torch's CPU flash-attention backward took 18% of a stage-2 step
    # at these sizes, and eager makes the step 1.2x faster (1.48 -> 1.26 s, 2 threads). The same math; the model's
    # own setting (not saved in its config) comes back after the stage.
    attn = model.config._attn_implementation
    if dev.type == "cpu":
        model.set_attn_implementation("eager")
    lm = model.model.language_model
    compiled = use_compile(cfg)
    if compiled:  # only the language model: compiling the vision encoder too gained nothing on the CPU
        lm.compile()
    model.train()
    vq.eval()
    bar = tqdm(total=steps, initial=step, desc=f"stage {name}: LM", unit="step")
    t0 = time.time()
    try:
        for b in stage2_batches(data, os.path.join(out, "tokenizer"), cfg, step, steps):
            with torch.no_grad():
                tokens = quantize_indices(vq, b["gen_pixels"].to(dev))  # vq is frozen
            prompt, und, labels, pixels = b["prompt"].to(dev), b["und"].to(dev), b["labels"].to(dev), b["pixels"].to(dev)
            n_und, groups = b["n_und"], b["groups"]
            record = {}
            if b["recon"] is not None and b["recon"].any():
                rows = b["recon"].nonzero().squeeze(1).tolist()
                rec, used = reconstruct_checked(vq, pixels[rows], [b["objects"][i] for i in rows])
                pixels[rows] = rec
                record.update({"recon/rows": len(rows), "recon/used": used})
            # rows that show the same picture (a ranking group's captions) encode it once: in stage 2, 37 rows a
            # step hold 22 distinct images; text_logits gives each row its image's features (the same math)
            images, index = torch.unique(pixels.flatten(1), dim=0, return_inverse=True)
            images = images.view(-1, *pixels.shape[1:])
            for g in opt.param_groups:
                g["lr"] = learning_rate(step, lr, steps, warmup)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16(cfg)):
                gen_logits = image_token_logits(model, prompt, tokens)
                gen_loss = F.cross_entropy(gen_logits.float().flatten(0, 1), tokens.flatten())
                logits = text_logits(model, und, images, index)
                und_loss = F.cross_entropy(logits[:n_und, :-1].float().flatten(0, 1), labels[:n_und, 1:].flatten(), ignore_index=-100)
                loss = cfg.gen_weight * gen_loss + und_loss
                if groups:
                    rank_loss, record["rank/acc"] = ranking_loss(sequence_logprobs(logits[n_und:], labels[n_und:]), groups)
                    record["loss/rank"] = rank_loss.item()
                    loss = loss + cfg.rank_weight * rank_loss
                if probe is not None:
                    aux_loss, record["aux/shape_acc"] = probe(features["v"][index], b["patch"].to(dev))
                    record["loss/aux"] = aux_loss.item()
                    loss = loss + cfg.aux_weight * aux_loss
                if pos_probe is not None:
                    pos_loss, record["aux/pos_acc"] = pos_probe(features["aligned"][index])
                    record["loss/pos"] = pos_loss.item()
                    loss = loss + cfg.pos_weight * pos_loss
                if rel_probe is not None:
                    rel_loss, record["aux/rel_acc"] = rel_probe(features["v"][index], b["rel"].to(dev))
                    record["loss/rel"] = rel_loss.item()
                    loss = loss + cfg.rel_weight * rel_loss
                features.clear()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(gen=f"{gen_loss.item():.3f}", und=f"{und_loss.item():.3f}",
                            **({"rank": f"{record['rank/acc']:.2f}"} if groups else {}))
            if step % 20 == 0 or step == steps:
                log(out, {"stage": int(name), "step": step, "time": time.time() - t0, "loss/gen": gen_loss.item(),
                          "loss/und": und_loss.item(), **record, "lr": opt.param_groups[0]["lr"]})
            if step % cfg.save_every == 0 or step == steps:
                atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                             "probe": probe.state_dict() if probe else None,
                             "pos_probe": pos_probe.state_dict() if pos_probe else None,
                             "rel_probe": rel_probe.state_dict() if rel_probe else None, **stage_rngs()}, path)
    finally:  # also on an error: the caller gets the model with its own attention and no hooks
        for h in hooks:
            h.remove()
        bar.close()
        model.set_attn_implementation(attn)
        if compiled:  # the caller gets the eager module back, and stage 3's compile starts from empty caches
            lm._compiled_call_impl = None  # what nn.Module.compile set
            torch._dynamo.reset()
    return model
