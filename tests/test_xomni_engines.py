"""X-Omni's rollout engines (sampling.engine: eager | static | compiled; gvu/models/xomni/decode.py) draw the same
image tokens with the same log-probabilities, on a tiny random X-Omni (gvu/models/xomni/tiny.py), with and without
guidance, with every filter, at batch sizes and prompt lengths that fall in different prompt buckets.

The static and compiled engines attend over a preallocated, left-padded cache, so their sums run in a different
order than the eager engine's: logits and log-probs agree to 1e-5 / 1e-4, tokens exactly. The compiled engine's tests
compile once per shape and are marked slow."""

import pytest
import torch
from transformers import StaticCache

import gvu.models.decode_engines as decode_engines
from gvu.config import SamplingConfig
from gvu.models.decode_engines import prompt_bucket, static_decoder
from gvu.models.xomni.decode import StaticDecoder
from gvu.models.xomni.lm import attention_mask
from gvu.models.xomni.tiny import TEXT_VOCAB, generation_backend, random_language_model

# the tiny tokenizer is byte-level and the prompt ends with "<SOM>4 4<IMAGE>" (5 tokens): a prompt of c characters is
# c + 5 positions. SHORT: 10 and 12 (bucket 16); LONG: 46, 50 and 29 (buckets 48, 64 and 32)
SHORT = ["a cat", "red dog"]
LONG = ["two blue squares left of a green triangle", "a photo of a purple cross and an orange heart",
        "three small yellow stars"]
FILTERS = {"none": {}, "top_k": {"top_k": 20}, "top_p": {"top_p": 0.8}, "min_p": {"min_p": 0.05}}


@pytest.fixture(scope="module")
def xomni():
    torch.set_num_threads(1)
    return generation_backend(seed=0)


def draw(backend, prompts, engine, **settings):
    s = SamplingConfig(engine=engine, seed=7, **settings)
    return backend.sample_image_tokens_with_logprobs(prompts, s, torch.arange(10, 10 + len(prompts)))


def assert_same_draws(a, b):
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)


def bucket(backend, prompts):
    width = max(len(backend.prompt_ids(p)) for p in prompts)
    return prompt_bucket(width, backend.max_positions - backend.num_image_tokens)


# ------------------------------------------------------------------------------------------ the mask and the cache

def test_the_mask_of_a_query_at_a_cache_slot_over_a_left_padded_cache_is_the_hand_worked_one():
    # a cache of 6 slots: row 0 has 2 pads, 2 prompt tokens and 2 image slots; row 1 has 4 prompt tokens, no pad
    key_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    t, f = True, False
    prefill = attention_mask(key_mask, 4, 0)  # the prompt into slots 0..3; slots 4 and 5 are not written yet
    assert prefill.shape == (2, 1, 4, 6)
    assert prefill[0, 0].tolist() == [[t, f, f, f, f, f],   # a pad attends to itself alone
                                      [f, t, f, f, f, f],
                                      [f, f, t, f, f, f],   # the first prompt token never sees the pads
                                      [f, f, t, t, f, f]]
    assert prefill[1, 0].tolist() == [[t, f, f, f, f, f], [t, t, f, f, f, f], [t, t, t, f, f, f], [t, t, t, t, f, f]]
    first_image = attention_mask(key_mask, 1, torch.tensor(4))  # the cache's length as a tensor, as a StaticCache's
    assert first_image[:, 0].tolist() == [[[f, f, t, t, t, f]], [[t, t, t, t, t, f]]]
    second_image = attention_mask(key_mask, 1, 5)
    assert second_image[:, 0].tolist() == [[[f, f, t, t, t, t]], [[t, t, t, t, t, t]]]
    # without a slot the queries are the last Q of the K keys (a cache grown by this call)
    assert torch.equal(attention_mask(key_mask, 2), attention_mask(key_mask, 2, 4))


