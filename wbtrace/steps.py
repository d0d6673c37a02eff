"""The one step grammar: ``N``, ``N,M``, ``A:B`` (inclusive, either end open), ``last``, ``all``.

Every command that picks steps (stats, plot, export, view, pull, mirror) parses its ``--step N`` and
``--steps SPEC`` values into one `StepSelection` (``wbtrace.cli.options.step_options``) and resolves it
against the steps a trace or a source has; what is given is the union of every value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wbtrace.errors import BadInputError

GRAMMAR = "N, N,M, A:B (inclusive, either end open), last or all"
MISSING = "step {missing} not in {where}; it has steps {available}"


def format_steps(steps: list[int]) -> str:
    """Compact listing for error messages: ``1-5, 8, 10-12``."""
    if not steps:
        return "none"
    parts, start, prev = [], steps[0], steps[0]
    for s in steps[1:] + [None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ", ".join(parts)


def _int(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadInputError(f"bad step range {spec!r}: expected {GRAMMAR}") from None


@dataclass(frozen=True)
class StepSelection:
    """Which steps: explicit ones, inclusive ranges (``None`` = open end), the last one, or all."""

    steps: tuple[int, ...] = ()
    ranges: tuple[tuple[int | None, int | None], ...] = ()
    last: bool = False
    all: bool = False

    @classmethod
    def parse(cls, *specs: str, steps: Iterable[int] = (), all: bool = False) -> StepSelection:
        """From ``--steps`` texts (each in the grammar, items joined by commas) and ``--step`` numbers."""
        explicit, ranges, last = [int(s) for s in steps], [], False
        for spec in specs:
            for item in str(spec).split(","):
                item = item.strip()
                if item in ("last", "all"):
                    last, all = last or item == "last", all or item == "all"
                elif ":" in item:
                    a, b = item.split(":", 1)
                    ranges.append((_int(a, spec) if a.strip() else None, _int(b, spec) if b.strip() else None))
                elif item:
                    explicit.append(_int(item, spec))
                else:
                    raise BadInputError(f"bad step range {spec!r}: expected {GRAMMAR}")
        return cls(tuple(explicit), tuple(ranges), last, bool(all))

    @property
    def empty(self) -> bool:
        """Nothing asked for: the command's own default applies."""
        return not (self.steps or self.ranges or self.last or self.all)

    def __str__(self) -> str:
        parts = [str(s) for s in self.steps]
        parts += [f"{'' if a is None else a}:{'' if b is None else b}" for a, b in self.ranges]
        parts += ["last"] * self.last + ["all"] * self.all
        return ",".join(parts) or "all"

    def resolve(self, available: Iterable[int], where: object, *, error: type[Exception] = BadInputError,
                missing: str = MISSING) -> list[int]:
        """The selected steps among ``available`` (an empty selection means all of them).

        A missing explicit step raises ``error`` with ``missing`` (a template with ``{missing}``,
        ``{where}`` and ``{available}``); so does a selection that matches no step.
        """
        have = sorted(set(available))
        if not have:
            raise error(f"{where} has no committed steps yet")
        absent = sorted(set(self.steps) - set(have))
        if absent:
            raise error(missing.format(missing=format_steps(absent), where=where, available=format_steps(have)))
        if self.empty or self.all:
            return have
        chosen = set(self.steps) | ({have[-1]} if self.last else set())
        for lo, hi in self.ranges:
            chosen |= {s for s in have if (lo is None or s >= lo) and (hi is None or s <= hi)}
        if not chosen:
            raise error(f"no step of {self} in {where}; it has steps {format_steps(have)}")
        return sorted(chosen)
