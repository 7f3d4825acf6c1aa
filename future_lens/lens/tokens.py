"""Token ids as the text they contribute, rendered from their vocabulary pieces rather than decoded one by one.

`tokenizer.decode([id])` loses what a token is on its own: SentencePiece decoders strip the leading space of the
first token, and a character whose UTF-8 bytes are split across tokens decodes to `�` in each part. Here every id
gets its raw `piece` (`convert_ids_to_tokens`) and the exact `text` it contributes:

- added and special tokens (`<|endoftext|>`, `<s>`): the token's content, as is;
- byte-level BPE (GPT-2, GPT-J, SmolLM2, Llama-3, Qwen): each piece character maps back to one byte through the
  GPT-2 bytes-to-unicode table (`Ġ` -> space, `Ċ` -> newline);
- SentencePiece (Llama-2, Mistral, Gemma): the metaspace `▁` is a space and byte pieces `<0xE2>` are that byte;
- anything else (word-level, WordPiece): `tokenizer.decode([id])`;
- an id beyond the tokenizer's vocabulary (padded embedding rows): empty text and piece.

The scheme is read from the fast tokenizer's backend configuration (`scheme_of`). Bytes that are not valid UTF-8 on
their own (part of a split character) are shown as Python's `backslashreplace` escapes, e.g. `\\xe2`, never `�`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

Scheme = Literal["byte_level", "sentencepiece", "decode"]

METASPACE = "▁"
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by every byte-level BPE vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


UNICODE_TO_BYTE = {char: byte for byte, char in bytes_to_unicode().items()}


def show_bytes(data: bytes) -> str:
    """UTF-8 text with each byte that is not part of a complete character shown as `\\xhh`."""
    return data.decode("utf-8", errors="backslashreplace")


def _components(config: Any) -> Iterator[dict[str, Any]]:
    """Every component of a backend decoder or pre-tokenizer config, looking inside `Sequence`s."""
    if isinstance(config, dict):
        yield config
        for key in ("decoders", "pretokenizers"):
            for part in config.get(key) or []:
                yield from _components(part)


def _config(component: Any) -> Any:
    """A backend decoder's or pre-tokenizer's JSON config (its pickled state), None when there is none."""
    return None if component is None else json.loads(component.__getstate__())


def scheme_of(tokenizer: Any) -> tuple[Scheme, str]:
    """How pieces encode text, and the metaspace character: from the backend's decoder and pre-tokenizer types.

    A `ByteLevel` decoder or pre-tokenizer means byte-level pieces. A `Metaspace` or `ByteFallback` decoder, a
    `Replace` of `▁` by a space, or a `Metaspace` pre-tokenizer means SentencePiece pieces. A slow SentencePiece
    tokenizer (with `sp_model`) is SentencePiece too. Anything else falls back to decoding each id.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return ("sentencepiece", METASPACE) if hasattr(tokenizer, "sp_model") else ("decode", METASPACE)
    parts = [*_components(_config(backend.decoder)), *_components(_config(backend.pre_tokenizer))]
    if any(part.get("type") == "ByteLevel" for part in parts):
        return "byte_level", METASPACE
    for part in parts:
        kind = part.get("type")
        if kind == "Metaspace":
            return "sentencepiece", part.get("replacement") or METASPACE
        if kind == "Replace" and part.get("content") == " ":
            return "sentencepiece", (part.get("pattern") or {}).get("String") or METASPACE
        if kind == "ByteFallback":
            return "sentencepiece", METASPACE
    return "decode", METASPACE


@dataclass(frozen=True)
class RenderedToken:
    """One token: the characters it contributes (`text`) and its raw vocabulary entry (`piece`)."""

    text: str
    piece: str


class TokenRenderer:
    """Maps token ids to `RenderedToken`s for one tokenizer, once per id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.scheme, self.metaspace = scheme_of(tokenizer)
        self._as_is = set(getattr(tokenizer, "added_tokens_decoder", {})) | set(tokenizer.all_special_ids)
        self._cache: dict[int, RenderedToken] = {}

    def __call__(self, token_id: int) -> RenderedToken:
        token = self._cache.get(token_id)
        if token is None:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)  # None beyond the vocabulary (padded rows)
            token = self._cache[token_id] = RenderedToken("", "") if piece is None else self._render(token_id, piece)
        return token

    def _render(self, token_id: int, piece: str) -> RenderedToken:
        """The token's text from its piece by the tokenizer's scheme (added tokens as they are)."""
        if token_id in self._as_is:
            return RenderedToken(piece, piece)
        if self.scheme == "byte_level" and all(char in UNICODE_TO_BYTE for char in piece):
            return RenderedToken(show_bytes(bytes(UNICODE_TO_BYTE[char] for char in piece)), piece)
        if self.scheme == "sentencepiece":
            byte = BYTE_PIECE.fullmatch(piece)
            text = show_bytes(bytes([int(byte.group(1), 16)])) if byte else piece.replace(self.metaspace, " ")
            return RenderedToken(text, piece)
        return RenderedToken(self.tokenizer.decode([token_id]), piece)
