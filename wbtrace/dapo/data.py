"""Prompts: built-in procedural arithmetic with difficulty levels and known answers, and user data in
verl's parquet layout or JSONL; a resumable stream over them (its whole state is one integer).

A problem is a dict ``{"question": str, "answer": str, "index": int}``. The prompt text asks for the
answer in ``\\boxed{}`` (what math-verify and the DAPO recipe expect); the reward parses leniently.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from wbtrace.errors import BadInputError

INSTRUCTION = "Put the final answer in \\boxed{}."


def arithmetic_problem(level: int, rng: random.Random) -> tuple[str, str]:
    """One problem of difficulty ``level`` (1 easiest .. 5) and its answer as text."""
    r = rng.randint
    if level == 1:
        a, b = r(0, 9), r(0, 9)
        return f"What is {a} + {b}?", str(a + b)
    if level == 2:
        a, b = r(10, 99), r(1, 99)
        op = rng.choice("+-")
        return f"What is {a} {op} {b}?", str(a + b if op == "+" else a - b)
    if level == 3:
        a, b = r(2, 12), r(2, 12)
        return f"What is {a} * {b}?", str(a * b)
    if level == 4:
        name, item = rng.choice(["Tom", "Ana", "Lee", "Sam"]), rng.choice(["apples", "books", "coins"])
        a, b, c = r(2, 20), r(1, 10), r(1, 5)
        return (f"{name} has {a} {item}, gets {b} more, then gives away {c}. How many {item} does "
                f"{name} have now?", str(a + b - c))
    if level == 5:
        a, b, c = r(2, 20), r(2, 20), r(2, 9)
        return f"What is ({a} + {b}) * {c}?", str((a + b) * c)
    raise BadInputError(f"data.difficulty level {level} does not exist (1..5)")


class PromptStream:
    """Endless, deterministic stream of problems; ``position`` (problems handed out) is its state.

    Procedural: problem ``i`` comes from ``Random(seed, i)``. Files: epoch ``i // len`` uses its own
    permutation of the records, so a resumed run sees exactly the prompts it would have seen.
    """

    def __init__(self, files: list[str], difficulty: list[int], seed: int = 0) -> None:
        self.records = load_records(files) if files else None
        self.difficulty = list(difficulty)
        self.seed = seed
        self.position = 0
        self._perm: tuple[int, list[int]] | None = None

    def problem(self, i: int) -> dict[str, Any]:
        if self.records is None:
            rng = random.Random(f"{self.seed}:{i}")
            q, a = arithmetic_problem(rng.choice(self.difficulty), rng)
            return {"question": f"{q} {INSTRUCTION}", "answer": a, "index": i}
        epoch, k = divmod(i, len(self.records))
        if self._perm is None or self._perm[0] != epoch:
            perm = list(range(len(self.records)))
            random.Random(f"{self.seed}:epoch{epoch}").shuffle(perm)
            self._perm = (epoch, perm)
        return {**self.records[self._perm[1][k]], "index": i}

    def take(self, n: int) -> list[dict[str, Any]]:
        out = [self.problem(self.position + j) for j in range(n)]
        self.position += n
        return out


def load_records(files: list[str]) -> list[dict[str, Any]]:
    """Read verl parquet (``prompt`` = chat messages, ``reward_model.ground_truth``) or JSONL files."""
    records: list[dict[str, Any]] = []
    for f in files:
        path = Path(f).expanduser()
        if not path.is_file():
            raise BadInputError(f"data.train_files: {f} not found")
        rows = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
        records.extend(_normalize(r, path) for r in rows)
    if not records:
        raise BadInputError(f"data.train_files {files} hold no records")
    return records


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BadInputError(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


def _normalize(row: dict[str, Any], path: Path) -> dict[str, Any]:
    """Map verl / JSONL fields onto ``question``, ``answer`` (and ``messages`` for chat prompts)."""
    prompt = row.get("prompt", row.get("question", row.get("problem")))
    answer = (row.get("reward_model") or {}).get("ground_truth") if isinstance(row.get("reward_model"), dict) \
        else None
    answer = answer if answer is not None else row.get("answer", row.get("ground_truth"))
    if prompt is None or answer is None:
        raise BadInputError(f"{path}: a record lacks a prompt/question or an answer/ground_truth: {sorted(row)}")
    if isinstance(prompt, list):  # verl: chat messages; the last user turn is the question
        return {"question": prompt[-1]["content"], "messages": prompt, "answer": str(answer)}
    return {"question": str(prompt), "answer": str(answer)}
