"""The GvU reward and group rollout on a tiny random Janus (transformers' classes, no download)."""

import math
import random

import numpy as np
import pytest
import torch

from gvu.config import ConfigError, RewardConfig, SamplingConfig
from gvu.models.janus import JanusBackend, JanusBackendConfig, image_token_logits
from gvu.models.janus_format import unconditional
from gvu.models.nano import build_random
from gvu.reward import Judge, gvu_reward, oracle_reward, reduce_logprobs
from gvu.reward_reference import reference_reward
from gvu.rollout import rollout
from gvu.sampling import filter_logits, guide, sample

QUERY = "Describe the image in detail."
PROMPTS = ["a photo of a red circle", "a photo of two stars and a blue heart",
           "A photo of a larger square on the left and a smaller cross on the right", "a photo of a star"]


@pytest.fixture(scope="module")
def backend():
    model, tok = build_random("smoke", seed=0)
    return JanusBackend(model, tok, JanusBackendConfig(default_cfg_scale=3.0))


@pytest.fixture(scope="module")
def pixels(backend):
    return backend.decode_images(backend.sample_image_tokens(PROMPTS, SamplingConfig(seed=0)))


def test_reductions_match_hand_computed_values():
    lp = torch.log(torch.tensor([[0.5, 0.25, 1.0], [0.1, 1.0, 1.0]]))
    mask = torch.tensor([[True, True, False], [True, False, False]])
    # row 0: sqrt(0.5 * 0.25) = 0.353553; product 0.125; min 0.25.  row 1: one token, 0.1 for all three
    assert torch.allclose(reduce_logprobs(lp, mask, "geometric_mean"), torch.tensor([math.sqrt(0.125), 0.1]))
    assert torch.allclose(reduce_logprobs(lp, mask, "product"), torch.tensor([0.125, 0.1]))
    assert torch.allclose(reduce_logprobs(lp, mask, "min"), torch.tensor([0.25, 0.1]))


def test_weighted_geometric_mean_matches_hand_computed_values():
    lp = torch.log(torch.tensor([[0.5, 0.25, 1.0], [0.1, 1.0, 1.0]]))
    mask = torch.tensor([[True, True, False], [True, False, False]])
    w = torch.tensor([[3.0, 1.0, 7.0], [2.0, 5.0, 5.0]])  # masked weights must not count
    # row 0: exp((3 log 0.5 + log 0.25) / 4) = (0.125 * 0.25) ** 0.25 = 0.420448; row 1: 0.1
    assert torch.allclose(reduce_logprobs(lp, mask, "geometric_mean", w), torch.tensor([0.420448, 0.1]), atol=1e-6)
    # equal weights give back the plain geometric mean
    assert torch.allclose(reduce_logprobs(lp, mask, "geometric_mean", torch.ones(2, 3)),
                          reduce_logprobs(lp, mask, "geometric_mean"))
    with pytest.raises(ValueError, match="geometric_mean only"):
        reduce_logprobs(lp, mask, "min", w)


def test_surprisal_weights_are_the_blank_image_surprisal(backend, pixels):
    cfg = RewardConfig(token_weights="surprisal")
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]  # a repeated prompt, as in a group
    out = gvu_reward(backend, pixels[:3], prompts, cfg)
    blank = torch.zeros(2, 3, backend.image_size, backend.image_size)
    prior = backend.text_logprobs(blank, QUERY, PROMPTS[:2])
    tl = out.token_logprobs
    for row, src in enumerate([0, 1, 0]):
        k = int(tl.mask[row].sum())
        assert torch.allclose(out.token_weights[row, :k], -prior.logprobs[src, :k], atol=1e-5)
        assert (out.token_weights[row, k:] == 0).all()
        manual = math.exp(float((-prior.logprobs[src, :k] * tl.logprobs[row, :k]).sum() / -prior.logprobs[src, :k].sum()))
        assert out.rewards[row].item() == pytest.approx(manual, rel=1e-5)
    # the weighting changes the reward (a random model's prior is not uniform) but not the token log-probs
    plain = gvu_reward(backend, pixels[:3], prompts, RewardConfig())
    assert torch.equal(plain.token_logprobs.logprobs, tl.logprobs)
    assert not torch.allclose(plain.rewards, out.rewards)


