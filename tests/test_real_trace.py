"""The committed sample of the real GPU run (docs/runs/h100-sample: steps 1, 50, 100 of SmolLM2-135M DAPO,
redone on an H200 with the fast sampler)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from wbtrace import TraceStore
from wbtrace.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "runs" / "h100-sample"


def test_sample_reads_and_holds_what_the_trainer_wrote():
    store = TraceStore(SAMPLE)
    assert store.steps == [1, 50, 100]
    assert store.run_info["schema_version"] == 1
    table = store.read_step(50)
    assert table.num_rows in (64, 128)  # 8 prompts x 8 responses, one or two generation batches
    ent = np.concatenate([np.asarray(r, np.float32) for r in table.column("entropy").to_pylist()])
    assert 0 <= ent.min() and ent.max() <= math.log(49152) + 1e-2  # entropy is bounded by ln(V)
    lp = np.concatenate([np.asarray(r, np.float32) for r in table.column("logprob").to_pylist()])
    assert lp.max() <= 1e-3
    assert set(table.column("group_id").to_pylist()) and table.column("kept").to_pylist().count(True) >= 8


def test_vocab_decodes_smollm2_byte_level_pieces():
    store = TraceStore(SAMPLE)
    row = store.read_step(100).slice(0, 1).to_pylist()[0]
    text = store.vocab.decode(row["token_ids"])
    assert text.removesuffix("<|im_end|>") == row["response_text"].removesuffix("\n") or \
        row["response_text"].startswith(text[:10])
    assert "Ġ" not in text and "Ċ" not in text


def test_entropy_fell_over_the_run():
    store = TraceStore(SAMPLE)
    first, last = store.manifest[0], store.manifest[-1]
    assert last["entropy_mean"] < first["entropy_mean"]
    assert last["accuracy"] > first["accuracy"]


def test_export_of_real_step(tmp_path):
    out = tmp_path / "s.csv"
    r = CliRunner().invoke(main, ["export", str(SAMPLE), "--step", "100", "-o", str(out)])
    assert r.exit_code == 0, r.output
    import csv

    store = TraceStore(SAMPLE)
    rows = list(csv.DictReader(out.open(newline="")))  # token text may hold newlines: quoted fields
    assert len(rows) == sum(store.read_step(100).column("response_length").to_pylist())
    assert any("\n" in r["token"] for r in rows) or all(r["token"] for r in rows)


def test_no_response_runs_past_the_end_of_its_turn():
    store = TraceStore(SAMPLE)
    stops = store.run_info["eos_token_ids"]
    assert stops == [2] and store.run_info["pad_token_id"] == 2  # SmolLM2's <|im_end|>
    for _, table in store.iter_steps():
        for ids in table.column("token_ids").to_pylist():
            hits = np.flatnonzero(np.isin(ids, stops))
            assert len(hits) == 0 or hits[0] == len(ids) - 1
