"""The image stages: 0 (tokenizer, processor and config), 1 (the VQ tokenizer), 1c (the VQ decoder alone) and 1b
(the understanding encoder alone, with its probes). Each checkpoints every save_every steps and resumes exactly."""

from __future__ import annotations

import os
import random
import time

import torch
from tqdm import tqdm

from gvu.models import nano
from gvu.models.pretrain.config import PretrainConfig, check_crop
from gvu.models.pretrain.data import decoder_scene, object_crops, patch_labels, relation_labels, to_pixels, train_scene
from gvu.models.pretrain.files import atomic_save, load_stage, log, restore, save_config, stage_rngs, trim_log
from gvu.models.pretrain.kernels import use_bf16, vq_kernels
from gvu.models.pretrain.measure import PatchProbe, PositionProbe, RelationProbe
from gvu.models.vq_train import CodebookEMA, normalise_codebook, restart_dead_codes, vq_loss
from gvu.schedules import learning_rate
from gvu.world.scene import render

def stage0(cfg: PretrainConfig, out: str):
    """Tokenizer, processor and config (deterministic from the seed)."""
    from transformers import AutoTokenizer, JanusConfig

    spec = nano.SPECS[cfg.spec]
    tok_dir = os.path.join(out, "tokenizer")
    if not os.path.exists(os.path.join(out, "config.json")):
        tok = nano.build_tokenizer(spec, nano.corpus(seed=cfg.seed))
        config = nano.build_config(spec, tok)
        tok.save_pretrained(tok_dir)
        save_config(config, out)  # last: its presence says stage 0 is done
    tok = AutoTokenizer.from_pretrained(tok_dir)
    return spec, tok, JanusConfig.from_pretrained(out)


def stage1(cfg: PretrainConfig, out: str, config) -> dict:
    """Train the VQ tokenizer; returns its state dict."""
    from transformers import JanusVQVAE

    path = os.path.join(out, "stage1.pt")
    state = load_stage(path, cfg.device)
    if state is not None and state["step"] >= cfg.vq_steps:
        return state["model"]
    check_crop(cfg)
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    vq = JanusVQVAE(config.vq_config).to(dev)
    vq_kernels(cfg, vq)
    vq.train()  # JanusVQVAE.__init__ ends in eval(): without this, dropout and the like stay in inference mode
    ema = CodebookEMA(vq)  # the codebook moves by EMA, not by the optimiser
    opt = torch.optim.Adam([p for p in vq.parameters() if p.requires_grad], lr=cfg.vq_lr)
    rng = random.Random(cfg.seed + 1)
    step = 0
    usage = torch.zeros(config.vq_config.num_embeddings, dtype=torch.long)  # code use since the last restart
    if state is not None:
        step = restore(state, vq, opt, rng)
        ema.load_state_dict(state["ema"])
        if "usage" in state:  # absent from an older stage-1 format, whose saves fell on restart steps (all 0)
            usage.copy_(state["usage"])
    trim_log(out, 1, step)  # records after the step resumed from (or any, starting afresh) are written again
    bar = tqdm(total=cfg.vq_steps, initial=step, desc="stage 1: VQ", unit="step")
    t0 = time.time()
    while step < cfg.vq_steps:
        crop = cfg.vq_crop and not (cfg.vq_full_every and (step + 1) % cfg.vq_full_every == 0)
        scenes = [train_scene(rng)[1] for _ in range(cfg.vq_crop_batch if crop else cfg.vq_batch)]
        pixels = to_pixels([render(s) for s in scenes])  # render draws nothing from rng
        pixels = (object_crops(pixels, scenes, cfg.vq_crop, rng) if crop else pixels).to(dev)
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg.vq_lr, cfg.vq_steps)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16(cfg)):
            loss, metrics, idx, z = vq_loss(vq, pixels, fg_weight=cfg.vq_fg_weight, edge_weight=cfg.vq_edge_weight)
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
                         "usage": usage.clone(), **stage_rngs(rng)}, path)
    bar.close()
    return vq.state_dict()


