"""GenEval's detector checkpoint (mmdet 2.x Mask2Former, Swin-S) -> a transformers Mask2Former directory.

The checkpoint is mmdet's mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco (GenEval's download_models.sh). Its
weights map one to one onto Mask2FormerForUniversalSegmentation's, with three transformations:
- Swin attention: mmdet's fused `attn.w_msa.qkv` [3C, C] splits into q, k, v projections (in that order).
- Swin patch merging: mmdet gathers each 2x2 patch with nn.Unfold, so its 4C input channels are ordered
  channel-major, c * 4 + (2 * dy + dx); transformers concatenates the four patches, (dy, dx) = (0, 0), (1, 0),
  (0, 1), (1, 1), group-major, g * C + c. The columns of `downsample.reduction` and the entries of
  `downsample.norm` are permuted accordingly (the inverse of mmdet's swin_converter.correct_unfold_*).
- Transformer decoder self-attention: mmdet's nn.MultiheadAttention `in_proj` [3C, C] splits into q, k, v
  projections; its cross-attention stays an nn.MultiheadAttention in transformers too. mmdet's layer order is
  (cross_attn, norm, self_attn, norm, ffn, norm): attentions.0 / norms.0 are the cross-attention's.
Swin's `relative_position_index` buffers are not weights: each is checked to equal transformers' own index (the
window conventions agree) and then counts as used. Every source tensor must be used exactly once and every
target weight filled, or the conversion stops naming the leftovers. Two target entries have no source and are
not used at inference: Swin's final `layernorm` (SwinBackbone normalises each stage with hidden_states_norms
instead) and the loss's `criterion.empty_weight` (built from the config).

The architecture sizes are read from the tensors' shapes; attention heads come from the deformable attention's
sampling offsets (heads x 3 levels x 4 points x 2), and the decoder uses the same number (mmdet's config: 8).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
import shutil
import sys
import types
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from gvu.atomic import replace_folder
from gvu.errors import UserError
from gvu.eval.geneval.detector import MMDET_MEAN, MMDET_SCALE, MMDET_STD, OFFICIAL_SHA256_PREFIX, PAD_DIVISOR
from gvu.world.geneval_io import COCO_CLASS_NAMES

ENC = "model.pixel_level_module.encoder"
PIX = "model.pixel_level_module.decoder"
TM = "model.transformer_module"
NOT_FROM_SOURCE = (f"{ENC}.swin.layernorm.weight", f"{ENC}.swin.layernorm.bias", "criterion.empty_weight")
LEVELS, POINTS = 3, 4  # mmdet's MultiScaleDeformableAttention in this config; transformers fixes both too


@dataclass(frozen=True)
class Rule:
    """Source tensors -> target tensors, by one of: copy, split3 (q/k/v thirds along dim 0), unfold (patch
    merging permutation of the last dim), index (a buffer checked against the target model's own)."""

    kind: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]


# --------------------------------------------------------------------------------------------- reading


class _Placeholder:
    """Stands in for any object of the checkpoint's `meta` that is not a tensor or plain data; nothing of
    the pickled class is imported or run."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


_TENSOR_GLOBALS = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                   ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_parameter"), ("torch", "Size")}


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Builds tensors (torch's own rebuild functions; torch.load resolves storages itself) and plain containers;
    every other global becomes an inert _Placeholder."""

    def find_class(self, module, name):
        if (module, name) in _TENSOR_GLOBALS:
            return super().find_class(module, name)
        return _Placeholder


def _tensors_only_pickle():
    module = types.ModuleType("gvu_tensors_only_pickle")
    module.Unpickler, module.load = _TensorsOnlyUnpickler, pickle.load
    return module


