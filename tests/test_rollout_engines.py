"""The rollout engines (sampling.engine: eager | static | compiled, gvu/models/janus_decode.py) draw the same image
tokens with the same log-probabilities, on the shipped nano-Janus and on a tiny random Janus-Pro.

The static and compiled engines attend over a preallocated, left-padded cache, so their sums run in a different
order than the eager engine's: log-probs agree to 1e-4, tokens exactly. The compiled engine takes about a minute to
compile on a 2-core CPU, so its tests are slow; they compile once per model (one rows shape, reused)."""

import os

import pytest
import torch

from gvu.config import ConfigError, SamplingConfig
from gvu.models import janus_pro as jp
from gvu.models.janus import JanusBackend, JanusBackendConfig
from gvu.models.decode_engines import PROMPT_BUCKET, prompt_bucket, static_decoder
from gvu.models.janus_decode import StaticDecoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NANO_PROMPTS = ["a photo of a red circle", "a photo of two blue squares and a green triangle",
                "a photo of a yellow star", "a photo of a purple cross left of an orange heart"]
PRO_PROMPTS = ["a photo of a cat", "a photo of two red circles and a blue star on the left",
               "a photo of a dog", "a photo of a larger square on the left and a smaller cross on the right"]
FILTERS = {"none": {}, "top_k": {"top_k": 20}, "top_p": {"top_p": 0.8}, "min_p": {"min_p": 0.05}}


@pytest.fixture(scope="module")
def nano():
    torch.set_num_threads(1)
    return JanusBackend.from_pretrained(os.path.join(REPO, "models", "nano-janus"))


@pytest.fixture(scope="module")
def pro():
    torch.set_num_threads(1)
    model, tok = jp.build_random("tiny", seed=0)
    return JanusBackend(model, tok, JanusBackendConfig.janus_pro())


def draw(backend, prompts, engine, **settings):
    s = SamplingConfig(engine=engine, seed=7, **settings)
    return backend.sample_image_tokens_with_logprobs(prompts, s, torch.arange(10, 10 + len(prompts)))


def assert_same_draws(a, b):
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)


def test_prompt_bucket_rounds_up_to_a_multiple_of_the_bucket_within_the_positions_left():
    assert PROMPT_BUCKET == 16
    assert prompt_bucket(17, 200) == 32
    assert prompt_bucket(16, 200) == 16
    assert prompt_bucket(1, 200) == 16
    assert prompt_bucket(17, 20) == 20  # capped by the positions the image tokens leave
    assert prompt_bucket(40, 36) == 40  # never below the prompt itself (check_prompts refuses longer ones)


def test_an_unknown_engine_is_a_config_error_that_lists_the_engines():
    with pytest.raises(ConfigError, match="eager.*static.*compiled"):
        SamplingConfig(engine="fast").validate()


# every filter, with and without guidance, at two batch sizes (not the whole product: each case decodes twice)
@pytest.mark.parametrize("guidance,rows,filt", [(True, 1, "none"), (True, 4, "top_k"), (False, 1, "top_p"),
                                                (False, 4, "min_p"), (True, 4, "min_p"), (False, 4, "none")])
def test_static_engine_draws_the_eager_tokens_and_logprobs_on_nano_janus(nano, guidance, rows, filt):
    prompts = NANO_PROMPTS[:rows]
    settings = {**FILTERS[filt], **({} if guidance else {"guidance": False})}
    assert_same_draws(draw(nano, prompts, "static", **settings), draw(nano, prompts, "eager", **settings))


@pytest.mark.parametrize("guidance,rows,filt", [(True, 2, "top_p"), (False, 3, "none"), (True, 3, "top_k"),
                                                (False, 2, "min_p")])
def test_static_engine_draws_the_eager_tokens_and_logprobs_on_tiny_janus_pro(pro, guidance, rows, filt):
    prompts = PRO_PROMPTS[:rows]
    settings = {**FILTERS[filt], **({"cfg_scale": 3.0} if guidance else {"guidance": False})}
    assert_same_draws(draw(pro, prompts, "static", **settings), draw(pro, prompts, "eager", **settings))


