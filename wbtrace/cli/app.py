"""The `wbtrace` click group and the one place where library errors become CLI errors.

Commands live in sibling modules (one per area) and attach themselves to `main`; heavy imports
(torch, wandb, mlflow, ray) happen inside the commands so `wbtrace --help` stays fast.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from wbtrace.errors import WbtraceError
from wbtrace.textsafe import one_line

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class UserError(click.ClickException):
    """Bad input from the user: one line on stderr, exit code 2, no traceback.

    The message may quote trace data or a backend's reply (run names, Arrow errors with line breaks):
    it is made one terminal-safe line here, once for every command.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class WbtraceGroup(click.Group):
    """A group that reports `WbtraceError` (and bad files, bad paths) as `Error: ...` with exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except WbtraceError as e:
            raise UserError(str(e)) from None
        except OSError as e:
            if e.errno != errno.EPIPE and "Broken pipe" not in str(e):
                # A path the user gave that cannot be written or read: one line, not a traceback.
                raise UserError(f"{e.filename}: {e.strerror}" if e.filename else str(e)) from None
        except click.ClickException as e:
            if isinstance(e, (UserError, click.UsageError)):
                raise
            raise UserError(e.format_message()) from None
            # `wbtrace export ... | head`: the reader left; stop quietly like other Unix tools.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=WbtraceGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="wbtrace")
def main() -> None:
    """Token-level entropy traces for RL training of LLMs.

    \b
    Example:
        wbtrace ls outputs/demo/entropy_trace
        wbtrace export outputs/demo/entropy_trace --step 2 -o step2.csv
    """
