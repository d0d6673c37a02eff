"""Online pull, tested at the `wandb.Api` boundary only: no W&B server can run here.

`FakeApi` stands in for `wandb.Api` with the calls `pull_wandb` makes; its artifacts'
``download(root)`` writes real files (taken from a real local trace) and it raises the real SDK's
exceptions (`CommError`, `RunNotFoundError`) where the server would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

wandb = pytest.importorskip("wandb")

from wbtrace import TraceStore, TraceWriter  # noqa: E402
from wbtrace.cli import main  # noqa: E402
from wbtrace.errors import SourceError  # noqa: E402
from wbtrace.sources.pull import pull  # noqa: E402
from wbtrace.sources.wandb_api import WandbApiSource, parse_run_ref  # noqa: E402
from wbtrace.steps import StepSelection  # noqa: E402


def pull_wandb(ref, selection, dest, entity=None, project=None, api=None):
    return pull(WandbApiSource(ref, entity=entity, project=project, api=api), selection, dest)


class FakeArtifact:
    def __init__(self, trace: Path, step: int, extra: dict[str, bytes] | None = None) -> None:
        self.trace, self.step, self.extra = trace, step, extra or {}
        self.aliases = [f"step-{step}", "latest"]
        self.metadata = {"step": step, "schema_version": 1, "threshold": 0.672}

    def download(self, root: str) -> str:
        root_p = Path(root)
        (root_p / "steps").mkdir(parents=True, exist_ok=True)
        name = f"steps/step_{self.step:06d}.parquet"
        shutil.copy(self.trace / name, root_p / name)
        for n in ("run.json", "vocab.parquet"):
            shutil.copy(self.trace / n, root_p / n)
        for n, data in self.extra.items():
            (root_p / n).write_bytes(data)
        return root


class FakeApi:
    def __init__(self, trace: Path, path: str = "me/dapo/abc123", steps=(1, 2, 3)) -> None:
        self.trace, self.path, self.steps = trace, path, list(steps)
        self.calls: list[str] = []

    def run(self, path: str):
        self.calls.append(f"run {path}")
        if path != self.path:
            from wandb.apis.public.runs import RunNotFoundError

            raise RunNotFoundError(f"Could not find run {path}")
        return object()

    def artifact(self, name: str, type: str | None = None):
        self.calls.append(f"artifact {name}")
        base, _, alias = name.rpartition(":")
        e, p, r = self.path.split("/")
        if base != f"{e}/{p}/wbtrace-{r}" or not alias.startswith("step-") or int(alias[5:]) not in self.steps:
            raise wandb.errors.CommError(f"artifact '{name}' not found in '{e}/{p}'")
        return FakeArtifact(self.trace, int(alias[5:]))

    def artifacts(self, type_name: str, name: str):
        e, p, r = self.path.split("/")
        if name != f"{e}/{p}/wbtrace-{r}":
            raise wandb.errors.CommError(f"artifact collection '{name}' not found")
        return [FakeArtifact(self.trace, s) for s in self.steps]


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trace")
    rng = np.random.default_rng(1)
    with TraceWriter(d, vocab=["a", "b", "c"]) as w:
        for step in (1, 2, 3):
            w.write_step(step, token_ids=rng.integers(0, 3, (4, 5)), response_mask=np.ones((4, 5)),
                         entropy=rng.random((4, 5)))
    return d


@pytest.mark.contract
def test_contract_resolves_alias_step_n(trace, tmp_path):
    api = FakeApi(trace)
    out = pull_wandb("me/dapo/abc123", StepSelection(steps=(2,)), tmp_path / "p", api=api)
    assert "artifact me/dapo/wbtrace-abc123:step-2" in api.calls
    store = TraceStore(out)
    assert store.steps == [2]
    assert store.step_path(2).read_bytes() == TraceStore(trace).step_path(2).read_bytes()


@pytest.mark.contract
def test_contract_range_and_all_list_versions(trace, tmp_path):
    out = pull_wandb("abc123", StepSelection.parse("2:9"), tmp_path / "p", entity="me", project="dapo",
                     api=FakeApi(trace))
    assert TraceStore(out).steps == [2, 3]
    out = pull_wandb("me/dapo/abc123", StepSelection(all=True), tmp_path / "p", api=FakeApi(trace))
    assert TraceStore(out).steps == [1, 2, 3]


@pytest.mark.contract
def test_contract_missing_step_lists_existing(trace, tmp_path):
    with pytest.raises(SourceError, match=r"step 7 not found in W&B run me/dapo/abc123; steps that exist: 1-3"):
        pull_wandb("me/dapo/abc123", StepSelection(steps=(7,)), tmp_path / "p", api=FakeApi(trace))


@pytest.mark.contract
@pytest.mark.parametrize("ref", ["other/dapo/abc123", "me/wrong/abc123", "me/dapo/nosuchrun"])
def test_contract_wrong_entity_project_or_run(trace, tmp_path, ref):
    with pytest.raises(SourceError, match=f"unknown W&B run {ref}"):
        pull_wandb(ref, StepSelection(steps=(1,)), tmp_path / "p", api=FakeApi(trace))


@pytest.mark.contract
def test_contract_untrusted_names_stay_inside_dest(trace, tmp_path):
    class EvilApi(FakeApi):
        def artifact(self, name, type=None):
            art = super().artifact(name, type)
            art.extra = {"evil.parquet": b"x"}
            return art

    out = pull_wandb("me/dapo/abc123", StepSelection(steps=(1,)), tmp_path / "p", api=EvilApi(trace))
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [  # .wbtrace.lock: the one-writer lock
        ".wbtrace.lock", "manifest.jsonl", "run.json", "step_000001.parquet", "vocab.parquet"]


def test_parse_run_ref():
    assert parse_run_ref("e/p/r") == ("e", "p", "r")
    assert parse_run_ref("e/p/runs/r") == ("e", "p", "r")
    assert parse_run_ref("r", "e", "p") == ("e", "p", "r")
    with pytest.raises(SourceError, match="which project"):
        parse_run_ref("r")


def test_cli_pull_without_login_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    res = CliRunner().invoke(main, ["pull", "me/dapo/abc123", "--step", "1", "--dest", str(tmp_path / "d")])
    assert res.exit_code == 2
    assert res.output.strip().endswith("Error: not logged in to W&B: run `wandb login` or set WANDB_API_KEY")


def test_cli_pull_needs_steps(tmp_path):
    res = CliRunner().invoke(main, ["pull", "me/dapo/abc123"])
    assert res.exit_code == 2 and "choose steps" in res.output


def test_cli_charts_install_without_login(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    res = CliRunner().invoke(main, ["charts", "install", "--entity", "me"])
    assert res.exit_code == 2 and "not logged in to W&B" in res.output


def test_safe_join_refuses_escaping_names(tmp_path):
    from wbtrace.sources.pull import safe_join

    assert safe_join(tmp_path, "steps/a.parquet") == (tmp_path / "steps/a.parquet").resolve()
    for bad in ("../x", "/etc/passwd", "steps/../../x"):
        with pytest.raises(SourceError, match="leaves its folder"):
            safe_join(tmp_path, bad)


def _unreachable_wandb(monkeypatch, tmp_path):
    """A real `wandb.Api` whose server (a closed port on 127.0.0.1) never answers."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("WANDB_API_KEY", "local-" + "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")


