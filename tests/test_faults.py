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


# ---------------------------------------------------------------- -o: devices, FIFOs, symlinks
def test_output_to_a_device_a_fifo_or_a_symlink_is_written_through(tmp_path):
    import os
    import stat
    import threading

    trace = write_trace(tmp_path / "t", steps=(1,))
    try:  # private clones of /dev/null and /dev/full: a regression cannot replace the real ones
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(tmp_path / "full", stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("mknod needs root")
    for cmd in (["export", trace, "--step", 1, "-o", tmp_path / "null"],
                ["view", trace, "-o", tmp_path / "null"], ["plot", trace, "-o", tmp_path / "null"]):
        if cmd[0] == "plot":
            (tmp_path / "null.png").symlink_to(tmp_path / "null")
            cmd[-1] = tmp_path / "null.png"
        r = CliRunner().invoke(main, [str(c) for c in cmd])
        assert r.exit_code == 0, r.output
        assert stat.S_ISCHR((tmp_path / "null").stat().st_mode), cmd  # still a device, not a regular file
    r = CliRunner().invoke(main, ["export", str(trace), "--step", "1", "-o", str(tmp_path / "full")])
    assert r.exit_code == 2 and "No space left on device" in r.output and r.output.count("\n") == 1, r.output
    assert stat.S_ISCHR((tmp_path / "full").stat().st_mode)
    os.mkfifo(tmp_path / "pipe")
    got = []
    reader = threading.Thread(target=lambda: got.append(open(tmp_path / "pipe", "rb").read()))
    reader.start()
    r = CliRunner().invoke(main, ["export", str(trace), "--step", "1", "-o", str(tmp_path / "pipe")])
    reader.join(30)
    assert r.exit_code == 0 and got and got[0].startswith(b"step,sample_id"), r.output
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)
    (tmp_path / "real.csv").write_text("old")
    (tmp_path / "link.csv").symlink_to(tmp_path / "real.csv")
    assert CliRunner().invoke(main, ["export", str(trace), "--step", "1", "-o", str(tmp_path / "link.csv")]).exit_code == 0
    assert (tmp_path / "link.csv").is_symlink() and (tmp_path / "real.csv").read_text().startswith("step,")
    r = CliRunner().invoke(main, ["export", str(trace), "--step", "1", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory: give a file name" in r.output, r.output
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------- pulls: killed, into a live trace, half-made
PULL_SCRIPT = """
import sys, time
from wbtrace.sources.pull import pull
from wbtrace.sources.refs import open_source

def progress(done, total):
    if done == 3:
        print("ready", flush=True)
    if done >= 3:
        time.sleep(0.3)  # slow enough that the kill lands mid-pull

pull(open_source(sys.argv[1]), dest=sys.argv[2], progress=progress)
"""


def test_kill_9_during_pull_keeps_what_landed_and_a_rerun_fetches_only_the_rest(tmp_path):
    from wbtrace.sources.pull import pull
    from wbtrace.sources.refs import open_source

    src = write_trace(tmp_path / "src", steps=range(1, 21), n=4, max_len=20)
    dest = tmp_path / "dest"
    _kill_when_ready(_spawn(PULL_SCRIPT, src, dest))
    landed = TraceStore(dest).steps
    assert 3 <= len(landed) < 20 and [e["step"] for e in TraceStore(dest).manifest] == landed  # appended per step
    assert verify_trace(dest).ok
    totals = []
    pull(open_source(str(src)), dest=dest, progress=lambda done, total: totals.append(total))
    assert totals[-1] == 20 - len(landed)  # what was there whole is not downloaded again
    assert TraceStore(dest).steps == list(range(1, 21)) and verify_trace(dest).ok
    for step in (1, 20):
        assert TraceStore(dest).step_path(step).read_bytes() == TraceStore(src).step_path(step).read_bytes()


def test_pull_into_a_trace_being_written_is_refused(tmp_path):
    from wbtrace import TraceWriter
    from wbtrace.synthetic import synthetic_vocab

    src = write_trace(tmp_path / "src", steps=(1, 2))
    with TraceWriter(tmp_path / "live", vocab=synthetic_vocab(300), run_info={"model": "synthetic"}):
        r = CliRunner().invoke(main, ["pull", str(src), "--all", "--dest", str(tmp_path / "live")])
    assert r.exit_code == 2 and "is being written by pid" in r.output and r.output.count("\n") == 1, r.output
    assert TraceStore(tmp_path / "live").steps == []


def test_a_failed_pull_leaves_no_half_made_dest(tmp_path):
    src = write_trace(tmp_path / "src", steps=(1, 2))
    TraceStore(src).step_path(1).write_bytes(b"not parquet")
    r = CliRunner().invoke(main, ["pull", str(src), "--all", "--dest", str(tmp_path / "new")])
    assert r.exit_code == 2 and r.output.startswith("Error: "), r.output
    assert not (tmp_path / "new").exists()
    stray = tmp_path / "stray"
    (stray / "steps").mkdir(parents=True)
    (stray / "steps" / "step_000009.parquet").write_bytes(b"x")
    r = CliRunner().invoke(main, ["pull", str(tmp_path / "src"), "--step", "2", "--dest", str(stray)])
    assert r.exit_code == 2 and "has steps but no run.json" in r.output, r.output


# ---------------------------------------------------------------- export killed
EXPORT_SCRIPT = """
import sys
from wbtrace.store import TraceStore
from wbtrace.export import export_steps
store = TraceStore(sys.argv[1])

def progress(step):
    if step == 2:
        print("ready", flush=True)

export_steps(store, store.steps, sys.argv[2], "csv", progress=progress)
"""


def test_kill_9_during_export_leaves_the_old_output_and_the_next_export_cleans_up(tmp_path):
    src = write_trace(tmp_path / "src", steps=range(1, 41), n=16, max_len=300)
    out = tmp_path / "out.csv"
    out.write_text("the previous export\n")
    _kill_when_ready(_spawn(EXPORT_SCRIPT, src, out))
    assert out.read_text() == "the previous export\n"  # never half-replaced
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.csv.tmp-")]  # the killed one's temp
    r = CliRunner().invoke(main, ["export", str(src), "--step", "1", "-o", str(out)])
    assert r.exit_code == 0 and out.read_text().startswith("step,")
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]  # a dead process's temp is removed


def test_mirror_of_a_moved_embedded_store_writes_beside_its_database(tmp_path):
    """The trace (and its embedded sqlite store) was copied from the GPU machine; the run's recorded
    artifact path is that machine's: mirror must not recreate it, and a pull must read the new steps."""
    import shutil

    pytest.importorskip("mlflow")
    from wbtrace import TraceWriter
    from wbtrace.synthetic import make_step, synthetic_vocab

    gpu = write_trace(tmp_path / "gpu" / "t", steps=(1, 2))
    assert CliRunner().invoke(main, ["mirror", str(gpu)]).exit_code == 0  # the embedded store, on "the GPU machine"
    here = tmp_path / "laptop" / "t"
    shutil.copytree(gpu, here)
    shutil.rmtree(tmp_path / "gpu")
    with TraceWriter(here, vocab=synthetic_vocab(300), run_info={"model": "synthetic"}) as w:
        w.write_step(3, **make_step(8, 40, 300, seed=3))
    r = CliRunner().invoke(main, ["mirror", str(here)])
    assert r.exit_code == 0 and "uploaded 1 step files, 2 already there" in r.output, r.output
    assert not (tmp_path / "gpu").exists()  # the other machine's path was not recreated
    run_id = r.output.split()[2]
    r = CliRunner().invoke(main, ["pull", f"mlflow://{run_id}", "--all", "--dest", str(tmp_path / "back"),
                                  "--tracking-uri", f"sqlite:///{here / 'mlflow.db'}"])
    assert r.exit_code == 0, r.output
    assert TraceStore(tmp_path / "back").steps == [1, 2, 3]
    assert TraceStore(tmp_path / "back").step_path(3).read_bytes() == TraceStore(here).step_path(3).read_bytes()
