"""Presentation helpers shared by the CLI, the web page and the exports (pure functions of text).

Token text is shown as it is, except characters that would be invisible or would disturb the layout. Each becomes a
visible mark, from one table (`WHITESPACE_MARKS`), which the page's scripts receive as JSON with every grid:

- space, newline, tab, carriage return, no-break space: `·` `↵` `⇥` `␍` `⍽`;
- other C0 controls and DEL: a backslash escape, as stray bytes of a split character already are (`\\x00`, `\\x1b`);
- every other character of Unicode category Zs (spaces), Zl, Zp (line/paragraph separators), Cf (format: zero-width
  characters, bidi controls, soft hyphen, BOM, tags), Cc (C1 controls), and a few invisible letters (Hangul fillers,
  the combining grapheme joiner, the blank braille pattern): its code point, `⟨U+200B⟩`.

`code_point_name` gives the name the page's popover shows for such a character ("U+00A0 NO-BREAK SPACE").
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

#: Marks with their own symbol.
NAMED_MARKS = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍", "\xa0": "⍽"}
#: Whitespace common enough that naming its code point would be noise (the popover names every other marked one).
ORDINARY_WHITESPACE = frozenset(" \n\t\r")
#: Unicode categories whose characters are all shown as marks: spaces, separators, format and control characters.
INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cf", "Cc"})
#: Characters of other categories that render as nothing (Unicode's default-ignorable or blank letters).
INVISIBLE_OTHERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0")
#: The planes where characters of INVISIBLE_CATEGORIES are assigned (the BMP, plane 1, plane 14's tags); a test
#: checks this against every code point, so the table is complete for Python's Unicode version.
PLANES = (0, 1, 14)

CODE_MARK_OPEN, CODE_MARK_CLOSE = "⟨", "⟩"


def is_invisible(char: str) -> bool:
    """True for a character shown as a mark rather than as itself."""
    return char in NAMED_MARKS or char in INVISIBLE_OTHERS or unicodedata.category(char) in INVISIBLE_CATEGORIES


def code_point_mark(char: str) -> str:
    """`⟨U+200B⟩`: the mark of a character with no symbol of its own."""
    return f"{CODE_MARK_OPEN}U+{ord(char):04X}{CODE_MARK_CLOSE}"


def _mark(char: str) -> str:
    if char in NAMED_MARKS:
        return NAMED_MARKS[char]
    code = ord(char)
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    return code_point_mark(char)


def _table() -> dict[str, str]:
    chars = [chr(code) for plane in PLANES for code in range(plane << 16, (plane + 1) << 16)]
    return {char: _mark(char) for char in chars if is_invisible(char)}


#: Every character shown as a mark, and its mark (the one table: CLI, page, popovers and exports read it).
WHITESPACE_MARKS: dict[str, str] = _table()


def mark_of(char: str) -> str | None:
    """The mark a character is shown as, or None when it is shown as itself."""
    return WHITESPACE_MARKS.get(char)


def is_code_mark(mark: str) -> bool:
    """True for a code-point mark (`⟨U+200B⟩`), which the page sets smaller than the one-character marks."""
    return mark.startswith(CODE_MARK_OPEN) and mark.endswith(CODE_MARK_CLOSE) and len(mark) > 2


def visible_whitespace(text: str) -> str:
    """Text with every invisible character made visible: `·` `↵` `⇥` `␍` `⍽`, `\\x1b`, `⟨U+200B⟩`."""
    return "".join(WHITESPACE_MARKS.get(char, char) for char in text)


def code_point_name(char: str) -> str:
    """`U+00A0 NO-BREAK SPACE`; controls, which have no name in Unicode, are `U+001B <control>`."""
    name = unicodedata.name(char, "") or ("<control>" if unicodedata.category(char) == "Cc" else "<unnamed>")
    return f"U+{ord(char):04X} {name}"


def named_characters(texts: Iterable[str]) -> dict[str, str]:
    """For every marked character in `texts` other than ordinary whitespace: its code point and name."""
    found = {char for text in texts for char in text if char in WHITESPACE_MARKS and char not in ORDINARY_WHITESPACE}
    return {char: code_point_name(char) for char in sorted(found)}
