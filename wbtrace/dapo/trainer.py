"""The DAPO driver loop on Ray: config, init, rollout, loop, save. Every rollout token is traced.

Commands (``wbtrace train`` is ``scripts/train_dapo_*.sh`` without the wrapper)::

    wbtrace train --preset tiny                                   # seconds, random model (tests)
    wbtrace train --preset cpu trainer.output_dir=outputs/demo    # SmolLM2-135M, a few steps on 2 cores
    wbtrace train --preset h100                                   # 1 GPU: 100 steps, 8 prompts x 8
    wbtrace train --preset h100 trainer.num_workers=2             # 2 GPUs, data-parallel (nccl)
    wbtrace train --preset h100 ray.address=auto                  # join a running Ray cluster
    wbtrace train --preset archer2                                # Archer2.0's recipe: its loss, 3 epochs, KL

One step: the driver takes prompts, the workers (one Ray actor per GPU, or per CPU slot) sample n
responses each with the KV cache and run the old-log-prob pass (entropy and log-prob of every token
from raw logits / temperature); the driver scores them, computes GRPO advantages, drops groups with
zero accuracy spread and refills (dynamic sampling), hands *every* response to the TraceWriter
(``kept=False`` for dropped groups, whose entropy comes from the same old-log-prob pass), and the
workers update on the kept groups with gradients all-reduced over torch.distributed.

How this differs from the DAPO paper (and verl's recipe):
- Sampling with HF ``generate`` (``rollout.name=hf``) or wbtrace's own static-cache CUDA-graph sampler
  (``rollout.name=fast``, ``sampler.py``) instead of vLLM; the old log-prob is recomputed by the trainer
  (as verl), not taken from the sampler (whose own log-probs give ``rollout/logprob_gap_*``).
- A response ends at the first of the stop ids (tokenizer eos + generation-config eos + chat-template
  end of turn, recorded in run.json as ``eos_token_ids``); nothing after it is traced, scored or trained.
- One policy update per generation batch by default (ppo_mini_batch_size = train_batch_size): ratios
  start at 1, so clip-higher binds only with several mini-batches or epochs, as in verl's default.
- Dynamic sampling stops after ``max_num_gen_batches`` and trains on what survived (verl raises).
- Rewards: +1/-1 from math-verify on a leniently parsed answer (last \\boxed{}, "Answer: X", last number).
- Built-in procedural arithmetic replaces DAPO-Math-17k (no download); small models, small batches.
- Optional Archer2.0 loss (``actor.archer.enable``, ``--preset archer2``) is not in the DAPO paper; its
  differences from Archer2.0's code (global token-mean kept) are listed in docs/trainer.md.
- As verl: the LR schedule steps once per training step; a non-finite gradient norm skips that optimizer
  step; with filtering off every generated group trains.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wbtrace.dapo.config import DapoConfig, to_dict
from wbtrace.dapo.data import PromptStream
from wbtrace.dapo.metrics import console_line, rollout_metrics
from wbtrace.dapo.model import load_tokenizer, model_name, prepare_model, stop_token_ids
from wbtrace.dapo.rollout import collect_step
from wbtrace.errors import BadInputError
from wbtrace.store import atomic_write

log = logging.getLogger(__name__)


def train(cfg: DapoConfig, echo: Callable[[str], None] | None = None) -> list[dict[str, float]]:
    """Run DAPO until ``trainer.total_training_steps``; returns this run's per-step metrics."""
    # ------------------------------------------------------------------ init
    echo = echo or (lambda _msg: None)
    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trace_dir = Path(cfg.trainer.entropy_trace.output_dir or out / "entropy_trace")
    model_path = prepare_model(cfg.model.path, cfg.model.gguf_file, cfg.model.cache_dir)
    tok = load_tokenizer(model_path)
    stop_ids = stop_token_ids(tok, model_path)
    check_sampler(cfg, model_path, echo)
    started_ray = init_ray(cfg)
    workers = start_workers(cfg, model_path, tok, stop_ids)
    stream = PromptStream(cfg.data.train_files, cfg.data.difficulty, cfg.data.seed)
    start = resume(cfg, out, workers, stream)
    sinks = build_sinks(cfg, out, trace_dir)
    writer = open_trace(cfg, trace_dir, tok, model_path, sinks, stop_ids)
    echo(f"entropy trace: {trace_dir}" if cfg.trainer.entropy_trace.enable else "entropy trace: disabled")
    if start:
        echo(f"resuming from step {start} (checkpoint in {out / 'checkpoints'})")
    history, status = [], "failed"
    # ------------------------------------------------------------------ loop
    try:
        with open(out / "metrics.jsonl", "a") as metrics_file:
            for step in range(start + 1, cfg.trainer.total_training_steps + 1):
                m = train_step(cfg, step, workers, stream, tok, writer)
                metrics_file.write(json.dumps(m) + "\n")
                metrics_file.flush()
                for sink in sinks:
                    sink.log_metrics(m, step)
                echo(console_line(m))
                history.append(m)
                if (cfg.trainer.save_freq and step % cfg.trainer.save_freq == 0) \
                        or step == cfg.trainer.total_training_steps:
                    save_checkpoint(out, step, workers, stream, writer)
        status = "success"
    # ------------------------------------------------------------------ save
    finally:
        writer.close(status)
        shutdown(workers, started_ray)
    return history


