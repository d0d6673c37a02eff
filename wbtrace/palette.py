"""The one entropy colour scale, shared by the terminal (``wbtrace show``), W&B HTML cells and the viewer.

Yellow-orange-red (ColorBrewer YlOrRd) on nats: near-zero tokens stay uncoloured so the eye lands on
the forking tokens; 0.672 nats (the 80/20 paper's p80) is already visibly tinted.
"""

from __future__ import annotations

# (entropy in nats, RGB). Piecewise-linear between stops, clamped at both ends.
STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (255, 255, 255)),
    (0.3, (255, 237, 160)),
    (1.0, (254, 178, 76)),
    (2.0, (252, 78, 42)),
    (3.5, (189, 0, 38)),
    (6.0, (128, 0, 38)),
)


def entropy_rgb(h: float) -> tuple[int, int, int]:
    """RGB colour for an entropy value in nats.

    Examples
    --------
    >>> entropy_rgb(0.0), entropy_rgb(100.0)
    ((255, 255, 255), (128, 0, 38))
    """
    if not h > STOPS[0][0]:  # also catches NaN
        return STOPS[0][1]
    for (x0, c0), (x1, c1) in zip(STOPS, STOPS[1:]):
        if h <= x1:
            f = (h - x0) / (x1 - x0)
            return tuple(round(a + f * (b - a)) for a, b in zip(c0, c1))  # type: ignore[return-value]
    return STOPS[-1][1]


def entropy_hex(h: float) -> str:
    """``#rrggbb`` for an entropy value (for HTML/CSS)."""
    return "#{:02x}{:02x}{:02x}".format(*entropy_rgb(h))


def text_color_for(h: float) -> str:
    """Black or white text, whichever reads better on `entropy_rgb(h)`."""
    r, g, b = entropy_rgb(h)
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"
