"""Packing padded arrays into schema-v1 tables: exact round trip, edge cases, bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wbtrace.errors import BadInputError
from wbtrace.schema import METADATA_KEY, pack_step


def _padded(lengths, t, rng):
    mask = (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(0, 50_000, (len(lengths), t))
    ent = rng.random((len(lengths), t)).astype(np.float32) * 5
    return ids, mask, ent


def test_pack_trims_by_mask_and_keeps_order():
    rng = np.random.default_rng(0)
    ids, mask, ent = _padded([3, 0, 5], 5, rng)
    t = pack_step(4, ids, mask, ent, logprob=-ent, reward=np.array([1.0, 0.0, -1.0]), group_id=[7, 7, 8])
    assert t.column("token_ids").to_pylist() == [ids[0, :3].tolist(), [], ids[2].tolist()]
    assert t.column("response_length").to_pylist() == [3, 0, 5]
    assert t.column("group_id").to_pylist() == ["7", "7", "8"]
    got = t.column("entropy").to_pylist()[2]
    np.testing.assert_array_equal(np.array(got, dtype=np.float16), ent[2].astype(np.float16))
    assert t.schema.field("entropy").type == pa.list_(pa.float16())
    assert t.schema.metadata[METADATA_KEY] == b"1"
    assert t.column("step").to_pylist() == [4, 4, 4]


def test_pack_accepts_torch_bf16_and_token_level_advantage():
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    ent = torch.tensor([[0.5, 1.0, 9.0], [0.25, 0.0, 2.0]], dtype=torch.bfloat16)
    adv = torch.tensor([[2.0, 2.0, 0.0], [-1.0, -1.0, -1.0]])
    t = pack_step(1, ids, mask, ent, advantage=adv, ratio=torch.ones(2, 3))
    assert t.column("entropy").to_pylist() == [[0.5, 1.0], [0.25, 0.0, 2.0]]
    assert t.column("advantage").to_pylist() == [2.0, -1.0]
    assert t.column("ratio").to_pylist() == [[1.0, 1.0], [1.0, 1.0, 1.0]]


def test_pack_one_response_and_ragged_prompt_ids():
    t = pack_step(0, [[9]], [[1]], [[0.1]], prompt_token_ids=[np.array([1, 2, 3])], prompt_text=["2+2?"])
    assert t.num_rows == 1
    assert t.column("prompt_token_ids").to_pylist() == [[1, 2, 3]]
    assert t.column("prompt_text").to_pylist() == ["2+2?"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(token_ids=np.zeros((2, 3)), response_mask=np.ones((2, 4)), entropy=np.zeros((2, 3))),
         "response_mask has shape [2, 4], expected [2, 3]"),
        (dict(token_ids=np.zeros((2, 3)), response_mask=np.ones((2, 3)), entropy=np.full((2, 3), np.nan)),
         "entropy has 6 NaN/inf values"),
        (dict(token_ids=np.zeros(3), response_mask=np.ones(3), entropy=np.zeros(3)), "expected [N, T]"),
        (dict(token_ids=np.zeros((2, 3)), response_mask=np.ones((2, 3)), entropy=np.zeros((2, 3)),
              reward=np.zeros(3)), "reward has shape [3], expected [2]"),
    ],
)
def test_pack_rejects_bad_input(kwargs, message):
    with pytest.raises(BadInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pack_step(1, **kwargs)


def test_nan_in_padding_is_fine():
    ent = np.array([[0.5, np.nan]])
    t = pack_step(1, [[1, 2]], [[1, 0]], ent)
    assert t.column("entropy").to_pylist() == [[0.5]]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=6),
    data=st.data(),
)
def test_property_pack_round_trip(lengths, data):
    t = max(max(lengths), 1)
    n = len(lengths)
    ent = data.draw(arrays(np.float32, (n, t), elements=st.floats(0, 20, width=32)))
    ids = data.draw(arrays(np.int64, (n, t), elements=st.integers(0, 2**31 - 1)))
    mask = np.arange(t)[None, :] < np.array(lengths)[:, None]
    table = pack_step(3, ids, mask, ent, logprob=-ent)
    for i, length in enumerate(lengths):
        assert table.column("token_ids")[i].as_py() == ids[i, :length].tolist()
        np.testing.assert_array_equal(np.array(table.column("entropy")[i].as_py(), dtype=np.float16),
                                      ent[i, :length].astype(np.float16))
    assert table.column("response_length").to_pylist() == lengths
