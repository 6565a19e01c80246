"""Pieces of the nano-Janus pretraining recipe, checked with hand-worked numbers."""

import json
import math
import random

import pytest
import torch

from gvu.models.pretrain import (PatchProbe, PositionProbe, RelationProbe, hard_negatives, patch_labels, ranking_loss,
                                 relation_labels, sequence_logprobs, train_scene)
from gvu.world.prompts import split_of
from gvu.world.scene import Obj, Scene


def test_patch_labels_mark_the_patches_an_object_covers():
    # a large red star centred at (36, 36): radius 12 px spans 24..48, i.e. patches 3..5 of an 8-px grid;
    # patch (4, 4) (pixels 32..40) is inside the star's body, the corners are background
    scene = Scene(objects=(Obj(shape="star", color="red", size="large", x=36.0, y=36.0),))
    lab = patch_labels(scene, 8).view(3, 8, 8)
    assert lab[:, 4, 4].tolist() == [4, 1, 2]  # star is SHAPES[3] -> 4, red COLOR_NAMES[0] -> 1, large SIZES[1] -> 2
    assert lab[:, 0, 0].tolist() == [0, 0, 0] and lab[:, 7, 7].tolist() == [0, 0, 0]
    assert (lab[0] > 0).sum() <= 9  # no patch outside the 3x3 block the star touches


def test_relation_labels_say_where_the_other_object_of_a_pair_lies():
    # small objects (radius 0.1 x 64 = 6.4 px) centred at (16, 20) and (48, 44): the first is left of and above the
    # second (offset (-32, -24), margin 0.1 x 25.6 = 2.56 px each way; revised (-29.4, -21.4) / 40 = (-0.74, -0.54),
    # both beyond 0.5), so it holds "left of" and "above", the second "right of" and "below"
    a = Obj(shape="circle", color="red", size="small", x=16.0, y=20.0)
    b = Obj(shape="square", color="blue", size="small", x=48.0, y=44.0)
    lab = relation_labels(Scene(objects=(a, b)), 8).view(4, 8, 8)  # RELATIONS: left of, right of, above, below
    assert lab[:, 2, 2].tolist() == [1, 0, 1, 0]  # patch (row 2, column 2) = pixels 16..24 x 16..24: the circle
    assert lab[:, 5, 6].tolist() == [0, 1, 0, 1]  # pixels 48..56 x 40..48: the square
    assert lab[:, 0, 7].tolist() == [-1] * 4  # background: no target
    # level with each other (same row): only left / right
    lab = relation_labels(Scene(objects=(a, Obj(shape="square", color="blue", size="small", x=48.0, y=20.0))), 8)
    assert lab.view(4, 8, 8)[:, 2, 2].tolist() == [1, 0, 0, 0]
    # one object, or three: no targets anywhere
    assert (relation_labels(Scene(objects=(a,)), 8) == -1).all()
    c = Obj(shape="star", color="green", size="small", x=48.0, y=12.0)
    assert (relation_labels(Scene(objects=(a, b, c)), 8) == -1).all()


def test_relation_probe_loss_is_binary_cross_entropy_over_patches_with_targets():
    probe = RelationProbe(hidden=2)
    labels = torch.full((1, 4, 3), -1.0)  # patch 0: "left of" and "above"; patch 1: "right of"; patch 2: none
    labels[0, :, 0] = torch.tensor([1.0, 0, 1, 0])
    labels[0, :, 1] = torch.tensor([0.0, 1, 0, 0])
    features = torch.tensor([[[1.0, 0], [0, 1], [9, 9]]])  # patch 2 must not count, whatever it holds
    with torch.no_grad():
        probe.head.weight.zero_()
        probe.head.bias.zero_()
    loss, acc = probe(features, labels)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and acc == 0.0  # logit 0 says "no" to every relation
    with torch.no_grad():  # logit +-3 from feature 0 on left of / above, from feature 1 on right of / below
        probe.head.weight.copy_(3 * torch.tensor([[1.0, -1], [-1, 1], [1, -1], [-1, 1]]))
    loss, acc = probe(features, labels)
    # patch 0: right on all four (log(1 + e^-3) each); patch 1: right on left of / right of / above, wrong on below
    # (target 0, logit +3: log(1 + e^3)); mean over the 8 targets
    want = (7 * math.log(1 + math.exp(-3)) + math.log(1 + math.exp(3))) / 8
    assert loss.item() == pytest.approx(want, abs=1e-6) and acc == 0.5
    loss, acc = probe(features, torch.full((1, 4, 3), -1.0))  # nothing to learn: zero loss, accuracy undefined
    assert loss.item() == 0.0 and math.isnan(acc)


