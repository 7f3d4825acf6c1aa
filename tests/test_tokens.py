"""Token rendering from vocabulary pieces: byte-level BPE (SmolLM2's real tokenizer), SentencePiece (built in memory,
offline) and the decode fallback (word-level); the `\\r\\n` normalisation; old grids without pieces still parse."""

from __future__ import annotations

import re

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from future_lens.lens.grid import Grid
from future_lens.lens.source import normalize_text
from future_lens.lens.tokens import RenderedToken, TokenRenderer, bytes_to_unicode, scheme_of
from future_lens.service import InvalidRequestError, parse_request
from tests.conftest import word_tokenizer

ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


def unescape(text: str) -> bytes:
    """The bytes a rendered text stands for: UTF-8 of its characters, each `\\xhh` escape as its byte."""
    out, last = bytearray(), 0
    for match in ESCAPE.finditer(text):
        out += text[last : match.start()].encode() + bytes([int(match.group(1), 16)])
        last = match.end()
    return bytes(out + text[last:].encode())


def render_all(renderer: TokenRenderer, tokenizer, text: str) -> list[RenderedToken]:
    return [renderer(i) for i in tokenizer(text, add_special_tokens=False).input_ids]


def test_bytes_to_unicode_is_gpt2s_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert (table[ord(" ")], table[ord("\n")], table[ord("\t")], table[ord("a")]) == ("Ġ", "Ċ", "ĉ", "a")


# ---------- byte-level BPE: SmolLM2's real tokenizer ----------


@pytest.fixture(scope="module")
def smol(embedded_dir) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(scope="module")
def smol_renderer(smol) -> TokenRenderer:
    return TokenRenderer(smol)


@pytest.mark.embedded
def test_smollm2_is_detected_as_byte_level(smol):
    assert scheme_of(smol)[0] == "byte_level"


@pytest.mark.embedded
def test_byte_level_pieces_keep_spaces_newlines_and_tabs(smol, smol_renderer):
    tokens = render_all(smol_renderer, smol, " the\n\tcat")
    assert [(t.piece, t.text) for t in tokens] == [("Ġthe", " the"), ("Ċ", "\n"), ("ĉ", "\t"), ("cat", "cat")]


@pytest.mark.embedded
@pytest.mark.parametrize("text", [" the\n\tcat, said 🙂 café", "\n\n", "  x\r\n", "def f():\n    return 1"])
def test_texts_of_whole_character_tokens_concatenate_to_the_text(smol, smol_renderer, text):
    tokens = render_all(smol_renderer, smol, text)
    assert "".join(t.text for t in tokens) == text
    assert not any("\\x" in t.text for t in tokens)


@pytest.mark.embedded
def test_split_characters_show_escapes_never_replacement_chars(smol, smol_renderer):
    text = "a 日本語 🦜 b"
    ids = smol(text, add_special_tokens=False).input_ids
    tokens = [smol_renderer(i) for i in ids]
    assert any("�" in smol.decode([i]) for i in ids)  # what decoding one id alone shows
    assert not any("�" in t.text for t in tokens)
    assert " \\xe6" in [t.text for t in tokens]  # the space, then the first byte of 日 (e6 97 a5)
    assert unescape("".join(t.text for t in tokens)) == text.encode()


@pytest.mark.embedded
def test_special_tokens_show_as_themselves(smol, smol_renderer):
    assert smol_renderer(0) == RenderedToken("<|endoftext|>", "<|endoftext|>")
    ids = smol("<|im_start|>user", add_special_tokens=False).input_ids
    assert smol_renderer(ids[0]) == RenderedToken("<|im_start|>", "<|im_start|>")


@pytest.mark.embedded
def test_rendering_is_cached_and_ids_beyond_the_vocabulary_are_empty(smol, smol_renderer):
    assert smol_renderer(260) is smol_renderer(260)
    assert smol_renderer(len(smol) + 7) == RenderedToken("", "")


# ---------- SentencePiece, built in memory (no hub) ----------

WORDS = ["▁the", "▁cat", "the", "cat", "▁", "a", "c", "e", "h", "t"]


def sentencepiece_tokenizer(decoder: str) -> PreTrainedTokenizerFast:
    """A Unigram model with byte fallback and the metaspace, decoded the Llama-2 way or by a Metaspace decoder."""
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    vocab += [(f"<0x{byte:02X}>", -10.0) for byte in range(256)] + [(word, -1.0 - len(word)) for word in WORDS]
    backend = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    if decoder == "llama2":
        parts = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        backend.decoder = decoders.Sequence(parts)
    else:
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("decoder", ["llama2", "metaspace"])
def test_sentencepiece_metaspace_is_a_space_and_byte_pieces_are_bytes(decoder):
    tokenizer = sentencepiece_tokenizer(decoder)
    renderer = TokenRenderer(tokenizer)
    assert renderer.scheme == "sentencepiece"
    text = "the cat 日\n"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    tokens = [renderer(i) for i in ids]
    assert [t.piece for t in tokens] == ["▁the", "▁cat", "▁", "<0xE6>", "<0x97>", "<0xA5>", "<0x0A>"]
    assert [t.text for t in tokens] == [" the", " cat", " ", "\\xe6", "\\x97", "\\xa5", "\n"]
    assert tokenizer.decode([ids[0]]) == "the"  # decoding the id alone drops the leading space
    assert unescape("".join(t.text for t in tokens)) == (" " + text).encode()  # the metaspace prepended to the text
    assert renderer(tokenizer.bos_token_id) == RenderedToken("<s>", "<s>")


# ---------- anything else: decode each id ----------


def test_word_level_falls_back_to_decode():
    tokenizer = word_tokenizer()
    renderer = TokenRenderer(tokenizer)
    assert renderer.scheme == "decode"
    assert [renderer(i) for i in tokenizer("w5 w17", add_special_tokens=False).input_ids] == [
        RenderedToken("w5", "w5"),
        RenderedToken("w17", "w17"),
    ]
    assert renderer(0) == RenderedToken("<|endoftext|>", "<|endoftext|>")


# ---------- input normalisation and old documents ----------


def test_normalize_text_turns_crlf_into_lf_and_keeps_a_lone_cr():
    assert normalize_text("a\r\nb\r\n\r\nc\rd\n") == "a\nb\n\nc\rd\n"


def test_requests_normalise_line_ends_and_accept_whitespace_only_text():
    request = parse_request(text="a\r\nb\r\n", method="fixed", prompt="Say:\r\n")
    assert (request.text, request.prompt) == ("a\nb\n", "Say:\n")
    assert parse_request(text="\r\n\r\n").text == "\n\n"
    assert parse_request(text=" \t ").text == " \t "
    with pytest.raises(InvalidRequestError) as error:
        parse_request(text="")
    assert error.value.field == "text"


def test_grid_of_schema_1_without_pieces_still_parses():
    token = {"id": 5, "text": "x"}
    document = {
        "schema": "future-lens.grid/1",
        "model": {"id": "m", "n_layers": 1, "d_model": 4, "dtype": "float32", "fingerprint": "0" * 16},
        "method": "logit",
        "n_future": 1,
        "top_k": 1,
        "tokens": [token],
        "layers": [0],
        "context_prefix": [],
        "next_tokens": [{**token, "prob": 0.5}],
        "cells": [[{"tokens": [{**token, "prob": 0.5}], "mean_prob": 0.5, "topk": [{**token, "prob": 0.5}]}]],
        "timings_ms": {},
    }
    grid = Grid.model_validate(document)
    assert grid.schema_id == "future-lens.grid/1"
    assert grid.tokens[0].piece is None and grid.cells[0][0].topk[0].piece is None
