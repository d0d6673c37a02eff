"""The fast rollout sampler on CPU (no graphs, no compile: the same step code the GPU captures), against
HF ``generate`` as the reference: greedy tokens, left padding, stop ids, log-probs, weight sync."""

import numpy as np
import pytest
import torch

from wbtrace.dapo.rollout import left_pad
from wbtrace.dapo.sampler import FastSampler, unsupported_reason

V, PAD = 96, 0


def _model(kind: str, seed: int = 0):
    """A 2-layer Llama (tied embeddings) or Qwen2 (q/k/v biases, untied) with GQA and weights large
    enough that greedy decoding does not collapse onto one token."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kw = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3, pad_token_id=PAD)
    torch.manual_seed(seed)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**kw, tie_word_embeddings=True)).eval()
    model = Qwen2ForCausalLM(Qwen2Config(**kw, tie_word_embeddings=False)).eval()
    for layer in model.model.layers:  # HF initializes biases to zero; make them matter
        torch.nn.init.normal_(layer.self_attn.q_proj.bias, std=0.3)
        torch.nn.init.normal_(layer.self_attn.k_proj.bias, std=0.3)
    return model


def _prompts(lengths=(5, 17, 1, 9), seed=0):
    rng = np.random.default_rng(seed)
    rows = [rng.integers(2, V, n).tolist() for n in lengths]
    return rows, *left_pad(rows, max(lengths), PAD)


def _hf_greedy(model, ids, mask, T):
    with torch.no_grad():
        out = model.generate(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), do_sample=False,
                             max_new_tokens=T, min_new_tokens=T, pad_token_id=PAD, eos_token_id=None)
    return out[:, ids.shape[1]:].numpy()


def _recompute_logprob(model, ids, mask, resp):
    full = torch.as_tensor(np.concatenate([ids, resp], 1))
    att = torch.as_tensor(np.concatenate([mask, np.ones_like(resp)], 1))
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=att, position_ids=(att.cumsum(1) - 1).clamp(min=0)).logits
    logits = logits[:, ids.shape[1] - 1:-1].float()
    return logits.log_softmax(-1).gather(-1, torch.as_tensor(resp)[..., None])[..., 0].numpy()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_equals_hf_generate_with_left_padding(kind):
    model = _model(kind)
    rows, ids, mask = _prompts()
    fast = FastSampler(model, torch.float32, "cpu")
    tokens, logp = fast.generate(ids, mask, 24, [], PAD, greedy=True)
    hf = _hf_greedy(model, ids, mask, 24)
    np.testing.assert_array_equal(tokens, hf)
    assert len({tuple(r) for r in tokens.tolist()}) == len(rows) and len(set(tokens[1])) > 3  # not degenerate
    for i, row in enumerate(rows):  # a padded row decodes as it does alone
        alone, _ = fast.generate(np.array([row]), np.ones((1, len(row)), np.int64), 24, [], PAD, greedy=True)
        np.testing.assert_array_equal(alone[0], tokens[i])
    np.testing.assert_allclose(logp, _recompute_logprob(model, ids, mask, tokens), atol=1e-4)


def test_stops_at_the_first_stop_id_and_pads_after():
    model = _model("llama")
    _, ids, mask = _prompts()
    free, _ = FastSampler(model, torch.float32, "cpu").generate(ids, mask, 24, [], PAD, greedy=True)
    stop = int(free[1, 6])  # a token row 1 emits mid-way
    tokens, logp = FastSampler(model, torch.float32, "cpu").generate(ids, mask, 24, [stop, 95], PAD, greedy=True)
    for row, lp, ref in zip(tokens, logp, free):
        hits = np.flatnonzero(np.isin(ref, [stop, 95]))
        end = hits[0] + 1 if len(hits) else len(ref)
        np.testing.assert_array_equal(row[:end], ref[:end])  # identical up to and including the stop
        assert (row[end:] == PAD).all() and (lp[end:] == 0).all()
    assert (tokens[1, 7:] == PAD).all()


def test_sampling_follows_temperature_and_top_p():
    model = _model("qwen2")
    _, ids, mask = _prompts()
    fast = FastSampler(model, torch.float32, "cpu")
    greedy, _ = fast.generate(ids, mask, 16, [], PAD, greedy=True)
    narrow, _ = fast.generate(ids, mask, 16, [], PAD, temperature=1.0, top_p=1e-6)
    np.testing.assert_array_equal(narrow, greedy)  # top-p this small keeps only the most likely token
    torch.manual_seed(1)
    a, logp = fast.generate(ids, mask, 16, [], PAD, temperature=0.7)
    torch.manual_seed(1)
    b, _ = fast.generate(ids, mask, 16, [], PAD, temperature=0.7)
    np.testing.assert_array_equal(a, b)  # the torch seed decides the draw
    assert (a != greedy).any()
    # the sampler's log-probs are at the temperature: compare with a recompute at logits / 0.7
    full = torch.as_tensor(np.concatenate([ids, a], 1))
    att = torch.as_tensor(np.concatenate([mask, np.ones_like(a)], 1))
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=att, position_ids=(att.cumsum(1) - 1).clamp(min=0)).logits
    ref = (logits[:, ids.shape[1] - 1:-1].float() / 0.7).log_softmax(-1).gather(-1, torch.as_tensor(a)[..., None])
    np.testing.assert_allclose(logp, ref[..., 0].numpy(), atol=1e-4)


def test_weight_sync_after_an_update_changes_the_samples():
    model = _model("llama")
    _, ids, mask = _prompts()
    fast = FastSampler(model, torch.float32, "cpu")
    before, _ = fast.generate(ids, mask, 16, [], PAD, greedy=True)
    with torch.no_grad():  # an "update": the policy's weights move
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    stale, _ = fast.generate(ids, mask, 16, [], PAD, greedy=True)
    np.testing.assert_array_equal(stale, before)  # the sampler holds its own copy until synced
    fast.sync(model)
    after, _ = fast.generate(ids, mask, 16, [], PAD, greedy=True)
    assert (after != before).any()
    np.testing.assert_array_equal(after, _hf_greedy(model, ids, mask, 16))


def test_unsupported_models_are_named_and_the_trainer_falls_back(tmp_path):
    from transformers import GPT2Config, LlamaConfig

    from wbtrace.dapo.config import load_config
    from wbtrace.dapo.trainer import check_sampler

    assert unsupported_reason(LlamaConfig()) is None
    assert "gpt2" in unsupported_reason(GPT2Config())
    with pytest.raises(ValueError, match="fast sampler: model_type 'gpt2'"):
        from transformers import GPT2LMHeadModel

        FastSampler(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=V)), torch.float32, "cpu")
    GPT2Config(n_layer=1).save_pretrained(tmp_path)
    cfg = load_config("tiny", None, [f"model.path={tmp_path}", "actor_rollout_ref.rollout.name=fast"])
    said = []
    check_sampler(cfg, str(tmp_path), said.append)
    assert cfg.actor_rollout_ref.rollout.name == "hf"
    assert said == ["rollout: the fast sampler cannot run this model (model_type 'gpt2' is not one of llama, "
                    "qwen2); using hf generate"]