def test_ranking_loss_is_the_listwise_cross_entropy_with_the_true_prompt_first():
    scores = torch.tensor([2.0, 0.0, 0.0, 1.0, 1.0])  # groups: [2, 0] and [0, 1, 1]
    loss, acc = ranking_loss(scores, [2, 3])
    # -log(e^2 / (e^2 + 1)) = log(1 + e^-2) = 0.126928;  -log(1 / (1 + 2e)) = log(1 + 2e) = 1.862238
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-2)) + math.log(1 + 2 * math.e)) / 2, abs=1e-6)
    assert acc == 0.5


def test_sequence_logprobs_sum_only_answer_tokens():
    logits = torch.zeros(1, 5, 4)  # uniform over 4 tokens: log p = -log 4 everywhere
    logits[0, 2, 3] = math.log(3.0)  # position 2 predicts token 3 with p = 3 / 6 = 0.5
    labels = torch.tensor([[-100, -100, -100, 3, 1]])  # answer = tokens at positions 3 and 4
    assert sequence_logprobs(logits, labels).item() == pytest.approx(math.log(0.5) + math.log(0.25), abs=1e-6)


def test_patch_probe_learns_nothing_from_background_only_accuracy():
    probe = PatchProbe(hidden=4)
    loss, acc = probe(torch.randn(2, 6, 4), torch.zeros(2, 3, 6, dtype=torch.long))
    assert loss.item() > 0 and math.isnan(acc)  # no object patches: shape accuracy undefined


def test_position_probe_targets_are_each_patch_column_and_row():
    probe = PositionProbe(hidden=4, grid=2)  # 4 patches: (col, row) = (0, 0), (1, 0), (0, 1), (1, 1)
    features = torch.eye(4).expand(3, 4, 4)  # patch i's feature is the one-hot of i
    with torch.no_grad():
        for h in probe.heads:
            h.weight.zero_()
            h.bias.zero_()
    loss, acc = probe(features)
    # zero heads: uniform over 2 columns and 2 rows, cross-entropy log 2 for each; ties pick column 0, right for 2 of 4
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and acc == 0.5
    with torch.no_grad():  # column head: logit 5 on the true column; row head: logit 5 on the wrong row
        probe.heads[0].weight.copy_(5 * torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]]))
        probe.heads[1].weight.copy_(5 * torch.tensor([[0.0, 0, 1, 1], [1, 1, 0, 0]]))
    loss, acc = probe(features)
    # column: -log(e^5 / (e^5 + 1)) = log(1 + e^-5); row: log(1 + e^5); the loss is their mean
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-5)) + math.log(1 + math.exp(5))) / 2, abs=1e-5)
    assert acc == 1.0


def test_hard_negatives_are_false_for_the_scene_and_never_eval_or_held_out_prompts():
    from gvu.world.perturb import distractors
    from gvu.world.rules import judge_scene

    rng, kept, dropped = random.Random(0), 0, 0
    for _ in range(150):
        suite, m, scene = train_scene(rng, with_suite=True)
        state = rng.getstate()
        edits = hard_negatives(suite, m, scene, rng)
        rng.setstate(state)
        every = distractors(m, scene, 3, rng)  # the same draws, unfiltered
        assert edits == [d["prompt"] for d in every if split_of(d, suite) in ("train", "train+eval")]
        for d in every:
            assert not judge_scene(d, list(scene.objects), scene.image_size).correct
        kept += len(edits)
        dropped += len(every) - len(edits)
    assert kept > 200 and dropped > 0  # the filter is exercised: some edits were eval or held-out prompts


