"""Pretraining's measurements and auxiliary losses: sequence log-probs and the hard-negative ranking loss, the probe
heads on the vision features (shape/colour/size, position, relation), and the check that a VQ reconstruction still
shows its scene's objects."""

from __future__ import annotations

import numpy as np
import torch

from gvu.models.pretrain.data import RELATIONS

def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over answer tokens of log p(token) [B] (labels -100 outside answers; logits[:, t] predicts t + 1)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    mask = target != -100
    tok = lp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(1)


def ranking_loss(scores: torch.Tensor, groups: list[int]) -> tuple[torch.Tensor, float]:
    """Listwise hard-negative loss: -log softmax over each group's scores, true prompt first. -> (loss, accuracy)."""
    losses, hits = [], []
    for g in torch.split(scores, groups):
        losses.append(-torch.log_softmax(g, dim=0)[0])
        hits.append(float(g.argmax() == 0))
    return torch.stack(losses).mean(), float(np.mean(hits))


class PatchProbe(torch.nn.Module):
    """Linear heads on the vision features predicting each patch's shape, colour and size (auxiliary; not saved)."""

    def __init__(self, hidden: int):
        from gvu.world.vocab import COLOR_NAMES, SHAPES, SIZES

        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, len(v) + 1) for v in (SHAPES, COLOR_NAMES, SIZES))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """features [B, N, H], labels [B, 3, N] -> (loss, shape accuracy on object patches).

        Per head: cross-entropy over all patches (object or background) plus cross-entropy over object patches only;
        most patches are background, and without the second term the loss hardly asks for shapes."""
        import torch.nn.functional as F

        obj = labels[:, 0] > 0
        losses, acc = [], float("nan")
        for k, h in enumerate(self.heads):
            logits = h(features).float()
            losses.append(F.cross_entropy(logits.flatten(0, 1), labels[:, k].flatten()))
            if obj.any():
                losses.append(F.cross_entropy(logits[obj], labels[:, k][obj]))
                if k == 0:
                    acc = (logits[obj].argmax(-1) == labels[:, 0][obj]).float().mean().item()
        return sum(losses) / len(self.heads), acc


class PositionProbe(torch.nn.Module):
    """Linear heads on the aligned image features [B, N, H] (what the language model reads) predicting each patch's
    column and row in the grid x grid layout (auxiliary; not saved)."""

    def __init__(self, hidden: int, grid: int):
        super().__init__()
        self.grid = grid
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, grid) for _ in range(2))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, float]:
        """-> (mean cross-entropy of column and row over every patch, column accuracy)."""
        import torch.nn.functional as F

        b, n, _ = features.shape
        idx = torch.arange(n, device=features.device)
        targets = (idx % self.grid, idx // self.grid)
        logits = [h(features).float() for h in self.heads]
        loss = sum(F.cross_entropy(lg.flatten(0, 1), t.repeat(b)) for lg, t in zip(logits, targets)) / 2
        return loss, (logits[0].argmax(-1) == targets[0]).float().mean().item()


class RelationProbe(torch.nn.Module):
    """A linear head on the vision features [B, N, H] predicting, for each object patch of a two-object scene, which
    of RELATIONS its object stands in to the other (auxiliary; not saved)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.head = torch.nn.Linear(hidden, len(RELATIONS))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """features [B, N, H], labels [B, 4, N] (relation_labels: 1, 0, or -1 for no target) -> (binary cross-entropy
        over the patches with targets, the share of them whose four relations are all predicted right). No patch with
        a target: a zero loss (still part of the graph) and accuracy nan."""
        import torch.nn.functional as F

        logits = self.head(features).float()  # [B, N, 4]
        known = labels[:, 0] >= 0  # [B, N]: a patch has all four targets or none
        if not known.any():
            return logits.sum() * 0.0, float("nan")
        lg, tg = logits[known], labels.transpose(1, 2)[known]  # [P, 4]
        acc = ((lg > 0) == (tg > 0.5)).all(-1).float().mean().item()
        return F.binary_cross_entropy_with_logits(lg, tg), acc


@torch.no_grad()
def reconstruct_checked(vq, pixels: torch.Tensor, objects: list) -> tuple[torch.Tensor, int]:
    """VQ reconstructions of pixels [M, 3, H, W] in [-1, 1], rounded to 8-bit as generated images are; a row whose
    reconstruction the exact evaluator reads as other objects than its scene's (objects: sorted (shape, colour)
    pairs per row) keeps its rendering, so no label is taught on a picture that no longer shows it.
    -> (pixels, rows replaced)."""
    from gvu.models.vq_train import quantize
    from gvu.world.evaluator import detect

    rec = vq.decode(quantize(vq, pixels)[2]).float().clamp(-1, 1)
    u8 = ((rec + 1) * 127.5).round()
    arr = u8.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
    ok = torch.tensor([sorted((d.shape or "?", d.color) for d in detect(a)) == obj for a, obj in zip(arr, objects)],
                      device=pixels.device)
    return torch.where(ok[:, None, None, None], u8 / 127.5 - 1, pixels), int(ok.sum())