def load_mmdet_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state_dict, a note when the `meta` dict needed placeholders). torch.load(weights_only=True) first;
    if that refuses something in `meta`, the file is read again with a restricted unpickler that builds only
    tensors and plain containers, turning any other object into an inert placeholder."""
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file (GenEval's download_models.sh fetches it)")
    note = None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tensors_only_pickle())
        except Exception as e2:  # any failure to parse is the file's, not ours
            raise UserError(f"{path}: not a readable torch checkpoint ({e2})") from None
        note = (f"torch.load(weights_only=True) refused part of the checkpoint's metadata "
                f"({str(e).splitlines()[0][:160]}); read its state_dict with a restricted unpickler instead")
    except Exception as e:
        raise UserError(f"{path}: not a readable torch checkpoint ({e})") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path}: no state_dict of tensors; expected an mmdet checkpoint ({{'meta', 'state_dict'}})")
    return dict(sd), note


# --------------------------------------------------------------------------------------------- mapping


def _count(sd: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _shape(sd: dict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise UserError(f"the checkpoint has no {key!r}: not mmdet's Mask2Former with a Swin backbone")
    return tuple(sd[key].shape)


@dataclass(frozen=True)
class Sizes:
    """The architecture, as read from the checkpoint's tensor shapes."""

    depths: tuple[int, ...]  # Swin blocks per stage
    swin_heads: tuple[int, ...]
    embed_dim: int
    patch_size: int
    window_size: int
    mlp_ratio: float
    hidden_dim: int
    num_queries: int
    num_labels: int
    heads: int
    encoder_layers: int
    encoder_ffn: int
    decoder_layers: int  # mmdet's count; transformers' config counts one more (its initial prediction)
    decoder_ffn: int
    mask_feature_size: int


def read_sizes(sd: dict[str, torch.Tensor]) -> Sizes:
    stages = _count(sd, r"backbone\.stages\.(\d+)\.")
    if not stages:
        raise UserError("the checkpoint has no backbone.stages.*: not mmdet's Mask2Former with a Swin backbone")
    depths = tuple(_count(sd, rf"backbone\.stages\.{i}\.blocks\.(\d+)\.") for i in range(stages))
    heads_swin = tuple(_shape(sd, f"backbone.stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table")[1]
                       for i in range(stages))
    table = _shape(sd, "backbone.stages.0.blocks.0.attn.w_msa.relative_position_bias_table")[0]
    embed, _, patch, _ = _shape(sd, "backbone.patch_embed.projection.weight")
    offsets = _shape(sd, "panoptic_head.pixel_decoder.encoder.layers.0.attentions.0.sampling_offsets.weight")[0]
    if offsets % (LEVELS * POINTS * 2):
        raise UserError(f"sampling_offsets has {offsets} outputs, not heads x {LEVELS} levels x {POINTS} points x 2")
    queries, hidden = _shape(sd, "panoptic_head.query_feat.weight")
    return Sizes(
        depths=depths, swin_heads=heads_swin, embed_dim=embed, patch_size=patch,
        window_size=(math.isqrt(table) + 1) // 2,
        mlp_ratio=_shape(sd, "backbone.stages.0.blocks.0.ffn.layers.0.0.weight")[0] / embed,
        hidden_dim=hidden, num_queries=queries, num_labels=_shape(sd, "panoptic_head.cls_embed.weight")[0] - 1,
        heads=offsets // (LEVELS * POINTS * 2),
        encoder_layers=_count(sd, r"panoptic_head\.pixel_decoder\.encoder\.layers\.(\d+)\."),
        encoder_ffn=_shape(sd, "panoptic_head.pixel_decoder.encoder.layers.0.ffns.0.layers.0.0.weight")[0],
        decoder_layers=_count(sd, r"panoptic_head\.transformer_decoder\.layers\.(\d+)\."),
        decoder_ffn=_shape(sd, "panoptic_head.transformer_decoder.layers.0.ffns.0.layers.0.0.weight")[0],
        mask_feature_size=_shape(sd, "panoptic_head.pixel_decoder.mask_feature.weight")[0])


def _wb(kind: str, src: str, dst: str, names=("weight", "bias")) -> list[Rule]:
    return [Rule(kind, (f"{src}.{n}",), (f"{dst}.{n}",)) for n in names]