def test_stage2_ranking_rows_come_in_groups_sharing_one_image():
    from gvu.models import nano
    from gvu.models.pretrain import PretrainConfig, Stage2Data

    spec = nano.SPECS["smoke"]
    tok = nano.build_tokenizer(spec, nano.corpus(n_scenes=200, seed=0))
    data = Stage2Data(tok, spec, PretrainConfig(spec="smoke", rank_images=5), random.Random(0))
    seqs, lens, scenes, groups = data.ranking()
    assert len(groups) == 5 and sum(groups) == len(seqs) == len(lens) == len(scenes)
    start = 0
    for g in groups:
        assert 2 <= g <= 4 and all(sc is scenes[start] for sc in scenes[start:start + g])
        answers = [tuple(s[-k:]) for s, k in zip(seqs[start:start + g], lens[start:start + g])]
        assert len(set(answers)) == g  # true prompt and its edits all differ
        start += g


def test_stage2_batches_are_the_same_with_worker_processes(tmp_path):
    from dataclasses import replace

    from gvu.models import nano
    from gvu.models.pretrain import PRESETS, Stage2Data, stage2_batches

    cfg = replace(PRESETS["smoke"], lm_steps=3)
    spec = nano.SPECS["smoke"]
    tok = nano.build_tokenizer(spec, nano.corpus(n_scenes=200, seed=0))
    tok.save_pretrained(tmp_path / "tok")
    data = Stage2Data(tok, spec, cfg, random.Random(), recon=0.5, seed_base=7)  # stage 3's data: workers get both
    inline = list(stage2_batches(data, str(tmp_path / "tok"), cfg, start=1, steps=3))
    workers = list(stage2_batches(data, str(tmp_path / "tok"), replace(cfg, data_workers=2), start=1, steps=3))
    assert len(inline) == len(workers) == 2
    for a, b in zip(inline, workers):
        assert torch.equal(a["und"].ids, b["und"].ids) and torch.equal(a["pixels"], b["pixels"])
        assert torch.equal(a["recon"], b["recon"]) and a["objects"] == b["objects"]
        assert torch.equal(a["prompt"].ids, b["prompt"].ids) and torch.equal(a["patch"], b["patch"])
        assert a["groups"] == b["groups"]
    assert not torch.equal(inline[0]["pixels"], inline[1]["pixels"])  # steps differ from each other


def test_spatial_prompts_come_only_from_spatial_train_prompts():
    from gvu.models.pretrain import SPATIAL_TAGS, train_prompt

    rng = random.Random(3)
    for _ in range(40):
        suite, m = train_prompt(rng, SPATIAL_TAGS)
        assert m["tag"] in SPATIAL_TAGS[suite]
        assert "train" in split_of(m, suite)
        # every spatial prompt says where things are: a pairwise relation or a region of the image
        assert any("position" in r or "region" in r for r in m["include"])


def test_balanced_relations_draw_only_spatial_prompts_whose_mirror_is_a_train_prompt_too():
    from gvu.models.pretrain import SPATIAL_TAGS, mirror_is_train, train_prompt
    from gvu.world.prompts import make_suite

    # by hand: an eval position prompt, its mirror (same objects, relation flipped), and what the split says of each
    evals = [m for m in make_suite("geneval", "eval", seed=0) if m["tag"] == "position"]
    m = evals[0]
    rel = m["include"][1]["position"][0]
    flipped = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[rel]
    mirror = dict(m, prompt=m["prompt"].replace(f" {rel} ", f" {flipped} "))
    assert mirror_is_train(m, "geneval") == ("train" in split_of(mirror, "geneval"))
    # some eval prompts have a train mirror (the text prior points the wrong way on them), some do not
    assert {mirror_is_train(e, "geneval") for e in evals} == {True, False}
    # a prompt with no relation has no mirror to check
    assert mirror_is_train({"tag": "colors", "include": [{"class": "star", "count": 1, "color": "red"}],
                            "prompt": "a photo of a red star"}, "geneval")

    def draws(balanced: bool, tags=SPATIAL_TAGS, n=200):
        rng = random.Random(11)
        return [train_prompt(rng, tags, balanced) for _ in range(n)]

    plain, balanced = draws(False), draws(True)
    assert all("train" in split_of(m, s) for s, m in balanced)
    assert all(mirror_is_train(m, s) for s, m in balanced)
    assert not all(mirror_is_train(m, s) for s, m in plain)  # without it, some drawn prompts' mirrors are not train
    # tags without relations: the same draws either way
    plain_tags = {"geneval": ("colors", "counting")}
    assert [m["prompt"] for _, m in draws(False, plain_tags)] == [m["prompt"] for _, m in draws(True, plain_tags)]


