"""The hostile-input suite: a trace made by an attacker, run through every command that shows it.

Its vocabulary, group ids, prompt and model name carry terminal escapes (OSC title, OSC 52 clipboard,
screen clear, C1 CSI), rich markup, HTML/JS, bidi controls, NUL bytes, spreadsheet formulas and a 10 kB
token. Each command runs on a real pseudo-terminal (what a user's terminal would receive); the stream
must hold no control character but rich's own colour codes, and nothing may crash. In Chromium the
page must run nothing, show every string as text and keep bidi controls inside their own span.
"""

from __future__ import annotations

import fcntl
import http.client
import io
import json
import os
import re
import struct
import sys
import termios
import threading
import tty
from pathlib import Path

import numpy as np
import pytest

from wbtrace import TraceStore, TraceWriter
from wbtrace.cli import main
from wbtrace.synthetic import make_step, synthetic_vocab
from wbtrace.textsafe import csv_cell, terminal_text
from wbtrace.viewer import ViewerApp, make_server, write_report
from wbtrace.vocab import build_vocab

sys.path.insert(0, str(Path(__file__).parent))
import test_viewer  # noqa: E402
from test_viewer import open_report, select  # noqa: E402

page = test_viewer.page  # the viewer tests' page on conftest's Chromium

HOSTILE = [
    "\x1b]0;pwned-title\x07", "\x1b[2J\x1b[HFAKE HEADER", "\x1b]52;c;aGFja2Vk\x07", "\x1bP+q544e\x1b\\", "\x9b2J",
    "[/]", "[/INST]", "[bold]loud[/bold]", "[link=https://evil.example]click[/link]",
    "<script>window.__xss=1</script>", '<img src=x onerror="window.__xss=2">', "</script><b>x</b>",
    "\u202eevil-rlo", "\u2066lri", "nul\x00byte", "bs\x08\x7fdel", "A" * 10_000,
    '=HYPERLINK("https://evil.example","x")', "@SUM(A1)", "+1-2", "-", "---", "-1.5",
]
GROUPS = ["[/]", "\x1b[2Jgroup", "\u202egrp", "<b>g</b>", "g" * 5000, "nul\x00g", "[red]g[/red]", "-"]
MODEL = "[/]\x1b]0;model-title\x07<script>window.__xss=4</script>\u202e"
PROMPT = "solve \x1b]52;c;cGFzdGU=\x07 [/INST] <script>window.__xss=5</script> \u202e!"
N_PLAIN = 100
# What may reach the terminal: rich's own colour/style codes (SGR). Anything else is a leak.
_SGR = re.compile(r"\x1b\[[0-9;]*m")
_LEAK = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def hostile_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("hostile") / "trace"
    pieces = [p.replace("Ġ", " ") for p in synthetic_vocab(N_PLAIN)] + HOSTILE
    with TraceWriter(run_dir, vocab=build_vocab(pieces=pieces, byte_level=False), run_info={"model": MODEL}) as w:
        for step in (1, 2):
            a = make_step(8, 40, N_PLAIN, seed=step, min_len=30)
            a["token_ids"][:, : len(HOSTILE)] = np.arange(N_PLAIN, N_PLAIN + len(HOSTILE))  # every response
            a["entropy"][:, : len(HOSTILE)] = 3.0  # so they are the top "forking tokens" in stats
            a["group_id"] = np.array(GROUPS)
            a["prompt_text"] = [PROMPT] * 8
            assert w.write_step(step, **a)
    assert w.report.ok, w.report
    return run_dir


def on_terminal(args: list[str], width: int = 250) -> tuple[int, str]:
    """Run ``wbtrace ARGS`` in this process with stdout and stderr on a raw pseudo-terminal; the exit
    code and every byte the terminal received (raw mode: no ``\\n`` -> ``\\r\\n`` rewriting)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, width, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO once the slave side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    term = io.TextIOWrapper(io.FileIO(slave, "w", closefd=False), encoding="utf-8", write_through=True)
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = term
    code = 0
    try:
        main.main([str(a) for a in args], prog_name="wbtrace", standalone_mode=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        term.flush()
        sys.stdout, sys.stderr = saved
        os.close(slave)
        reader.join(10)
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", errors="replace")


def leaks(stream: str) -> list[str]:
    return sorted({repr(c) for c in _LEAK.findall(_SGR.sub("", stream))})


def test_on_terminal_sees_a_raw_escape():
    """The harness itself: an escape printed raw is caught (so a clean result means something)."""
    code, out = on_terminal(["--version"])
    assert code == 0 and not leaks(out)
    assert leaks(_SGR.sub("", "ok \x1b[31mred\x1b[0m") + "\x1b]0;t\x07") == ["'\\x07'", "'\\x1b'"]


@pytest.mark.parametrize("args", [
    ["ls"], ["stats"], ["stats", "--json"], ["show", "--step", "1", "--sample", "0"],
    ["show", "--step", "2", "--sample", "1"], ["show", "--step", "2", "--sample", "2"],
    ["export", "--step", "1"], ["export", "--step", "1", "--format", "jsonl"],
    ["export", "--step", "2", "--level", "response"], ["show", "--step", "1", "--sample", "99"],
], ids=lambda a: "-".join(a[:3]))
def test_every_command_keeps_the_terminal_clean(hostile_trace: Path, args: list[str]):
    code, out = on_terminal([args[0], hostile_trace, *args[1:]])
    assert "Traceback" not in out, out[-2000:]
    assert code == (2 if "99" in args else 0), out[-2000:]
    assert not leaks(out), leaks(out)
    if args[0] == "show" and code == 0:
        assert "\\x1b]0;pwned-title\\x07" in out and "\\u202eevil-rlo" in out  # shown, as visible escapes
        assert "[/INST]" in out and "[bold]loud[/bold]" in out  # markup printed as text, not applied
    if args[0] == "ls":
        assert "[/]\\x1b]0;model-title\\x07" in out
    if args == ["stats"]:  # the top forking tokens are the hostile ones
        assert "'[/]' 8" in out and "'\\x1b]0;pwned-title\\x07' 8" in out


def test_stats_json_and_export_keep_the_exact_text_for_programs(hostile_trace: Path, tmp_path: Path):
    """Escaping is for terminals: a file or pipe gets the trace's own text, byte for byte."""
    from click.testing import CliRunner

    r = CliRunner().invoke(main, ["stats", str(hostile_trace), "--step", "1", "--json"])
    tokens = {f["token"] for f in json.loads(r.output)[0]["forking_tokens"]}
    assert tokens <= set(HOSTILE) | set(build_vocab(pieces=synthetic_vocab(N_PLAIN)).column("text").to_pylist())
    assert tokens & set(HOSTILE)
    out = tmp_path / "t.jsonl"
    assert CliRunner().invoke(main, ["export", str(hostile_trace), "--step", "1", "--format", "jsonl",
                                     "-o", str(out)]).exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["token"] for r in rows[: len(HOSTILE)]] == HOSTILE
    assert rows[0]["group_id"] == GROUPS[0]