def test_batched_reward_equals_slow_reference(backend, pixels):
    fast = gvu_reward(backend, pixels, PROMPTS, RewardConfig()).rewards.double()
    slow = reference_reward(backend, pixels, QUERY, PROMPTS)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=0)


def test_padding_never_changes_a_reward(backend, pixels):
    alone = gvu_reward(backend, pixels[:1], PROMPTS[:1], RewardConfig())
    long_text = "a photo of " + " and ".join(["a red circle"] * 12)
    padded = gvu_reward(backend, pixels[:1].repeat(2, 1, 1, 1), [PROMPTS[0], long_text], RewardConfig())
    assert torch.allclose(alone.rewards[0], padded.rewards[0], atol=1e-6)
    l0 = alone.token_logprobs.mask[0].sum()
    assert torch.allclose(alone.token_logprobs.logprobs[0, :l0], padded.token_logprobs.logprobs[0, :l0], atol=1e-5)


def test_per_token_diagnostics_name_the_prompt_words(backend, pixels):
    out = gvu_reward(backend, pixels[:1], PROMPTS[:1], RewardConfig())
    words = out.token_logprobs.tokens_as_text(backend.tokenizer, 0)
    assert "".join(words) == " " + PROMPTS[0]
    assert (out.token_logprobs.logprobs[0][out.token_logprobs.mask[0]] < 0).all()


def test_rollout_is_reproducible_from_a_seed(backend):
    md = [{"prompt": p} for p in PROMPTS[:2]]
    a = rollout(backend, md, 3, SamplingConfig(seed=7))
    b = rollout(backend, md, 3, SamplingConfig(seed=7))
    c = rollout(backend, md, 3, SamplingConfig(seed=8))
    assert a.tokens.shape == (6, backend.num_image_tokens) and a.pixels.shape == (6, 3, 64, 64)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.pixels.min() >= -1 and a.pixels.max() <= 1


def test_sampler_follows_guided_logits_u_plus_s_times_c_minus_u(backend):
    """Greedy sampling (top_k=1) must pick argmax(u + s (c - u)) where c and u are recomputed by teacher forcing
    with the conditional prompt and with Janus's unconditional prompt (pads except BOS and <begin_of_image>)."""
    scale = 4.0
    tokens = backend.sample_image_tokens(PROMPTS, SamplingConfig(cfg_scale=scale, top_k=1, seed=0))
    cond = backend.prompt_batch(PROMPTS)
    ids = backend.ids
    uncond_ids = unconditional(cond.ids, cond.mask, ids["bos"], ids["boi"], ids["pad"])
    assert ((uncond_ids != ids["pad"]).sum(1) == 2).all()  # only BOS and <begin_of_image> survive
    with torch.no_grad():
        c = image_token_logits(backend.model, cond, tokens).float()
        uncond = type(cond)(uncond_ids, cond.mask, cond.positions)
        u = image_token_logits(backend.model, uncond, tokens).float()
    guided = u + scale * (c - u)
    assert torch.equal(guided.argmax(-1), tokens)
    assert torch.equal(guide(c, u, scale), guided)


def test_sampling_without_guidance_follows_the_conditional_logits_alone(backend):
    """guidance off: greedy picks argmax(c) (no unconditional branch), and a seeded draw equals the inverse-CDF draw
    from the teacher-forced conditional logits at every position."""
    off = SamplingConfig(guidance=False, top_k=1, seed=0)
    tokens = backend.sample_image_tokens(PROMPTS, off)
    cond = backend.prompt_batch(PROMPTS)
    with torch.no_grad():
        c = image_token_logits(backend.model, cond, tokens).float()
    assert torch.equal(c.argmax(-1), tokens)
    drawn = backend.sample_image_tokens(PROMPTS, SamplingConfig(guidance=False, seed=3))
    with torch.no_grad():
        c = image_token_logits(backend.model, cond, drawn).float()
    rows = torch.arange(len(PROMPTS))
    redrawn = torch.stack([sample(c[:, i], SamplingConfig(seed=3), rows, i) for i in range(drawn.shape[1])], 1)
    assert torch.equal(redrawn, drawn)
    guided = backend.sample_image_tokens(PROMPTS, SamplingConfig(cfg_scale=4.0, seed=3))
    assert not torch.equal(guided, drawn)  # guidance 4 changes the draw: the test above could fail
    with pytest.raises(ConfigError, match="guidance is off"):
        SamplingConfig(guidance=False, cfg_scale=3.0).validate()
    with pytest.raises(ConfigError, match="guidance is off.*sampling.cfg_scale=null"):  # not "cfg_scale must be > 1"
        SamplingConfig(guidance=False, cfg_scale=1.0).validate()