def test_spatial_suite_draws_spatial_prompts_from_that_suite_only_and_empty_keeps_both():
    from gvu.models.pretrain import SPATIAL_TAGS, PretrainConfig, train_prompt, validate
    from gvu.world.prompts import HELD_OUT_PAIRS
    from gvu.world.sampler import sample_scene

    def draws(suite: str, n=120):
        rng = random.Random(7)
        return [train_scene(rng, with_suite=True, spatial=True, spatial_suite=suite)[:2] for _ in range(n)]

    both = draws("")
    assert {s for s, _ in both} == {"geneval", "genevalpp"}
    # empty: the very draws of the spatial pool as before the field existed (a prompt, then its scene, per row)
    rng = random.Random(7)
    before = []
    for _ in range(120):
        before.append(train_prompt(rng, SPATIAL_TAGS))
        sample_scene(before[-1][1], rng, forbid=HELD_OUT_PAIRS)
    assert [m["prompt"] for _, m in both] == [m["prompt"] for _, m in before]
    for suite in SPATIAL_TAGS:
        got = draws(suite)
        assert {s for s, _ in got} == {suite}
        assert {m["tag"] for _, m in got} == set(SPATIAL_TAGS[suite])
        assert all("train" in split_of(m, s) for s, m in got)
    with pytest.raises(ValueError, match="spatial_suite='coco'.*geneval, genevalpp"):
        validate(PretrainConfig(spatial_suite="coco"))


def test_spatial_share_changes_understanding_rows_and_zero_leaves_the_data_as_before():
    from dataclasses import replace

    from gvu.models import nano
    from gvu.models.pretrain import PRESETS, Stage2Data
    from gvu.world.captions import REWARD_QUERY

    spec = nano.SPECS["smoke"]
    tok = nano.build_tokenizer(spec, nano.corpus(n_scenes=200, seed=0))
    base = replace(PRESETS["smoke"], und_batch=6, rank_images=0, aux_weight=0.0)
    # share 0: spatial() draws nothing from the data stream, so older recipes (v0-v2) see exactly their old data
    data = Stage2Data(tok, spec, replace(base, spatial_share=0.0), random.Random(5))
    before = data.rng.getstate()
    assert data.spatial() is False and data.rng.getstate() == before
    data = Stage2Data(tok, spec, replace(base, spatial_share=0.5), random.Random(5))
    hits = [data.spatial() for _ in range(400)]
    assert 160 < sum(hits) < 240  # about half (binomial sd 10)
    # share 1: every row is the reward's query answered by a spatial prompt (one that says where things are)
    data = Stage2Data(tok, spec, replace(base, spatial_share=1.0), random.Random(5))
    seqs, lens, scenes = data.understanding()
    prefix = data.prefix(REWARD_QUERY)
    for seq, k, scene in zip(seqs, lens, scenes):
        assert seq[: len(prefix)] == prefix
        answer = tok.decode(seq[-k:-1]).strip()  # the answer without its end-of-sentence token
        assert any(w in answer for w in (" left", " right", " above", " below"))
        assert len(scene.objects) >= 2


def test_stage3_reconstruction_flags_are_drawn_per_image_after_the_data_and_leave_stage2_data_as_before():
    from dataclasses import replace

    from gvu.models import nano
    from gvu.models.pretrain import PRESETS, Stage2Data

    spec = nano.SPECS["smoke"]
    tok = nano.build_tokenizer(spec, nano.corpus(n_scenes=200, seed=0))
    cfg = replace(PRESETS["smoke"], und_batch=6, rank_images=4)
    plain = Stage2Data(tok, spec, cfg, random.Random()).step(2)
    recon = Stage2Data(tok, spec, cfg, random.Random(), recon=0.5).step(2)
    assert plain["recon"] is None and plain["objects"] is None  # stage 2 draws no flags
    for key in ("pixels", "patch", "labels"):  # flags are drawn last: the rows themselves are unchanged
        assert torch.equal(plain[key], recon[key])
    assert torch.equal(plain["und"].ids, recon["und"].ids) and plain["groups"] == recon["groups"]
    flags, start = recon["recon"], plain["n_und"]
    for g in recon["groups"]:  # a ranking group shows one image: one flag for all its rows
        assert len(set(flags[start:start + g].tolist())) == 1
        start += g
    every = Stage2Data(tok, spec, cfg, random.Random(), recon=1.0).step(2)
    assert every["recon"].all() and len(every["objects"]) == len(every["labels"])
    # a different seed base gives stage 3 data of its own
    other = Stage2Data(tok, spec, cfg, random.Random(), seed_base=7).step(2)
    assert not torch.equal(other["pixels"], plain["pixels"])


