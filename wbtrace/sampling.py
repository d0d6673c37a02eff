"""Trace sampling: which steps and which responses a `TraceWriter` stores, chosen deterministically.

Tracing every token of a research-scale run (33M tokens a step, thousands of steps) costs more
storage than teams pay for, so a writer may keep

* steps: every N-th, plus the trace's first step and the run's last (``every_n_steps``, ``last_step``);
* rows: a fraction of the step's groups (``group_fraction``) or about ``token_budget`` tokens, always
  whole groups (a GRPO group is the unit its advantages are computed over).

Rows are a simple random sample of groups without replacement: every group of a step has the same
chance k/G whatever its length, so per-token statistics over the stored rows are unbiased estimates of
the step's (a length-dependent rule such as "fill the budget" would favour short responses). The
permutation is seeded by ``(seed, step)``: rerunning a step stores the same rows. The manifest keeps
the exact statistics of the whole step and a ``sampling`` entry that says what was stored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from wbtrace.errors import BadInputError


@dataclass(frozen=True)
class TraceSampling:
    """What a writer keeps of each step.

    Parameters
    ----------
    every_n_steps : int, default 1
        Store steps divisible by N, plus the trace's first step and ``last_step``.
    last_step : int, optional
        The run's final step (always stored); the DAPO trainer passes ``total_training_steps``.
    group_fraction : float, default 1.0
        Share of each step's groups to store, in (0, 1]; at least one group is kept.
    token_budget : int, default 0
        About this many tokens per step (0 = no budget): the number of groups is chosen so the expected
        token count fits, then groups are sampled uniformly like ``group_fraction``.
    seed : int, default 0
        Seeds the per-step permutation of groups.
    """

    every_n_steps: int = 1
    last_step: int | None = None
    group_fraction: float = 1.0
    token_budget: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.every_n_steps, bool) or not isinstance(self.every_n_steps, int) or self.every_n_steps < 1:
            raise BadInputError(f"every_n_steps={self.every_n_steps!r} must be an integer >= 1")
        if not (isinstance(self.group_fraction, (int, float)) and 0 < self.group_fraction <= 1):
            raise BadInputError(f"group_fraction={self.group_fraction!r} must be in (0, 1]; 1 keeps every group")
        if isinstance(self.token_budget, bool) or not isinstance(self.token_budget, int) or self.token_budget < 0:
            raise BadInputError(f"token_budget={self.token_budget!r} must be an integer >= 0 (0 = no budget)")

    @property
    def samples_rows(self) -> bool:
        return self.group_fraction < 1 or self.token_budget > 0

    def keeps_step(self, step: int, first: bool) -> bool:
        """Whether ``step`` is stored; ``first``: it would be the trace's first step."""
        return first or step % self.every_n_steps == 0 or step == self.last_step

    def record(self) -> dict[str, Any]:
        """The settings, as the manifest's ``sampling`` entry carries them."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def group_codes(group_ids: Any, n: int) -> np.ndarray:
    """``[N]`` int codes of each response's group, in order of the sorted group ids; one group per
    response when the step has no group ids (nulls each form their own group)."""
    if group_ids is None:
        return np.arange(n)
    values = np.asarray(group_ids.to_pylist() if hasattr(group_ids, "to_pylist") else group_ids, dtype=object)
    keys = np.array([f"\x00{i}" if v is None else f"\x01{v}" for i, v in enumerate(values)], dtype=object)
    _, codes = np.unique(keys.astype(str), return_inverse=True)
    return codes.ravel()


def choose_rows(sampling: TraceSampling, step: int, codes: np.ndarray, lengths: np.ndarray
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """Rows to store (sorted indices) and what the manifest records about them.

    ``codes``: ``[N]`` group code per response (`group_codes`); ``lengths``: ``[N]`` tokens per response.
    """
    n_groups = int(codes.max()) + 1 if codes.size else 0
    k = n_groups
    if sampling.group_fraction < 1:
        k = min(k, math.ceil(n_groups * sampling.group_fraction))
    total = int(lengths.sum())
    if sampling.token_budget and total > sampling.token_budget:
        k = min(k, int(n_groups * sampling.token_budget / total))
    k = max(min(k, n_groups), 1 if n_groups else 0)
    order = np.random.default_rng([sampling.seed, step]).permutation(n_groups)
    keep = np.zeros(n_groups, dtype=bool)
    keep[order[:k]] = True
    rows = np.flatnonzero(keep[codes])
    info = {**sampling.record(), "groups": n_groups, "groups_stored": k, "responses_stored": int(rows.size),
            "tokens_stored": int(lengths[rows].sum())}
    return rows, info