def train_step(cfg: DapoConfig, step: int, workers: list[Any], stream: PromptStream, tok: Any,
               writer: Any) -> dict[str, float]:
    """One DAPO step: rollout with dynamic sampling, update on kept groups, trace every response."""
    t0 = time.perf_counter()
    batch, m = collect_step(workers, stream, tok, cfg, step)
    t1 = time.perf_counter()
    m.update(update_policy(cfg, workers, batch))
    t2 = time.perf_counter()
    write_trace(writer, step, batch, cfg.trainer.entropy_trace.save_text)  # the writer samples steps
    t3 = time.perf_counter()
    tokens = float(batch["response_mask"].sum())
    m.update(rollout_metrics(batch))
    m.update({"step": step, "timing/update": t2 - t1, "timing/trace": t3 - t2, "timing/step": t3 - t0,
              "throughput/tokens_per_s": tokens / max(t3 - t0, 1e-9),
              "throughput/gen_tokens_per_s": tokens / max(m["timing/generate"], 1e-9)})
    return m


def update_policy(cfg: DapoConfig, workers: list[Any], batch: dict[str, Any]) -> dict[str, float]:
    """Shard the kept responses over the workers and run the PPO update; metrics from rank 0."""
    import ray

    kept = np.flatnonzero(batch["kept"])
    if len(kept) == 0:
        log.warning("no group survived dynamic sampling this step; skipping the update")
        return {}
    # Mini-batches of ppo_mini_batch_size groups, as verl splits by rows: a step with more groups than
    # train_batch_size (filtering off, larger generation batch) makes more optimizer steps, not bigger ones.
    mini = cfg.actor_rollout_ref.actor.ppo_mini_batch_size or cfg.data.train_batch_size
    kept_groups = len(kept) // cfg.actor_rollout_ref.rollout.n
    num_mini = max(1, -(-kept_groups // mini))
    fields = {"prompts": "prompts", "prompt_mask": "prompt_mask", "responses": "responses",
              "response_mask": "response_mask", "old_logprob": "logprob", "entropy": "entropy",
              "advantages": "advantage"}
    shards = np.array_split(kept, len(workers))
    results = ray.get([w.update.remote({k: batch[v][s] for k, v in fields.items()}, num_mini)
                       for w, s in zip(workers, shards)])
    # Per-token update stats for the trace: NaN / False on rows that did not train.
    N, T = batch["responses"].shape
    batch["ratio"] = np.full((N, T), np.nan, np.float32)
    batch["clipped"] = np.zeros((N, T), bool)
    batch["high_entropy"] = np.zeros((N, T), bool)
    for key in ("ratio", "clipped", "high_entropy"):
        batch[key][kept] = np.concatenate([tokens[key] for _, tokens in results])
    return results[0][0]


def write_trace(writer: Any, step: int, batch: dict[str, Any], save_text: bool) -> None:
    """Hand every generated response of the step to the writer (it returns at once)."""
    text = {"prompt_text": batch["prompt_text"], "response_text": batch["response_text"]} if save_text else {}
    update = {k: batch[k] for k in ("ratio", "clipped", "high_entropy") if k in batch}
    writer.write_step(
        step, token_ids=batch["responses"], response_mask=batch["response_mask"], entropy=batch["entropy"],
        logprob=batch["logprob"], reward=batch["reward"], advantage=batch["advantage"],
        group_id=[f"p{i}" for i in batch["prompt_index"]], prompt_index=batch["prompt_index"],
        kept=batch["kept"], correct=batch["acc"], score=batch["score"], truncated=batch["truncated"],
        prompt_token_ids=[np.asarray(p, dtype=np.int32) for p in batch["prompt_token_ids"]], **text, **update)


# ---------------------------------------------------------------------- builders
def init_ray(cfg: DapoConfig) -> bool:
    """Join ``ray.address`` or start a local instance; True when this call started Ray."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, log_to_driver=False)
    else:
        cpus = cfg.ray.num_cpus or cfg.trainer.num_workers * cfg.trainer.cpus_per_worker
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=cfg.ray.object_store_memory_mb * 2**20)
    return True


def check_sampler(cfg: DapoConfig, model_path: str, echo: Callable[[str], None]) -> None:
    """``rollout.name=fast`` on a model it cannot run: say why and use ``hf`` instead."""
    roll = cfg.actor_rollout_ref.rollout
    if roll.name != "fast":
        return
    from wbtrace.dapo.model import load_model_config
    from wbtrace.dapo.sampler import unsupported_reason

    reason = unsupported_reason(load_model_config(model_path))
    if reason:
        echo(f"rollout: the fast sampler cannot run this model ({reason}); using hf generate")
        log.warning("fast sampler unavailable: %s", reason)
        roll.name = "hf"


def start_workers(cfg: DapoConfig, model_path: str, tok: Any, stop_ids: list[int] | None = None) -> list[Any]:
    """One PolicyWorker actor per rank, joined into one torch.distributed group; responses end at
    the first of ``stop_ids`` (default: ``stop_token_ids(tok, model_path)``)."""
    import ray

    from wbtrace.dapo.worker import PolicyWorker

    W, gpu = cfg.trainer.num_workers, cfg.trainer.device == "cuda"
    if gpu and ray.cluster_resources().get("GPU", 0) < W:
        raise BadInputError(f"trainer.num_workers={W} needs {W} GPUs; Ray sees "
                            f"{ray.cluster_resources().get('GPU', 0):.0f}")
    env = {"RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(cfg.trainer.cpus_per_worker)}
    actor = ray.remote(PolicyWorker).options(num_cpus=cfg.trainer.cpus_per_worker, num_gpus=1 if gpu else 0,
                                             runtime_env={"env_vars": env})
    stop_ids = stop_token_ids(tok, model_path) if stop_ids is None else stop_ids
    workers = [actor.remote(r, W, cfg, model_path, tok.pad_token_id, stop_ids) for r in range(W)]
    addr, port = ray.get(workers[0].address.remote())
    ray.get([w.init_dist.remote(addr, port) for w in workers])
    return workers


def build_sinks(cfg: DapoConfig, out: Path, trace_dir: Path) -> list[Any]:
    """The W&B / MLflow sinks the config asks for, built once (imported lazily)."""
    sinks: list[Any] = []
    t = cfg.trainer
    if "wandb" in t.logger:
        from wbtrace.sinks.wandb import WandbSink

        # WANDB_DIR, when set, says where W&B runs go (a scratch or shared file system); else the run dir.
        # Passed explicitly: wandb reads the environment once per process, so a later change would be lost.
        sinks.append(WandbSink(project=t.project_name, entity=t.wandb.entity or None, name=t.experiment_name,
                               config=to_dict(cfg), mode=t.wandb.mode,
                               dir=os.environ.get("WANDB_DIR") or str(out),
                               reference_uri=t.wandb.reference_uri or None))
    if t.entropy_trace.mlflow.enable:
        from wbtrace.sinks.mlflow import MlflowSink

        sinks.append(MlflowSink(tracking_uri=t.entropy_trace.mlflow.tracking_uri or None, run_dir=trace_dir,
                                experiment=t.project_name, run_name=t.experiment_name))
    return sinks


class NoTrace:
    """Stands in for the TraceWriter when ``entropy_trace.enable=false``; still finishes the sinks."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    def write_step(self, step: int, **arrays: Any) -> bool:
        return False

    def flush(self) -> None:
        return None

    def close(self, status: str = "success") -> None:
        for sink in self.sinks:
            sink.finish(status)


def open_trace(cfg: DapoConfig, trace_dir: Path, tok: Any, model_path: str, sinks: list[Any],
               stop_ids: list[int]) -> Any:
    if not cfg.trainer.entropy_trace.enable:
        return NoTrace(sinks)
    from wbtrace import TraceWriter
    from wbtrace.sampling import TraceSampling

    et = cfg.trainer.entropy_trace
    # eos_token_ids: a reader can check that no response runs past the end of its turn.
    info = {"model": model_name(model_path), "tokenizer": model_name(model_path), "config": to_dict(cfg),
            "trainer": "wbtrace.dapo", "eos_token_ids": stop_ids, "pad_token_id": tok.pad_token_id}
    sampling = TraceSampling(every_n_steps=et.write_every, last_step=cfg.trainer.total_training_steps,
                             group_fraction=et.group_fraction, token_budget=et.token_budget, seed=cfg.trainer.seed)
    # copy=False: each step's batch is built fresh and only read after the hand-off
    return TraceWriter(trace_dir, tokenizer=tok, run_info=info, sinks=sinks, sampling=sampling, copy=False)


def shutdown(workers: list[Any], started_ray: bool) -> None:
    import ray

    for w in workers:
        ray.kill(w)
    if started_ray:
        ray.shutdown()


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(out: Path, step: int, workers: list[Any], stream: PromptStream, writer: Any) -> None:
    """Model, optimizer, data position, step. The trace is flushed first: a checkpoint never claims a
    step whose trace is not on disk, so a restart neither skips nor duplicates trace steps."""
    import ray

    writer.flush()
    ckpt = out / "checkpoints" / f"global_step_{step:06d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    ray.get(workers[0].save.remote(str(ckpt / "worker.pt")))
    atomic_write(ckpt / "trainer_state.json", json.dumps({"step": step, "data_position": stream.position}).encode())
    atomic_write(out / "checkpoints" / "latest_checkpointed_iteration.txt", str(step).encode())
    for old in (out / "checkpoints").glob("global_step_*"):
        if old != ckpt:
            shutil.rmtree(old, ignore_errors=True)


def resume(cfg: DapoConfig, out: Path, workers: list[Any], stream: PromptStream) -> int:
    """Load the latest checkpoint into every worker and the data stream; returns its step (0 if none)."""
    import ray

    latest = out / "checkpoints" / "latest_checkpointed_iteration.txt"
    if cfg.trainer.resume_mode == "disable" or not latest.is_file():
        return 0
    step = int(latest.read_text())
    ckpt = out / "checkpoints" / f"global_step_{step:06d}"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    ray.get([w.load.remote(str(ckpt / "worker.pt")) for w in workers])
    stream.position = state["data_position"]
    _truncate_metrics(out / "metrics.jsonl", step)
    return step


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines of steps after the checkpoint: they are about to be run again."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write(path, "".join(ln + "\n" for ln in lines).encode())