def test_a_count_edit_can_name_a_given_count():
    from gvu.world.perturb import perturb

    m = {"tag": "counting", "include": [{"class": "star", "count": 3}], "exclude": [{"class": "star", "count": 4}],
         "prompt": "a photo of three stars"}
    d = perturb(m, "count", random.Random(0), count=4)
    assert d["prompt"] == "a photo of four stars"
    assert d["include"] == [{"class": "star", "count": 4}] and d["exclude"] == [{"class": "star", "count": 5}]
    assert perturb(m, "count", random.Random(0), count=3) is None  # the same count is no edit
    assert m["prompt"] == "a photo of three stars"  # the input is not changed


def test_extra_objects_are_unnamed_shapes_and_keep_the_prompt_true():
    from gvu.models.pretrain import scene_with_extras
    from gvu.world.rules import judge_scene

    rng, extra_counts = random.Random(3), []
    for _ in range(60):
        m, _ = train_scene(rng)
        scene = scene_with_extras(m, rng)
        if scene is None:  # too many objects for one more
            assert sum(r["count"] for r in m["include"]) >= 5 or len({r["class"] for r in m["include"]}) >= 5
            continue
        named = {r["class"] for r in m["include"]}
        n_named = sum(r["count"] for r in m["include"])
        extras = [o for o in scene.objects if o.shape not in named]
        assert len(scene.objects) == n_named + len(extras)  # every other object is an extra of an unnamed shape
        extra_counts.append(len(extras))
        assert judge_scene(m, list(scene.objects), scene.image_size).correct
    assert set(extra_counts) == {1, 2}


def test_decoder_scenes_shrink_every_object_in_place_at_the_given_share():
    from gvu.models.pretrain import decoder_scene

    # share 0: train_scene's scenes, and nothing more is drawn (recipes without dec_small see the same data)
    a, b = random.Random(5), random.Random(5)
    for _ in range(20):
        assert decoder_scene(a, 0.0) == train_scene(b)[1]
    assert a.random() == b.random()
    # share 1: the same scenes with every object small, in the same places
    a, b = random.Random(6), random.Random(6)
    shrunk = 0
    for _ in range(40):
        got, want = decoder_scene(a, 1.0), train_scene(b)[1]
        b.random()  # the draw decoder_scene makes for the share
        assert [(o.shape, o.color, o.x, o.y) for o in got.objects] == [(o.shape, o.color, o.x, o.y) for o in want.objects]
        assert {o.size for o in got.objects} == {"small"}
        shrunk += any(o.size != "small" for o in want.objects)
    assert shrunk > 10  # most scenes had a large object to shrink
    # share 0.5: about half the scenes with a large object keep it
    rng = random.Random(7)
    kept = sum(any(o.size == "large" for o in decoder_scene(rng, 0.5).objects) for _ in range(400))
    full = sum(any(o.size == "large" for o in train_scene(random.Random(i))[1].objects) for i in range(400))
    assert 0.35 < kept / full < 0.65


def test_decoder_scenes_with_held_out_pairs_hold_them_only_in_colours_the_prompt_leaves_open():
    from gvu.models.pretrain import decoder_scene, train_prompt
    from gvu.world.prompts import HELD_OUT_PAIRS
    from gvu.world.rules import judge_scene
    from gvu.world.sampler import sample_scene

    def held(scene):
        return any((o.color, o.shape) in HELD_OUT_PAIRS for o in scene.objects)

    rng = random.Random(8)
    assert not any(held(decoder_scene(rng)) for _ in range(300))  # the default: never, as in every other stage
    a, b, n_held = random.Random(9), random.Random(9), 0
    for _ in range(300):
        scene = decoder_scene(a, held_out=True)
        m = train_prompt(b)[1]  # the same prompt, drawn from a twin generator
        assert sample_scene(m, b) == scene
        assert judge_scene(m, list(scene.objects), scene.image_size).correct  # a train prompt, still true of it
        n_held += held(scene)
    assert 0.1 < n_held / 300 < 0.4  # about a fifth, as in the eval split's scenes


