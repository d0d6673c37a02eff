"""TRL integration: trace every rollout of a `GRPOTrainer` (loss types grpo, dapo, ...) as wbtrace steps.

TRL computes per-token entropy only inside the training loss (`_compute_loss`, on shuffled micro-batches,
reduced to the ``entropy`` metric), and its public extension points do not reach the rollout:
``TrainerCallback`` hooks see logs and the model, never the completion ids, rewards or advantages. So
this integration subclasses ``GRPOTrainer`` and overrides two *private* methods, checked with trl 1.16.0:

* ``_calculate_rewards``: keeps the per-function rewards of the generation batch (all processes);
* ``_generate_and_score_completions``: after TRL built the batch (ids, masks, advantages), runs one
  extra no-grad forward through TRL's own ``_get_per_token_logps_and_entropies`` (its fused LM head
  divides logits by ``args.temperature``: entropies are in nats at the rollout temperature, under the
  policy that sampled them) and hands the step to a `TraceWriter`.

The extra forward costs about one inference pass over prompt + completion per generation batch.
Steps are numbered ``state.global_step + 1`` at generation time (1-based, like verl). TRL has no dynamic
sampling, so every row has ``kept=True``. Multi-process runs: only the main process writes, and only its
own share of the completions. Multimodal inputs are passed through but were not tested.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from wbtrace.errors import BadInputError, require

log = logging.getLogger("wbtrace")

TRL_VERSIONS_CHECKED = ("1.16.0",)

# Keys of the generation batch that `_get_per_token_logps_and_entropies` takes as keyword arguments.
_FORWARD_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                 "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


def _weighted_rewards(rewards_per_func: Any, weights: Any) -> np.ndarray:
    """Total reward per completion, (B,), as TRL logs it: weighted nansum; NaN where every function gave None."""
    r = rewards_per_func.detach().float().cpu().numpy()
    w = weights.detach().float().cpu().numpy()
    total = np.nansum(r * w[None, :], axis=1)
    total[np.isnan(r).all(axis=1)] = np.nan
    return total.astype(np.float32)


class WbtraceGRPOMixin:
    """Adds tracing to a ``GRPOTrainer`` subclass; see `WbtraceGRPOTrainer` and the module docstring.

    Extra keyword arguments: ``trace_dir`` (run directory), ``trace_sinks`` (W&B/MLflow sinks),
    ``trace_writer`` (an existing `TraceWriter` instead). The writer is closed when ``train()`` ends.
    """

    def __init__(self, *args: Any, trace_dir: str | os.PathLike | None = None, trace_sinks: Sequence[Any] = (),
                 trace_writer: Any = None, **kwargs: Any) -> None:
        if trace_dir is None and trace_writer is None:
            raise BadInputError("WbtraceGRPOTrainer needs trace_dir= or trace_writer=")
        super().__init__(*args, **kwargs)
        self._wbtrace_rewards = None
        self.trace_writer = trace_writer
        if trace_writer is None and self.accelerator.is_main_process:
            from wbtrace.writer import TraceWriter

            self.trace_writer = TraceWriter(trace_dir, tokenizer=self._wbtrace_tokenizer(),
                                            run_info=self._wbtrace_run_info(), sinks=trace_sinks)

    def _wbtrace_tokenizer(self) -> Any:
        processing = self.processing_class
        return getattr(processing, "tokenizer", processing)

    def _wbtrace_run_info(self) -> dict[str, Any]:
        a = self.args
        return {"trainer": f"trl.{type(self).__name__}", "model": getattr(self.model.config, "_name_or_path", None),
                "config": {"loss_type": a.loss_type, "temperature": a.temperature,
                           "num_generations": a.num_generations, "beta": a.beta, "epsilon": a.epsilon,
                           "epsilon_high": getattr(a, "epsilon_high", None), "scale_rewards": a.scale_rewards,
                           "max_completion_length": a.max_completion_length, "learning_rate": a.learning_rate}}

    # ------------------------------------------------------------------ TRL private hooks (trl 1.16)
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._wbtrace_rewards = rewards
        return rewards

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.trace_writer is not None and self.model.training:
            try:
                self._wbtrace_record(output)
            except Exception as e:  # tracing must never stop training
                log.warning("wbtrace: step %d not traced: %s: %s", self.state.global_step + 1, type(e).__name__, e)
        return output

    def train(self, *args: Any, **kwargs: Any):
        try:
            result = super().train(*args, **kwargs)
        except BaseException:
            if self.trace_writer is not None:
                self.trace_writer.close("failed")
            raise
        if self.trace_writer is not None:
            self.trace_writer.close("success")
        return result

    # ------------------------------------------------------------------ building the step
    def _wbtrace_entropies(self, output: dict[str, Any]) -> tuple[Any, Any]:
        """Per-token (entropy, log-prob) of the sampled completions, each (B, T), at the rollout temperature."""
        import torch

        prompt_ids, completion_ids = output["prompt_ids"], output["completion_ids"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        forward_kwargs = {k: output[k] for k in _FORWARD_KEYS if k in output}
        with torch.no_grad():
            logps, entropies, _ = self._get_per_token_logps_and_entropies(
                self.model, input_ids, attention_mask, completion_ids.size(1),
                batch_size=self.args.per_device_train_batch_size, compute_entropy=True, **forward_kwargs)
        return entropies, logps

    def _wbtrace_record(self, output: dict[str, Any]) -> None:
        step = self.state.global_step + 1
        entropies, logps = self._wbtrace_entropies(output)
        completion_ids, prompt_ids = output["completion_ids"], output["prompt_ids"]
        mask = output["completion_mask"]
        if "tool_mask" in output:  # tool output tokens were not sampled by the policy
            mask = mask * output["tool_mask"]
        n = completion_ids.size(0)
        first = self.accelerator.process_index * n  # rows of this process in the gathered rewards
        rows = np.arange(first, first + n)
        group = rows // self.num_generations
        reward = None
        if self._wbtrace_rewards is not None:
            reward = _weighted_rewards(self._wbtrace_rewards, self.reward_weights)[first:first + n]
        eos = torch_isin(completion_ids, self.eos_token_ids) & mask.bool()
        prompt_mask = output["prompt_mask"].bool()
        prompts = [prompt_ids[i][prompt_mask[i]].tolist() for i in range(n)]
        self.trace_writer.write_step(
            step, token_ids=completion_ids, response_mask=mask, entropy=entropies, logprob=logps,
            reward=reward, advantage=output["advantages"],
            group_id=np.array([f"{step}-{g}" for g in group]), prompt_index=group.astype(np.int32),
            truncated=~eos.any(dim=1), **_prompt_columns(self._wbtrace_tokenizer(), prompts))


def _prompt_columns(tokenizer: Any, prompts: list[Any]) -> dict[str, Any]:
    """``prompt_text`` and ``prompt_token_ids`` of each response's prompt (padding removed)."""
    return {"prompt_text": tokenizer.batch_decode(prompts), "prompt_token_ids": prompts}


def torch_isin(ids: Any, values: Sequence[int]) -> Any:
    """``ids`` in ``values``, elementwise, on ids' device."""
    import torch

    return torch.isin(ids, torch.tensor(list(values), device=ids.device))


def make_trainer_class(base: type | None = None) -> type:
    """A traced subclass of ``base`` (default ``trl.GRPOTrainer``); for users with their own subclass."""
    if base is None:
        base = require("trl", "trl").GRPOTrainer
    return type(f"Wbtrace{base.__name__}", (WbtraceGRPOMixin, base), {"__module__": __name__})


def __getattr__(name: str) -> Any:
    # Lazy: building the class imports trl (and transformers), which `import wbtrace` must not.
    if name == "WbtraceGRPOTrainer":
        cls = make_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["WbtraceGRPOMixin", "make_trainer_class", "TRL_VERSIONS_CHECKED"]  # + WbtraceGRPOTrainer (lazy)
