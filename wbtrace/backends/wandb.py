"""W&B naming rules, shared by `wbtrace.sinks.wandb` (which writes them) and the W&B sources (which read them).

A run's trace is one artifact collection ``wbtrace-<run_id>`` of type ``entropy-trace``; each step is
a version aliased ``step-<N>`` holding ``steps/step_%06d.parquet``, ``run.json`` and ``vocab.parquet``.
The sink keeps those files under ``<run sync dir>/wbtrace/`` so an offline run dir is self-contained.
"""

from __future__ import annotations

ARTIFACT_TYPE = "entropy-trace"
ARTIFACT_PREFIX = "wbtrace-"
RUN_FILES_DIR = "wbtrace"  # inside the W&B run's sync dir
_ALIAS_PREFIX = "step-"


def artifact_name(run_id: str) -> str:
    """Artifact collection of a run's traces; artifact names are project-wide, so it holds the run id."""
    return f"{ARTIFACT_PREFIX}{run_id}"


def is_trace_artifact(name: str) -> bool:
    return name.startswith(ARTIFACT_PREFIX)


def step_alias(step: int) -> str:
    return f"{_ALIAS_PREFIX}{step}"


def alias_step(alias: str) -> int | None:
    """The step of a ``step-N`` alias; None for any other alias (``latest``, ``v3``...)."""
    rest = alias[len(_ALIAS_PREFIX):] if alias.startswith(_ALIAS_PREFIX) else ""
    return int(rest) if rest.isdigit() else None