def test_a_counting_scene_with_extras_gets_the_total_count_as_its_first_hard_negative():
    m = {"tag": "counting", "include": [{"class": "star", "count": 3}], "exclude": [{"class": "star", "count": 4}],
         "prompt": "a photo of three stars"}
    objs = [Obj("star", "red", "small", 12, 12), Obj("star", "blue", "small", 40, 12),
            Obj("star", "green", "small", 12, 40), Obj("heart", "red", "small", 44, 44)]
    scene = Scene(tuple(objs), 64)
    for seed in range(5):
        edits = hard_negatives("geneval", m, scene, random.Random(seed))
        assert edits[0] == "a photo of four stars" and len(edits) == 3 and len(set(edits)) == 3
    # without the heart the scene holds only stars: no total-count edit is forced (the draws are as before)
    plain = Scene(tuple(objs[:3]), 64)
    firsts = {hard_negatives("geneval", m, plain, random.Random(seed))[0] for seed in range(12)}
    assert firsts != {"a photo of four stars"}


def _tiny_vq():
    from transformers import JanusVQVAE
    from transformers.models.janus.configuration_janus import JanusVQVAEConfig

    torch.manual_seed(0)
    cfg = JanusVQVAEConfig(base_channels=32, channel_multiplier=[1, 2], latent_channels=32, embed_dim=8,
                           num_embeddings=16, num_patches=8, num_res_blocks=1)
    return JanusVQVAE(cfg).eval()


