"""The fault suite: what happens to a trace when bits rot, processes die, writers collide, disks fill
or servers go away. After each, `wbtrace verify` passes or names the damage, and a rerun completes
with nothing lost."""

from __future__ import annotations

import random

import pytest
from click.testing import CliRunner
from conftest import write_trace

from wbtrace import TraceStore
from wbtrace.cli import main
from wbtrace.errors import TraceFormatError
from wbtrace.verify import verify_trace


def test_every_single_bit_flip_is_caught_on_read_or_by_verify(tmp_path):
    """60 random single-bit flips in one step file (the audit found 15 of 60 changed entropy silently).
    Each flip either fails the read (page CRC, sha256 in the manifest, schema) or leaves the table
    identical; `verify` names the step every time."""
    trace = write_trace(tmp_path / "t", steps=(1, 2))
    store = TraceStore(trace)
    path, good = store.step_path(1), store.read_step(1)
    data = path.read_bytes()
    rng = random.Random(0)
    caught = 0
    for _ in range(60):
        flipped = bytearray(data)
        pos = rng.randrange(len(flipped))
        flipped[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(flipped))
        try:
            table = TraceStore(trace).read_step(1)
        except TraceFormatError:
            caught += 1
        else:
            pytest.fail(f"a flip at byte {pos} read back without an error (equal: {table.equals(good)})")
        report = verify_trace(trace)
        assert not report.ok and list(report.damaged) == [1] and report.whole == [2], report
    assert caught == 60
    path.write_bytes(data)
    assert verify_trace(trace).ok and TraceStore(trace).read_step(1).equals(good)


def test_verify_cli_names_the_damage_and_exit_codes(tmp_path):
    trace = write_trace(tmp_path / "t", steps=(1, 2, 3))
    r = CliRunner().invoke(main, ["verify", str(trace)])
    assert r.exit_code == 0 and r.output == "ok: 3 steps whole (1-3)\n", r.output
    store = TraceStore(trace)
    store.step_path(2).write_bytes(store.step_path(2).read_bytes()[:-10])
    store.step_path(3).unlink()
    (trace / "steps" / ".step_000004.parquet.tmp-1-2").write_bytes(b"partial")
    r = CliRunner().invoke(main, ["verify", str(trace)])
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert "note: .step_000004.parquet.tmp-1-2: a temp file left by an interrupted write" in lines[0]
    assert lines[1].startswith("damaged: step 2: step_000002.parquet: sha256 differs")
    assert lines[2] == "damaged: step 3: step_000003.parquet is missing"
    assert lines[3] == "2 damaged, 1 steps whole"
    r = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert r.exit_code == 2 and "is not a wbtrace trace" in r.output


# ---------------------------------------------------------------- one writer, one run per directory
def test_a_second_writer_is_refused_while_the_first_writes(tmp_path):
    from wbtrace import TraceWriter
    from wbtrace.errors import TraceBusyError
    from wbtrace.synthetic import make_step, synthetic_vocab

    vocab = synthetic_vocab(50)
    first = TraceWriter(tmp_path / "t", vocab=vocab)
    first.write_step(1, **make_step(4, 8, 50, seed=1))
    with pytest.raises(TraceBusyError, match=r"is being written by pid \d+ on .* \(TraceWriter\); one writer per trace"):
        TraceWriter(tmp_path / "t", vocab=vocab)
    assert first.close().ok
    with TraceWriter(tmp_path / "t", vocab=vocab) as again:  # closed: the same run resumes
        assert again.write_step(2, **make_step(4, 8, 50, seed=2))
        assert not again.write_step(1, **make_step(4, 8, 50, seed=1))  # committed: never replaced
    assert again.report.skipped == 1 and not again.report.ok  # a skipped step is not "ok"
    assert TraceStore(tmp_path / "t").steps == [1, 2] and verify_trace(tmp_path / "t").ok


def test_another_run_in_an_existing_trace_dir_is_refused(tmp_path):
    from wbtrace import TraceWriter
    from wbtrace.errors import BadInputError
    from wbtrace.synthetic import make_step, synthetic_vocab

    trace = write_trace(tmp_path / "t", steps=(1, 2))  # model "synthetic", vocab of 300
    before = {p.name: p.read_bytes() for p in trace.rglob("*") if p.is_file() and p.name != ".wbtrace.lock"}
    with pytest.raises(BadInputError, match="holds another run \\(its vocabulary differs"):
        TraceWriter(trace, vocab=synthetic_vocab(200))
    with pytest.raises(BadInputError, match="holds another run \\(model 'synthetic', this one is 'qwen'\\)"):
        TraceWriter(trace, vocab=synthetic_vocab(300), run_info={"model": "qwen"})
    with pytest.raises(BadInputError, match="already holds a trace \\(resume=False\\)"):
        TraceWriter(trace, vocab=synthetic_vocab(300), resume=False)
    assert {p.name: p.read_bytes() for p in trace.rglob("*") if p.is_file() and p.name != ".wbtrace.lock"} == before
    with TraceWriter(trace, vocab=synthetic_vocab(300), run_info={"model": "synthetic", "config": {"lr": 2}}) as w:
        assert w.write_step(3, **make_step(4, 8, 300, seed=3))  # the same run with a new config: a resume
    assert w.report.ok and TraceStore(trace).steps == [1, 2, 3]
    stray = tmp_path / "stray"
    (stray / "steps").mkdir(parents=True)
    (stray / "steps" / "step_000001.parquet").write_bytes(TraceStore(trace).step_path(1).read_bytes())
    with pytest.raises(BadInputError, match="has steps but no run.json"):
        TraceWriter(stray, vocab=synthetic_vocab(300))


