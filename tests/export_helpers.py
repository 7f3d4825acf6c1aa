"""Hand-made grids for the export tests: no model needed, and token text chosen to break careless exporters
(markup, quotes, whitespace, control characters, wide characters, split-character escapes, empty tokens)."""

from __future__ import annotations

import random

from future_lens.lens.grid import Cell, Grid, ModelInfo, TokenProb, TokenText

HOSTILE_TEXTS = [
    "<script>alert(1)</script>",
    " </title><svg onload=alert(2)>",
    "\"quoted\" & 'single'",
    " the",
    "\n",
    "\t",
    "",
    "\x00\x1b",
    " 日本",
    "\\xe6",
    "]]>",
    "=SUM(A1)",
    " a,b;c",
    "\r\n",
]
WORDS = [" the", " city", " of", " Paris", ".", " McFly", " from", " Back", " to", " Future", ",", " and"]


def _token(rng: random.Random, index: int, hostile: bool) -> tuple[int, str]:
    if hostile and rng.random() < 0.35:
        text = rng.choice(HOSTILE_TEXTS)
        return 900 + HOSTILE_TEXTS.index(text), text
    word = rng.randrange(len(WORDS))
    return 100 + word, WORDS[word]


def _probs(rng: random.Random, n: int) -> list[float]:
    return sorted((rng.random() ** 2 for _ in range(n)), reverse=True)


def _with_probs(tokens: list[tuple[int, str]], probs: list[float]) -> list[TokenProb]:
    return [TokenProb(id=i, text=t, piece=f"p{i}", prob=p) for (i, t), p in zip(tokens, probs, strict=True)]


def sample_grid(
    n_layers: int = 6,
    n_tokens: int = 7,
    n_future: int = 3,
    top_k: int = 4,
    seed: int = 0,
    hostile: bool = True,
    method: str = "future",
    borrowed: bool = True,
) -> Grid:
    """A grid of plausible shape with random probabilities (every shade appears), some cells matching the actual
    next token and, for `future` with `borrowed`, rows that used another layer's prompt."""
    rng = random.Random(seed)
    inputs = [_token(rng, i, hostile) for i in range(n_tokens)]
    following = [_token(rng, i, hostile) for i in range(n_tokens)]
    layers = [round(i * 29 / max(1, n_layers - 1)) for i in range(n_layers)]
    cells = []
    for row in range(n_layers):
        cells.append([])
        for column in range(n_tokens):
            predicted = [_token(rng, k, hostile) for k in range(n_future)]
            if rng.random() < 0.3:
                predicted[0] = following[column]
            shade = (row * n_tokens + column) % 10 / 10 + 0.05  # every bucket appears
            probs = [min(1.0, shade + rng.uniform(-0.04, 0.04)) for _ in predicted]
            alternatives = [_token(rng, k, hostile) for k in range(top_k)]
            cells[-1].append(
                Cell(
                    tokens=_with_probs(predicted, probs),
                    mean_prob=sum(probs) / len(probs),
                    topk=_with_probs(alternatives, _probs(rng, top_k)),
                )
            )
    prompt_layers = None
    if method == "future":
        prompt_layers = [
            layer if not borrowed or row % 3 == 0 else layers[row - row % 3] for row, layer in enumerate(layers)
        ]
    return Grid(
        model=ModelInfo(id="tiny-test", n_layers=30, d_model=64, dtype="float32", fingerprint="0123456789abcdef"),
        method=method,
        n_future=n_future,
        top_k=top_k,
        tokens=[TokenText(id=i, text=t, piece=f"p{i}") for i, t in inputs],
        layers=layers,
        context_prefix=[0],
        next_tokens=[TokenProb(id=i, text=t, piece=f"p{i}", prob=rng.random()) for i, t in following],
        cells=cells,
        prompt='Tell me about "' if method == "fixed" else None,
        prompt_layers=prompt_layers,
        timings_ms={"source_pass": 1.5, "lens": 2.25, "total": 3.75},
    )
