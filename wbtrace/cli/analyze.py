"""CLI faces of `wbtrace.analysis`: ``forks``, ``cov``, ``positions``, ``groups``, ``compare``.

Each command runs one analysis and prints its frame (``--format table|json|csv``); the definitions live
in the analysis modules and docs/analyses.md.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from wbtrace.cli.app import main
from wbtrace.cli.frames_out import emit, format_choice, frame_table
from wbtrace.cli.options import open_store, step_options, trace_dir_argument
from wbtrace.stats import DEFAULT_THRESHOLD
from wbtrace.steps import StepSelection
from wbtrace.textsafe import rich_text

POSITIVE = click.FloatRange(min=0, min_open=True)


def where_options(f: Callable) -> Callable:
    """``--kept/--filtered`` and ``--correct/--incorrect`` response filters (default: every response)."""
    f = click.option("--correct/--incorrect", "correct", default=None,
                     help="Only verified-correct (or incorrect) responses.")(f)
    return click.option("--kept/--filtered", "kept", default=None,
                        help="Only responses kept by dynamic sampling (or only those it filtered out).")(f)


def threshold_options(f: Callable) -> Callable:
    f = click.option("--quantile", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Fork above this quantile of each step's token entropy instead (0.8 = the paper's top 20%).")(f)
    return click.option("--threshold", type=POSITIVE, default=DEFAULT_THRESHOLD, show_default=True,
                        help="Entropy (nats) above which a token forks.")(f)


def _where(kept: bool | None, correct: bool | None):
    from wbtrace.analysis import Where

    return Where(kept=kept, correct=correct)


@main.command("forks")
@trace_dir_argument
@step_options
@threshold_options
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Tokens to list.")
@click.option("--min-count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Leave out tokens seen fewer times than this.")
@click.option("--by", type=click.Choice(["kept", "correct"]), default=None,
              help="Separate lists for kept vs filtered or correct vs incorrect responses.")
@click.option("--trend", is_flag=True, help="Instead: the top tokens' fork counts step by step.")
@click.option("--low", is_flag=True, help="Instead: the most frequent tokens that never fork (low-entropy list).")
@where_options
@format_choice
def forks_cmd(trace_dir: str, steps: StepSelection, threshold: float,
              quantile: float | None, top: int, min_count: int, by: str | None, trend: bool, low: bool,
              kept: bool | None, correct: bool | None, fmt: str) -> None:
    """Forking tokens: the tokens most often above the entropy threshold, with their count, the share of
    their occurrences that fork and their mean entropy (arXiv 2506.01939).

    \b
    Example:
        wbtrace forks docs/runs/h100-sample --top 10
        wbtrace forks docs/runs/h100-sample --quantile 0.8 --by correct
        wbtrace forks docs/runs/h100-sample --trend --top 5
    """
    from wbtrace.analysis import forks

    store = open_store(trace_dir, steps)
    chosen = store.select(steps)
    where = _where(kept, correct)
    cut = f"above q{quantile:g} per step" if quantile is not None else f"above {threshold:g} nats"
    if low:
        df = forks.low_entropy_tokens(store, chosen, threshold=threshold, quantile=quantile, top=top, where=where)
        return emit(df, fmt, f"Most frequent tokens never {cut} ({where.label()})")
    df = forks.forks(store, chosen, threshold=threshold, quantile=quantile, top=top, min_count=min_count,
                     where=where, by=(by,) if by else ())
    if trend:
        tr = forks.forks_trend(store, df["token_id"].unique(maintain_order=True).to_list(), chosen,
                               threshold=threshold, quantile=quantile, where=where)
        return emit(_trend_wide(tr, df) if fmt == "table" else tr, fmt, f"Forks per step ({cut}, {where.label()})")
    emit(df, fmt, f"Forking tokens, {cut} ({where.label()}, steps {chosen[0]}..{chosen[-1]})")


def _trend_wide(trend, top):
    """Step x token table of fork counts; columns named by escaped token text."""
    import polars as pl

    names = {r["token_id"]: f"{r['text']!r}" for r in top.iter_rows(named=True)}
    wide = trend.pivot(on="token_id", index="step", values="forks").fill_null(0)
    return wide.rename({str(k): v for k, v in names.items() if str(k) in wide.columns}).sort(pl.col("step"))


@main.command("cov")
@trace_dir_argument
@step_options
@click.option("--all-responses", is_flag=True, help="Use filtered responses too (default: kept ones, as trained).")
@click.option("--tokens-at", "tokens_at", type=int, default=None, metavar="N",
              help="Also list the step's tokens of largest covariance with Clip-Cov / KL-Cov flags.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Tokens for --tokens-at.")
@click.option("--clip-cov-ratio", type=POSITIVE, default=2e-4, show_default=True, help="Clip-Cov's clip ratio.")
@click.option("--clip-cov-lb", type=float, default=1.0, show_default=True, help="Clip-Cov's lower covariance bound.")
@click.option("--clip-cov-ub", type=float, default=5.0, show_default=True, help="Clip-Cov's upper covariance bound.")
@click.option("--kl-cov-ratio", type=POSITIVE, default=2e-4, show_default=True, help="KL-Cov's top-k ratio.")
@format_choice
def cov_cmd(trace_dir: str, steps: StepSelection, all_responses: bool,
            tokens_at: int | None, top: int, clip_cov_ratio: float, clip_cov_lb: float, clip_cov_ub: float,
            kl_cov_ratio: float, fmt: str) -> None:
    """Covariance of log-prob and advantage per step (verl's Clip-Cov definition) against the observed
    entropy change to the next step; Clip-Cov / KL-Cov selections; the fit R = -a exp(H) + b (arXiv 2505.22617).

    \b
    Example:
        wbtrace cov docs/runs/h100-sample
        wbtrace cov docs/runs/h100-sample --tokens-at 100 --top 10
    """
    from wbtrace.analysis import Where, covariance
    from wbtrace.analysis.frames import column_names, require

    store = open_store(trace_dir, steps)
    chosen = store.select(steps)
    require(column_names(store, chosen), ["logprob", "advantage"], "the covariance needs log-probs and advantages")
    where = Where() if all_responses else Where(kept=True)
    ratios = {"clip_cov_ratio": clip_cov_ratio, "clip_cov_lb": clip_cov_lb, "clip_cov_ub": clip_cov_ub,
              "kl_cov_ratio": kl_cov_ratio}
    per = covariance.cov_by_step(store, chosen, where, **ratios)
    fit = covariance.entropy_reward_fit(per)
    toks = covariance.top_cov_tokens(store, store.select(StepSelection(steps=(tokens_at,)))[0], where, top, **ratios) \
        if tokens_at is not None else None
    if fmt == "json":
        from wbtrace.cli.frames_out import records

        return emit(per, fmt, extra={"fit": fit, "tokens": records(toks) if toks is not None else None})
    emit(per.rename(COV_SHORT) if fmt == "table" else per, fmt, f"Cov(log-prob, advantage) per step ({where.label()})")
    if fmt == "table":
        click.echo(_fit_line(fit))
        if toks is not None:
            emit(toks, fmt, f"Step {tokens_at}: tokens of largest covariance")


COV_SHORT = {"n_tokens": "tokens", "cov_mean": "cov", "entropy_mean": "H", "clip_cov_candidates": "clip-cov cand",
             "clip_cov_clipped": "clip-cov n", "kl_cov_k": "kl-cov k", "reward_mean": "reward",
             "next_step": "next", "entropy_change": "dH next"}


def _fit_line(fit: dict) -> str:
    if fit["a"] is None:
        return f"R = -a exp(H) + b: not enough steps with entropy and reward ({fit['n']})"
    r2 = "-" if fit["r2"] is None else f"{fit['r2']:.3f}"
    return (f"R = -a exp(H) + b over {fit['n']} steps: a = {fit['a']:.4g}, b = {fit['b']:.4g}, "
            f"rmse = {fit['rmse']:.4g}, r2 = {r2}")


@main.command("positions")
@trace_dir_argument
@step_options
@click.option("--bins", type=click.IntRange(min=1, max=100), default=10, show_default=True,
              help="Relative-position bins (10 = deciles).")
@click.option("--threshold", type=POSITIVE, default=DEFAULT_THRESHOLD, show_default=True,
              help="Entropy (nats) above which a token counts for the end-of-sequence share.")
@click.option("--tail", type=click.FloatRange(0, 1, min_open=True), default=0.1, show_default=True,
              help="The end of a response: its last share of tokens.")
@where_options
@format_choice
def positions_cmd(trace_dir: str, steps: StepSelection, bins: int, threshold: float,
                  tail: float, kept: bool | None, correct: bool | None, fmt: str) -> None:
    """Mean entropy by relative position in the response, step by step (a heatmap), and the share of
    high-entropy tokens in the last part of responses (arXiv 2508.02260).

    \b
    Example:
        wbtrace positions docs/runs/h100-sample
        wbtrace positions docs/runs/h100-sample --bins 20 --format csv > heat.csv
    """
    from wbtrace.analysis import positions

    store = open_store(trace_dir, steps)
    chosen = store.select(steps)
    where = _where(kept, correct)
    heat = positions.position_heatmap(store, chosen, bins, where)
    share = positions.end_share(store, chosen, threshold=threshold, tail=tail, where=where)
    if fmt != "table":
        from wbtrace.cli.frames_out import records

        return emit(heat, fmt, extra={"end_share": records(share)} if fmt == "json" else None)
    from wbtrace.cli.inspect import wide_console

    console = wide_console()
    console.print(_heat_table(positions.heatmap_matrix(heat), f"Mean entropy by relative position ({where.label()})"))
    console.print(frame_table(share, f"High-entropy tokens (> {threshold:g}) in the last {tail:.0%} of responses"))


def _heat_table(wide, title: str):
    from rich.table import Table

    from wbtrace.palette import entropy_hex, text_color_for

    t = Table(title=rich_text(title), title_justify="left")
    for c in wide.columns:
        t.add_column(c, justify="right")
    for row in wide.iter_rows():
        cells = [str(row[0])]
        cells += ["-" if v is None else f"[{text_color_for(v)} on {entropy_hex(v)}]{v:.2f}[/]" for v in row[1:]]
        t.add_row(*cells)
    return t


@main.command("groups")
@trace_dir_argument
@click.option("--step", type=int, required=True, help="Step to show.")
@click.option("--k", "k", type=click.IntRange(min=1), default=None,
              help="k of pass@k [default: the group size, i.e. any response correct].")
@where_options
@format_choice
def groups_cmd(trace_dir: str, step: int, k: int | None, kept: bool | None, correct: bool | None, fmt: str) -> None:
    """One row per prompt group at a step: rewards, zero-spread flag, kept or filtered, per-response mean and
    max entropy, pass@k; then the step's shares of all-correct / all-wrong groups (DAPO).

    \b
    Example:
        wbtrace groups docs/runs/h100-sample --step 50
        wbtrace groups docs/runs/h100-sample --step 50 --k 4 --format json
    """
    from wbtrace.analysis import groups

    store = open_store(trace_dir, StepSelection(steps=(step,)))
    step = store.select(StepSelection(steps=(step,)))[0]
    where = _where(kept, correct)
    df = groups.groups(store, step, k, where)
    shares = groups.group_shares(store, [step], where)
    if fmt == "json":
        from wbtrace.cli.frames_out import records

        return emit(df, fmt, extra={"shares": records(shares)[0]})
    emit(_groups_short(df) if fmt == "table" else df, fmt, f"Groups at step {step} ({where.label()})")
    if fmt == "table":
        s = shares.row(0, named=True)
        pct = {k: "-" if s[k] is None else f"{100 * s[k]:.0f}%" for k in
               ("share_all_correct", "share_all_wrong", "share_zero_spread")}
        click.echo(f"{s['n_groups']} groups, {s['n_kept_groups']} kept; all correct {pct['share_all_correct']}, "
                   f"all wrong {pct['share_all_wrong']}, zero reward spread {pct['share_zero_spread']}")


def _groups_short(df):
    """The groups table for a terminal: lists compact, one line per group."""
    import polars as pl

    def compact(c, d):
        return pl.col(c).list.eval(pl.element().round(d).cast(pl.String)).list.join(" ")

    return df.select(
        pl.col("group_id").alias("group"), "n", compact("rewards", 2).alias("rewards"),
        (pl.col("n_correct").cast(pl.String) + "/" + pl.col("n").cast(pl.String)).alias("correct"),
        pl.col("zero_spread").alias("zero spread"), "kept", compact("entropy_mean", 2).alias("mean H per response"),
        pl.col("entropy_max").list.max().alias("max H"), pl.col("pass_at_k").alias("pass@k"))


@main.command("compare")
@click.argument("trace_a", metavar="SOURCE_A")
@click.argument("trace_b", metavar="SOURCE_B")
@step_options
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Forking tokens per run and step for the overlap.")
@click.option("--threshold", type=POSITIVE, default=DEFAULT_THRESHOLD, show_default=True,
              help="Entropy (nats) above which a token forks.")
@click.option("--prompt-step", type=int, default=None, metavar="N",
              help="Step at which to match prompts [default: the last step both runs have].")
@click.option("--prompt", "prompt", default=None, metavar="KEY",
              help="Print both runs' responses to this prompt (its # in the matched-prompts list, or its text), "
                   "token by token.")
@format_choice
def compare_cmd(trace_a: str, trace_b: str, steps: StepSelection, top: int,
                threshold: float, prompt_step: int | None, prompt: str | None, fmt: str) -> None:
    """Two runs side by side: entropy, reward and accuracy curves, the overlap of their forking tokens
    per step, and the prompts both answered (with --prompt, their responses token by token).

    Each SOURCE is a trace dir, a W&B offline run dir, mlflow://RUN_ID or a W&B run; any but a trace dir
    is pulled into a cache first ($WBTRACE_CACHE, default ~/.cache/wbtrace).

    \b
    Example:
        wbtrace compare runs/base/entropy_trace runs/clipcov/entropy_trace
        wbtrace compare A B --prompt-step 50 --prompt 0
        wbtrace compare runs/base/entropy_trace mlflow://0a1b2c3d4e5f --steps 1:50
    """
    from wbtrace.analysis import compare
    from wbtrace.errors import BadInputError
    a, b = open_store(trace_a, steps), open_store(trace_b, steps)
    common = compare.common_steps(a, b)
    chosen = [s for s in a.select(steps) if s in set(common)]
    curves = compare.curves(a, b, CURVES)
    overlap = compare.fork_overlap_by_step(a, b, chosen, top=top, threshold=threshold)
    at = prompt_step if prompt_step is not None else (common[-1] if common else None)
    if at is not None and at not in common:
        raise BadInputError(f"step {at} is not in both traces; common steps: {len(common)}")
    how, matched = compare.matched_prompts(a, b, at, at) if at is not None else ("-", None)
    if matched is not None:
        matched = matched.with_row_index("#")
    if prompt is not None:
        return _print_prompt(a, b, at, _prompt_key(prompt, matched), how, threshold)
    if fmt == "json":
        from wbtrace.cli.frames_out import records

        return emit(curves, fmt, extra={"fork_overlap": records(overlap), "prompt_step": at, "matched_by": how,
                                        "matched_prompts": records(matched) if matched is not None else []})
    short = curves.rename({f"{k}_{r}": f"{v} {r}" for k, v in CURVES.items() for r in "ab"}) if fmt == "table" \
        else curves
    emit(short, fmt, f"Curves: a = {a.run_dir}, b = {b.run_dir}")
    if fmt == "table":
        emit(overlap, fmt, f"Top-{top} forking-token overlap per common step")
        if matched is not None:
            emit(matched, fmt, f"Prompts in both runs at step {at} (matched by {how})")


CURVES = {"entropy_mean": "H", "share_above": ">thr", "reward_mean": "reward", "accuracy": "acc"}


def _prompt_key(prompt: str, matched) -> str:
    """``--prompt``: a row number of the matched-prompts list, or the prompt key itself."""
    if matched is not None and prompt.isdigit() and int(prompt) < matched.height:
        return matched["prompt_key"][int(prompt)]
    return prompt


def _print_prompt(a, b, step: int | None, key: str, how: str, threshold: float) -> None:
    from wbtrace.analysis import compare
    from wbtrace.cli.inspect import wide_console
    from wbtrace.cli.show import print_response
    from wbtrace.errors import BadInputError

    if step is None:
        raise BadInputError("the traces have no step in common")
    console = wide_console(highlight=False)
    plain = not console.is_terminal
    for label, store in (("a", a), ("b", b)):
        rows = compare.prompt_responses(store, key, [step], how)
        if rows.height == 0:
            raise BadInputError(f"trace {label} has no response to that prompt at step {step}")
        console.print(rich_text(f"== run {label}: {store.run_dir} ({rows.height} responses)", style="bold"))
        for row in rows.to_dicts():
            print_response(console, row, step, store.vocab, threshold, values=False, plain=plain, prompt=False)
