"""Invisible characters made visible (lens/display.py): the one table the CLI, the page, its popovers and the
exports read. Every space, separator, format and control character gets a visible, non-empty mark; the popover
names the unusual ones by code point."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from future_lens.export.text import shown
from future_lens.lens import display
from future_lens.lens.display import WHITESPACE_MARKS, visible_whitespace
from future_lens.lens.grid import Cell, Grid, ModelInfo, TokenProb, TokenText
from future_lens.server.web.render import grid_view, marked_text

ZERO_WIDTH = [0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF]
BIDI = [0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
SPACES = [*range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000, 0x1680]
LISTED = [0xA0, *ZERO_WIDTH, *BIDI, *SPACES]


def test_ordinary_whitespace_keeps_its_marks_and_controls_are_escaped_as_in_the_exports() -> None:
    assert visible_whitespace(" a\n\tb\r") == "·a↵⇥b␍"
    assert visible_whitespace("\x00\x1b\x7f") == "\\x00\\x1b\\x7f"  # as the exports (and split bytes) show them


def test_no_break_space_has_a_symbol_of_its_own() -> None:
    assert visible_whitespace("\xa0") == "⍽"
    assert visible_whitespace("1\xa0000") == "1⍽000"


@pytest.mark.parametrize("code", ZERO_WIDTH, ids=lambda code: f"U+{code:04X}")
def test_zero_width_characters_show_their_code_point(code: int) -> None:
    assert visible_whitespace(chr(code)) == f"⟨U+{code:04X}⟩"


@pytest.mark.parametrize("code", BIDI, ids=lambda code: f"U+{code:04X}")
def test_bidi_controls_show_their_code_point(code: int) -> None:
    assert visible_whitespace("a" + chr(code) + "b") == f"a⟨U+{code:04X}⟩b"


@pytest.mark.parametrize("code", SPACES, ids=lambda code: f"U+{code:04X}")
def test_other_unicode_spaces_show_their_code_point(code: int) -> None:
    assert visible_whitespace(chr(code)) == f"⟨U+{code:04X}⟩"


def test_every_space_separator_format_and_control_character_is_marked() -> None:
    """The table is built from three planes; every code point of every plane is checked here."""
    categories = {"Zs", "Zl", "Zp", "Cf", "Cc"}
    invisible = {chr(code) for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) in categories}
    assert invisible <= set(WHITESPACE_MARKS)
    assert set(WHITESPACE_MARKS) - invisible == display.INVISIBLE_OTHERS  # Hangul fillers and the like
    assert {"\u00ad", "\u2028", "\u2029", "\u0085", "\U000e0001", "\U000e0041", "\U0001d173"} <= set(WHITESPACE_MARKS)


def test_every_mark_is_visible_and_names_its_character() -> None:
    """A mark is never empty, never the character itself, and made only of characters that show."""
    for char, mark in WHITESPACE_MARKS.items():
        assert mark and mark != char
        assert not any(part in WHITESPACE_MARKS for part in mark), (f"U+{ord(char):04X}", mark)
    for code in LISTED:
        assert visible_whitespace(chr(code)).strip() not in ("", chr(code))


def test_code_point_names() -> None:
    code_point_name, named_characters = display.code_point_name, display.named_characters
    assert code_point_name("\xa0") == "U+00A0 NO-BREAK SPACE"
    assert code_point_name("\u200b") == "U+200B ZERO WIDTH SPACE"
    assert code_point_name("\U000e0041") == "U+E0041 TAG LATIN CAPITAL LETTER A"
    assert code_point_name("\x1b") == "U+001B <control>"
    # the popover names unusual characters, not ordinary whitespace
    assert named_characters([" a\n", "\xa0\xa0", "x\u202e"]) == {
        "\xa0": "U+00A0 NO-BREAK SPACE",
        "\u202e": "U+202E RIGHT-TO-LEFT OVERRIDE",
    }


def test_the_page_and_the_exports_show_the_same_marks() -> None:
    """The server-rendered cell, the exports' text and the CLI all read the table."""
    text = "a\xa0\u200b\u202e\u3000" + "\U000e0041"
    assert shown(text) == visible_whitespace(text) == "a⍽⟨U+200B⟩⟨U+202E⟩⟨U+3000⟩⟨U+E0041⟩"
    html = str(marked_text("\xa0"))
    assert html == '<span class="ws odd" title="U+00A0 NO-BREAK SPACE">⍽</span>'
    assert 'class="ws odd cp" title="U+200B ZERO WIDTH SPACE">⟨U+200B⟩<' in str(marked_text("\u200b"))
    assert str(marked_text(" ")) == '<span class="ws">·</span>'


def test_popover_data_carries_the_table_and_the_names_of_the_grids_characters() -> None:
    def prob(token_id: int, text: str, p: float) -> TokenProb:
        return TokenProb(id=token_id, text=text, prob=p)

    nbsp, zwsp = prob(15442, "\xa0", 0.98), prob(7, "\u200b", 0.01)
    grid = Grid(
        model=ModelInfo(id="m", n_layers=1, d_model=4, dtype="float32", fingerprint="f"),
        method="logit",
        n_future=1,
        top_k=2,
        tokens=[TokenText(id=1, text="a")],
        layers=[0],
        context_prefix=[],
        next_tokens=[nbsp],
        cells=[[Cell(tokens=[nbsp], mean_prob=0.98, topk=[nbsp, zwsp])]],
        timings_ms={},
    )
    data = grid_view(grid, "id", "/g/id", False).popover_data()
    assert data["marks"] == WHITESPACE_MARKS
    assert data["names"] == {"\xa0": "U+00A0 NO-BREAK SPACE", "\u200b": "U+200B ZERO WIDTH SPACE"}
