"""`gvu convert geneval-detector`: a random state dict with mmdet 2's key names and shapes (written below module
by module, as mmdet's Mask2Former with a Swin backbone names them, independently of the converter's mapping)
converts into a transformers Mask2Former that loads with every weight used once."""

from __future__ import annotations

import json

import pytest
import torch

from gvu.errors import UserError
from gvu.eval.geneval import convert as conv

DIMS = dict(depths=(2, 1, 1, 1), embed=8, swin_heads=(1, 1, 2, 2), window=7, hidden=32, heads=2, enc_layers=1,
            enc_ffn=16, dec_layers=2, dec_ffn=16, queries=5, classes=80)


def mmdet_window_index(w):
    """mmdet's WindowMSA.relative_position_index: double_step_seq, its transpose added, flipped."""
    seq = (torch.arange(0, (2 * w - 1) * w, 2 * w - 1)[:, None] + torch.arange(w)[None, :]).reshape(1, -1)
    return (seq + seq.T).flip(1).contiguous()


def mmdet_state_dict(seed=0, depths=(2, 1, 1, 1), embed=8, swin_heads=(1, 1, 2, 2), window=7, hidden=32, heads=2,
                     enc_layers=1, enc_ffn=16, dec_layers=2, dec_ffn=16, queries=5, classes=80):
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def add(name, *shape):
        sd[name] = torch.randn(*shape, generator=g)

    def linear(name, out, inp, bias=True):
        add(f"{name}.weight", out, inp)
        if bias:
            add(f"{name}.bias", out)

    def norm(name, c):
        add(f"{name}.weight", c)
        add(f"{name}.bias", c)

    add("backbone.patch_embed.projection.weight", embed, 3, 4, 4)
    add("backbone.patch_embed.projection.bias", embed)
    norm("backbone.patch_embed.norm", embed)
    dims = [embed * 2 ** i for i in range(len(depths))]
    for i, (depth, h) in enumerate(zip(depths, swin_heads)):
        c = dims[i]
        for j in range(depth):
            b = f"backbone.stages.{i}.blocks.{j}"
            norm(f"{b}.norm1", c)
            add(f"{b}.attn.w_msa.relative_position_bias_table", (2 * window - 1) ** 2, h)
            sd[f"{b}.attn.w_msa.relative_position_index"] = mmdet_window_index(window)
            linear(f"{b}.attn.w_msa.qkv", 3 * c, c)
            linear(f"{b}.attn.w_msa.proj", c, c)
            norm(f"{b}.norm2", c)
            linear(f"{b}.ffn.layers.0.0", 4 * c, c)
            linear(f"{b}.ffn.layers.1", c, 4 * c)
        if i < len(depths) - 1:
            linear(f"backbone.stages.{i}.downsample.reduction", 2 * c, 4 * c, bias=False)
            norm(f"backbone.stages.{i}.downsample.norm", 4 * c)
        norm(f"backbone.norm{i}", c)
    p = "panoptic_head.pixel_decoder"
    for i in range(3):
        add(f"{p}.input_convs.{i}.conv.weight", hidden, dims[-1 - i], 1, 1)
        add(f"{p}.input_convs.{i}.conv.bias", hidden)
        norm(f"{p}.input_convs.{i}.gn", hidden)
    for k in range(enc_layers):
        e = f"{p}.encoder.layers.{k}"
        linear(f"{e}.attentions.0.sampling_offsets", heads * 3 * 4 * 2, hidden)
        linear(f"{e}.attentions.0.attention_weights", heads * 3 * 4, hidden)
        linear(f"{e}.attentions.0.value_proj", hidden, hidden)
        linear(f"{e}.attentions.0.output_proj", hidden, hidden)
        norm(f"{e}.norms.0", hidden)
        norm(f"{e}.norms.1", hidden)
        linear(f"{e}.ffns.0.layers.0.0", enc_ffn, hidden)
        linear(f"{e}.ffns.0.layers.1", hidden, enc_ffn)
    add(f"{p}.level_encoding.weight", 3, hidden)
    add(f"{p}.lateral_convs.0.conv.weight", hidden, dims[0], 1, 1)
    norm(f"{p}.lateral_convs.0.gn", hidden)
    add(f"{p}.output_convs.0.conv.weight", hidden, hidden, 3, 3)
    norm(f"{p}.output_convs.0.gn", hidden)
    add(f"{p}.mask_feature.weight", hidden, hidden, 1, 1)
    add(f"{p}.mask_feature.bias", hidden)
    h = "panoptic_head"
    add(f"{h}.query_embed.weight", queries, hidden)
    add(f"{h}.query_feat.weight", queries, hidden)
    add(f"{h}.level_embed.weight", 3, hidden)
    for k in range(dec_layers):
        d = f"{h}.transformer_decoder.layers.{k}"
        for a in range(2):
            add(f"{d}.attentions.{a}.attn.in_proj_weight", 3 * hidden, hidden)
            add(f"{d}.attentions.{a}.attn.in_proj_bias", 3 * hidden)
            linear(f"{d}.attentions.{a}.attn.out_proj", hidden, hidden)
        for n in range(3):
            norm(f"{d}.norms.{n}", hidden)
        linear(f"{d}.ffns.0.layers.0.0", dec_ffn, hidden)
        linear(f"{d}.ffns.0.layers.1", hidden, dec_ffn)
    norm(f"{h}.transformer_decoder.post_norm", hidden)
    linear(f"{h}.cls_embed", classes + 1, hidden)
    for k in (0, 2, 4):
        linear(f"{h}.mask_embed.{k}", hidden, hidden)
    return sd


