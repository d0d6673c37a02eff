"""Rewards: the answer is parsed leniently from a response and checked with math-verify.

DAPO scores +1 for a correct answer and -1 otherwise (overlong shaping is added by the trainer).
Lenient parsing matters for a 135M model: the last ``\\boxed{...}``, else ``Answer: X``, else the last
number in the text. The ``toy`` reward exists for tests with a random model (see ``toy_reward``).
"""

from __future__ import annotations

import re
import threading

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*\$?(-?[\d.,/]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def extract_answer(text: str) -> str | None:
    """The answer a response gives, or None: last \\boxed{}, else 'Answer: X', else the last number."""
    for pattern in (_BOXED, _ANSWER, _NUMBER):
        found = pattern.findall(text)
        if found:
            return found[-1].strip().rstrip(".").replace(",", "")
    return None


def is_correct(response: str, ground_truth: str) -> bool:
    """math-verify equivalence of the extracted answer and the ground truth (plain compare as fallback)."""
    pred = extract_answer(response)
    if pred is None:
        return False
    if pred == ground_truth.strip():
        return True
    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"${ground_truth}$", parsing_timeout=timeout)
    guess = parse(f"${pred}$", parsing_timeout=timeout)
    return bool(gold and guess and verify(gold, guess, timeout_seconds=timeout))


def math_reward(response: str, ground_truth: str) -> tuple[float, bool]:
    """(score, correct): +1 / -1 as in DAPO."""
    ok = is_correct(response, ground_truth)
    return (1.0 if ok else -1.0), ok


def toy_reward(token_ids: list[int], prompt_index: int) -> tuple[float, bool]:
    """Tests only (a random model earns no math reward): odd prompts always score -1, so their groups
    have zero spread and dynamic sampling drops them; even prompts score by the parity of the token-id sum.
    """
    ok = prompt_index % 2 == 0 and sum(token_ids) % 2 == 0
    return (1.0 if ok else -1.0), ok