def test_csv_formula_guard_agrees_between_cli_and_viewer(hostile_trace: Path, tmp_path: Path, page):
    import csv

    from click.testing import CliRunner

    out = tmp_path / "t.csv"
    assert CliRunner().invoke(main, ["export", str(hostile_trace), "--step", "1", "-o", str(out)]).exit_code == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    got = [r["token"] for r in rows[: len(HOSTILE)]]
    assert got == [csv_cell(t) for t in HOSTILE]
    assert got[HOSTILE.index("-")] == "-" and got[HOSTILE.index("---")] == "---" and got[HOSTILE.index("-1.5")] == "-1.5"
    assert got[HOSTILE.index("@SUM(A1)")] == "'@SUM(A1)" and got[HOSTILE.index("+1-2")] == "'+1-2"
    report = write_report(hostile_trace, tmp_path / "r.html")
    open_report(page, report.as_uri())
    in_page = page.evaluate("vals => vals.map(v => wbtrace.csvField(v))", HOSTILE)
    assert in_page == ['"' + csv_cell(t).replace('"', '""') + '"' for t in HOSTILE]


def test_plot_and_view_of_a_hostile_trace(hostile_trace: Path, tmp_path: Path):
    code, out = on_terminal(["plot", hostile_trace, "-o", tmp_path / "p.png"])
    assert code == 0 and not leaks(out), out  # matplotlib's missing-glyph warnings quote the title
    assert (tmp_path / "p.png").stat().st_size > 1000
    code, out = on_terminal(["view", hostile_trace, "-o", tmp_path / "r.html"])
    assert code == 0 and not leaks(out), out


def test_viewer_runs_nothing_and_isolates_bidi(hostile_trace: Path, tmp_path: Path, page):
    report = write_report(hostile_trace, tmp_path / "r.html")
    open_report(page, report.as_uri())
    select(page, 0)
    spans = page.eval_on_selector_all(
        f"#tokens span:nth-child(-n+{len(HOSTILE) + 3})",
        "ss => ss.map(s => [s.textContent, getComputedStyle(s).unicodeBidi, s.getBoundingClientRect().left])")
    assert [t for t, _, _ in spans[: len(HOSTILE)]] == HOSTILE
    assert {b for _, b, _ in spans} == {"isolate"}
    rlo = HOSTILE.index("\u202eevil-rlo")
    lefts = [x for _, _, x in spans[rlo: rlo + 3]]
    assert lefts == sorted(lefts), lefts  # the tokens after an RLO still run left to right
    assert page.evaluate("window.__xss") is None and not page.dialogs and not page.errors
    assert page.locator("#tokens script, #tokens img, #tokens b, .item img, .item b").count() == 0
    assert MODEL in page.inner_text("#run-info")
    assert page.eval_on_selector_all("#run-info span", "ss => ss.map(s => getComputedStyle(s).unicodeBidi)") \
        == ["isolate", "isolate"]


def _get(port: int, host: str | None, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_serve_answers_only_loopback_host_names(hostile_trace: Path):
    """DNS rebinding: evil.example resolving to 127.0.0.1 must not make the trace readable by its page."""
    server = make_server(ViewerApp(hostile_trace), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            assert _get(port, host) == 200, host
        assert _get(port, f"127.0.0.1:{port}", "/api/step/1") == 200
        for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example", None, "",
                     f"localhost.evil.example:{port}"):
            assert _get(port, host) == 421, host
            assert _get(port, host, "/api/step/1") == 421, host
    finally:
        server.shutdown()
        server.server_close()


def test_error_messages_quoting_trace_data_are_one_safe_line(hostile_trace: Path, tmp_path: Path):
    """A hostile name inside an error (here a step file whose schema names the hostile model)."""
    store = TraceStore(hostile_trace)
    assert terminal_text(MODEL) != MODEL
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text(json.dumps({"schema_version": "\x1b]0;x\x07\n[/]"}))
    code, out = on_terminal(["ls", bad])
    assert code == 2 and out.startswith("Error: ") and out.count("\n") == 1 and not leaks(out), out
    assert store.steps == [1, 2]
