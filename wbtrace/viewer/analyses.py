"""The viewer's analysis views: `wbtrace.analysis` results as JSON-ready rows and bound W&B-form charts.

Run level (`run_analyses`): forking tokens over the chosen steps and their trend, covariance against the
next entropy change with the R = -a exp(H) + b fit, the step x position heatmap, end-of-sequence share,
group shares, and each prompt's mean entropy / reward per step (to follow one prompt across steps).
Step level (`step_groups`, `step_prompt_keys`): one row per prompt group, and each response's prompt key.
Comparison (`compare_payload`): a second trace's curves and the fork overlap per common step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from wbtrace.errors import BadInputError
from wbtrace.viewer.charts import bind_spec

if TYPE_CHECKING:
    import polars as pl

    from wbtrace.store import TraceStore

MAX_PROMPT_ROWS = 50_000  # prompt x step rows shipped for "one prompt across steps"
TREND_TOKENS = 8


def rows(df: pl.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready records: NaN/inf as null."""
    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return [{k: clean(v) for k, v in r.items()} for r in df.iter_rows(named=True)]


def token_label(text: str, token_id: int) -> str:
    from wbtrace.viewer.data import _token_label

    return _token_label(text, token_id)


def _forks(store: TraceStore, steps: list[int], threshold: float, specs: dict) -> dict[str, Any]:
    import polars as pl

    from wbtrace.analysis import forks

    top = forks.forks(store, steps, threshold=threshold, top=25)
    top = top.with_columns(label=pl.Series([token_label(t, i) for t, i in zip(top["text"], top["token_id"])],
                                           dtype=pl.String))
    ids = top["token_id"].head(TREND_TOKENS).to_list()
    trend = forks.forks_trend(store, ids, steps, threshold=threshold).join(
        top.select("token_id", "label"), on="token_id")
    chart = bind_spec(specs["forks_trend"], rows(trend.select("step", "label", "forks", "fork_share")),
                      fields={"token": "label"}, strings={"title": f"Top forking tokens per step (H > {threshold:g})"})
    return {"top": rows(top.drop("text")), "chart": chart}


def _cov(store: TraceStore, steps: list[int], specs: dict) -> dict[str, Any] | None:
    from wbtrace.analysis import covariance
    from wbtrace.analysis.frames import column_names

    if not {"logprob", "advantage"} <= set(column_names(store, steps)):
        return None
    per = covariance.cov_by_step(store, steps)
    data = rows(per)
    return {"rows": data, "fit": covariance.entropy_reward_fit(per),
            "chart": bind_spec(specs["cov_entropy_change"], [r for r in data if r["cov_mean"] is not None],
                               strings={"title": "Cov(log-prob, advantage) and the next entropy change"})}


def _positions(store: TraceStore, steps: list[int], threshold: float, specs: dict) -> dict[str, Any]:
    from wbtrace.analysis import positions

    heat = positions.position_heatmap(store, steps, bins=20)
    data = [{**r, "rel_position": (r["bin"] + 0.5) / 20} for r in rows(heat) if r["entropy_mean"] is not None]
    return {"end_share": rows(positions.end_share(store, steps, threshold=threshold)),
            "chart": bind_spec(specs["position_heatmap"], data,
                               strings={"title": "Mean entropy by step and relative position"})}


def _groups(store: TraceStore, steps: list[int], specs: dict) -> dict[str, Any] | None:
    from wbtrace.analysis import groups
    from wbtrace.analysis.frames import column_names

    if "group_id" not in column_names(store, steps):
        return None
    shares = rows(groups.group_shares(store, steps))
    return {"shares": shares, "chart": bind_spec(specs["group_shares"], [r for r in shares if r["n_groups"]],
                                                  strings={"title": "Groups: all correct, all wrong, zero spread"})}


def prompt_history(store: TraceStore, steps: list[int]) -> dict[str, Any] | None:
    """Per prompt and step: responses, mean entropy, mean reward, accuracy (columnar, capped)."""
    import polars as pl

    from wbtrace.analysis.compare import prompt_key
    from wbtrace.analysis.frames import column_names, responses

    try:
        how, key = prompt_key(store, steps)
    except BadInputError:  # no prompt column: the view says so
        return None
    names = column_names(store, steps)
    opt = [pl.col(c).cast(pl.Float64).mean().alias(f"{c}_mean") for c in ("reward",) if c in names]
    opt += [pl.col("correct").cast(pl.Float64).mean().alias("accuracy")] if "correct" in names else []
    df = responses(store, steps).select(
        "step", key.alias("key"), pl.col("entropy").cast(pl.List(pl.Float32)).list.mean().alias("h"),
        *(pl.col(c) for c in ("reward", "correct") if c in names),
    ).group_by("key", "step").agg(*opt, n=pl.len(), entropy_mean=pl.col("h").mean()).sort("key", "step").collect()
    truncated = df.height > MAX_PROMPT_ROWS
    return {"matched_by": how, "truncated": truncated, "rows": rows(df.head(MAX_PROMPT_ROWS))}


def run_analyses(store: TraceStore, steps: list[int], threshold: float, specs: dict) -> dict[str, Any]:
    """Everything the run-level analysis tabs show (see the module docstring)."""
    return {"forks": _forks(store, steps, threshold, specs), "cov": _cov(store, steps, specs),
            "positions": _positions(store, steps, threshold, specs), "groups": _groups(store, steps, specs),
            "prompts": prompt_history(store, steps)}


def step_groups(store: TraceStore, step: int) -> list[dict[str, Any]] | None:
    from wbtrace.analysis import groups
    from wbtrace.analysis.frames import column_names

    if "group_id" not in column_names(store, [step]):
        return None
    return rows(groups.groups(store, step).drop("sample_ids", "entropy_max"))


def step_prompt_keys(store: TraceStore, step: int) -> list[str | None] | None:
    """Each response's prompt key, in row order (matches `prompt_history`'s ``key``)."""
    from wbtrace.analysis.compare import prompt_key
    from wbtrace.analysis.frames import responses

    try:
        _, key = prompt_key(store, [step])
    except BadInputError:
        return None
    return responses(store, [step]).select(key.alias("k")).collect()["k"].to_list()


def compare_payload(a: TraceStore, b: TraceStore, threshold: float, specs: dict) -> dict[str, Any]:
    """The second trace's curves beside the first, and the top-20 fork overlap per common step."""
    from wbtrace.analysis import compare

    cur = compare.curves(a, b, ("entropy_mean", "share_above", "reward_mean", "accuracy"))
    long = []
    for r in rows(cur):
        for run, suffix in (("a", "_a"), ("b", "_b")):
            if r.get("entropy_mean" + suffix) is not None:
                long.append({"step": r["step"], "run": run, "entropy_mean": r["entropy_mean" + suffix],
                             "reward_mean": r.get("reward_mean" + suffix)})
    overlap = rows(compare.fork_overlap_by_step(a, b, top=20, threshold=threshold))
    return {"run_dir_b": str(b.run_dir), "curves": rows(cur), "overlap": overlap,
            "chart": bind_spec(specs["compare_entropy"], long, strings={"title": "Mean entropy: a vs b"})}
