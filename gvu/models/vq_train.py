"""Stage 1 of nano-Janus pretraining: train the VQ tokenizer (JanusVQVAE) on world images.

JanusVQVAE.forward decodes from integer tokens, so a loss through it never reaches the encoder; we train our
own differentiable path with the library's modules: encoder -> quant_conv -> cosine quantizer (straight-through)
-> post_quant_conv -> decoder. Codes are kept unit-norm: the library's encode() picks codes by unnormalised
distance and decode() L2-normalises them (get_codebook_entry), so with codes of any other length the tokens
encode() picks and the pixels decode() draws disagree with what training saw; with unit codes both agree with
training. The codebook is not trained by gradient but by an exponential moving average of
the (unit) encoder outputs assigned to each code, renormalised (VQ-VAE-2's update): with Adam on the codes, usage
collapsed from 459 to 105 codes within 100 steps. Codes left unused for a while are restarted from encoder
outputs: without restarts, use fell to about 170 of 512 codes within 200 steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import JanusVQVAE
from transformers.models.janus.modeling_janus import JanusVQVAEConvUpsample

from gvu.world.vocab import BACKGROUND


class FP32GroupNorm(torch.nn.GroupNorm):
    """GroupNorm that normalises in fp32 under autocast (same parameters and state dict as nn.GroupNorm).

    Under CPU bf16 autocast, torch runs group_norm in bf16, and its backward took 56% of a stage-1 VQ step on the
    2-core CPU (1.59 s of 2.85 s over 3 steps, torch profiler); in fp32 the step is 1.5x faster
    (0.93 -> 0.61 s) and its loss follows a pure-fp32 step's (PretrainConfig.vq_norm_fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)


def fp32_group_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Make every nn.GroupNorm in module an FP32GroupNorm, in place (the weights stay where they are)."""
    for m in module.modules():
        if type(m) is torch.nn.GroupNorm:
            m.__class__ = FP32GroupNorm
    return module


class NearestUpsample2x(JanusVQVAEConvUpsample):
    """The VQ decoder's upsampling (nearest-neighbour 2x, then its conv) written as a broadcast instead of
    F.interpolate: the same numbers forward, the same sums backward (added in another order), and the same parameters
    and state dict.

    Why: compiled with torch.compile under CPU bf16 autocast (torch 2.13), the library's F.interpolate version passes
    no gradient back: every decoder layer before the last upsampling and post_quant_conv got exactly zero gradient,
    and the encoder only the commitment term's (`python -m benchmarks.vq_compile_check`), and a compiled stage 1 collapses
    its codebook. Eager runs are unaffected; this class is used only when stages 1 and 1c are compiled."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)
        return self.conv(hidden_states)


def compile_vq(vq: JanusVQVAE) -> JanusVQVAE:
    """torch.compile the VQ's encoder and decoder in place (the quantizer stays eager: its code choice runs in fp32).
    The upsamplings become NearestUpsample2x first. On the 2-core CPU a stage-1 step under bf16 autocast takes 0.41 s
    instead of 0.63 (benchmarks/pretrain_speed.py), and its gradient is as close to the eager one as bf16 rounding
    leaves it (`python -m benchmarks.vq_compile_check`). State dict unchanged."""
    for m in vq.modules():
        if type(m) is JanusVQVAEConvUpsample:
            m.__class__ = NearestUpsample2x
    vq.encoder.compile()
    vq.decoder.compile()
    return vq