def test_import_npz_into_another_trace_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["import-npz", str(_seed_trace(tmp_path / "seed")), str(write_trace(tmp_path / "t"))])
    assert r.exit_code == 2 and r.output.startswith("Error: ") and "already holds a trace that was not imported" \
        in r.output and r.output.count("\n") == 1, r.output
    assert TraceStore(tmp_path / "t").steps == [1, 2, 3]
    for _ in range(2):  # the same seed again: a resume, nothing added twice
        r = CliRunner().invoke(main, ["import-npz", str(tmp_path / "seed"), str(tmp_path / "imp")])
        assert r.exit_code == 0, r.output
    assert TraceStore(tmp_path / "imp").steps == [1, 2] and verify_trace(tmp_path / "imp").ok


def _seed_trace(path):
    import numpy as np

    from wbtrace.seed_format import write_seed_step

    rng = np.random.default_rng(0)
    for step in (1, 2):
        mask = np.arange(12)[None, :] < rng.integers(1, 12, 4)[:, None]
        write_seed_step(path, step, rng.integers(0, 1000, (4, 12)).astype(np.int32), mask,
                        (rng.random((4, 12)) * 3).astype(np.float16), uid=np.array(["a", "a", "b", "b"]))
    return path


# ---------------------------------------------------------------- kill -9
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
# Three steps committed, then "ready" and more steps as fast as it can: the kill lands mid-write.
WRITER_SCRIPT = """
import sys
from wbtrace import TraceWriter
from wbtrace.synthetic import make_step, synthetic_vocab
with TraceWriter(sys.argv[1], vocab=synthetic_vocab(300), run_info={"model": "m"}) as w:
    for step in range(1, 41):
        w.write_step(step, **make_step(32, 400, 300, seed=step))
        if step == 3:
            w.flush()
            print("ready", flush=True)
"""


def _spawn(code: str, *args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_when_ready(proc) -> None:
    """kill -9 as soon as the child prints its ready line."""
    import signal

    line = proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert line.strip() == b"ready", proc.stderr.read().decode()[-2000:]


def test_kill_9_during_write_then_a_rerun_completes_with_nothing_lost(tmp_path):
    from wbtrace import TraceWriter
    from wbtrace.synthetic import make_step, synthetic_vocab

    trace = tmp_path / "t"
    proc = _spawn(WRITER_SCRIPT, trace)
    _kill_when_ready(proc)
    killed_with = TraceStore(trace).steps
    assert 3 <= len(killed_with) < 40, killed_with
    report = verify_trace(trace)
    assert report.ok, report.damaged  # whatever the kill interrupted is a leftover, never a damaged step
    with TraceWriter(trace, vocab=synthetic_vocab(300), run_info={"model": "m"}) as w:  # not locked: the kernel
        have = set(TraceStore(trace).steps)                                            # dropped the dead lock
        for step in range(1, 41):
            if step not in have:
                assert w.write_step(step, **make_step(32, 400, 300, seed=step))
    assert w.report.ok, w.report
    store = TraceStore(trace)
    assert store.steps == list(range(1, 41)) and len(store.manifest) == 40
    final = verify_trace(trace)
    assert final.ok and final.whole == list(range(1, 41)) and not final.notes, final
    with TraceWriter(tmp_path / "ref", vocab=synthetic_vocab(300), run_info={"model": "m"}) as ref:
        for step in killed_with[-1:] + [40]:
            ref.write_step(step, **make_step(32, 400, 300, seed=step))
    for step in killed_with[-1:] + [40]:  # the step that was last before the kill, and one after: exact
        assert store.read_step(step).equals(TraceStore(tmp_path / "ref").read_step(step))


# ---------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root can mount one here; elsewhere the test is skipped: no ENOSPC to fake)."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_keeps_committed_steps_whole_and_leaves_no_temp(small_disk, tmp_path):
    import shutil

    from wbtrace import TraceWriter
    from wbtrace.synthetic import make_step, synthetic_vocab

    trace = small_disk / "t"
    with TraceWriter(trace, vocab=synthetic_vocab(300)) as w:
        for step in range(1, 30):  # ~100 KiB a step: the disk fills around step 9
            w.write_step(step, **make_step(32, 400, 300, seed=step))
    assert w.report.errors > 0, w.report  # counted and warned, never raised into the caller
    committed = TraceStore(trace).steps
    assert committed == list(range(1, len(committed) + 1)) and len(committed) >= 3
    report = verify_trace(trace)
    assert report.ok and not report.notes, report  # no half file, no temp file taking the last bytes
    r = CliRunner().invoke(main, ["view", str(trace), "-o", str(small_disk / "r.html")])
    assert r.exit_code == 2 and r.output.startswith("Error: ") and "No space left on device" in r.output, r.output
    assert sorted(p.name for p in small_disk.iterdir()) == ["t"]  # view's 2 MB temp is gone
    moved = tmp_path / "roomy"
    shutil.copytree(trace, moved)
    with TraceWriter(moved, vocab=synthetic_vocab(300)) as w:  # space again: the rerun finishes the run
        have = set(TraceStore(moved).steps)
        for step in range(1, 30):
            if step not in have:
                w.write_step(step, **make_step(32, 400, 300, seed=step))
    assert w.report.ok and TraceStore(moved).steps == list(range(1, 30)) and verify_trace(moved).ok
