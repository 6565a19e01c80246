"""Rollout memory bounds: each micro-batch is sampled, decoded and scored, and its pixels dropped, so memory does not
grow with G; the default micro-batch is sized from the model's bytes per row and the free memory."""

import json
import os
from dataclasses import replace

import pytest
import torch

import gvu.rollout as rollout_mod
import gvu.train as train_mod
from gvu.config import RewardConfig, SamplingConfig, TrainConfig
from gvu.models.adapter import TokenLogprobs, rollout_row_bytes
from gvu.models.registry import load_backend
from gvu.reward import RewardOutput, concat_rewards, gvu_reward
from gvu.rollout import mem_available_bytes, micro_batch_for, rollout

NANO = os.path.join(os.path.dirname(__file__), "..", "models", "nano-janus")
# prompts of different lengths, so that micro-batches pad their understanding rows to different widths
PROMPTS = ["a photo of a red circle", "a photo of two blue squares and a green triangle", "a photo of a star"]


# ------------------------------------------------------------------------------------------ the estimate

def test_a_janus_pro_1b_row_needs_its_kv_cache_logits_pixels_and_decoder_maps():
    # 24 layers, 16 KV heads of 128, 24 prompt + 576 image tokens, bf16, CFG; 16384 codes; 384 px; decoder 128 channels
    #   KV cache  24 x 2 x 16 x 128 x 600 x 2 B x 2 branches = 235,929,600 (225 MiB, docs/gpu.md's figure)
    #   logits    16384 x 4 B x 2 branches                   =     131,072
    #   pixels    3 x 384 x 384 x 4 B                         =   1,769,472
    #   decoder   3 maps x 128 x 384 x 384 x 2 B              = 113,246,208
    sizes = dict(layers=24, kv_heads=16, head_dim=128, positions=600, weight_bytes=2, vocab=16384, image_size=384,
                 decoder_channels=128)
    assert rollout_row_bytes(guided=True, **sizes) == 235_929_600 + 131_072 + 1_769_472 + 113_246_208  # 351,076,352
    # without guidance only the conditional rows: half the cache and the logits
    assert rollout_row_bytes(guided=False, **sizes) == 117_964_800 + 65_536 + 1_769_472 + 113_246_208


def test_a_quarter_of_the_free_memory_divided_by_the_row_bytes_clamped_to_the_rows():
    row = 351_076_352
    # 16 GiB free: a quarter is 4,294,967,296 B; 12 rows take 4,212,916,224 B, 13 would take 4,563,992,576 B
    assert micro_batch_for(row, 16 * 2**30, rows=64) == 12
    assert micro_batch_for(row, 16 * 2**30, rows=8) == 8  # never more than the rows there are
    assert micro_batch_for(row, 100 * 2**20, rows=64) == 1  # never fewer than one, even when one row does not fit
    assert micro_batch_for(1000, 8000, rows=64, fraction=0.5) == 4


def test_available_memory_is_read_from_meminfo_in_bytes():
    text = "MemTotal:       16384000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"
    assert mem_available_bytes(text) == 8_000_000 * 1024
    assert mem_available_bytes("MemTotal: 1 kB\n") is None
    assert rollout_mod.free_memory_bytes("cpu") > 0


@pytest.fixture(scope="module")
def nano():
    return load_backend(NANO)


def test_the_nano_model_reports_its_bytes_per_row_from_its_own_sizes(nano):
    # nano-Janus (float32): 4 layers, 4 KV heads of 64, N = 64 image tokens, 512 codes, 64 px, decoder 32 x 1 channels
    p = len(nano.prompt_ids(PROMPTS[1]))  # the longest prompt sets the cache's length
    assert p > len(nano.prompt_ids(PROMPTS[0]))
    kv = 4 * 2 * 4 * 64 * (p + 64) * 4
    fixed = 3 * 64 * 64 * 4 + 3 * 32 * 64 * 64 * 4  # pixels, decoder maps
    assert nano.rollout_bytes_per_row(SamplingConfig(), PROMPTS) == 2 * kv + 2 * 512 * 4 + fixed
    assert nano.rollout_bytes_per_row(SamplingConfig(guidance=False), PROMPTS) == kv + 512 * 4 + fixed