def test_the_drawn_tokens_logprobs_are_the_guided_filtered_distribution_at_each_token(nano):
    """The eager engine's log-probs equal an independent teacher-forced pass: the guided logits of the drawn tokens
    (image_token_logprobs with guidance), here without filters, so the two distributions are the same."""
    out = draw(nano, NANO_PROMPTS[:2], "eager", cfg_scale=3.0)
    teacher = nano.image_token_logprobs(NANO_PROMPTS[:2], out.tokens, guidance=3.0)
    torch.testing.assert_close(out.logprobs, teacher.detach(), atol=1e-4, rtol=0)


def test_a_compiled_decoder_is_kept_for_batches_of_one_shape_and_replaced_for_another(nano):
    # building a decoder compiles nothing (torch.compile is lazy): this test runs no step
    first = static_decoder(nano, 4, 20, True, StaticDecoder)
    assert static_decoder(nano, 4, 27, True, StaticDecoder) is first  # widths 20 and 27 share the bucket of 32
    assert first.width == 32 and tuple(first.mask.shape) == (4, 32 + nano.num_image_tokens)
    second = static_decoder(nano, 3, 20, True, StaticDecoder)
    assert second is not first and nano._static is second
    nano._static = None


def test_the_static_engine_frees_its_cache_after_a_rollout(nano):
    nano.sample_image_tokens(NANO_PROMPTS[:2], SamplingConfig(engine="static", guidance=False))
    assert nano._static is None


def test_the_default_engine_draws_what_sample_image_tokens_returns(nano):
    s = SamplingConfig(seed=7)
    out = nano.sample_image_tokens_with_logprobs(NANO_PROMPTS[:2], s)
    assert torch.equal(nano.sample_image_tokens(NANO_PROMPTS[:2], s), out.tokens)


# ------------------------------------------------------------------------------------------ compiled (slow)

@pytest.fixture(scope="module")
def can_compile():
    from gvu.models.pretrain import compile_works

    why = compile_works()
    if why:
        pytest.skip(f"torch.compile does not work here: {why}")


@pytest.mark.slow
@pytest.mark.parametrize("filt", FILTERS)
def test_compiled_engine_draws_the_eager_tokens_and_logprobs_on_nano_janus(nano, can_compile, filt):
    # 2 prompts with guidance and 4 without are both 4 rows in the cache: one compiled step serves all of them
    for prompts, settings in ((NANO_PROMPTS[:2], {}), (NANO_PROMPTS[:4], {"guidance": False})):
        settings = {**FILTERS[filt], **settings}
        assert_same_draws(draw(nano, prompts, "compiled", **settings), draw(nano, prompts, "eager", **settings))


@pytest.mark.slow
def test_compiled_engine_draws_the_eager_tokens_and_logprobs_on_tiny_janus_pro(pro, can_compile):
    for prompts, settings in ((PRO_PROMPTS[:2], {"cfg_scale": 3.0, "min_p": 0.05}),
                              (PRO_PROMPTS[:4], {"guidance": False, "top_k": 50})):
        assert_same_draws(draw(pro, prompts, "compiled", **settings), draw(pro, prompts, "eager", **settings))


@pytest.mark.slow
def test_under_bf16_autocast_over_fp32_weights_the_engines_draw_the_same_tokens(pro, can_compile):
    """bf16 full fine-tuning samples under autocast with fp32 master weights (gvu/master_weights.py); bf16 sums in another
    order move the log-probs by up to about 1e-3 here, the tokens not at all."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = draw(pro, PRO_PROMPTS[:2], "eager", cfg_scale=3.0)
        for engine in ("static", "compiled"):
            out = draw(pro, PRO_PROMPTS[:2], engine, cfg_scale=3.0)
            assert torch.equal(out.tokens, eager.tokens)
            torch.testing.assert_close(out.logprobs, eager.logprobs, atol=5e-3, rtol=0)
