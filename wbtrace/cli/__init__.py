"""Command-line interface: `wbtrace <command>`. Each module below adds its commands to `main`."""

from wbtrace.cli.app import main
from wbtrace.cli import (  # noqa: F401  (imported for their commands)
    inspect,
    export,
    pull,
    mirror,
    view,
    train,
    wandb_cmds,
)

__all__ = ["main"]
