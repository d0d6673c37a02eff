"""Synthetic steps shaped like real DAPO rollouts, for tests, benchmarks and the demo without a model.

Token entropy of an RL-tuned LLM is heavy-tailed: most tokens are near 0 nats and a minority of
"forking" tokens carry most of the uncertainty (arXiv 2506.01939: >50% below 0.01, p80 ~0.67).
The generator imitates that with a log-normal mixture so statistics and plots look realistic.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def make_step(n_responses: int = 8, max_len: int = 64, vocab_size: int = 1000, seed: int = 0,
              group_size: int = 4, min_len: int = 1, zipf: bool = False) -> dict[str, Any]:
    """Padded ``[N, T]`` arrays and ``[N]`` per-response values, ready for ``TraceWriter.write_step``.

    Token ids are uniform over the vocabulary (a worst case for compression) or, with ``zipf=True``,
    Zipf-distributed (exponent 1.1) like the token frequencies of real text.

    Returns
    -------
    dict
        ``token_ids`` int64, ``response_mask`` int8 (right-padded), ``entropy`` float32, ``logprob``
        float32, ``reward`` / ``advantage`` float32, ``correct`` / ``kept`` / ``truncated`` bool,
        ``group_id`` str, ``prompt_index`` int32.
    """
    rng = np.random.default_rng(seed)
    n, t = n_responses, max_len
    lengths = rng.integers(min(min_len, t), t + 1, size=n)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int8)
    forking = rng.random((n, t)) < 0.2
    entropy = np.where(forking, rng.lognormal(0.3, 0.6, (n, t)), rng.exponential(0.01, (n, t))).astype(np.float32)
    logprob = (-entropy * rng.uniform(0.2, 1.5, (n, t))).astype(np.float32)
    groups = np.arange(n) // max(group_size, 1)
    correct = rng.random(n) < 0.5
    reward = np.where(correct, 1.0, -1.0).astype(np.float32)
    advantage = np.zeros(n, dtype=np.float32)
    for g in np.unique(groups):
        r = reward[groups == g]
        advantage[groups == g] = (r - r.mean()) / (r.std() + 1e-6)
    group_acc_spread = np.array([correct[groups == g].std() > 0 for g in groups])
    return {
        "token_ids": _token_ids(rng, (n, t), vocab_size, zipf) * mask,
        "response_mask": mask,
        "entropy": entropy * mask,
        "logprob": logprob * mask,
        "reward": reward,
        "advantage": advantage,
        "correct": correct,
        "kept": group_acc_spread,
        "truncated": lengths == t,
        "group_id": np.array([f"g{g}" for g in groups]),
        "prompt_index": groups.astype(np.int32),
    }


def _token_ids(rng: np.random.Generator, shape: tuple[int, int], vocab_size: int, zipf: bool) -> np.ndarray:
    if not zipf:
        return rng.integers(0, vocab_size, shape)
    ranks = np.minimum(rng.zipf(1.1, shape), vocab_size) - 1
    return rng.permutation(vocab_size)[ranks]  # frequent ids scattered over the vocabulary, as in BPE


def synthetic_vocab(vocab_size: int = 1000) -> list[str]:
    """Byte-level-BPE-looking pieces ("Ġthe", "Ċ", digits) so rendering paths get exercised."""
    words = ["Ġthe", "Ġanswer", "Ġis", "Ċ", "Ġ=", "Ġ+", "Ġ\\boxed", "{", "}", "Ġso", "Ġwait", "Ġlet", "Ġme",
             "Ġcheck", ".", ",", "Ġtherefore", "Ġfirst", "Ġthen", "Ġhmm"]
    pieces = words + [str(i) for i in range(10)] + [f"Ġtok{i}" for i in range(vocab_size)]
    return pieces[:vocab_size]
