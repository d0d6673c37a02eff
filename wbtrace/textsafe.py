"""Trace strings made safe to show: the one place that decides how untrusted text reaches a terminal.

Token text, group ids, model names and prompts come from other people's traces. Printed raw, a C0/C1
control or ESC sequence can retitle the window, clear the screen or write the clipboard (OSC 52); a bidi
control reverses the text after it; rich markup in a string (``[/]``) crashes or restyles rich's output.
Every command that prints trace data passes it through :func:`terminal_text` (plain output) or
:func:`rich_text` (rich tables and panels); HTML output escapes in the browser with ``textContent``.
Error messages become one line with :func:`one_line`. A CSV cell that a spreadsheet would run as a
formula gets a leading ``'`` (:func:`csv_cell`); the viewer's CSV download uses the same two patterns
(shipped to the page), so the CLI and the browser agree.

Examples
--------
>>> terminal_text("a\\x1b]52;c;aGk=\\x07b")
'a\\\\x1b]52;c;aGk=\\\\x07b'
>>> terminal_text("x\\u202ey")
'x\\\\u202ey'
>>> terminal_text("line\\nnext", keep_newlines=True)
'line\\nnext'
>>> rich_text("[/INST]").plain
'[/INST]'
>>> one_line("Invalid: bad column\\n  at row 3")
'Invalid: bad column at row 3'
>>> [csv_cell(v) for v in ("=1+1", "-", "-3.5", "@SUM(A1)", "--", "-2+3")]
["'=1+1", '-', '-3.5', "'@SUM(A1)", '--', "'-2+3"]
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

# C0 controls but tab/newline (handled below), DEL, C1 controls, and the Unicode bidi/format controls that
# reorder or hide text (LRE..RLO, LRI..PDI, LRM/RLM/ALM, zero-width joiners are harmless and kept).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_UNSAFE_WITH_NL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def terminal_text(text: object, keep_newlines: bool = False) -> str:
    """``text`` with every control, ESC and bidi character shown as a visible escape (``\\x1b``, ``\\u202e``).

    Parameters
    ----------
    text : object
        Any value from a trace; ``None`` becomes ``""``, other non-strings their ``str``.
    keep_newlines : bool, default False
        Keep ``\\n`` and ``\\t`` as they are (for multi-line prompts); otherwise they are escaped too.
    """
    s = "" if text is None else str(text)
    return (_UNSAFE if keep_newlines else _UNSAFE_WITH_NL).sub(_escape, s)


def rich_text(text: object, style: str = "", keep_newlines: bool = False) -> Text:
    """A rich ``Text`` of ``text`` made safe: never parsed as markup, controls escaped."""
    from rich.text import Text

    return Text(terminal_text(text, keep_newlines=keep_newlines), style=style)


def one_line(message: object) -> str:
    """``message`` as one terminal-safe line: line breaks (Arrow and HTTP errors carry them) become spaces."""
    return terminal_text(re.sub(r"\s*[\r\n]+\s*", " ", "" if message is None else str(message)).strip())


# A spreadsheet evaluates a cell that starts with = + - @ (tab and CR can hide the sign before them), so
# such a text cell gets a leading ' (OWASP's CSV-injection advice). Plain numbers and cells of only
# + and - (the token "-", a "---" rule) cannot call anything and stay as they are. Both patterns are
# RE2/JavaScript compatible: Arrow applies them to whole columns and the viewer to its downloads.
CSV_FORMULA_START = r"^[=+\-@\t\r]"
CSV_SAFE = r"^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]+)$"
_FORMULA_START, _SAFE = re.compile(CSV_FORMULA_START), re.compile(CSV_SAFE)


def csv_cell(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would run it as a formula (see ``CSV_FORMULA_START``)."""
    return "'" + text if _FORMULA_START.match(text) and not _SAFE.match(text) else text