def test_loss_logprobs_score_the_conditional_branch_or_the_guided_distribution_sampling_draws_from(backend):
    """image_token_logprobs: guidance None -> log_softmax(c / T); guidance s -> log_softmax((u + s (c - u)) / T),
    the distribution whose argmax greedy sampling picks (the test above), so the greedy tokens have the top
    guided log-prob at every position; the guided gradient reaches the model too."""
    scale, temp = 4.0, 0.7
    tokens = backend.sample_image_tokens(PROMPTS, SamplingConfig(cfg_scale=scale, top_k=1, seed=0))
    cond = backend.prompt_batch(PROMPTS)
    ids = backend.ids
    uncond = type(cond)(unconditional(cond.ids, cond.mask, ids["bos"], ids["boi"], ids["pad"]), cond.mask, cond.positions)
    with torch.no_grad():
        c = image_token_logits(backend.model, cond, tokens).float()
        u = image_token_logits(backend.model, uncond, tokens).float()
        want_cond = torch.log_softmax(c / temp, -1).gather(-1, tokens[..., None])[..., 0]
        guided = torch.log_softmax((u + scale * (c - u)) / temp, -1)
        want_guided = guided.gather(-1, tokens[..., None])[..., 0]
        got_cond = backend.image_token_logprobs(PROMPTS, tokens, temp)
        got_guided = backend.image_token_logprobs(PROMPTS, tokens, temp, guidance=scale)
    assert torch.allclose(got_cond, want_cond, atol=1e-5) and torch.allclose(got_guided, want_guided, atol=1e-5)
    assert torch.allclose(got_guided, guided.max(-1).values, atol=1e-5)  # greedy guided tokens: the guided mode
    assert not torch.allclose(got_cond, torch.log_softmax(c / temp, -1).max(-1).values, atol=1e-3)
    # the gradient is that of the guided formula through both branches (two separate passes here)
    params = [p for p in backend.model.parameters() if p.requires_grad]
    got = torch.autograd.grad(backend.image_token_logprobs(PROMPTS, tokens, temp, guidance=scale).sum(), params,
                              allow_unused=True)
    c = image_token_logits(backend.model, cond, tokens).float()
    u = image_token_logits(backend.model, uncond, tokens).float()
    ref = torch.log_softmax((u + scale * (c - u)) / temp, -1).gather(-1, tokens[..., None]).sum()
    want = torch.autograd.grad(ref, params, allow_unused=True, retain_graph=True)
    cond_only = torch.autograd.grad(torch.log_softmax((u.detach() + scale * (c - u.detach())) / temp, -1)
                                    .gather(-1, tokens[..., None]).sum(), params, allow_unused=True)
    pairs = [(g, w, k) for g, w, k in zip(got, want, cond_only) if w is not None]
    def close(a, b):
        return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    assert len(pairs) > 10 and all(g is not None and close(g, w) for g, w, _ in pairs)
    assert not all(close(k, w) for _, w, k in pairs)  # the unconditional branch's gradient is part of it


def test_filters_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda s: torch.isfinite(filter_logits(logits, s))[0].tolist()  # noqa: E731
    assert kept(SamplingConfig(top_k=2)) == [True, True, False, False]
    assert kept(SamplingConfig(top_p=0.75)) == [True, True, False, False]  # 0.5 < 0.75, 0.8 >= 0.75
    assert kept(SamplingConfig(top_p=0.85)) == [True, True, True, False]
    assert kept(SamplingConfig(min_p=0.2)) == [True, True, True, False]  # 0.05 < 0.2 * 0.5
    assert kept(SamplingConfig(min_p=0.61)) == [True, False, False, False]