def write_checkpoint(path, sd, meta=None):
    path.write_bytes(conv.state_dict_bytes(sd, meta or {"CLASSES": ("person",) * 80, "iter": 368750}))
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    sd = mmdet_state_dict()
    ckpt = write_checkpoint(root / "m2f.pth", sd)
    n = conv.convert_checkpoint(ckpt, root / "hf")
    return sd, n, root / "hf"


def test_every_mmdet_tensor_is_used_once_and_the_model_loads_with_nothing_missing(converted):
    from transformers import Mask2FormerForUniversalSegmentation

    sd, n, out = converted
    assert n == len(sd)
    model, info = Mask2FormerForUniversalSegmentation.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    hf = model.state_dict()
    enc = "model.pixel_level_module.encoder.swin"
    assert torch.equal(hf[f"{enc}.embeddings.patch_embeddings.projection.weight"],
                       sd["backbone.patch_embed.projection.weight"])
    assert torch.equal(hf["class_predictor.weight"], sd["panoptic_head.cls_embed.weight"])
    q, k, v = sd["backbone.stages.0.blocks.1.attn.w_msa.qkv.weight"].chunk(3)
    att = f"{enc}.encoder.layers.0.blocks.1.attention"
    assert torch.equal(hf[f"{att}.q_proj.weight"], q) and torch.equal(hf[f"{att}.v_proj.weight"], v)
    assert torch.equal(hf[f"{att}.k_proj.weight"], k)
    dec = "model.transformer_module.decoder.layers.1"
    q, k, v = sd["panoptic_head.transformer_decoder.layers.1.attentions.1.attn.in_proj_weight"].chunk(3)
    assert torch.equal(hf[f"{dec}.self_attn.k_proj.weight"], k)
    assert torch.equal(hf[f"{dec}.cross_attn.in_proj_weight"],
                       sd["panoptic_head.transformer_decoder.layers.1.attentions.0.attn.in_proj_weight"])
    assert torch.equal(hf[f"{dec}.cross_attn_layer_norm.weight"],
                       sd["panoptic_head.transformer_decoder.layers.1.norms.0.weight"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"]["64"] == "computer mouse" and cfg["decoder_layers"] == 3 and cfg["num_queries"] == 5
    assert cfg["gvu_source"]["checkpoint"] == "m2f.pth" and cfg["gvu_source"]["official_geneval"] is False
    assert (out / "preprocessor_config.json").is_file()


def test_patch_merging_after_conversion_computes_what_mmdets_unfold_merging_computes(converted):
    """mmdet's PatchMerging: nn.Unfold(2, stride 2) over (C, H, W), LayerNorm, Linear; transformers concatenates
    the four patches instead. With the permuted weights both give the same output."""
    from transformers import Mask2FormerForUniversalSegmentation

    sd, _, out = converted
    model = Mask2FormerForUniversalSegmentation.from_pretrained(str(out)).eval()
    merge = model.model.pixel_level_module.encoder.swin.encoder.layers[1].downsample
    c, hw = 16, 6
    x = torch.randn(2, hw, hw, c, generator=torch.Generator().manual_seed(1))
    unfolded = torch.nn.Unfold(kernel_size=2, stride=2)(x.permute(0, 3, 1, 2)).transpose(1, 2)  # [B, L, 4C]
    s = "backbone.stages.1.downsample"
    normed = torch.nn.functional.layer_norm(unfolded, (4 * c,), sd[f"{s}.norm.weight"], sd[f"{s}.norm.bias"])
    expected = normed @ sd[f"{s}.reduction.weight"].T
    with torch.no_grad():
        got = merge(x.reshape(2, hw * hw, c), (hw, hw))
    assert torch.allclose(got, expected, atol=1e-5)


def test_the_stored_window_index_is_checked_against_transformers(tmp_path):
    sd = mmdet_state_dict()
    sd["backbone.stages.0.blocks.0.attn.w_msa.relative_position_index"][0, 0] += 1
    with pytest.raises(UserError, match="relative_position_index differs"):
        conv.convert_checkpoint(write_checkpoint(tmp_path / "m.pth", sd), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_leftover_or_missing_tensors_stop_the_conversion_naming_them(tmp_path):
    sd = mmdet_state_dict()
    sd["panoptic_head.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(UserError, match="unused source panoptic_head.extra_head.weight"):
        conv.convert_checkpoint(write_checkpoint(tmp_path / "a.pth", sd), tmp_path / "hf")
    sd = mmdet_state_dict()
    del sd["panoptic_head.transformer_decoder.layers.1.norms.2.bias"]
    with pytest.raises(UserError, match="missing source panoptic_head.transformer_decoder.layers.1.norms.2.bias"):
        conv.convert_checkpoint(write_checkpoint(tmp_path / "b.pth", sd), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


CALLS = []


def record_call(*args):
    CALLS.append(args)
    return args


class ObjectWithCode:
    """Unpickling this runs record_call; the converter must not."""

    def __reduce__(self):
        return (record_call, ("ran",))


def test_a_meta_dict_weights_only_refuses_is_read_without_running_its_objects(tmp_path, capsys):
    sd = mmdet_state_dict()
    ckpt = write_checkpoint(tmp_path / "m.pth", sd, meta={"hook": ObjectWithCode(), "iter": 1})
    loaded, note = conv.load_mmdet_state_dict(ckpt)
    assert note and "restricted unpickler" in note
    assert CALLS == [] and set(loaded) == set(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_the_cli_converts_and_refuses_to_overwrite_without_the_flag(tmp_path, gvu):
    ckpt = write_checkpoint(tmp_path / "m.pth", mmdet_state_dict())
    rc, out, err = gvu("convert", "geneval-detector", ckpt, "--out", tmp_path / "hf")
    assert rc == 0, err
    assert f"converted {len(mmdet_state_dict())} tensors" in out
    rc, _, err = gvu("convert", "geneval-detector", ckpt, "--out", tmp_path / "hf")
    assert rc == 2 and "already exists; pass --overwrite" in err
    rc, _, err = gvu("convert", "geneval-detector", tmp_path / "nope.pth", "--out", tmp_path / "hf2")
    assert rc == 2 and "no such checkpoint file" in err