def test_fp32_group_norms_keep_the_weights_and_normalise_in_fp32_under_bf16_autocast():
    import copy

    import torch.nn.functional as F

    from gvu.models.vq_train import FP32GroupNorm, fp32_group_norms

    vq = _tiny_vq()
    fast = fp32_group_norms(copy.deepcopy(vq))
    norms = [m for m in fast.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(type(m) is FP32GroupNorm for m in norms)
    a, b = vq.state_dict(), fast.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # without autocast both are torch's fp32 group norm: the same numbers
        assert torch.equal(vq.encoder(x), fast.encoder(x))
    norm, h = norms[0], torch.randn(2, norms[0].num_channels, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(h)
    assert y.dtype == torch.float32
    assert torch.equal(y, F.group_norm(h.float(), norm.num_groups, norm.weight, norm.bias, norm.eps))


def test_quantize_in_chunks_gives_the_codes_of_one_call():
    from gvu.models.vq_train import quantize, quantize_indices

    vq = _tiny_vq()
    pixels = torch.rand(5, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        whole = quantize(vq, pixels)[2]
        assert whole.shape == (5, 64)  # one downsampling: 16x16 pixels -> 8x8 codes
        assert torch.equal(quantize_indices(vq, pixels, chunk=2), whole)


def test_unit_norm_codes_make_the_librarys_encode_and_decode_agree_with_training():
    """The library's encode() picks codes by unnormalised distance and decode() draws L2-normalised codes; training
    quantizes by cosine. With codes of other lengths they disagree; after normalise_codebook they agree exactly."""
    from gvu.models.vq_train import normalise_codebook, quantize

    vq = _tiny_vq()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        vq.quantize.embedding.weight.mul_(torch.rand(16, 1) * 3 + 0.2)  # codes of lengths 0.2 .. 3.2
        z, q, ours = quantize(vq, x)
        assert (vq.encode(x).image_tokens.view(3, -1) != ours).any()  # the lengths sway the library's choice
        normalise_codebook(vq)
        assert torch.equal(quantize(vq, x)[2], ours)  # the cosine choice ignores the lengths
        assert torch.equal(vq.encode(x).image_tokens.view(3, -1), ours)
        drawn = vq.decode(ours)
        assert torch.allclose(drawn, vq.decoder(vq.post_quant_conv(q)), atol=1e-5)


def test_rows_sharing_an_image_encode_it_once_with_the_same_logits_and_gradients():
    """text_logits with image_index (stage 2's ranking rows: one image, several captions) equals giving every row its
    own copy of the image: logits, and the gradients reaching the vision encoder (fp32, tiny random model)."""
    from gvu.models.janus import text_logits
    from gvu.models.janus_format import JanusTemplate, left_pad
    from gvu.models.nano import build_random

    model, tok = build_random("smoke")
    n = model.config.vision_config.num_image_tokens
    prefix = tok.encode(JanusTemplate().understanding("Describe the image in detail.", n), add_special_tokens=False)
    answers = ["a photo of a red star", "a photo of a blue star", "a photo of two circles"]
    batch = left_pad([prefix + tok.encode(a, add_special_tokens=False) for a in answers], tok.pad_token_id or 0)
    torch.manual_seed(0)
    size = model.config.vision_config.image_size
    images = torch.randn(2, 3, size, size)
    index = torch.tensor([0, 0, 1])  # rows 0 and 1 share image 0

    def run(shared: bool):
        model.zero_grad(set_to_none=True)
        logits = text_logits(model, batch, images, index) if shared else text_logits(model, batch, images[index])
        (logits.float() ** 2).mean().backward()
        grads = {k: p.grad.clone() for k, p in model.model.vision_model.named_parameters() if p.grad is not None}
        return logits.detach(), grads

    (a, ga), (b, gb) = run(True), run(False)
    assert torch.allclose(a, b, atol=1e-5)
    assert ga.keys() == gb.keys() and len(ga) > 0
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=1e-6, rtol=1e-4), k
    with pytest.raises(ValueError, match="image placeholders"):
        text_logits(model, batch, images, torch.tensor([0, 1]))  # 3 rows, 2 image indices


def test_a_resumed_stage_drops_its_own_log_records_after_the_checkpoint(tmp_path):
    from gvu.models.pretrain import log, trim_log

    for rec in ({"stage": 1, "step": 200}, {"stage": 1, "step": 220}, {"stage": "1c", "step": 20},
                {"stage": 2, "step": 200}, {"stage": 2, "step": 220}, {"stage": 2, "step": 240}):
        log(str(tmp_path), rec)
    trim_log(str(tmp_path), 2, 200)  # stage 2 resumes from its step-200 save: 220 and 240 will be written again
    trim_log(str(tmp_path), 3, 0)  # stage 3 starts afresh: it has no records, nothing else moves
    rows = [json.loads(ln) for ln in open(tmp_path / "log.jsonl")]
    assert [(r["stage"], r["step"]) for r in rows] == [(1, 200), (1, 220), ("1c", 20), (2, 200)]
    trim_log(str(tmp_path / "none"), 1, 0)  # a folder without a log: nothing to do


def test_caption_train_only_keeps_eval_and_held_out_prompt_texts_out_of_geneval_captions(monkeypatch):
    from dataclasses import replace

    from gvu.models import nano
    from gvu.models.pretrain import PRESETS, Stage2Data
    from gvu.world import captions

    made = {}  # caption text -> its suite's split, for every prompt true_prompt builds
    true_prompt = captions.true_prompt

    def recording(scene, suite, tag, rng):
        m = true_prompt(scene, suite, tag, rng)
        if m is not None:
            made[m["prompt"]] = split_of(m, suite)
        return m

    monkeypatch.setattr(captions, "true_prompt", recording)
    rng = random.Random(3)
    scenes = [train_scene(rng)[1] for _ in range(300)]

    def split_counts(train_only):
        rng = random.Random(4)
        texts = [captions.describe(sc, rng, "geneval", train_only=train_only) for sc in scenes]
        return {s: sum(made.get(t) == s for t in texts) for s in ("train", "train+eval", "eval", "ood")}

    leaky = split_counts(False)
    assert leaky["eval"] >= 8  # about 8% of such captions are eval-split texts when nothing keeps them out
    kept = split_counts(True)
    assert kept["eval"] == kept["ood"] == 0 and kept["train"] + kept["train+eval"] >= 290

    # Stage2Data passes the setting on (the shipped recipe has it on)
    assert PRESETS["nano"].caption_train_only
    seen = []
    describe = captions.describe
    monkeypatch.setattr(captions, "describe", lambda *a, **k: seen.append(k.get("train_only")) or describe(*a, **k))
    spec = nano.SPECS["smoke"]
    tok = nano.build_tokenizer(spec, nano.corpus(n_scenes=200, seed=0))
    for flag in (False, True):
        seen.clear()
        cfg = replace(PRESETS["smoke"], und_batch=40, rank_images=0, caption_train_only=flag)
        Stage2Data(tok, spec, cfg, random.Random(5)).understanding()
        assert set(seen) - {None} == {flag}  # None: the other queries' full descriptions, which name no prompt