def test_frozen_judge_stays_fixed_while_the_policy_changes():
    model, tok = build_random("smoke", seed=1)
    policy = JanusBackend(model, tok, JanusBackendConfig(default_cfg_scale=3.0))
    px = policy.decode_images(policy.sample_image_tokens(PROMPTS, SamplingConfig(seed=0)))
    judges = {j: Judge(policy, RewardConfig(judge=j, ema_decay=0.5)) for j in ("policy", "frozen", "ema")}
    before = {j: judges[j].score(px, PROMPTS, RewardConfig()).rewards for j in judges}
    with torch.no_grad():
        for p in policy.model.model.language_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for j in judges.values():
        j.update()
    after = {j: judges[j].score(px, PROMPTS, RewardConfig()).rewards for j in judges}
    assert torch.equal(before["frozen"], after["frozen"])
    assert not torch.allclose(before["policy"], after["policy"])
    assert not torch.allclose(before["ema"], after["ema"]) and not torch.allclose(after["ema"], after["policy"])


def test_oracle_reward_is_one_for_a_correct_rendering_and_partial_otherwise():
    from gvu.world.scene import Obj, Scene, render
    img = torch.from_numpy(np.asarray(render(Scene((Obj("circle", "red", "large", 20, 32),))), dtype=np.float32))
    px = (img.permute(2, 0, 1)[None] / 127.5 - 1).repeat(2, 1, 1, 1)
    md = [{"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}], "prompt": "a photo of a red circle"},
          {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "blue"}], "prompt": "a photo of a blue circle"}]
    out = oracle_reward(px, md)
    assert out.rewards.tolist() == [1.0, 0.5] and out.correct.tolist() == [True, False]


def test_the_exact_evaluator_in_worker_processes_gives_the_same_judgements_in_order():
    """evaluate_images with workers > 1 (the oracle reward and evaluations on machines with cores to spare)."""
    from gvu.world.evaluator import evaluate_image, evaluate_images
    from gvu.world.sampler import sample_scene
    from gvu.world.scene import render
    from gvu.world.prompts import make_suite

    md = make_suite("geneval", "eval", seed=0)[:12]
    rng = random.Random(3)
    # the first half shows each prompt's own scene, the second half the next prompt's: both verdicts occur
    images = [np.asarray(render(sample_scene(m, rng))) for m in md]
    images = images[:6] + images[7:] + images[6:7]
    serial = [evaluate_image(m, img) for m, img in zip(md, images)]
    assert 0 < sum(j.correct for j in serial) < len(serial)
    assert evaluate_images(md, images, workers=2) == serial  # 6 images a process, in order
    assert evaluate_images(md[:3], images[:3], workers=2) == serial[:3]  # too few to split: in this process
    px = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(oracle_reward(px, md, workers=2).rewards, torch.tensor([j.partial for j in serial]))


@pytest.mark.parametrize("bad, match", [
    (lambda b: b.sample_image_tokens([""], SamplingConfig()), "empty prompt"),
    (lambda b: b.sample_image_tokens(["a photo of a circle " * 100], SamplingConfig()), "positions"),
    (lambda b: b.sample_image_tokens(["a circle"], SamplingConfig(cfg_scale=1.0)), "cfg_scale must be > 1"),
    (lambda b: rollout(b, [{"prompt": "a circle"}], 1, SamplingConfig()), "group size"),
    (lambda b: b.decode_images(torch.full((1, b.num_image_tokens), b.image_vocab_size)), "image token ids"),
    (lambda b: b.text_logprobs(torch.zeros(1, 3, 32, 32), QUERY, ["a circle"]), "must be 64x64"),
])
def test_bad_input_is_refused_before_work(backend, bad, match):
    with pytest.raises((ValueError, ConfigError), match=match):
        bad(backend)


