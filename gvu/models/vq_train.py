"""Stage 1 of nano-Janus pretraining: train the VQ tokenizer (JanusVQVAE) on world images.

JanusVQVAE.forward decodes from integer tokens, so a loss through it never reaches the encoder; we train our
own differentiable path with the library's modules: encoder -> quant_conv -> cosine quantizer (straight-through)
-> post_quant_conv -> decoder. Codes are kept unit-norm: the library's encode() picks codes by unnormalised
distance and decode() L2-normalises them (get_codebook_entry), and with unit codes both agree with training
(JANUS-NOTES pitfalls 1-2). Dead codes are restarted from encoder outputs (pitfall 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import JanusVQVAE


def quantize(vq: JanusVQVAE, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pixels [B, 3, H, W] in [-1, 1] -> (z [B, D, h, w] normalised encoder output, codes [B, D, h, w]
    straight-through quantised, indices [B, h*w])."""
    z = F.normalize(vq.quant_conv(vq.encoder(pixels)), dim=1)
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    book = F.normalize(vq.quantize.embedding.weight, dim=1)
    idx = (flat @ book.T).argmax(dim=1)
    q = book[idx].view(b, h, w, d).permute(0, 3, 1, 2)
    return z, q, idx.view(b, h * w)


def vq_loss(vq: JanusVQVAE, pixels: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Reconstruction (MSE + 0.5 L1) + codebook + beta * commitment. Returns loss, metrics, indices [B, N]."""
    z, q, idx = quantize(vq, pixels)
    codebook = F.mse_loss(q, z.detach())
    commit = F.mse_loss(z, q.detach())
    q_st = z + (q - z).detach()
    recon = vq.decoder(vq.post_quant_conv(q_st))
    mse = F.mse_loss(recon.float(), pixels)
    loss = mse + 0.5 * F.l1_loss(recon.float(), pixels) + codebook + beta * commit
    return loss, {"vq/mse": mse.item(), "vq/codebook": codebook.item()}, idx


@torch.no_grad()
def restart_dead_codes(vq: JanusVQVAE, usage: torch.Tensor, pixels: torch.Tensor) -> int:
    """Re-initialise codes unused since the last call from random encoder outputs; returns how many."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    z, _, _ = quantize(vq, pixels)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    pick = flat[torch.randint(len(flat), (len(dead),))]
    vq.quantize.embedding.weight[dead] = pick + 0.01 * torch.randn_like(pick)
    return len(dead)


@torch.no_grad()
def normalise_codebook(vq: JanusVQVAE) -> None:
    """Store unit-norm codes, so the library's encode()/decode() match the cosine quantizer used in training."""
    w = vq.quantize.embedding.weight
    w.copy_(F.normalize(w, dim=1))
