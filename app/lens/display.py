"""Presentation helpers shared by the CLI and the web page (pure functions of text)."""

from __future__ import annotations

WHITESPACE_MARKS = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible_whitespace(text: str) -> str:
    """Make spaces, newlines and tabs visible: `·`, `↵`, `⇥`."""
    return "".join(WHITESPACE_MARKS.get(char, char) for char in text)
