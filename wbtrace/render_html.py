"""Token HTML: one coloured, escaped ``<span>`` per token, its background set by the token's entropy.

Used by the W&B preview table (`wbtrace.sinks.wandb`) and reusable by the local viewer. Token text is
untrusted (a model can emit ``<script>``): every piece of it goes through `html.escape`, attributes
included, so it always shows as text.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Sequence

from wbtrace.palette import entropy_hex
from wbtrace.stats import DEFAULT_THRESHOLD


def entropy_color(h: float | None) -> str:
    """CSS colour ``#rrggbb`` for entropy ``h`` (nats), on the shared scale of `wbtrace.palette`.

    NaN (a missing value) is grey.
    """
    if h is None or math.isnan(h):
        return "#d1d5db"
    return entropy_hex(float(h))


def _visible(text: str) -> str:
    # Whitespace-only tokens would be invisible spans: show newlines and tabs as marks, keep the break.
    return text.replace("\t", "\u21e5").replace("\n", "\u21b5\n")


def token_spans_html(
    tokens: Sequence[str],
    entropies: Sequence[float],
    *,
    threshold: float | None = DEFAULT_THRESHOLD,
    wrap: bool = True,
) -> str:
    """HTML for one response: each token an escaped ``<span>`` coloured by its entropy.

    Parameters
    ----------
    tokens : sequence of str
        Display text of each token (untrusted: escaped here).
    entropies : sequence of float
        Entropy in nats for each token, same length as ``tokens``.
    threshold : float or None, default 0.672
        Tokens at or above it are underlined (the "forking" tokens); None turns this off.
    wrap : bool, default True
        Wrap the spans in a ``<div>`` that keeps line breaks.

    Examples
    --------
    >>> token_spans_html(["<b>", "x"], [0.0, 3.0], wrap=False)  # doctest: +NORMALIZE_WHITESPACE
    '<span style="background:#ffffff" title="H=0.000">&lt;b&gt;</span><span
    style="background:#d21a27;text-decoration:underline" title="H=3.000">x</span>'
    """
    if len(tokens) != len(entropies):
        raise ValueError(f"{len(tokens)} tokens but {len(entropies)} entropies")
    body = "".join(f"<span {_attrs(float('nan') if h is None else float(h), threshold)}>{_text(str(text))}</span>"
                   for text, h in zip(tokens, entropies, strict=True))
    if not wrap:
        return body
    return f'<div style="font-family:monospace;white-space:pre-wrap;line-height:1.6">{body}</div>'


# Cached: a preview repeats the same entropies (float16 has 65,536 values) and the same tokens.
@functools.lru_cache(maxsize=1 << 16)
def _attrs(h: float, threshold: float | None) -> str:
    style = f"background:{entropy_color(h)}"
    if threshold is not None and h >= threshold:
        style += ";text-decoration:underline"
    title = "H=nan" if math.isnan(h) else f"H={h:.3f}"
    return f'style="{style}" title="{title}"'


@functools.lru_cache(maxsize=1 << 17)
def _text(text: str) -> str:
    return html.escape(_visible(text), quote=True)

