"""CLI command: `wbtrace train` runs the DAPO trainer (wbtrace.dapo) with a preset, a YAML file and
dotted `key=value` overrides; prints the trace directory, one line per step and a closing summary."""

from __future__ import annotations

import click

from wbtrace.cli.app import main
from wbtrace.dapo.config import PRESETS  # light: dataclasses only, OmegaConf is imported when loading


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="Start from a preset: tiny (random model, tests), cpu (SmolLM2-135M), h100, archer2 "
                   "(Archer2.0's recipe, 1 GPU).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of config keys, merged after the preset.")
@click.option("--print-config", is_flag=True, help="Print the merged config as YAML and exit.")
@click.option("--keys", "list_keys", is_flag=True, help="List every config key with its default and meaning.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def train(preset: str | None, config_file: str | None, print_config: bool, list_keys: bool,
          overrides: tuple[str, ...]) -> None:
    """Train a policy with DAPO on Ray and trace every rollout token.

    OVERRIDES are dotted keys, e.g. trainer.total_training_steps=5 (see docs/trainer.md for all keys).

    \b
    Example:
        wbtrace train --preset tiny trainer.output_dir=outputs/tiny
        wbtrace train --preset cpu trainer.output_dir=outputs/demo
        wbtrace train --preset h100 trainer.num_workers=2 trainer.logger=[console,wandb]
    """
    import logging

    from rich.console import Console

    from wbtrace.dapo.config import iter_fields, load_config, to_dict

    if list_keys:
        for key, typ, default, help in iter_fields():
            click.echo(f"{key} ({typ}, default {default!r}): {help}")
        return
    cfg = load_config(preset, config_file, list(overrides))
    console = Console()
    if print_config:
        from omegaconf import OmegaConf

        click.echo(OmegaConf.to_yaml(to_dict(cfg)))
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from wbtrace.dapo.trainer import train as run_training

    echo = console.print if "console" in cfg.trainer.logger else None
    history = run_training(cfg, echo=lambda msg: echo(msg, highlight=False, soft_wrap=True) if echo else None)
    _summary(console, history)
    trace = cfg.trainer.entropy_trace.output_dir or f"{cfg.trainer.output_dir}/entropy_trace"
    console.print(f"metrics: {cfg.trainer.output_dir}/metrics.jsonl   trace: {trace}", highlight=False, soft_wrap=True)


def _summary(console, history: list[dict]) -> None:
    """A short per-step table at the end of the run."""
    from rich.table import Table

    if not history:
        console.print("no steps run (already at trainer.total_training_steps)")
        return
    table = Table(title="DAPO steps")
    cols = [("step", "step", "{:.0f}"), ("reward", "reward/mean", "{:+.3f}"), ("acc", "accuracy", "{:.3f}"),
            ("entropy", "entropy/mean", "{:.3f}"), ("len", "response_length/mean", "{:.1f}"),
            ("kept", "filter/kept_groups", "{:.0f}"), ("filtered", "filter/filtered_groups", "{:.0f}"),
            ("step s", "timing/step", "{:.1f}"), ("tok/s", "throughput/tokens_per_s", "{:.0f}")]
    for name, _, _ in cols:
        table.add_column(name, justify="right")
    for m in history:
        table.add_row(*(fmt.format(m[key]) if key in m else "-" for _, key, fmt in cols))
    console.print(table)
