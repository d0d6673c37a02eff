"""`wbtrace train` end to end on real Ray with the tiny preset: 2 data-parallel workers write a valid
trace with kept and filtered rows; a SIGKILLed run resumes at the next step without duplicate steps."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from dapo_fixtures import ray_address  # noqa: E402, F401  (session fixture)

from wbtrace import TraceStore
from wbtrace.cli import main
from wbtrace.dapo.metrics import METRICS


def test_tiny_two_workers_write_every_row_once_in_order_and_resume_on_one(tmp_path, ray_address):  # noqa: F811
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "trainer.num_workers=2",
                                       "trainer.total_training_steps=2", f"trainer.output_dir={out}",
                                       "trainer.logger=[console]"])
    assert result.exit_code == 0, result.output
    assert f"entropy trace: {out / 'entropy_trace'}" in result.output
    store = TraceStore(out / "entropy_trace")
    assert store.steps == [1, 2]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert set(m) <= set(METRICS) and {"entropy/mean", "timing/generate", "actor/pg_loss"} <= set(m)
    for step, table in store.iter_steps():
        rows = table.to_pydict()
        n_gen = metrics[step - 1]["filter/num_gen_batches"]
        assert len(rows["kept"]) == n_gen * 4 * 4  # every generated response: 4 prompts x 4 per batch
        kept = np.array(rows["kept"])
        # toy reward: odd prompts always score -1 -> no spread -> filtered; even prompts mostly kept
        odd = np.array(rows["prompt_index"]) % 2 == 1
        assert not kept[odd].any() and odd.any()
        assert kept.sum() == 4 * metrics[step - 1]["filter/kept_groups"]
        for ent, toks in zip(rows["entropy"], rows["token_ids"]):
            assert len(ent) == len(toks) > 0
            assert all(0.0 < e < np.log(90) + 0.01 for e in ent)  # nats, random model: near log(V)
        assert set(rows["group_id"]) == {f"p{i}" for i in rows["prompt_index"]}
        assert all(len(p) == 64 for p in rows["prompt_token_ids"])  # tiny prompts: max_prompt_length chars
        # update-pass columns: one update per step -> ratio exactly 1 on kept rows, absent (NaN) elsewhere
        for r, k, hi in zip(rows["ratio"], rows["kept"], rows["high_entropy"]):
            assert np.allclose(r, 1.0, atol=1e-3) if k else np.isnan(np.array(r, float)).all()
            assert (sum(hi) >= 1) == k
        # ranks' shards in rank order: sample_id is the row order, each prompt's responses stay together
        assert rows["sample_id"] == list(range(len(rows["sample_id"])))
        runs = [g for i, g in enumerate(rows["group_id"]) if i == 0 or rows["group_id"][i - 1] != g]
        assert len(runs) == len(set(runs))
    assert (out / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "2"
    # the 2-worker checkpoint loads on 1 worker and the run goes on in the same trace
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "trainer.num_workers=1",
                                       "trainer.total_training_steps=3", f"trainer.output_dir={out}",
                                       "trainer.logger=[console]"])
    assert result.exit_code == 0, result.output
    assert "resuming from step 2" in result.output
    assert TraceStore(out / "entropy_trace").steps == [1, 2, 3]


def _train_cmd(out, address):
    return [sys.executable, "-c", "from wbtrace.cli import main; main()", "train", "--preset", "tiny",
            "trainer.total_training_steps=5", "data.max_response_length=48", f"trainer.output_dir={out}",
            f"ray.address={address}"]


def test_sigkill_then_restart_resumes_at_next_step_without_duplicates(tmp_path, ray_address):  # noqa: F811
    out = tmp_path / "run"
    latest = out / "checkpoints" / "latest_checkpointed_iteration.txt"
    proc = subprocess.Popen(_train_cmd(out, ray_address), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while not (latest.is_file() and latest.read_text()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0].decode()
    killed_at = int(latest.read_text())
    assert 1 <= killed_at < 5, "the run finished before it could be killed"
    assert killed_at in TraceStore(out / "entropy_trace").steps, log  # trace flushed before the checkpoint
    done = subprocess.run(_train_cmd(out, ray_address), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from step {killed_at}" in done.stdout
    assert f"step    {killed_at + 1} |" in done.stdout and f"step    {killed_at} |" not in done.stdout
    store = TraceStore(out / "entropy_trace")
    assert store.steps == [1, 2, 3, 4, 5]
    assert sorted(e["step"] for e in store.manifest) == [1, 2, 3, 4, 5]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_two_gloo_workers_compute_the_single_worker_gradient(ray_address):  # noqa: F811
    """Token-mean over the global batch: summed shard gradients equal the one-process gradient."""
    import ray

    from wbtrace.dapo.config import load_config
    from wbtrace.dapo.model import tiny_tokenizer
    from wbtrace.dapo.trainer import start_workers

    rng = np.random.default_rng(0)
    n, P, T = 4, 5, 6
    mask = np.ones((n, T), dtype=np.int64)
    mask[0, 2:] = 0  # shards of unequal token counts: 2 + 6 tokens vs 6 + 4
    mask[3, 4:] = 0
    batch = {"prompts": rng.integers(3, 80, (n, P)), "prompt_mask": np.ones((n, P), np.int64),
             "responses": rng.integers(3, 80, (n, T)), "response_mask": mask,
             "old_logprob": rng.normal(-4.4, 0.1, (n, T)).astype(np.float32),
             "entropy": rng.random((n, T)).astype(np.float32),
             "advantages": np.array([1.0, -1.0, 0.5, -0.5], np.float32)}
    grads, stats = [], []
    for workers_n in (1, 2):
        cfg = load_config("tiny", None, [f"trainer.num_workers={workers_n}", "actor_rollout_ref.actor.grad_clip=1e9"])
        workers = start_workers(cfg, "tiny", tiny_tokenizer())
        shards = np.array_split(np.arange(n), workers_n)
        out = ray.get([w.update.remote({k: v[s] for k, v in batch.items()}, 1) for w, s in zip(workers, shards)])
        grads.append(ray.get(workers[0].grads.remote()))
        stats.append(out[0][0])
        ratio = np.concatenate([tokens["ratio"] for _, tokens in out])
        assert ratio.shape == (n, T)
        log_ratio = np.log(ratio[mask == 1])  # logp - old_logprob, both near -log(90) for the random model
        assert np.isfinite(log_ratio).all() and 0 < np.abs(log_ratio).max() < 1.0
        for w in workers:
            ray.kill(w)
    assert np.abs(grads[0]).max() > 0
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    assert stats[1]["actor/pg_loss"] == pytest.approx(stats[0]["actor/pg_loss"], rel=1e-5)


def test_wandb_offline_and_mlflow_sinks_get_the_trace_and_the_metrics(tmp_path, ray_address, monkeypatch):  # noqa: F811
    import base64
    import hashlib
    import shutil

    import mlflow

    from wbtrace.backends.wandb_file import read_run_log
    from wbtrace.sources.wandb_offline import find_wandb_file
    from wbtrace.sources.wandb_sync import relocate

    out = tmp_path / "run"
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "scratch"))  # the trainer puts the W&B run there
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "trainer.total_training_steps=1",
                                       f"trainer.output_dir={out}", "trainer.logger=[console,wandb]",
                                       "trainer.wandb.mode=offline", "trainer.entropy_trace.mlflow.enable=true"])
    assert result.exit_code == 0, result.output
    assert not (out / "wandb").exists()
    (run_dir,) = (tmp_path / "scratch" / "wandb").glob("offline-run-*")
    assert (run_dir / "wbtrace" / "steps" / "step_000001.parquet").is_file()
    assert [p for p in (tmp_path / "home").rglob("*") if p.is_file() and ".local" in p.parts] == []
    moved = tmp_path / "other-host" / run_dir.name  # copied to another host's path, then prepared for sync
    shutil.copytree(run_dir, moved)
    shutil.rmtree(run_dir)
    assert relocate(moved).moved > 0
    entries = [e for a in read_run_log(find_wandb_file(moved)).artifacts for e in a.entries]
    assert {"steps/step_000001.parquet", "preview.table.json", "heatmap.table.json"} <= {e.path for e in entries}
    for e in entries:
        path = Path(e.local_path)
        assert path.is_relative_to(moved)
        assert base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode() == e.digest
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'entropy_trace' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("wbtrace").experiment_id])
    assert run.info.run_name == "dapo"
    reward = json.loads((out / "metrics.jsonl").read_text())["reward/mean"]
    assert run.data.metrics["reward/mean"] == pytest.approx(reward)
    assert "trace/entropy_p80" in run.data.metrics


# archer2's loss and update values on the tiny model: the model, sizes, device and reward are tiny's
ARCHER2_ON_TINY = ["model.path=tiny", "model.compute_dtype=float32", "trainer.device=cpu", "trainer.cpus_per_worker=1",
                   "data.train_batch_size=4", "data.max_prompt_length=64", "data.max_response_length=16",
                   "actor_rollout_ref.rollout.n=4", "actor_rollout_ref.rollout.micro_batch_size=64",
                   "actor_rollout_ref.actor.micro_batch_size=16", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                   "actor_rollout_ref.actor.lr=1e-3", "reward_model.reward_fn=toy", "reward_model.overlong_buffer.len=4",
                   "trainer.save_freq=1", "trainer.logger=[console]"]


def test_archer2_preset_on_the_tiny_model_trains_traces_token_classes_and_resumes(tmp_path, ray_address):  # noqa: F811
    from wbtrace.dapo.config import load_config

    out = tmp_path / "run"
    args = ["train", "--preset", "archer2", *ARCHER2_ON_TINY, f"trainer.output_dir={out}"]
    cfg = load_config("archer2", None, ARCHER2_ON_TINY).actor_rollout_ref.actor
    assert (cfg.archer.enable, cfg.archer.loss, cfg.archer.entropy_class, cfg.ppo_epochs, cfg.clip_ratio_c,
            cfg.use_kl_loss) == (True, "archer", "current", 3, 3.0, True)
    result = CliRunner().invoke(main, [*args, "trainer.total_training_steps=2"])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in metrics if "actor/pg_loss" in m]
    assert trained and all(m["filter/num_gen_batches"] == 1 for m in metrics)  # rejection sampling, no refill
    for m in trained:
        assert m["actor/kl_loss"] > 0 and m["actor/skipped_updates"] == 0 and m["actor/ratio_mean"] != 1.0
    store = TraceStore(out / "entropy_trace")
    assert store.steps == [1, 2]
    ratios = []
    for _, table in store.iter_steps():
        rows = table.to_pydict()
        for r, k, hi, clip in zip(rows["ratio"], rows["kept"], rows["high_entropy"], rows["clipped"]):
            if k:  # 3 epochs x 2 mini-batches: the last epoch is off-policy
                ratios += list(r)
                assert len(hi) == len(r) == len(clip) and 1 <= sum(hi) <= 0.2 * len(hi) + 1
    assert ratios and np.abs(np.array(ratios) - 1.0).max() > 1e-3
    result = CliRunner().invoke(main, [*args, "trainer.total_training_steps=3"])
    assert result.exit_code == 0, result.output
    assert "resuming from step 2" in result.output
    assert TraceStore(out / "entropy_trace").steps == [1, 2, 3]


def test_filtering_off_trains_every_generated_group_in_mini_batches_of_the_configured_size(tmp_path, ray_address):  # noqa: F811
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "trainer.total_training_steps=1",
                                       "algorithm.filter_groups.enable=false", "data.gen_batch_size=8",
                                       f"trainer.output_dir={out}", "trainer.logger=[console]"])
    assert result.exit_code == 0, result.output
    (m,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert m["filter/kept_groups"] == 8  # not trimmed to train_batch_size=4 (verl trains the whole batch)
    rows = TraceStore(out / "entropy_trace").read_step(1).to_pydict()
    assert len(rows["kept"]) == 32 and all(rows["kept"])
    # two mini-batches of 4 groups: the first is on-policy (ratio 1), the second comes after one step
    first, second = np.concatenate(rows["ratio"][:16]), np.concatenate(rows["ratio"][16:])
    assert np.allclose(first, 1.0, atol=1e-5) and np.abs(second - 1.0).max() > 1e-4
