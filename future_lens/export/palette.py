"""The grid's colours and number formats: one definition for the page (static/lens.css is kept in sync by a test)
and every export.

A cell is shaded by its mean probability in 10 buckets of sequential blues (greys for rows computed with another
layer's trained prompt); text turns white from bucket `DARK_FROM` on.
"""

from __future__ import annotations

N_BUCKETS = 10
#: Background of a cell per bucket (`.p0` ... `.p9` in static/lens.css).
SHADES = (
    "#f7fbff",
    "#e3eef9",
    "#cfe1f2",
    "#b5d4e9",
    "#93c3df",
    "#6daed5",
    "#4b97c9",
    "#2f7ebc",
    "#1864aa",
    "#0a4a90",
)
#: The same buckets for a row that borrowed another layer's prompt (`tr.borrowed td.cell.pN`).
BORROWED_SHADES = (
    "#f5f5f5",
    "#e8e8e8",
    "#dadada",
    "#c8c8c8",
    "#b3b3b3",
    "#9a9a9a",
    "#7f7f7f",
    "#686868",
    "#525252",
    "#3a3a3a",
)
DARK_FROM = 6
INK = "#1d2733"
MUTED = "#5b6775"
ON_DARK = "#ffffff"
MATCH = "#e8590c"  # the mark of a cell whose first token is the model's actual next token
MARK = "#8fa0b3"  # whitespace marks (`·` `↵` `⇥`) on a light cell
MARK_ON_DARK = "#b7cde6"
HEAD_BG = "#eef2f7"
HEAD_RULE = "#b9c3cf"
CELL_RULE = "#e3e8ee"
NEXT_BG = "#fff8e6"
NEXT_HEAD_BG = "#fff0c8"
BORROWED_HEAD_BG = "#e2e2e2"
EMPTY_TOKEN_MARK = "∅"


def prob_bucket(prob: float) -> int:
    """Which of the 10 background shades a mean probability gets (0: below 10%, 9: 90% and above)."""
    return max(0, min(N_BUCKETS - 1, int(prob * N_BUCKETS)))


def shade(prob: float, borrowed: bool = False) -> str:
    """The background colour of a cell with mean probability `prob`."""
    return (BORROWED_SHADES if borrowed else SHADES)[prob_bucket(prob)]


def is_dark(prob: float) -> bool:
    """True when a cell's shade is dark enough for white text."""
    return prob_bucket(prob) >= DARK_FROM


def percent(prob: float) -> str:
    """A probability as a short percentage: `71%`, `0.4%`, `<0.1%`."""
    value = prob * 100
    if value >= 9.95:
        return f"{value:.0f}%"
    if value >= 0.05:
        return f"{value:.1f}%"
    return "<0.1%"
