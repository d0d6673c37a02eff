"""Command-line interface: `wbtrace <command>`. Each module below defines commands on `main`; a
command's module is imported when the command is used (see `wbtrace.cli.app.COMMAND_MODULES`)."""

from wbtrace.cli.app import main

__all__ = ["main"]
