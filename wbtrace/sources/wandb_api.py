"""A W&B run as a source, through `wandb.Api`: ``api.artifact("e/p/wbtrace-<run>:step-N")``.

Only this boundary is faked in tests (no W&B server can run here); the surface used is
``api.run(path)``, ``api.artifact(name, type=...)``, ``api.artifacts(type_name, name)`` and
``artifact.download(root)`` / ``.metadata`` / ``.aliases``. Downloads go to the pull's scratch folder
and only the expected names (``run.json``, ``vocab.parquet``, the step file) are handed on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

from wbtrace.backends.wandb import ARTIFACT_TYPE, alias_step, artifact_name, step_alias
from wbtrace.errors import SourceError, require
from wbtrace.sources.base import RunFiles, StepFile, TraceSource
from wbtrace.sources.pull import safe_join
from wbtrace.store import RUN_JSON, VOCAB_FILE, step_relpath

NO_LOGIN = "not logged in to W&B: run `wandb login` or set WANDB_API_KEY"


def parse_run_ref(ref: str, entity: str | None = None, project: str | None = None) -> tuple[str | None, str, str]:
    """``run_id``, ``project/run_id``, ``entity/project/run_id`` or ``entity/project/runs/run_id``."""
    parts = [p for p in ref.strip("/").split("/") if p]
    if len(parts) == 4 and parts[2] == "runs":
        parts = [parts[0], parts[1], parts[3]]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return entity, parts[0], parts[1]
    if len(parts) == 1 and project:
        return entity, project, parts[0]
    if len(parts) == 1:
        raise SourceError(f"which project holds run {ref!r}? Pass entity/project/{ref}, --project or WANDB_PROJECT")
    raise SourceError(f"bad run reference {ref!r}: expected RUN_ID or ENTITY/PROJECT/RUN_ID")


REACH_TIMEOUT = 5.0  # seconds to wait for W&B's host to accept a connection (wandb itself waits 20 s, then raises)


def make_api(timeout: float = 20.0) -> Any:
    """A `wandb.Api` whose requests wait at most ``timeout`` s, or `SourceError` when not logged in or
    W&B's host does not accept a connection within ``REACH_TIMEOUT`` s (`MissingDependencyError`
    without wandb). Without the probe, a key and an unreachable host cost wandb's own 20 s wait."""
    wandb = require("wandb", "wandb")
    if _api_key(_base_url()) is not None:  # with no key wandb.Api() fails at once: NO_LOGIN below
        check_reachable(_base_url(), min(timeout, REACH_TIMEOUT))
    try:
        return wandb.Api(timeout=int(max(timeout, 1)))
    except wandb.errors.UsageError as e:
        raise SourceError(NO_LOGIN) from e
    except wandb.errors.CommError as e:  # AuthenticationError included: a bad key, a server that stalls
        raise SourceError(f"W&B at {_base_url()} did not accept the login: {_first_line(e)}") from None


def _base_url() -> str:
    import os

    from wandb.sdk.wandb_settings import Settings

    return os.environ.get("WANDB_BASE_URL") or Settings().base_url


def _api_key(base_url: str) -> str | None:
    """The key wandb would log in with: ``WANDB_API_KEY``, else the netrc entry of the API host."""
    import netrc
    import os
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators(urlparse(base_url).hostname or "")
    except (OSError, netrc.NetrcParseError):
        return None
    return auth[2] if auth else None


def check_reachable(base_url: str, timeout: float = REACH_TIMEOUT) -> None:
    """Raise `SourceError` unless ``base_url``'s host accepts a TCP connection within ``timeout`` s."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as e:
        raise SourceError(f"cannot reach W&B: {base_url} did not answer within {timeout:g} s "
                          f"({e.strerror or type(e).__name__}); check the network or WANDB_BASE_URL") from None


def _lookup_errors() -> tuple[type[BaseException], ...]:
    wandb = require("wandb", "wandb")
    return (wandb.errors.CommError, ValueError)  # RunNotFoundError is a ValueError


def available_steps(api: Any, base: str, run_id: str) -> list[int]:
    """Steps with an artifact version (alias ``step-N``) in ``base`` (``entity/project``)."""
    try:
        versions: Iterable[Any] = api.artifacts(ARTIFACT_TYPE, f"{base}/{artifact_name(run_id)}")
        found = [alias_step(a) for v in versions for a in v.aliases]
    except _lookup_errors():
        return []
    return sorted({s for s in found if s is not None})


class WandbApiSource(TraceSource):
    """The wbtrace artifacts of a W&B run (``[wandb://]ENTITY/PROJECT/RUN_ID``, or shorter with defaults)."""

    missing = "step {missing} not found in {where}; steps that exist: {available}"

    def __init__(self, ref: str, entity: str | None = None, project: str | None = None, api: Any = None) -> None:
        self.entity, self.project, self._run_id = parse_run_ref(ref.removeprefix("wandb://"), entity, project)
        self.base = f"{self.entity}/{self.project}" if self.entity else self.project
        self._api = api
        self._downloaded: dict[int, Path] = {}
        self._metadata: dict[str, Any] = {}

    @cached_property
    def api(self) -> Any:
        api = self._api if self._api is not None else make_api()
        try:
            api.run(f"{self.base}/{self._run_id}")
        except _lookup_errors() as e:
            raise SourceError(f"unknown W&B run {self.base}/{self._run_id} ({_first_line(e)})") from None
        return api

    @property
    def label(self) -> str:
        return f"W&B run {self.base}/{self._run_id}"

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def key(self) -> str:
        return "wandb-" + re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.base}-{self._run_id}")

    def steps(self) -> list[int]:
        return available_steps(self.api, self.base, self._run_id)

    def _download(self, step: int, scratch: Path) -> Path:
        try:
            art = self.api.artifact(f"{self.base}/{artifact_name(self._run_id)}:{step_alias(step)}",
                                    type=ARTIFACT_TYPE)
        except _lookup_errors():
            raise SourceError(f"step {step} not found in {self.label}") from None
        root = scratch / "artifact"
        art.download(root=str(root))
        self._downloaded = {step: root}
        self._metadata = art.metadata if isinstance(art.metadata, dict) else {}  # untrusted: may be any JSON
        return root

    def step_file(self, step: int, scratch: Path) -> StepFile:
        root = self._download(step, scratch)
        return StepFile(_step_file(root, step), self._metadata)

    def run_files(self, scratch: Path) -> RunFiles:
        """From the artifact of the step downloaded last (every version carries them), else the latest one."""
        step, root = next(iter(self._downloaded.items()), (None, None))
        if root is None or not root.is_dir():
            step = self.steps()[-1]
            root = self._download(step, scratch)
        return RunFiles(_need(root, RUN_JSON, step), _need(root, VOCAB_FILE, step))


def _need(root: Path, name: str, step: int) -> Path:
    path = safe_join(root, name)
    if not path.is_file():
        raise SourceError(f"the step-{step} artifact has no {name}: it was not logged by wbtrace")
    return path


def _step_file(root: Path, step: int) -> Path:
    path = safe_join(root, step_relpath(step))
    if path.is_file():
        return path
    found = sorted(p for p in (root / "steps").glob("*.parquet") if p.is_file()) if (root / "steps").is_dir() else []
    if len(found) != 1:
        raise SourceError(f"the step-{step} artifact has no single steps/*.parquet file")
    return found[0]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
