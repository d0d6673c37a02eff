"""TraceWriter under pressure and on bad input: bounded hand-off, full-queue policy, ids, masks, NaN
log-probs, an unwritable or full directory. None of it may raise into (or stall) the training loop."""

from __future__ import annotations

import errno
import time

import numpy as np
import pytest

from wbtrace import TraceStore, TraceWriter
from wbtrace.sinks.base import TraceSink
from wbtrace.synthetic import make_step


class _SlowSink(TraceSink):
    name = "slow"

    def log_step(self, *args):
        time.sleep(0.4)


def test_full_queue_waits_at_most_max_wait_ms_then_drops_and_counts(tmp_path):
    w = TraceWriter(tmp_path, sinks=[_SlowSink()], queue_size=1, max_wait_ms=20)
    waits, results = [], []
    for s in range(6):
        t0 = time.perf_counter()
        results.append(w.write_step(s, **make_step(2, 4, 10, seed=s)))
        waits.append(time.perf_counter() - t0)
    report = w.close()
    assert max(waits) < 0.3  # 20 ms wait + a tiny copy; the old policy blocked up to 30 s
    assert report.dropped >= 3 and report.written + report.dropped == 6
    assert results.count(True) == report.written
    assert any("waited 20 ms for a slot, step dropped" in m for m in report.messages)
    assert TraceStore(tmp_path).steps == [s for s, ok in zip(range(6), results) if ok]


def test_copied_arrays_can_be_reused_by_the_caller_at_once(tmp_path):
    step = make_step(3, 6, 20, seed=1)
    want = step["entropy"].copy()
    with TraceWriter(tmp_path, sinks=[_SlowSink()]) as w:
        assert w.write_step(1, **step)
        step["entropy"][:] = 5.0  # the trainer's next step overwrites its buffers
    got = np.concatenate(TraceStore(tmp_path).read_step(1).column("entropy").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, want[step["response_mask"].astype(bool)], rtol=1e-3, atol=1e-4)


def test_torch_cpu_tensors_handed_over_without_copy(tmp_path):
    torch = pytest.importorskip("torch")
    step = make_step(3, 6, 20, seed=2)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(step[k])) for k in ("token_ids", "response_mask")}
    tensors["entropy"] = torch.from_numpy(step["entropy"]).to(torch.bfloat16)
    with TraceWriter(tmp_path, copy=False) as w:
        assert w.write_step(1, **tensors, reward=step["reward"])
    table = TraceStore(tmp_path).read_step(1)
    assert table.column("token_ids").to_pylist()[0] == step["token_ids"][0][step["response_mask"][0] == 1].tolist()
    assert table.column("reward").to_pylist() == pytest.approx(step["reward"].tolist())


@pytest.mark.parametrize("bad_id", [2**31, 2**40, -1])
def test_token_ids_outside_int32_are_rejected_not_wrapped(tmp_path, bad_id):
    step = make_step(2, 5, 20, seed=3)
    step["token_ids"] = step["token_ids"].astype(np.int64)
    step["token_ids"][1, 0] = bad_id
    with TraceWriter(tmp_path) as w:
        w.write_step(1, **step)
    assert w.report.rejected == 1 and w.report.written == 0
    assert any("ids must be in [0, 2**31 - 1]" in m for m in w.report.messages)
    assert TraceStore(tmp_path).steps == []


def test_padding_ids_outside_the_mask_are_fine(tmp_path):
    step = make_step(2, 5, 20, seed=3)
    step["response_mask"][:, -1] = 0
    step["token_ids"][:, -1] = -100  # a common pad value; never stored
    with TraceWriter(tmp_path) as w:
        assert w.write_step(1, **step)
    assert w.report.ok and w.report.written == 1


def test_mask_with_gaps_is_flagged_not_silently_compacted(tmp_path):
    step = make_step(3, 6, 20, seed=4, min_len=6)
    step["response_mask"][1] = [1, 1, 0, 0, 1, 1]  # a tool output masked out of a multi-turn response
    step["response_mask"][2] = [0, 0, 1, 1, 1, 1]  # left padding: contiguous, nothing lost
    with TraceWriter(tmp_path) as w:
        assert w.write_step(1, **step)
    assert w.report.flagged == 1 and w.report.written == 1
    assert any("response_mask has gaps in 1 rows" in m for m in w.report.messages)
    assert TraceStore(tmp_path).read_step(1).column("response_length").to_pylist() == [6, 4, 4]


def test_nan_logprobs_are_flagged(tmp_path):
    step = make_step(2, 5, 20, seed=5, min_len=5)
    step["logprob"][0, 1] = np.nan
    step["logprob"][1, 4] = np.nan
    with TraceWriter(tmp_path) as w:
        assert w.write_step(1, **step)
    assert w.report.flagged == 1
    assert any("logprob has 2 NaN values" in m for m in w.report.messages)


def test_unwritable_path_disables_the_writer_instead_of_raising(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    w = TraceWriter(blocker / "trace", vocab=["a"])  # NotADirectoryError inside: never raised
    assert w.disabled and "cannot write the trace" in w.disabled
    assert not w.write_step(1, **make_step(2, 4, 10, seed=1))
    report = w.close()
    w.flush()  # returns: nothing is queued behind a writer that never started
    assert not report.ok and report.errors == 2 and report.written == 0
    assert "NotADirectoryError" in report.messages[0]


def test_full_disk_at_setup_is_reported_not_raised(tmp_path, monkeypatch):
    import wbtrace.writer

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wbtrace.writer, "atomic_write", no_space)  # simulated: no small tmpfs here
    with TraceWriter(tmp_path / "trace", vocab=["a"]) as w:
        assert not w.write_step(1, **make_step(2, 4, 10, seed=1))
    assert "No space left on device" in w.report.messages[0] and w.report.written == 0
