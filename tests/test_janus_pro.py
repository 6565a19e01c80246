"""The Janus-Pro path on tiny random models whose config and tokenizer mirror Janus-Pro's (no download).

DeepSeek's reference algorithms are re-implemented here literally, from their published description
(VLChatProcessor, generation_inference.py), as plain loops: the prompt layouts and the CFG sampler.
"""

import json
import os

import pytest
import torch

import gvu.models.decode_engines as decode_engines
from gvu.config import SamplingConfig
from gvu.models import janus_pro as jp
from gvu.models.janus import (JANUS_PRO_PAD_TOKEN, JANUS_PRO_SYSTEM_PROMPT, CheckpointError, JanusBackend,
                              JanusBackendConfig)
from gvu.models.janus_format import unconditional

QUERY = "Describe the image in detail."
PROMPTS = ["a photo of a cat", "a photo of two red circles and a blue star on the left",
           "a photo of a larger square on the left and a smaller cross on the right of a heart"]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return jp.build_random("tiny", seed=0)[0]


@pytest.fixture(scope="module")
def tokenizers():
    return {"1b": jp.build_tokenizer("1b"), "7b": jp.build_tokenizer("7b"),
            "7b-no-bos": jp.build_tokenizer("7b", add_bos=False)}


@pytest.fixture(scope="module")
def backend(model, tokenizers):
    return JanusBackend(model, tokenizers["1b"], JanusBackendConfig.janus_pro())


# ------------------------------------------------------------------------------------------ facts


def test_janus_pro_configs_have_the_published_sizes():
    for name, hidden, layers in (("1b", 2048, 24), ("7b", 4096, 30)):
        cfg = jp.build_config(name)
        t, v, q = cfg.text_config, cfg.vision_config, cfg.vq_config
        assert (t.hidden_size, t.num_hidden_layers, t.vocab_size, t.max_position_embeddings) == (hidden, layers, 102400, 16384)
        assert (v.image_size, v.patch_size, v.num_image_tokens) == (384, 16, 576)
        assert q.num_embeddings == 16384 and q.num_patches == 24 and 2 ** (len(q.channel_multiplier) - 1) == 16
        assert cfg.image_token_id == 100581
    # the 1B in parameters: 2.09B with its own lm_head (checkpoint 4.18 GB in bf16)
    from transformers import JanusForConditionalGeneration
    with torch.device("meta"):
        n = sum(p.numel() for p in JanusForConditionalGeneration(jp.build_config("1b")).parameters())
    assert 2.07e9 < n < 2.10e9


def test_look_alike_tokenizer_holds_janus_pro_tokens_at_their_ids(tokenizers):
    for tok in tokenizers.values():
        assert len(tok) == 102400
        assert {t: tok.convert_tokens_to_ids(t) for t in jp.TOKEN_IDS} == jp.TOKEN_IDS
        assert (tok.bos_token_id, tok.eos_token_id) == (100000, 100001)
    assert tokenizers["1b"].pad_token_id == 100002 and tokenizers["7b"].pad_token_id == 100015


# ------------------------------------------------------------------------------------------ layouts


def deepseek_generation_ids(tok, prompt: str) -> list[int]:
    """DeepSeek's generation prompt: the "deepseek" SFT template with an empty system prompt, stripped, then
    <begin_of_image>; tokenizer.encode adds BOS."""
    sft = f"<|User|>: {prompt}\n\n<|Assistant|>:".strip()
    return tok.encode(sft + "<begin_of_image>")


def deepseek_understanding_ids(tok, query: str, n: int) -> list[int]:
    """DeepSeek's VLChatProcessor: system prompt + "\\n\\n" + "<|User|>: <image_placeholder>\\n{query}\\n\\n
    <|Assistant|>:", encoded, then each <image_placeholder> replaced by <begin_of_image>, n placeholders, <end_of_image>."""
    system = JANUS_PRO_SYSTEM_PROMPT.rstrip("\n")
    sft = f"{system}\n\n<|User|>: <image_placeholder>\n{query}\n\n<|Assistant|>:"
    out = []
    for i in tok.encode(sft):
        out += [100016] + [100581] * n + [jp.TOKEN_IDS[jp.EOI]] if i == 100581 else [i]
    return out


@pytest.mark.parametrize("variant", ["1b", "7b", "7b-no-bos"])
def test_prompts_round_trip_through_deepseeks_layouts(model, tokenizers, variant):
    tok = tokenizers[variant]
    b = JanusBackend(model, tok, JanusBackendConfig.janus_pro())
    reference_tok = tokenizers["1b"]  # adds BOS, as DeepSeek's tokenizer does
    for p in PROMPTS:
        ids = b.prompt_ids(p)
        assert ids == deepseek_generation_ids(reference_tok, p)
        assert tok.decode(ids) == f"{jp.BOS}<|User|>: {p}\n\n<|Assistant|>:<begin_of_image>"
    und = b._understanding_prefix(QUERY)
    assert und == deepseek_understanding_ids(reference_tok, QUERY, b.num_image_tokens)
    assert tok.decode(und).startswith(jp.BOS + JANUS_PRO_SYSTEM_PROMPT + "<|User|>: <begin_of_image><image_placeholder>")