def test_a_rows_draws_do_not_depend_on_its_batch(backend):
    """Row-keyed draws: sampling rows 1 and 3 alone (with their global ids) gives the tokens they get in the full
    batch, which is what lets W ranks reproduce a one-process rollout."""
    prompts = [PROMPTS[0]] * 4
    full = backend.sample_image_tokens(prompts, SamplingConfig(seed=11))
    part = backend.sample_image_tokens(prompts[:2], SamplingConfig(seed=11), row_ids=torch.tensor([1, 3]))
    assert torch.equal(part, full[[1, 3]])
    assert not torch.equal(full[0], full[1])  # rows of one prompt still differ


def test_row_uniforms_are_uniform():
    from gvu.sampling import row_uniforms

    u = row_uniforms(0, torch.arange(200_000), 5)
    assert 0 <= float(u.min()) and float(u.max()) < 1
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert (counts - 20_000).abs().max() < 600  # ~4.5 sigma of a binomial(200000, 0.1)


def test_reward_auc_dump_gives_every_image_its_own_prompts_blank_image_prior(backend, tmp_path):
    import numpy as np
    from benchmarks.reward_auc import dump_tokens

    from gvu.reward import blank_image_logprobs

    # repeated prompts, as in the eval split (553 prompts, 235 distinct texts): the regression was a shape error
    md = [{"prompt": p} for p in (PROMPTS[0], PROMPTS[1], PROMPTS[0])]
    images = 2
    rows = [m["prompt"] for m in md for _ in range(images)]
    tl = backend.text_logprobs(torch.zeros(len(rows), 3, backend.image_size, backend.image_size), QUERY, rows)
    ids = backend.tokenizer([" " + p for p in rows], add_special_tokens=False, padding=True, return_tensors="pt").input_ids
    n = len(rows)
    path = tmp_path / "sub" / "tokens.npz"
    dump_tokens(str(path), backend, md, images, tl.logprobs.cpu(), tl.mask.cpu().bool(), ids[:, : tl.logprobs.shape[1]],
                np.zeros(n, bool), np.zeros(n), np.array(["t"] * n))
    prior = np.load(path)["prior"]
    assert prior.shape == (n, tl.logprobs.shape[1])
    want, _ = blank_image_logprobs(backend, [PROMPTS[0], PROMPTS[1]], QUERY)
    for r, k in ((0, 0), (1, 0), (2, 1), (4, 0), (5, 0)):  # image row -> distinct prompt
        w = want.logprobs[k][want.mask[k].bool()].detach().numpy()
        assert np.allclose(prior[r][: len(w)], w, atol=1e-5)


def test_evaluation_deals_batches_to_ranks_and_gathers_them_into_the_one_process_result(backend, monkeypatch):
    import gvu.dist
    from gvu.evaluate import evaluate
    from gvu.world.prompts import make_suite

    md = make_suite("geneval", "eval", seed=0)[:4]  # 4 prompts x 2 images = 8 rows: batches of 2 start at 0, 2, 4, 6
    args = (backend, md, 2, SamplingConfig(seed=5), RewardConfig())
    starts = []
    sample = backend.sample_image_tokens
    monkeypatch.setattr(backend, "sample_image_tokens", lambda t, s, rows: starts.append(int(rows[0])) or sample(t, s, rows))
    one = evaluate(*args, batch=2)
    assert starts == [0, 2, 4, 6]
    parts = {}
    for rank in (0, 1):  # each rank alone: what it would send to the others
        starts.clear()
        monkeypatch.setattr(gvu.dist, "all_gather_objects", lambda obj, r=rank: parts.setdefault(r, obj) and [obj])
        evaluate(*args, batch=2, rank=rank, world=2)
        assert starts == [[0, 4], [2, 6]][rank]  # rank r takes batches r, r + 2
    # gathered in rank order ([0, 4] then [2, 6]), put back in row order: exactly the one-process result
    monkeypatch.setattr(gvu.dist, "all_gather_objects", lambda obj: [parts[0], parts[1]])
    two = evaluate(*args, batch=2, rank=1, world=2)
    assert two == one and one["n"] == 8 and set(one["per_tag"]) == {m["tag"] for m in md}
