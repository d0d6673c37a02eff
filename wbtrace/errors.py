"""The exceptions wbtrace raises. The CLI turns every `WbtraceError` into one line and exit code 2."""

from __future__ import annotations


class WbtraceError(Exception):
    """Base class: a problem the user can fix, reported as one line without a traceback."""


class BadInputError(WbtraceError, ValueError):
    """Arrays or arguments that do not fit the trace format (shapes, NaN, a step written twice...)."""


class TraceFormatError(WbtraceError):
    """A path that is not a trace, a corrupt or truncated file, or an unknown schema version."""


class TraceBusyError(WbtraceError):
    """Another process is writing this trace directory (see `wbtrace.dirlock`)."""


class SourceError(WbtraceError):
    """A remote or offline source (W&B, MLflow) cannot give what was asked: unknown run, missing step..."""


class MissingDependencyError(WbtraceError, ImportError):
    """An optional backend is not installed; the message carries the pip command that installs it."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed: pip install 'wbtrace[{extra}]'")
        self.package = package
        self.extra = extra


def require(module: str, extra: str):
    """Import `module` or raise `MissingDependencyError` naming the wbtrace extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(module.split(".")[0], extra) from e