@pytest.mark.contract
@pytest.mark.parametrize("argv", [["charts", "install", "--entity", "me"],
                                  ["workspace", "--entity", "me", "--project", "dapo", "--run", "abc"]])
def test_contract_commands_against_a_failing_api_are_one_line(monkeypatch, tmp_path, argv):
    _unreachable_wandb(monkeypatch, tmp_path)
    res = CliRunner().invoke(main, [*argv, "--timeout", "2"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach W&B:") and "Traceback" not in res.output


class FakeChartsApi:
    """`wandb.Api`'s ``create_custom_chart`` as a server answers it: ``entity/name``, a refusal, or exists."""

    def __init__(self, existing: set[str], refuse: set[str]) -> None:
        self.existing, self.refuse, self.created = existing, refuse, []

    def create_custom_chart(self, entity, name, display_name, spec_type, access, spec):
        assert spec_type == "vega2" and spec["data"] == {"name": "wandb"}
        if name in self.refuse:
            raise wandb.errors.CommError("permission denied for entity me")
        if name in self.existing:
            raise wandb.errors.CommError(f"custom chart {entity}/{name} already exists")
        self.created.append(name)
        self.existing.add(name)
        return f"{entity}/{name}"


@pytest.mark.contract
def test_contract_charts_install_is_create_or_keep_and_reports_a_refusal(monkeypatch):
    from weave_panels import CHARTS

    api = FakeChartsApi(existing={"wbtrace-entropy-bands"}, refuse=set())
    monkeypatch.setattr(wandb, "Api", lambda **kw: api)
    res = CliRunner().invoke(main, ["charts", "install", "--entity", "me"])
    assert res.exit_code == 0, res.output
    assert [x for x in res.output.splitlines() if not x.endswith("kept")] == [f"me/{n}" for n in CHARTS]
    assert "me/wbtrace-entropy-bands exists: kept" in res.output
    again = CliRunner().invoke(main, ["charts", "install", "--entity", "me"])  # re-run: all kept
    assert again.exit_code == 0 and again.output.count("kept") == len(CHARTS)
    api = FakeChartsApi(existing=set(), refuse={"wbtrace-entropy-by-position"})
    monkeypatch.setattr(wandb, "Api", lambda **kw: api)
    bad = CliRunner().invoke(main, ["charts", "install", "--entity", "me"])
    assert bad.exit_code == 2
    err = bad.output.strip().splitlines()[-1]
    assert err.startswith("Error: W&B refused chart wbtrace-entropy-by-position (installed before it: "
                          "wbtrace-entropy-bands, wbtrace-entropy-histogram): CommError: permission denied")
