"""Two traces side by side (a base and a trained run, two seeds, two algorithms), and one prompt across steps.

- `curves`: the manifest statistics of both runs joined on step (``entropy_mean_a``, ``entropy_mean_b``...).
- `fork_overlap_by_step`: per common step, the overlap of the two runs' top forking tokens (Jaccard of the
  token-id sets; arXiv 2506.01939 compares high-entropy tokens of a base and an RL-trained model).
- `matched_prompts` / `prompt_responses`: prompts present in both runs at the given steps, matched by
  ``prompt_text``, else ``prompt_token_ids``, else ``prompt_index``; and every response to one prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from wbtrace.analysis.forks import fork_overlap, forks
from wbtrace.analysis.frames import chosen_steps, has_columns, responses
from wbtrace.errors import BadInputError
from wbtrace.stats import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    import polars as pl

    from wbtrace.store import TraceStore

CURVE_KEYS = ("entropy_mean", "entropy_p80", "entropy_p99", "share_above", "reward_mean", "accuracy",
              "response_length_mean")


def manifest_frame(store: TraceStore, keys: Sequence[str] = CURVE_KEYS) -> pl.DataFrame:
    """The committed steps' manifest statistics as a frame: ``step`` and ``keys`` (null where a line lacks one)."""
    import polars as pl

    lines = store.manifest
    data = {"step": [e["step"] for e in lines]}
    for k in keys:
        data[k] = [e.get(k) if isinstance(e.get(k), (int, float)) else None for e in lines]
    return pl.DataFrame(data, schema={"step": pl.Int64, **{k: pl.Float64 for k in keys}})


def curves(a: TraceStore, b: TraceStore, keys: Sequence[str] = CURVE_KEYS) -> pl.DataFrame:
    """Per step of either run: ``step, <key>_a, <key>_b`` for each key (an outer join: gaps are nulls)."""
    fa = manifest_frame(a, keys).rename({k: f"{k}_a" for k in keys})
    fb = manifest_frame(b, keys).rename({k: f"{k}_b" for k in keys})
    return fa.join(fb, on="step", how="full", coalesce=True).sort("step")


def common_steps(a: TraceStore, b: TraceStore) -> list[int]:
    return sorted(set(a.steps) & set(b.steps))


def fork_overlap_by_step(a: TraceStore, b: TraceStore, steps: Iterable[int] | None = None, *, top: int = 20,
                         threshold: float = DEFAULT_THRESHOLD, quantile: float | None = None) -> pl.DataFrame:
    """Per common step: ``n_a, n_b, common, jaccard`` of the two runs' ``top`` forking tokens."""
    import polars as pl

    rows = []
    for s in (common_steps(a, b) if steps is None else steps):  # one query per step and run, not per row
        fa = forks(a, [s], threshold=threshold, quantile=quantile, top=top)
        fb = forks(b, [s], threshold=threshold, quantile=quantile, top=top)
        rows.append({"step": s, **fork_overlap(fa, fb)})
    schema = {"step": pl.Int64, "n_a": pl.Int64, "n_b": pl.Int64, "common": pl.Int64, "jaccard": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def prompt_key(store: TraceStore, steps: Iterable[int] | None) -> tuple[str, pl.Expr]:
    """How prompts are matched in ``store``: the column used and an expression giving a string key."""
    import polars as pl

    for name in ("prompt_text", "prompt_token_ids", "prompt_index"):
        if has_columns(store, steps, [name]):
            col = pl.col(name)
            if name == "prompt_token_ids":
                col = col.cast(pl.List(pl.String)).list.join(",")
            return name, col.cast(pl.String)
    raise BadInputError("the trace has no prompt_text, prompt_token_ids or prompt_index column to match prompts by")


def _prompt_table(store: TraceStore, step: int, how: str) -> pl.LazyFrame:
    import polars as pl

    _, key = _key_for(store, [step], how)
    return responses(store, [step]).select(
        key.alias("prompt_key"), pl.col("entropy").cast(pl.List(pl.Float32)).list.mean().alias("h"),
    ).group_by("prompt_key").agg(n=pl.len(), entropy_mean=pl.col("h").mean())


def _key_for(store: TraceStore, steps: list[int], how: str | None) -> tuple[str, pl.Expr]:
    if how is None:
        return prompt_key(store, steps)
    import polars as pl

    col = pl.col(how)
    if how == "prompt_token_ids":
        col = col.cast(pl.List(pl.String)).list.join(",")
    return how, col.cast(pl.String)


def matched_prompts(a: TraceStore, b: TraceStore, step_a: int, step_b: int) -> tuple[str, pl.DataFrame]:
    """Prompts with responses in both runs: ``(matched by, frame prompt_key, n_a, n_b, entropy_mean_a/_b)``."""
    how, _ = prompt_key(a, [step_a])
    how_b, _ = prompt_key(b, [step_b])
    if how != how_b:
        raise BadInputError(f"the traces name prompts differently ({how} vs {how_b}): no prompts to match")
    ta = _prompt_table(a, step_a, how).collect()
    tb = _prompt_table(b, step_b, how).collect()
    df = ta.join(tb, on="prompt_key", suffix="_b").rename({"n": "n_a", "entropy_mean": "entropy_mean_a"})
    return how, df.sort("prompt_key")


def prompt_responses(store: TraceStore, key: str, steps: Iterable[int] | None = None, how: str | None = None
                     ) -> pl.DataFrame:
    """Every response to the prompt whose key is ``key`` in the chosen steps (one prompt across steps)."""
    import polars as pl

    chosen = chosen_steps(store, steps)
    _, expr = _key_for(store, chosen, how)
    return responses(store, chosen).filter(expr == key).sort("step", "sample_id").collect() \
        .with_columns(pl.col("entropy").cast(pl.List(pl.Float32)))
