"""DAPO config, data and rewards: loading and one-line errors, docs in sync, procedural data, loaders."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from wbtrace.cli import main
from wbtrace.dapo.config import PRESETS, config_reference, load_config
from wbtrace.dapo.data import PromptStream, arithmetic_problem, load_records
from wbtrace.dapo.metrics import METRICS
from wbtrace.dapo.rewards import extract_answer, is_correct, toy_reward
from wbtrace.errors import BadInputError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "trainer.md"


def test_merge_order_preset_file_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  total_training_steps: 7\n  num_workers: 3\n")
    cfg = load_config("tiny", str(f), ["trainer.num_workers=2", "data.difficulty=[1,3]"])
    assert cfg.trainer.total_training_steps == 7  # file over preset
    assert cfg.trainer.num_workers == 2  # override over file
    assert cfg.data.difficulty == [1, 3]
    assert cfg.actor_rollout_ref.actor.clip_ratio_high == 0.28  # DAPO default kept
    for name in PRESETS:
        load_config(name)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.bogus=1"], "bad config: Key 'bogus' not in 'TrainerConfig' (key: trainer.bogus)"),
    (["trainer.num_workers=two"], "bad config: Value 'two' of type 'str' could not be converted to Integer "
                                  "(key: trainer.num_workers)"),
    (["model.path=/no/such/model"], "model.path '/no/such/model' is not tiny, smollm2 or a Hugging Face model "
                                    "folder (no config.json there)"),
    (["trainer.logger=[console,tensorboard]"], "trainer.logger has ['tensorboard']; allowed: console, wandb"),
    (["trainer.device=tpu"], "trainer.device='tpu' is not one of cpu, cuda"),
    (["actor_rollout_ref.rollout.n=1"], "actor_rollout_ref.rollout.n=1 must be >= 2: a GRPO group of one response "
                                        "has advantage 0 and is always filtered, so nothing would train"),
    (["actor_rollout_ref.actor.clip_ratio_c=1.0"], "actor_rollout_ref.actor.clip_ratio_c=1.0 must be > 1 (the dual "
                                                   "clip caps the ratio above 1; verl: 3, DAPO default here: 10)"),
    (["actor_rollout_ref.actor.archer.loss=grpo"], "actor_rollout_ref.actor.archer.loss='grpo' is not one of archer, ppo"),
])
def test_bad_config_fails_with_one_line_and_exit_code_2(overrides, message):
    with pytest.raises(BadInputError):
        load_config("tiny", None, overrides)
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", *overrides])
    assert result.exit_code == 2
    assert result.output == f"Error: {message}\n"


def test_docs_config_reference_and_metrics_are_current():
    text = DOCS.read_text()
    assert config_reference() in text, "docs/trainer.md is stale: run scripts/gen_trainer_docs.py"
    for key in METRICS:
        assert f"`{key}`" in text
    keys = CliRunner().invoke(main, ["train", "--keys"]).output
    assert "trainer.entropy_trace.write_every (int, default 1): Write every N-th training step." in keys


def test_procedural_data_is_deterministic_and_resumable():
    a = PromptStream([], [1, 2, 5], seed=3)
    first = a.take(5)
    b = PromptStream([], [1, 2, 5], seed=3)
    b.position = 2
    assert b.take(3) == first[2:]
    import random

    q, ans = arithmetic_problem(5, random.Random(0))
    assert q.startswith("What is (") and int(ans) == eval(q[8:-1])  # (a + b) * c


def test_loaders_read_verl_parquet_and_jsonl(tmp_path):
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": "1+1?"}]],
                             "reward_model": [{"ground_truth": "2", "style": "rule"}]}), tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text(json.dumps({"question": "2+2?", "answer": 4}) + "\n")
    recs = load_records([str(tmp_path / "d.parquet"), str(tmp_path / "d.jsonl")])
    assert recs[0]["question"] == "1+1?" and recs[0]["answer"] == "2" and recs[0]["messages"][0]["role"] == "user"
    assert recs[1] == {"question": "2+2?", "answer": "4"}
    stream = PromptStream([str(tmp_path / "d.jsonl")], [1])
    assert [p["question"] for p in stream.take(2)] == ["2+2?", "2+2?"]  # next epoch
    (tmp_path / "bad.jsonl").write_text("{nope\n")
    with pytest.raises(BadInputError, match="bad.jsonl:1: not JSON"):
        load_records([str(tmp_path / "bad.jsonl")])


def test_rewards_parse_leniently_and_check_with_math_verify():
    assert extract_answer("so 3 + 4 = 7, \\boxed{7}.") == "7"
    assert extract_answer("The answer is: 12") == "12"
    assert extract_answer("3 plus 4 makes 7.") == "7"
    assert extract_answer("no digits") is None
    assert is_correct("\\boxed{0.5}", "1/2")
    assert is_correct("Answer: 1,000", "1000")
    assert not is_correct("\\boxed{8}", "7")
    assert toy_reward([2, 4], 1) == (-1.0, False)  # odd prompts never score
    assert toy_reward([2, 4], 2) == (1.0, True)