@pytest.mark.parametrize("variant", ["1b", "7b", "7b-no-bos"])
def test_cfg_pad_is_janus_pros_pad_whatever_the_tokenizer_declares(model, tokenizers, variant):
    b = JanusBackend(model, tokenizers[variant], JanusBackendConfig.janus_pro())
    assert b.ids["pad"] == 100015 and b.ids["bos"] == 100000 and b.ids["boi"] == 100016
    cond = b.prompt_batch(PROMPTS)
    u = unconditional(cond.ids, cond.mask, b.ids["bos"], b.ids["boi"], b.ids["pad"])
    for row, m in zip(u, cond.mask):
        real = row[m.bool()].tolist()
        assert real[0] == 100000 and real[-1] == 100016 and set(real[1:-1]) == {100015}
    assert (cond.ids[cond.mask == 0] == 100015).all()  # left padding uses the same pad (masked anyway)


# ------------------------------------------------------------------------------------------ CFG vs DeepSeek


@torch.no_grad()
def deepseek_cfg_reference(model, prompt_ids: list[int], pad_id: int, n: int, scale: float, parallel: int = 2):
    """generation_inference.py's sampler, literally, but greedy and without a KV cache: rows 2i conditional and
    2i+1 unconditional (pad everywhere but the first and last token), a full forward at every step,
    logits = u + s (c - u). Returns tokens [parallel, n] and guided logits [n, parallel, V]."""
    tokens = torch.tensor([prompt_ids] * (2 * parallel))
    for i in range(2 * parallel):
        if i % 2 != 0:
            tokens[i, 1:-1] = pad_id
    text_embeds = model.get_input_embeddings()(tokens)
    generated = torch.zeros(parallel, n, dtype=torch.long)
    guided_all = []
    for i in range(n):
        image_ids = generated[:, :i].repeat_interleave(2, dim=0)  # [2P, i], rows (c, u, c, u, ...)
        embeds = torch.cat([text_embeds, model.prepare_embeddings_for_image_generation(image_ids)], dim=1)
        hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
        logits = model.model.generation_head(hidden[:, -1, :]).float()
        c, u = logits[0::2, :], logits[1::2, :]
        guided = u + scale * (c - u)
        guided_all.append(guided)
        generated[:, i] = guided.argmax(-1)
    return generated, torch.stack(guided_all)


def test_rollout_cfg_matches_deepseeks_reference_sampler(backend, monkeypatch):
    scale = 5.0
    recorded = []
    real_sample = decode_engines.sample

    def recording_sample(logits, s, *rest):
        recorded.append(logits.clone())
        return real_sample(logits, s, *rest)

    monkeypatch.setattr(decode_engines, "sample", recording_sample)
    tokens = backend.sample_image_tokens(PROMPTS, SamplingConfig(cfg_scale=scale, top_k=1, seed=0))
    ours = torch.stack(recorded)  # [N, M, V]
    n = backend.num_image_tokens
    assert ours.shape[0] == n
    for r, p in enumerate(PROMPTS):
        ref_tokens, ref_guided = deepseek_cfg_reference(backend.model, backend.prompt_ids(p), backend.ids["pad"], n, scale)
        assert torch.equal(ref_tokens[0], tokens[r]) and torch.equal(ref_tokens[1], tokens[r])
        assert (ref_guided[:, 0] - ours[:, r]).abs().max() < 1e-4


# ------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(model, tok, path, system_prompt=True):
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    cfg_path = os.path.join(path, "tokenizer_config.json")
    with open(cfg_path) as f:
        tc = json.load(f)
    tc["use_default_system_prompt"] = system_prompt  # as Janus-Pro's tokenizer_config.json declares
    with open(cfg_path, "w") as f:
        json.dump(tc, f)


def test_a_saved_janus_pro_checkpoint_loads_with_janus_pro_defaults(model, tokenizers, backend, tmp_path):
    path = str(tmp_path / "ckpt")
    save_checkpoint(model, tokenizers["1b"], path)
    loaded = JanusBackend.from_pretrained(path)
    c = loaded.config
    assert c.pad_token == JANUS_PRO_PAD_TOKEN and c.understanding_system == JANUS_PRO_SYSTEM_PROMPT
    assert c.default_cfg_scale == 5.0 and c.image_mean == (0.5, 0.5, 0.5)
    assert loaded.num_image_tokens == 16 and loaded.ids == backend.ids
    s = SamplingConfig(seed=3)
    assert torch.equal(loaded.sample_image_tokens(PROMPTS, s), backend.sample_image_tokens(PROMPTS, s))


def write_json(path, name, obj):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "w") as f:
        json.dump(obj, f)


@pytest.fixture(scope="module")
def janus_config_dict(model):
    return model.config.to_dict()


