"""The Janus backend: transformers' JanusForConditionalGeneration behind gvu's unified-model adapter.

Model specifics live here and nowhere else (JANUS-NOTES pitfalls 9 and 10): image-token logits come from the
language model's hidden states through `generation_head` (forward() only gives text logits), image-token inputs
are embedded by `prepare_embeddings_for_image_generation`, and log-probs are recomputed by teacher forcing.
"""

from __future__ import annotations

import torch
from transformers import JanusForConditionalGeneration

from gvu.models.janus_format import Batch


def image_token_logits(model: JanusForConditionalGeneration, prompt: Batch, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced generation logits.

    prompt: left-padded prompt batch [B, T] ending in <begin_of_image>; tokens: image tokens [B, N].
    Returns logits [B, N, V_img]: row j predicts tokens[:, j] from the prompt and tokens[:, :j].
    """
    b, n = tokens.shape
    text = model.get_input_embeddings()(prompt.ids)
    image = model.prepare_embeddings_for_image_generation(tokens[:, :-1])
    embeds = torch.cat([text, image.to(text.dtype)], dim=1)
    mask = torch.cat([prompt.mask, torch.ones(b, n - 1, dtype=prompt.mask.dtype, device=prompt.mask.device)], 1)
    last = prompt.positions[:, -1:]
    positions = torch.cat([prompt.positions, last + torch.arange(1, n, device=last.device)], dim=1)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    return model.model.generation_head(hidden[:, -n:])


def text_logits(model: JanusForConditionalGeneration, batch: Batch, pixel_values: torch.Tensor | None) -> torch.Tensor:
    """Understanding-branch logits [B, T, V_text] for ids holding N image placeholders per row, with the images
    pixel_values [B, 3, H, W] (normalised as the image processor does: [-1, 1] for mean = std = 0.5)."""
    out = model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.positions, pixel_values=pixel_values)
    return out.logits