def quantize_indices(vq: JanusVQVAE, pixels: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Code indices [B, h*w] of pixels, encoded `chunk` images at a time: on the 2-core CPU 64 images take 0.24 s in
    one call and 0.17 s in two (the same codes)."""
    return torch.cat([quantize(vq, part)[2] for part in pixels.split(chunk)])


def quantize(vq: JanusVQVAE, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pixels [B, 3, H, W] in [-1, 1] -> (z [B, D, h, w] normalised encoder output, codes [B, D, h, w]
    straight-through quantised, indices [B, h*w])."""
    # the code choice runs in fp32 even under bf16 autocast: near-duplicate unit codes differ in the third digit
    z = F.normalize(vq.quant_conv(vq.encoder(pixels)).float(), dim=1)
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    book = F.normalize(vq.quantize.embedding.weight, dim=1)
    idx = (flat @ book.T).argmax(dim=1)
    q = book[idx].view(b, h, w, d).permute(0, 3, 1, 2)
    return z, q, idx.view(b, h * w)


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical finite differences of [B, C, H, W]."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def foreground_weight(pixels: torch.Tensor, fg_weight: float) -> torch.Tensor:
    """[B, 1, H, W] loss weights, mean 1: pixels of pixels [B, 3, H, W] in [-1, 1] that differ from the world's
    background colour weigh fg_weight times the background's. The background is the world's colour, not an image's
    corner pixel: a crop's corner may lie on an object."""
    bg = torch.tensor(BACKGROUND, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1) / 127.5 - 1.0
    weight = 1.0 + (fg_weight - 1.0) * ((pixels - bg).abs().amax(1, keepdim=True) > 0.1).to(pixels.dtype)
    return weight / weight.mean()


def vq_loss(vq: JanusVQVAE, pixels: torch.Tensor, beta: float = 0.25, fg_weight: float = 10.0,
            edge_weight: float = 0.0) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
    """Reconstruction (MSE + 0.5 L1) + edge_weight * L1 of image-gradient differences + beta * commitment
    (the codebook itself moves by EMA, see CodebookEMA).

    Pixels that differ from the world's background colour weigh fg_weight times more: the plain background is ~85% of
    every image and is learnt at once, while colours and edges of the objects (what the evaluator reads) were
    learnt slowly under an unweighted loss. The edge term asks the decoder for the image's edges and corners, which
    a pixel loss lets it round off (without it, reconstructions turned stars, hearts and crosses into blobs the
    evaluator read as circles). Returns loss, metrics, indices [B, N], unit encoder outputs z (detached)."""
    z, q, idx = quantize(vq, pixels)
    commit = F.mse_loss(z, q.detach())
    q_st = z + (q - z).detach()
    recon = vq.decoder(vq.post_quant_conv(q_st)).float()
    weight = foreground_weight(pixels, fg_weight)
    mse = F.mse_loss(recon, pixels)
    loss = (weight * ((recon - pixels) ** 2 + 0.5 * (recon - pixels).abs())).mean() + beta * commit
    metrics = {"vq/mse": mse.item(), "vq/commit": commit.item()}
    if edge_weight:
        (rx, ry), (px, py) = image_gradients(recon), image_gradients(pixels)
        edge = 0.5 * ((rx - px).abs().mean() + (ry - py).abs().mean())
        loss = loss + edge_weight * edge
        metrics["vq/edge"] = edge.item()
    return loss, metrics, idx, z.detach()


class CodebookEMA:
    """code_k <- normalise(EMA of the unit encoder outputs assigned to k). State: counts [K], sums [K, D]."""

    def __init__(self, vq: JanusVQVAE, decay: float = 0.99):
        self.decay = decay
        w = vq.quantize.embedding.weight
        self.counts = torch.ones(w.shape[0], device=w.device)
        self.sums = F.normalize(w.detach().float(), dim=1).clone()
        vq.quantize.embedding.weight.requires_grad_(False)

    @torch.no_grad()
    def update(self, vq: JanusVQVAE, z: torch.Tensor, idx: torch.Tensor) -> None:
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        onehot = F.one_hot(idx.flatten(), self.counts.shape[0]).float()
        self.counts.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
        vq.quantize.embedding.weight.copy_(F.normalize(self.sums, dim=1))

    def state_dict(self) -> dict:
        return {"counts": self.counts, "sums": self.sums}

    def load_state_dict(self, s: dict) -> None:
        self.counts, self.sums = s["counts"], s["sums"]


@torch.no_grad()
def restart_dead_codes(vq: JanusVQVAE, usage: torch.Tensor, pixels: torch.Tensor, ema: "CodebookEMA | None" = None) -> int:
    """Re-initialise codes unused since the last call; returns how many.

    New codes come from the encoder outputs that the codebook serves worst (the top quarter by 1 - cosine to
    their code). Restarting from random outputs failed here: most 8x8 patches are plain background, so the new
    codes duplicated the background code and died again (usage stayed near 100 of 512)."""
    dead = (usage == 0).nonzero().flatten().to(pixels.device)
    if len(dead) == 0:
        return 0
    z, q, _ = quantize(vq, pixels)
    flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    err = 1 - (flat * q.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])).sum(1)
    worst = flat[err.argsort(descending=True)[: max(len(dead), len(flat) // 4)]]
    pick = worst[torch.randint(len(worst), (len(dead),), device=worst.device)]
    pick = F.normalize(pick + 0.02 * torch.randn_like(pick), dim=1)
    vq.quantize.embedding.weight[dead] = pick
    if ema is not None:  # the restarted code starts its average afresh
        ema.sums[dead] = pick
        ema.counts[dead] = 1.0
    return len(dead)


@torch.no_grad()
def normalise_codebook(vq: JanusVQVAE) -> None:
    """Store unit-norm codes, so the library's encode()/decode() match the cosine quantizer used in training."""
    w = vq.quantize.embedding.weight
    w.copy_(F.normalize(w, dim=1))
