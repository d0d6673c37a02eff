"""The `wbtrace` click group and the one place where library errors become CLI errors.

Commands live in sibling modules (one per area) and attach themselves to `main` when imported. A
command's module is imported only when that command runs (`COMMAND_MODULES`), so `wbtrace ls` does
not pay for the trainer's or the viewer's imports; listing the commands (`wbtrace --help`) imports
them all. Heavy imports (torch, wandb, mlflow, ray) happen inside the commands.
"""

from __future__ import annotations

import errno
import importlib
import os
import pkgutil
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


# Command name -> the wbtrace.cli module that defines it. Only a shortcut: a name missing here is still
# found (every module is imported before "No such command"); tests/test_first_minutes.py keeps it complete.
COMMAND_MODULES = {
    "charts": "wandb_cmds", "compare": "analyze", "cov": "analyze", "export": "export", "forks": "analyze",
    "groups": "analyze", "import-npz": "export", "ls": "inspect", "mirror": "mirror", "plot": "inspect",
    "positions": "analyze", "pull": "pull", "show": "show", "stats": "inspect", "sync": "wandb_cmds",
    "train": "train", "verify": "inspect", "view": "view", "workspace": "wandb_cmds",
}


def import_command_modules(name: str | None = None) -> None:
    """Import the module of command ``name`` (all of wbtrace.cli when None or unknown)."""
    if name in COMMAND_MODULES:
        importlib.import_module(f"wbtrace.cli.{COMMAND_MODULES[name]}")
        return
    for info in pkgutil.iter_modules(importlib.import_module("wbtrace.cli").__path__):
        importlib.import_module(f"wbtrace.cli.{info.name}")


# Read-side commands: they never hand pandas objects to pyarrow (see `skip_pandas_probe`).
PANDAS_FREE_COMMANDS = frozenset({"ls", "stats", "show", "export", "view", "plot", "forks", "cov", "positions",
                                  "groups", "compare", "verify"})


class _NoPandas:
    """A meta-path finder that makes ``import pandas`` fail, used for one pyarrow call only."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("pandas skipped by wbtrace for pyarrow's probe", name="pandas")


def skip_pandas_probe() -> None:
    """Let pyarrow's first conversion find no pandas.

    On its first ``pa.array``/``pa.scalar``/``fill_null`` pyarrow imports pandas only to ask whether
    the input is a pandas object: 0.15-0.3 s of CPU on 2 cores, half of a small ``wbtrace export``.
    After this call pyarrow believes pandas absent for those probes; pandas itself stays importable,
    and pyarrow's explicit pandas paths (``to_pandas``, ``from_pandas``, ``__arrow_array__``) still work.
    """
    import pyarrow as pa

    if "pandas" in sys.modules:
        return
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


class LazyCommands(dict):
    """``Group.commands`` that imports a command's module when the command is looked up and every
    module when the commands are listed, so code reading ``main.commands`` sees them all."""

    def _find(self, name: object) -> None:
        if isinstance(name, str) and not dict.__contains__(self, name):
            import_command_modules(name)
            if not dict.__contains__(self, name) and name in COMMAND_MODULES:
                import_command_modules()

    def _all(self) -> None:
        if not getattr(self, "_loaded", False):
            self._loaded = True
            import_command_modules()

    def __getitem__(self, name):
        self._find(name)
        return dict.__getitem__(self, name)

    def get(self, name, default=None):
        self._find(name)
        return dict.get(self, name, default)

    def __contains__(self, name) -> bool:
        self._find(name)
        return dict.__contains__(self, name)

    def __iter__(self):
        self._all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._all()
        return dict.__len__(self)

    def keys(self):
        self._all()
        return dict.keys(self)

    def values(self):
        self._all()
        return dict.values(self)

    def items(self):
        self._all()
        return dict.items(self)


class WbtraceGroup(click.Group):
    """A group that reports `WbtraceError` (and bad files, bad paths) as `Error: ...` with exit code 2."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(self.commands)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        if name in PANDAS_FREE_COMMANDS and not ctx.resilient_parsing:
            skip_pandas_probe()
        return name, cmd, rest

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


@click.group("wbtrace", cls=WbtraceGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="wbtrace")
def main() -> None:
    """Token-level entropy traces for RL training of LLMs.

    \b
    Example:
        wbtrace ls outputs/demo/entropy_trace
        wbtrace export outputs/demo/entropy_trace --step 2 -o step2.csv
    """
    # One progress bar per pull is ours; MLflow would add a tqdm bar per artifact it downloads (three
    # per step). Set for this process only, and only when the user has not chosen.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow logs "Creating initial MLflow database tables..." at INFO for every new sqlite store.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