def stage_vision(cfg: PretrainConfig, out: str, config) -> dict | None:
    """Stage 1b: pretrain the understanding encoder (the SigLIP-style vision model) alone, with the patch probe:
    each patch's shape, colour and size. Returns {"vision": state dict, "probe": state dict}, or None when
    cfg.vis_steps is 0.

    With cfg.pos_weight, a position probe (each patch's column and row) trains beside it; with cfg.rel_weight, the
    relation probe (RelationProbe), which stage 2 then continues.

    Why: trained only through the language model, a from-scratch vision encoder learns colours and positions but
    hardly shapes (patch shape accuracy about 0.3 after 2,400 joint steps, and the true caption beats one with a
    wrong shape 60% of the time). Alone, with warmup and cosine, it reaches about 0.85 patch shape accuracy in
    1,000 steps."""
    from transformers.models.janus.modeling_janus import JanusVisionModel

    if not cfg.vis_steps:
        return None
    path = os.path.join(out, "vision.pt")
    state = load_stage(path, cfg.device)
    if state is not None and state["step"] >= cfg.vis_steps:
        return _split_vision_state(state["model"])
    torch.manual_seed(cfg.seed + 4)
    dev = torch.device(cfg.device)
    grid = config.vision_config.image_size // config.vision_config.patch_size
    parts = {"vision": JanusVisionModel(config.vision_config), "probe": PatchProbe(config.vision_config.hidden_size)}
    if cfg.pos_weight:  # the encoder's output must also say where each patch is
        parts["pos"] = PositionProbe(config.vision_config.hidden_size, grid)
    if cfg.rel_weight:  # and, on an object's patches, where the other object of a pair lies
        parts["rel"] = RelationProbe(config.vision_config.hidden_size)
    both = torch.nn.ModuleDict(parts).to(dev)
    both.train()
    opt = torch.optim.AdamW(both.parameters(), lr=cfg.vis_lr, weight_decay=0.01)
    rng = random.Random(cfg.seed + 5)
    step = restore(state, both, opt, rng) if state is not None else 0
    trim_log(out, "1b", step)
    bar = tqdm(total=cfg.vis_steps, initial=step, desc="stage 1b: vision", unit="step")
    t0 = time.time()
    while step < cfg.vis_steps:
        scenes = [train_scene(rng)[1] for _ in range(cfg.vis_batch)]
        pixels = to_pixels([render(sc) for sc in scenes]).to(dev)
        labels = torch.stack([patch_labels(sc, grid) for sc in scenes]).to(dev)
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg.vis_lr, cfg.vis_steps, cfg.vis_warmup)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16(cfg)):
            features = both["vision"](pixels).last_hidden_state
            loss, acc = both["probe"](features, labels)
            record = {}
            if cfg.pos_weight:
                pos_loss, record["vision/pos_acc"] = both["pos"](features)
                loss = loss + cfg.pos_weight * pos_loss
            if cfg.rel_weight:
                rel = torch.stack([relation_labels(sc, grid) for sc in scenes]).to(dev)
                rel_loss, record["vision/rel_acc"] = both["rel"](features, rel)
                loss = loss + cfg.rel_weight * rel_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(both.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", shape_acc=f"{acc:.2f}")
        if step % 20 == 0 or step == cfg.vis_steps:
            log(out, {"stage": "1b", "step": step, "time": time.time() - t0, "loss/vision": loss.item(),
                      "vision/shape_acc": acc, **record, "lr": opt.param_groups[0]["lr"]})
        if step % cfg.save_every == 0 or step == cfg.vis_steps:
            atomic_save({"model": both.state_dict(), "opt": opt.state_dict(), "step": step,
                         **stage_rngs(rng)}, path)
    bar.close()
    return _split_vision_state(both.state_dict())


def stage_decoder(cfg: PretrainConfig, out: str, config, vq_state: dict) -> dict:
    """Stage 1c: fine-tune the VQ decoder (and post_quant_conv) alone, with stage 1's loss, on the codes of the
    frozen encoder and codebook. The image tokens of every image stay exactly as they were, so a language model
    trained on them is unaffected; only the pixels decoded from tokens change. Returns the VQ state dict."""
    from transformers import JanusVQVAE

    if not cfg.dec_steps:
        return vq_state
    path = os.path.join(out, "decoder.pt")
    state = load_stage(path, cfg.device)
    if state is not None and state["step"] >= cfg.dec_steps:
        return state["model"]
    torch.manual_seed(cfg.seed + 8)
    dev = torch.device(cfg.device)
    vq = JanusVQVAE(config.vq_config).to(dev)
    vq.load_state_dict(vq_state)
    vq_kernels(cfg, vq)
    vq.requires_grad_(False)
    trained = [*vq.decoder.parameters(), *vq.post_quant_conv.parameters()]
    for p in trained:
        p.requires_grad_(True)
    vq.train()
    opt = torch.optim.Adam(trained, lr=cfg.dec_lr)
    rng = random.Random(cfg.seed + 9)
    step = restore(state, vq, opt, rng) if state is not None else 0
    trim_log(out, "1c", step)
    bar = tqdm(total=cfg.dec_steps, initial=step, desc="stage 1c: VQ decoder", unit="step")
    t0 = time.time()
    while step < cfg.dec_steps:
        scenes = [decoder_scene(rng, cfg.dec_small, cfg.dec_held_out) for _ in range(cfg.dec_batch)]
        pixels = to_pixels([render(sc) for sc in scenes]).to(dev)
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg.dec_lr, cfg.dec_steps, cfg.dec_warmup)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16(cfg)):
            loss, metrics, _, _ = vq_loss(vq, pixels, fg_weight=cfg.vq_fg_weight, edge_weight=cfg.vq_edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(mse=f"{metrics['vq/mse']:.4f}")
        if step % 20 == 0 or step == cfg.dec_steps:
            log(out, {"stage": "1c", "step": step, "time": time.time() - t0, **metrics, "lr": opt.param_groups[0]["lr"]})
        if step % cfg.save_every == 0 or step == cfg.dec_steps:
            atomic_save({"model": vq.state_dict(), "opt": opt.state_dict(), "step": step,
                         **stage_rngs(rng)}, path)
    bar.close()
    return vq.state_dict()


def _split_vision_state(sd: dict) -> dict:
    """ModuleDict(vision, probe[, rel]) state dict -> {"vision": ..., "probe": ...[, "rel": ...]} (the position heads
    stay behind: stage 2 starts its own)."""
    parts = ("vision", "probe") + (("rel",) if any(k.startswith("rel.") for k in sd) else ())
    return {part: {k[len(part) + 1:]: v for k, v in sd.items() if k.startswith(part + ".")} for part in parts}