# ------------------------------------------------------------------------------------------ joining rewards

def test_reward_blocks_join_in_row_order_and_narrow_blocks_are_padded_on_the_right():
    a = RewardOutput(torch.tensor([0.5, 0.25]),
                     TokenLogprobs(torch.tensor([[-1.0, -2.0], [-3.0, 0.0]]), torch.tensor([[True, True], [True, False]]),
                                   torch.tensor([[7, 8], [9, 2]])),
                     token_weights=torch.tensor([[1.0, 2.0], [3.0, 0.0]]))
    b = RewardOutput(torch.tensor([0.75]),
                     TokenLogprobs(torch.tensor([[-0.5, -0.5, -0.5]]), torch.tensor([[True, True, True]]),
                                   torch.tensor([[4, 5, 6]])),
                     token_weights=torch.tensor([[1.0, 1.0, 1.0]]))
    out = concat_rewards([a, b])
    assert out.rewards.tolist() == [0.5, 0.25, 0.75]
    assert out.token_logprobs.logprobs.tolist() == [[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0], [-0.5, -0.5, -0.5]]
    assert out.token_logprobs.mask.tolist() == [[True, True, False], [True, False, False], [True, True, True]]
    assert out.token_logprobs.token_ids.tolist() == [[7, 8, 0], [9, 2, 0], [4, 5, 6]]
    assert out.token_weights.tolist() == [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert out.correct is None
    oracle = concat_rewards([RewardOutput(torch.tensor([1.0]), correct=torch.tensor([True])),
                             RewardOutput(torch.tensor([0.5]), correct=torch.tensor([False]))])
    assert oracle.rewards.tolist() == [1.0, 0.5] and oracle.correct.tolist() == [True, False]
    assert oracle.token_logprobs is None
    with pytest.raises(ValueError, match="disagree on whether they carry"):
        concat_rewards([a, RewardOutput(torch.tensor([1.0]), correct=torch.tensor([True]))])


# ------------------------------------------------------------------------------------------ scoring per micro-batch

@pytest.fixture(scope="module", params=["nano-janus", "xomni"])
def backend(request, nano, tmp_path_factory):
    if request.param == "nano-janus":
        return nano, SamplingConfig(seed=3)
    pytest.importorskip("diffusers", reason="X-Omni's decoder needs diffusers (pip install 'gvu[xomni]')")
    from gvu.models.xomni.tiny import build_tiny_xomni

    return load_backend(build_tiny_xomni(str(tmp_path_factory.mktemp("xomni")))[0]), SamplingConfig(guidance=False, seed=3)


def test_rewards_scored_per_micro_batch_equal_the_rewards_of_all_rows_at_once(backend):
    model, sampling = backend
    md = [{"prompt": p} for p in PROMPTS]
    cfg = RewardConfig()
    whole = rollout(model, md, 2, sampling, micro_batch=6)
    want = gvu_reward(model, whole.pixels, whole.row_prompts, cfg)
    blocks = []

    def score(pixels, row_metadata):
        blocks.append(pixels.shape[0])
        return gvu_reward(model, pixels, [m["prompt"] for m in row_metadata], cfg)

    got = rollout(model, md, 2, sampling, micro_batch=4, score=score)
    assert blocks == [4, 2] and got.micro_batch == 4
    assert got.pixels is None  # no row's pixels are kept once scored
    assert torch.equal(got.tokens, whole.tokens)
    # the same rows in the same order; only float32 rounding in the differently padded understanding pass differs
    torch.testing.assert_close(got.rewards.rewards, want.rewards, rtol=0, atol=1e-6)
    tl, wl = got.rewards.token_logprobs, want.token_logprobs
    assert torch.equal(tl.mask, wl.mask) and torch.equal(tl.token_ids[tl.mask], wl.token_ids[wl.mask])
    torch.testing.assert_close(tl.logprobs, wl.logprobs, rtol=0, atol=1e-5)


def test_without_a_scorer_every_rows_pixels_are_kept_and_no_rewards(nano):
    ro = rollout(nano, [{"prompt": p} for p in PROMPTS[:2]], 2, SamplingConfig(seed=1), micro_batch=3)
    assert ro.pixels.shape == (4, 3, 64, 64) and ro.rewards is None and ro.micro_batch == 3


def test_the_default_micro_batch_follows_the_free_memory_and_the_images_do_not(nano, monkeypatch):
    md = [{"prompt": p} for p in PROMPTS]
    row = nano.rollout_bytes_per_row(SamplingConfig(), PROMPTS)
    roomy = rollout(nano, md, 2, SamplingConfig(seed=5))
    assert roomy.micro_batch == 6  # the whole batch fits in a quarter of this machine's free memory
    monkeypatch.setattr(rollout_mod, "free_memory_bytes", lambda device: 4 * 2 * row + 1)  # a quarter holds 2 rows
    tight = rollout(nano, md, 2, SamplingConfig(seed=5))
    assert tight.micro_batch == 2 and torch.equal(tight.tokens, roomy.tokens)
    torch.testing.assert_close(tight.pixels, roomy.pixels, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------ the training step

def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    from gvu.models.nano import SPECS, build_random
    from gvu.models.pretrain import save_model

    path = str(tmp_path_factory.mktemp("tiny") / "model")
    model, tok = build_random("smoke", seed=0)
    save_model(model, tok, SPECS["smoke"], path)
    return TrainConfig(model=path, steps=2, batch_prompts=2, group_size=2, train_prompts=16, eval_every=0,
                       grid_every=0, checkpoint_every=2, threads=1, final_eval=False, lr=1e-3, warmup_steps=0, mu=2)


def test_a_training_step_scoring_per_micro_batch_logs_the_metrics_of_scoring_all_rows_at_once(tiny_cfg, tmp_path,
                                                                                               monkeypatch, capsys):
    train_mod.train(tiny_cfg, str(tmp_path / "new"), progress=False)
    assert "[gvu] rollout micro-batch: 4 of 4 rows" in capsys.readouterr().out  # the whole tiny batch fits
    real = train_mod.rollout

    def all_at_once(model, md, *a, score=None, **k):  # the step as it was: every row's pixels, then one reward call
        ro = real(model, md, *a, **k)
        return replace(ro, rewards=score(ro.pixels, ro.row_metadata), pixels=None)

    monkeypatch.setattr(train_mod, "rollout", all_at_once)
    train_mod.train(tiny_cfg, str(tmp_path / "old"), progress=False)
    new, old = metrics(str(tmp_path / "new")), metrics(str(tmp_path / "old"))
    assert len(new) == 2 and new == old
    perf = json.loads(open(os.path.join(tmp_path / "new", "metrics.jsonl")).readline())
    assert perf["perf/rollout_s"] > 0 and perf["perf/reward_s"] > 0


def test_a_run_with_room_for_one_row_at_a_time_trains_like_one_with_room_for_all(tiny_cfg, tmp_path, monkeypatch, capsys):
    train_mod.train(tiny_cfg, str(tmp_path / "roomy"), progress=False)
    monkeypatch.setattr(rollout_mod, "free_memory_bytes", lambda device: 0)
    train_mod.train(tiny_cfg, str(tmp_path / "tight"), progress=False)
    assert "[gvu] rollout micro-batch: 1 of 4 rows" in capsys.readouterr().out
    roomy, tight = metrics(str(tmp_path / "roomy")), metrics(str(tmp_path / "tight"))
    assert [sorted(r) for r in roomy] == [sorted(r) for r in tight]
    for a, b in zip(roomy, tight):
        for k, v in a.items():
            assert b[k] == pytest.approx(v, abs=1e-5), k