def plan(sizes: Sizes) -> list[Rule]:
    """Every mmdet tensor -> its transformers tensor(s)."""
    rules: list[Rule] = []
    rules += _wb("copy", "backbone.patch_embed.projection", f"{ENC}.swin.embeddings.patch_embeddings.projection")
    rules += _wb("copy", "backbone.patch_embed.norm", f"{ENC}.swin.embeddings.norm")
    for i, depth in enumerate(sizes.depths):
        for j in range(depth):
            s, t = f"backbone.stages.{i}.blocks.{j}", f"{ENC}.swin.encoder.layers.{i}.blocks.{j}"
            rules += _wb("copy", f"{s}.norm1", f"{t}.layernorm_before")
            rules += _wb("copy", f"{s}.norm2", f"{t}.layernorm_after")
            rules.append(Rule("copy", (f"{s}.attn.w_msa.relative_position_bias_table",),
                              (f"{t}.attention.relative_position_bias.relative_position_bias_table",)))
            rules.append(Rule("index", (f"{s}.attn.w_msa.relative_position_index",), ()))
            for n in ("weight", "bias"):
                rules.append(Rule("split3", (f"{s}.attn.w_msa.qkv.{n}",),
                                  tuple(f"{t}.attention.{p}_proj.{n}" for p in "qkv")))
            rules += _wb("copy", f"{s}.attn.w_msa.proj", f"{t}.attention.o_proj")
            rules += _wb("copy", f"{s}.ffn.layers.0.0", f"{t}.mlp.fc1")
            rules += _wb("copy", f"{s}.ffn.layers.1", f"{t}.mlp.fc2")
        if i < len(sizes.depths) - 1:
            s, t = f"backbone.stages.{i}.downsample", f"{ENC}.swin.encoder.layers.{i}.downsample"
            rules += _wb("unfold", f"{s}.reduction", f"{t}.reduction", ("weight",))
            rules += _wb("unfold", f"{s}.norm", f"{t}.norm")
        rules += _wb("copy", f"backbone.norm{i}", f"{ENC}.hidden_states_norms.stage{i + 1}")
    p = "panoptic_head.pixel_decoder"
    for i in range(LEVELS):  # both sides start from the lowest-resolution feature map
        rules += _wb("copy", f"{p}.input_convs.{i}.conv", f"{PIX}.input_projections.{i}.0")
        rules += _wb("copy", f"{p}.input_convs.{i}.gn", f"{PIX}.input_projections.{i}.1")
    for k in range(sizes.encoder_layers):
        s, t = f"{p}.encoder.layers.{k}", f"{PIX}.encoder.layers.{k}"
        for part in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            rules += _wb("copy", f"{s}.attentions.0.{part}", f"{t}.self_attn.{part}")
        rules += _wb("copy", f"{s}.norms.0", f"{t}.self_attn_layer_norm")
        rules += _wb("copy", f"{s}.norms.1", f"{t}.final_layer_norm")
        rules += _wb("copy", f"{s}.ffns.0.layers.0.0", f"{t}.fc1") + _wb("copy", f"{s}.ffns.0.layers.1", f"{t}.fc2")
    rules.append(Rule("copy", (f"{p}.level_encoding.weight",), (f"{PIX}.level_embed",)))
    rules += _wb("copy", f"{p}.lateral_convs.0.conv", f"{PIX}.adapter_1.0", ("weight",))
    rules += _wb("copy", f"{p}.lateral_convs.0.gn", f"{PIX}.adapter_1.1")
    rules += _wb("copy", f"{p}.output_convs.0.conv", f"{PIX}.layer_1.0", ("weight",))
    rules += _wb("copy", f"{p}.output_convs.0.gn", f"{PIX}.layer_1.1")
    rules += _wb("copy", f"{p}.mask_feature", f"{PIX}.mask_projection")
    h = "panoptic_head"
    rules.append(Rule("copy", (f"{h}.query_embed.weight",), (f"{TM}.queries_embedder.weight",)))
    rules.append(Rule("copy", (f"{h}.query_feat.weight",), (f"{TM}.queries_features.weight",)))
    rules.append(Rule("copy", (f"{h}.level_embed.weight",), (f"{TM}.level_embed.weight",)))
    for k in range(sizes.decoder_layers):
        s, t = f"{h}.transformer_decoder.layers.{k}", f"{TM}.decoder.layers.{k}"
        rules.append(Rule("copy", (f"{s}.attentions.0.attn.in_proj_weight",), (f"{t}.cross_attn.in_proj_weight",)))
        rules.append(Rule("copy", (f"{s}.attentions.0.attn.in_proj_bias",), (f"{t}.cross_attn.in_proj_bias",)))
        rules += _wb("copy", f"{s}.attentions.0.attn.out_proj", f"{t}.cross_attn.out_proj")
        rules.append(Rule("split3", (f"{s}.attentions.1.attn.in_proj_weight",),
                          tuple(f"{t}.self_attn.{p}_proj.weight" for p in "qkv")))
        rules.append(Rule("split3", (f"{s}.attentions.1.attn.in_proj_bias",),
                          tuple(f"{t}.self_attn.{p}_proj.bias" for p in "qkv")))
        rules += _wb("copy", f"{s}.attentions.1.attn.out_proj", f"{t}.self_attn.out_proj")
        for n, name in enumerate(("cross_attn_layer_norm", "self_attn_layer_norm", "final_layer_norm")):
            rules += _wb("copy", f"{s}.norms.{n}", f"{t}.{name}")
        rules += _wb("copy", f"{s}.ffns.0.layers.0.0", f"{t}.fc1") + _wb("copy", f"{s}.ffns.0.layers.1", f"{t}.fc2")
    rules += _wb("copy", f"{h}.transformer_decoder.post_norm", f"{TM}.decoder.layernorm")
    rules += _wb("copy", f"{h}.cls_embed", "class_predictor")
    for k, j in ((0, 0), (2, 1), (4, 2)):  # nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)
        rules += _wb("copy", f"{h}.mask_embed.{k}", f"{TM}.decoder.mask_predictor.mask_embedder.{j}.0")
    return rules


