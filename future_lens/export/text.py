"""Token text as the exports show it: whitespace made visible as on the page, and nothing XML cannot hold.

Spaces, newlines, tabs and carriage returns become `·` `↵` `⇥` `␍` (lens/display.py); other control characters
become backslash escapes as split bytes already are (`\\x00`, `\\x1b`: XML 1.0 cannot hold them), characters XML
forbids otherwise (lone surrogates, U+FFFE, U+FFFF) become `�`, and an empty token is `∅`. Each piece says whether
it is such a mark, so a figure can dim the marks as the page does.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from future_lens.export.palette import EMPTY_TOKEN_MARK
from future_lens.lens.display import WHITESPACE_MARKS

ELLIPSIS = "…"


def _control_escape(char: str) -> str | None:
    """`\\x00`…`\\x1f` for C0 controls and `\\x7f` for DEL; None for any other character."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x20 or code == 0x7F else None


def _xml_safe(char: str) -> str:
    """The character itself, or `�` for what XML 1.0 cannot contain (surrogates, U+FFFE, U+FFFF)."""
    code = ord(char)
    return "\ufffd" if 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF) else char


@dataclass(frozen=True)
class Piece:
    """A run of shown characters; `mark` when it stands for whitespace, a control character or an empty token."""

    text: str
    mark: bool


def pieces(text: str) -> list[Piece]:
    """Token text as runs of plain characters and marks, in order."""
    if not text:
        return [Piece(EMPTY_TOKEN_MARK, True)]
    runs: list[Piece] = []
    for char in text:
        mark = WHITESPACE_MARKS.get(char) or _control_escape(char)
        shown, is_mark = (mark, True) if mark else (_xml_safe(char), False)
        if runs and runs[-1].mark == is_mark:
            runs[-1] = Piece(runs[-1].text + shown, is_mark)
        else:
            runs.append(Piece(shown, is_mark))
    return runs


def plain(text: str) -> str:
    """Free text (a model id) safe for XML: control characters escaped, spaces kept."""
    return "".join(_control_escape(char) or _xml_safe(char) if char != " " else char for char in text)


def shown(text: str) -> str:
    """Token text exactly as an export shows it (marks included)."""
    return "".join(piece.text for piece in pieces(text))


def char_width(char: str) -> int:
    """Columns a character takes in a monospace font: 2 for wide East Asian characters, 0 for combining marks."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def width(text: str) -> int:
    """Monospace columns of `text`."""
    return sum(char_width(char) for char in text)


def truncate(runs: list[Piece], columns: int) -> list[Piece]:
    """The runs cut to `columns - 1` monospace columns, then `…`."""
    kept: list[Piece] = []
    room = columns - 1
    for piece in runs:
        text = ""
        for char in piece.text:
            if char_width(char) > room:
                room = 0
                break
            text += char
            room -= char_width(char)
        if text:
            kept.append(Piece(text, piece.mark))
        if room == 0:
            break
    return [*kept, Piece(ELLIPSIS, False)]


def clip(runs: list[Piece], columns: int) -> list[Piece]:
    """The runs as they are when they fit in `columns` monospace columns, else cut to fit, ending in `…`."""
    return runs if width("".join(piece.text for piece in runs)) <= columns else truncate(runs, columns)