def test_the_language_model_over_a_static_cache_gives_the_uncached_hidden_states():
    """The prompt (left-padded; text ids and a multimodal special, so that the adapter layers, mm_norm and lm_norm
    all route) into a StaticCache with slots to spare, then two image codes one at a time at the cache's next slot:
    the hidden states of one uncached pass over the whole sequence."""
    torch.manual_seed(0)
    model = random_language_model()
    lm = model.model
    pad = 0
    prompt = torch.tensor([[pad, pad, 40, 41, TEXT_VOCAB + 64], [50, 51, 52, 53, TEXT_VOCAB + 64]])
    codes = torch.tensor([[TEXT_VOCAB + 3, TEXT_VOCAB + 9], [TEXT_VOCAB + 60, TEXT_VOCAB + 0]])
    ids = torch.cat([prompt, codes], 1)  # [2, 7]
    key_mask = (torch.arange(7) >= torch.tensor([[2], [0]])).long()
    positions = (key_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        full = lm(ids, key_mask, positions)  # [2, 7, C]
        slots = 9  # 2 spare slots that are never written
        cache = StaticCache(config=model.config, max_cache_len=slots)
        cache_mask = torch.cat([key_mask, torch.ones(2, slots - 7, dtype=torch.long)], 1)
        stepped = [lm(prompt, cache_mask, positions[:, :5], cache)[:, -1]]
        for j in range(2):
            stepped.append(lm(codes[:, j:j + 1], cache_mask, positions[:, 5 + j:6 + j], cache)[:, -1])
    torch.testing.assert_close(torch.stack(stepped, 1), full[:, 4:], atol=1e-5, rtol=0)
    assert int(cache.get_seq_length()) == 7


# ------------------------------------------------------------------------------------------ static engine

@pytest.mark.parametrize("prompts,guidance,filt", [
    (SHORT[:1], False, "none"), (SHORT[:1], True, "top_k"),        # 1 row, bucket 16
    (LONG, False, "top_p"), (LONG, True, "min_p"),                # 3 rows, bucket 64
    (SHORT + LONG[2:], True, "none"), (SHORT + LONG[2:], False, "min_p")])  # 3 rows, bucket 32
def test_static_engine_draws_the_eager_tokens_and_logprobs_on_tiny_x_omni(xomni, prompts, guidance, filt):
    settings = {**FILTERS[filt], **({"cfg_scale": 3.0} if guidance else {"guidance": False})}
    assert_same_draws(draw(xomni, prompts, "static", **settings), draw(xomni, prompts, "eager", **settings))


def test_the_cases_above_fall_in_different_prompt_buckets(xomni):
    assert [bucket(xomni, p) for p in (SHORT[:1], LONG, SHORT + LONG[2:])] == [16, 64, 32]


def test_every_steps_guided_logits_over_the_static_cache_equal_the_eager_ones(xomni, monkeypatch):
    seen, real = [], decode_engines.sample
    monkeypatch.setattr(decode_engines, "sample", lambda logits, *a: seen.append(logits) or real(logits, *a))
    prompts = [SHORT[0], LONG[0]]  # unequal lengths: left padding on both branches, more of it in the bucket
    settings = {"cfg_scale": 2.5, "top_k": 1}  # greedy: both engines feed back the same tokens
    eager = xomni.sample_image_tokens(prompts, SamplingConfig(engine="eager", **settings))
    eager_logits, seen[:] = torch.stack(seen, 1), []
    static = xomni.sample_image_tokens(prompts, SamplingConfig(engine="static", **settings))
    assert torch.equal(static, eager)
    assert float(eager_logits.std()) > 0.1  # the tiny model's logits are not flat
    torch.testing.assert_close(torch.stack(seen, 1), eager_logits, atol=1e-5, rtol=0)


def test_the_static_engine_decodes_through_its_static_decoder_and_frees_it(xomni, monkeypatch):
    calls, real = [], StaticDecoder.forward
    monkeypatch.setattr(StaticDecoder, "forward", lambda self, *a: calls.append(self.key) or real(self, *a))
    tokens = xomni.sample_image_tokens(SHORT, SamplingConfig(engine="static", guidance=False, seed=1))
    assert tokens.shape == (2, xomni.num_image_tokens)
    assert calls == [(2, 16, False, torch.float32, xomni.device)] * (xomni.num_image_tokens - 1)
    assert xomni._static is None  # nothing compiled to keep: the KV cache is freed for the reward and the update


def test_the_drawn_tokens_logprobs_are_the_teacher_forced_ones_of_the_distribution_they_came_from(xomni):
    s = SamplingConfig(seed=7, guidance=False, temperature=0.8)  # no filter: the drawing distribution is the model's
    out = xomni.sample_image_tokens_with_logprobs(SHORT, s)
    assert torch.equal(xomni.sample_image_tokens(SHORT, s), out.tokens)
    with torch.no_grad():
        forced = xomni.image_token_logprobs(SHORT, out.tokens, temperature=0.8)
    assert torch.allclose(out.logprobs, forced, atol=1e-4)
    # a filter renormalises over the tokens it keeps: each drawn token's log-prob rises (or stays, when nothing is cut)
    filtered = xomni.sample_image_tokens_with_logprobs(SHORT, SamplingConfig(seed=7, guidance=False, temperature=0.8,
                                                                             top_k=4))
    with torch.no_grad():
        unfiltered = xomni.image_token_logprobs(SHORT, filtered.tokens, temperature=0.8)
    assert bool((filtered.logprobs >= unfiltered - 1e-5).all()) and bool((filtered.logprobs > unfiltered + 1e-3).any())


def test_a_compiled_decoder_is_kept_for_batches_of_one_shape_and_replaced_for_another(xomni):
    # building a decoder compiles nothing (torch.compile is lazy): this test runs no step
    first = static_decoder(xomni, 4, 10, True, StaticDecoder)
    assert static_decoder(xomni, 4, 14, True, StaticDecoder) is first  # widths 10 and 14 share the bucket of 16
    assert first.width == 16 and tuple(first.mask.shape) == (4, 16 + xomni.num_image_tokens)
    second = static_decoder(xomni, 3, 10, True, StaticDecoder)
    assert second is not first and xomni._static is second
    xomni._static = None


# ------------------------------------------------------------------------------------------ compiled (slow)

@pytest.fixture(scope="module")
def can_compile():
    from gvu.models.pretrain import compile_works

    why = compile_works()
    if why:
        pytest.skip(f"torch.compile does not work here: {why}")


@pytest.mark.slow
def test_compiled_engine_draws_the_eager_tokens_and_logprobs_on_tiny_x_omni(xomni, can_compile):
    # 2 prompts with guidance and 4 without are both 4 rows of bucket 16 (one compile); 3 long prompts are another
    # shape (3 rows, bucket 64: a second compile)
    cases = [(SHORT, {"cfg_scale": 3.0, "min_p": 0.05}), (SHORT * 2, {"guidance": False, "top_k": 20}),
             (SHORT, {"cfg_scale": 2.0, "top_p": 0.8}), (LONG, {"guidance": False})]
    for prompts, settings in cases:
        assert_same_draws(draw(xomni, prompts, "compiled", **settings), draw(xomni, prompts, "eager", **settings))
    assert xomni._static is not None and xomni._static.key[:2] == (3, 64)  # the compiled decoder is kept
    xomni._static = None



@pytest.mark.parametrize("prompts,settings", [(SHORT, {"cfg_scale": 3.0}), (LONG, {"guidance": False})])
def test_under_bf16_autocast_the_static_engine_differs_from_eager_by_bf16_rounding_alone(xomni, monkeypatch, prompts,
                                                                                         settings):
    """bf16 full fine-tuning samples under autocast over fp32 master weights (gvu/master_weights.py). bf16 keeps 8
    significant bits (eps 2^-7), and another summation order (the bucket's extra pads alone do it in the eager engine)
    moves the tiny model's logits by a few of its steps, more with guidance (u + 3 (c - u) adds up both branches'
    rounding); a greedy draw can then flip between two near-tied codes, and the row goes its own way from there.
    The claim: up to each row's first differing token the engines' logits agree within 6 bf16 steps of the step's
    largest logit, and a row differs only where eager's best code and static's choice were that close."""
    seen, real = [], decode_engines.sample
    monkeypatch.setattr(decode_engines, "sample", lambda logits, *a: seen.append(logits) or real(logits, *a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = xomni.sample_image_tokens(prompts, SamplingConfig(engine="eager", top_k=1, **settings))
        eager_logits, seen[:] = torch.stack(seen, 1), []
        static = xomni.sample_image_tokens(prompts, SamplingConfig(engine="static", top_k=1, **settings))
    static_logits = torch.stack(seen, 1)
    tol = 6 * torch.finfo(torch.bfloat16).eps * eager_logits.abs().amax(-1)  # [M, N]
    assert float(tol.max()) < 1  # the claim is tight: the logits are a few units, not hundreds
    for r in range(len(prompts)):
        differ = (eager[r] != static[r]).nonzero()
        last = int(differ[0]) if len(differ) else eager.shape[1] - 1  # after it the rows are fed different codes
        gap = (eager_logits[r, :last + 1] - static_logits[r, :last + 1]).abs().amax(-1)
        assert bool((gap <= tol[r, :last + 1]).all())
        if len(differ):
            top = eager_logits[r, last]
            assert top.max() - top[static[r, last]] <= tol[r, last]