def unfold_to_concat(four_c: int) -> torch.Tensor:
    """perm with concat_order[..., j] = unfold_order[..., perm[j]]: for transformers' index j = g * C + c with
    patch g at (dy, dx) = (0, 0), (1, 0), (0, 1), (1, 1), mmdet's Unfold index is c * 4 + 2 * dy + dx."""
    c = four_c // 4
    dy, dx = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    g, ch = torch.arange(4).repeat_interleave(c), torch.arange(c).repeat(4)
    return ch * 4 + 2 * dy[g] + dx[g]


def _transform(kind: str, x: torch.Tensor) -> list[torch.Tensor]:
    if kind == "split3":
        return list(x.chunk(3, dim=0))
    if kind == "unfold":
        return [x[..., unfold_to_concat(x.shape[-1])]]
    return [x]


def apply(rules: list[Rule], source: dict[str, torch.Tensor],
          target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill the target state dict from the source by the rules; a UserError lists every leftover on either side."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    problems: list[str] = []
    for r in rules:
        missing = [s for s in r.sources if s not in source]
        if missing:
            problems.append(f"missing source {missing[0]}")
            continue
        used.update(r.sources)
        x = source[r.sources[0]]
        if r.kind == "index":
            continue  # checked against the target model's buffers by check_window_index
        values = _transform(r.kind, x)
        for t, v in zip(r.targets, values):
            if t not in target:
                problems.append(f"no target {t} (for {r.sources[0]})")
            elif t in out:
                problems.append(f"target {t} filled twice")
            elif tuple(target[t].shape) != tuple(v.shape):
                problems.append(f"{r.sources[0]} -> {t}: shape {tuple(v.shape)} != {tuple(target[t].shape)}")
            else:
                out[t] = v.to(target[t].dtype).contiguous()
    problems += [f"unused source {k}" for k in sorted(set(source) - used)]
    problems += [f"unfilled target {k}" for k in sorted(set(target) - set(out) - set(NOT_FROM_SOURCE))]
    if problems:
        shown = "; ".join(problems[:12]) + (f"; and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise UserError(f"the checkpoint does not map onto transformers' Mask2Former: {shown}")
    return out


def check_window_index(source: dict[str, torch.Tensor], model) -> None:
    """mmdet's stored relative_position_index must equal transformers' own (same window indexing)."""
    for key, value in source.items():
        if key.endswith("attn.w_msa.relative_position_index"):
            i, j = re.match(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.", key).groups()
            mine = model.model.pixel_level_module.encoder.swin.encoder.layers[int(i)].blocks[int(j)] \
                .attention.relative_position_bias.relative_position_index
            if not torch.equal(value.flatten().long(), mine.flatten().long()):
                raise UserError(f"{key} differs from transformers' window index: the Swin variants disagree")


# ------------------------------------------------------------------------------------------------ write


def build_config(sizes: Sizes, source_note: dict):
    from transformers import Mask2FormerConfig, SwinConfig

    if sizes.num_labels != len(COCO_CLASS_NAMES):
        raise UserError(f"the checkpoint has {sizes.num_labels} classes; GenEval's detector has COCO's 80")
    swin = SwinConfig(embed_dim=sizes.embed_dim, depths=list(sizes.depths), num_heads=list(sizes.swin_heads),
                      window_size=sizes.window_size, patch_size=sizes.patch_size, mlp_ratio=sizes.mlp_ratio,
                      out_features=[f"stage{i + 1}" for i in range(len(sizes.depths))], drop_path_rate=0.0)
    return Mask2FormerConfig(
        backbone_config=swin, num_labels=sizes.num_labels, id2label=dict(enumerate(COCO_CLASS_NAMES)),
        label2id={n: i for i, n in enumerate(COCO_CLASS_NAMES)}, hidden_dim=sizes.hidden_dim,
        feature_size=sizes.hidden_dim, mask_feature_size=sizes.mask_feature_size, num_queries=sizes.num_queries,
        num_attention_heads=sizes.heads, encoder_layers=sizes.encoder_layers,
        encoder_feedforward_dim=sizes.encoder_ffn, decoder_layers=sizes.decoder_layers + 1,
        dim_feedforward=sizes.decoder_ffn, gvu_source=source_note)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_checkpoint(checkpoint: Path, out: Path, overwrite: bool = False) -> int:
    """Convert and write `out` (config.json with gvu_source, model.safetensors, preprocessor_config.json);
    returns the number of source tensors used."""
    from transformers import Mask2FormerForUniversalSegmentation
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    source, note = load_mmdet_state_dict(checkpoint)
    if note:
        print(f"gvu: note: {note}", file=sys.stderr)
    sizes = read_sizes(source)
    digest = sha256_of(checkpoint)
    provenance = {"kind": "mmdet-mask2former", "checkpoint": checkpoint.name, "sha256": digest,
                  "official_geneval": digest.startswith(OFFICIAL_SHA256_PREFIX)}
    model = Mask2FormerForUniversalSegmentation(build_config(sizes, provenance)).eval()
    target = model.state_dict()
    filled = apply(plan(sizes), source, target)
    check_window_index(source, model)
    model.load_state_dict({**target, **filled})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp))
        Mask2FormerImageProcessorPil(
            size={"shortest_edge": min(MMDET_SCALE), "longest_edge": max(MMDET_SCALE)}, size_divisor=PAD_DIVISOR,
            image_mean=[m / 255 for m in MMDET_MEAN], image_std=[s / 255 for s in MMDET_STD]).save_pretrained(str(tmp))
        (tmp / "gvu_conversion.json").write_text(json.dumps({**provenance, "tensors": len(source)}, indent=2) + "\n")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(source)


def state_dict_bytes(sd: dict[str, torch.Tensor], meta: dict | None = None) -> bytes:
    """An mmdet-style checkpoint file's bytes ({'meta', 'state_dict'}), for tests and tools."""
    buf = io.BytesIO()
    torch.save({"meta": meta or {}, "state_dict": sd}, buf)
    return buf.getvalue()