@pytest.fixture
def bad_dirs(tmp_path, model, tokenizers, janus_config_dict):
    """Checkpoint directories that must be refused. Weight files hold garbage: reading them would fail differently,
    so a matching error proves the check came first."""
    def janus_dir(name, weights=True, tokenizer=True, tok=None):
        p = str(tmp_path / name)
        write_json(p, "config.json", janus_config_dict)
        if weights:
            with open(os.path.join(p, "model.safetensors"), "wb") as f:
                f.write(b"not weights")
        if tokenizer:
            (tok or tokenizers["1b"]).save_pretrained(p)
        return p

    d = {"empty": str(tmp_path / "empty")}
    os.makedirs(d["empty"])
    d["llama"] = str(tmp_path / "llama")
    write_json(d["llama"], "config.json", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    d["deepseek"] = str(tmp_path / "deepseek")
    write_json(d["deepseek"], "config.json", {"model_type": "multi_modality", "architectures": ["MultiModalityCausalLM"],
                                              "language_config": {"model_type": "llama", "vocab_size": 102400}})
    d["remote"] = janus_dir("remote")
    write_json(d["remote"], "config.json", {**janus_config_dict, "auto_map": {"AutoModel": "modeling_x.XModel"}})
    d["no_weights"] = janus_dir("no_weights", weights=False)
    d["missing_shard"] = janus_dir("missing_shard", weights=False)
    write_json(d["missing_shard"], "model.safetensors.index.json",
               {"weight_map": {"a": "model-00001-of-00002.safetensors"}})
    d["no_tokenizer"] = janus_dir("no_tokenizer", tokenizer=False)
    d["plain_tokenizer"] = janus_dir("plain_tokenizer", tok=plain_tokenizer())
    return d


def plain_tokenizer():
    """A tokenizer with BOS/EOS but none of Janus's image tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "<unk>": 2, "a": 3}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("name, flag, match", [
    ("empty", False, "has no config.json"),
    ("llama", False, "model_type 'llama' \\(LlamaForCausalLM\\), not a Janus model"),
    ("deepseek", False, "DeepSeek's original Janus format.*convert_janus_weights_to_hf.*trust_remote_code=True"),
    ("deepseek", True, "model_type 'multi_modality'.*not a Janus model.*convert_janus_weights_to_hf"),
    ("remote", False, "needs custom code.*trust_remote_code=True"),
    ("no_weights", False, "has no weights \\(looked for model.safetensors"),
    ("missing_shard", False, "missing: model-00001-of-00002.safetensors"),
    ("no_tokenizer", False, "has no tokenizer"),
    ("plain_tokenizer", False, "no '<image_placeholder>' token: it is not a Janus tokenizer"),
])
def test_bad_checkpoints_are_refused_before_any_weight_is_read(bad_dirs, name, flag, match):
    with pytest.raises(ValueError, match=match):
        JanusBackend.from_pretrained(bad_dirs[name], trust_remote_code=flag)


def test_missing_directory_and_file_are_named(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        JanusBackend.from_pretrained(str(f))
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        JanusBackend.from_pretrained(str(tmp_path / "nowhere" / "deeper" / "x"))


def test_tokenizer_and_model_that_disagree_on_the_image_token_are_refused(model, tokenizers):
    import copy
    other = copy.copy(model)
    other.config = copy.deepcopy(model.config)
    other.config.image_token_id = 100002
    with pytest.raises(ValueError, match="image_token_id is 100002 but the tokenizer's <image_placeholder> is 100581"):
        JanusBackend(other, tokenizers["1b"], JanusBackendConfig.janus_pro())


# ------------------------------------------------------------------------------------------ memory


def test_checkpointed_passes_recompute_layers_and_give_the_same_gradients(backend):
    model = backend.model
    tokens = torch.randint(0, backend.image_vocab_size, (2, backend.num_image_tokens), generator=torch.Generator().manual_seed(0))
    mlp = model.model.language_model.layers[0].mlp  # inside the checkpointed layer, so the recompute calls it
    calls = []
    mlp_forward = mlp.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return mlp_forward(*args, **kwargs)

    mlp.forward = counting_forward

    def grads(checkpointing: bool):
        model.zero_grad(set_to_none=True)
        calls.clear()
        if checkpointing:
            with backend.checkpointed():
                logp = backend.image_token_logprobs(PROMPTS[:2], tokens)
        else:
            logp = backend.image_token_logprobs(PROMPTS[:2], tokens)
        logp.sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)

    try:
        plain, plain_calls = grads(False)
        ckpt, ckpt_calls = grads(True)
    finally:
        del mlp.forward
        model.zero_grad(set_to_none=True)
    assert (plain_calls, ckpt_calls) == (1, 2)  # the layer ran again in backward
    assert plain.keys() == ckpt.keys() and all(torch.allclose(plain[n], ckpt[n], atol=1e-6) for n in plain)
    assert not model.model.language_model.training  # back in eval mode: the sampler's KV cache works again
    assert backend.sample_image_tokens(PROMPTS[:1], SamplingConfig(seed=0)).shape == (1, backend.num_image_tokens)


def test_checkpointed_leaves_no_hooks_behind(backend):
    emb = backend.model.model.language_model.get_input_embeddings()
    before = len(emb._forward_hooks)
    for _ in range(3):
        with backend.checkpointed():
            pass
    assert len(emb._forward_hooks) == before
