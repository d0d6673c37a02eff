"""Command-line interface: `wbtrace <command>`. Each module below adds its commands to `main`."""

from wbtrace.cli import (  # noqa: F401  (imported for their commands)
    analyze,
    export,
    inspect,
    mirror,
    pull,
    show,
    train,
    view,
    wandb_cmds,
)
from wbtrace.cli.app import main

__all__ = ["main"]
