"""The code behind a cell: a short Python script that recomputes one cell with plain transformers + nnsight.

It loads the model from its local folder (the embedded model from the cache `future-lens prepare` fills, honouring
`FUTURE_LENS_CACHE`; a catalog HF model from the local HF cache), runs the source text, takes block l's output at
the token, and then: for the logit lens, final norm + unembedding; for the future lens, patches it into the last
position of layer l's learned soft prompt (`<checkpoints>/<model>/layer_XX.safetensors`, tensor `soft_prompt`,
honouring `FUTURE_LENS_CHECKPOINTS`) and decodes N tokens greedily; for a fixed prompt, the same with the prompt's
token embeddings. No KV cache and no project code, so it reads as the method itself. Every value taken from the
grid (text, prompt, token texts) enters the script as a Python literal (`repr`), never as code.
"""

from __future__ import annotations

from dataclasses import dataclass

from future_lens.export.errors import FieldError
from future_lens.lens.grid import Grid
from future_lens.lens.models import CATALOG, LoadedModel
from future_lens.lens.prompts import PROMPT_TENSOR, layer_file


class SnippetError(FieldError):
    """No snippet for this cell: a layer or position outside the grid, or a method without one."""


@dataclass(frozen=True)
class ModelRecipe:
    """How a script finds and walks the served model: its folder (a Python expression) and module paths."""

    model_dir: str  # a Python expression
    model_note: str
    blocks: str  # dotted path from the causal-LM object
    final_norm: str
    unembed: str
    context_prefix: tuple[int, ...]
    prefix_text: str


def model_recipe(model: LoadedModel) -> ModelRecipe:
    """Where a user's script loads `model` from (never a path of this server) and where its parts are."""
    entry = CATALOG.get(model.id)
    if entry is not None and entry.source == "gguf-package":
        folder = 'Path(os.environ.get("FUTURE_LENS_CACHE", Path.home() / ".cache/future-lens")) / "models" / ' + repr(
            model.id
        )
        note = "made once by `future-lens prepare`"
    elif entry is not None:
        folder, note = repr(entry.hf_repo), "from the local Hugging Face cache (HF_HUB_OFFLINE=1)"
    else:
        folder, note = repr(f"/path/to/{model.id}"), "the folder of this model's safetensors weights"
    spec = model.adapter.spec
    prefix = tuple(model.context_prefix)
    prefix_text = ", ".join(model.tokenizer.convert_ids_to_tokens(list(prefix))) if prefix else "nothing"
    return ModelRecipe(folder, note, spec.blocks, spec.final_norm, spec.unembed, prefix, prefix_text)


HEADER = """\
# {title}
# Recomputes one Future Lens cell with plain transformers + nnsight: {where}.
# The grid shows {expected}.
import os
from pathlib import Path

import torch
from nnsight import save
from nnsight.modeling.transformers import TransformersModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

# The model's folder: {model_note}.
MODEL_DIR = {model_dir}
TEXT = {text}
PREFIX = {prefix}  # {prefix_text}: prepended to every text
LAYER, POSITION = {layer}, {position}

tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
hf = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.{dtype})
model = TransformersModel(hf, tokenizer=tokenizer)
ids = PREFIX + tokenizer(TEXT, add_special_tokens=False).input_ids

# 1. Source: run the text once; h = block LAYER's output (before the final norm) at the token.
with torch.no_grad(), model.trace(torch.tensor([ids])):
    h = save(model.{blocks}[LAYER].output[0, len(PREFIX) + POSITION])
"""

LOGIT = """
# 2. Logit lens: the model's final norm and unembedding applied to h.
with torch.no_grad():
    probs = torch.softmax(hf.{unembed}(hf.{final_norm}(h)).float(), dim=-1)
predicted, chosen = [int(probs.argmax())], [float(probs.max())]
"""

SOFT_PROMPT = """
# 2. Target context: layer {prompt_layer}'s learned soft prompt ({prompt_note}), fed as input embeddings.
# FUTURE_LENS_CHECKPOINTS: the folder of per-model prompt folders (pip's future_lens/checkpoints, or your own).
CHECKPOINTS = Path(os.environ.get("FUTURE_LENS_CHECKPOINTS", "checkpoints"))
PROMPT_FILE = CHECKPOINTS / {model_id} / {prompt_file}
context = load_file(PROMPT_FILE)[{tensor}].to(hf.dtype)
"""

FIXED_PROMPT = """
# 2. Target context: the fixed prompt's tokens (after the prefix), fed as input embeddings.
PROMPT = {prompt}
with torch.no_grad():
    context = hf.get_input_embeddings()(torch.tensor(PREFIX + tokenizer(PROMPT, add_special_tokens=False).input_ids))
"""

DECODE = """
# 3. Patch h into block LAYER's output at the context's last position, decode N tokens greedily (no cache: each
#    step reruns the context plus the tokens chosen so far, patched again).
N = {n_future}
predicted, chosen = [], []
for _ in range(N):
    with torch.no_grad():
        embeds = torch.cat([context, hf.get_input_embeddings()(torch.tensor(predicted, dtype=torch.long))])
        with model.trace(inputs_embeds=embeds[None]):
            model.{blocks}[LAYER].output[0, len(context) - 1] = h
            logits = save(model.output.logits[0, -1])
    probs = torch.softmax(logits.float(), dim=-1)
    predicted.append(int(probs.argmax()))
    chosen.append(float(probs.max()))
"""

FOOTER = """
print("predicted ids:", predicted)
print("predicted text:", [tokenizer.decode([i]) for i in predicted])
print("probabilities:", [round(p, 4) for p in chosen])
"""


def _check_cell(grid: Grid, layer: int, position: int) -> int:
    if layer not in grid.layers:
        raise SnippetError("layer", f"layer {layer} is not a row of this grid (rows: {grid.layers})")
    if not 0 <= position < len(grid.tokens):
        raise SnippetError("position", f"position {position} is outside the text (0 to {len(grid.tokens) - 1})")
    if grid.method not in ("logit", "future") and grid.prompt is None:
        raise SnippetError("method", f"no snippet for the {grid.method!r} lens (logit, future and fixed have one)")
    return grid.layers.index(layer)


def cell_snippet(grid: Grid, text: str, layer: int, position: int, recipe: ModelRecipe) -> str:
    """A runnable script that prints the ids, texts and probabilities of cell (`layer`, `position`) of `grid`,
    computed from `text` (the grid's input text) on the model `recipe` describes."""
    row = _check_cell(grid, layer, position)
    cell = grid.cells[row][position]
    method = {"logit": "Logit lens", "future": "Future lens"}.get(grid.method, "Fixed prompt")
    fields = {
        "title": f"{method} · {grid.model.id} · layer {layer} · position {position} {grid.tokens[position].text!r}",
        "where": f"block {layer}, token {position}",
        "expected": f"ids {[t.id for t in cell.tokens]}, text {[t.text for t in cell.tokens]}",
        "model_dir": recipe.model_dir,
        "model_note": recipe.model_note,
        "text": repr(text),
        "prefix": list(recipe.context_prefix),
        "prefix_text": recipe.prefix_text,
        "layer": layer,
        "position": position,
        "dtype": grid.model.dtype,
        "blocks": recipe.blocks,
        "unembed": recipe.unembed,
        "final_norm": recipe.final_norm,
        "n_future": grid.n_future,
    }
    parts = [HEADER]
    if grid.method == "logit":
        parts.append(LOGIT)
    else:
        if grid.prompt is not None:
            parts.append(FIXED_PROMPT)
            fields["prompt"] = repr(grid.prompt)
        else:
            prompt_layer = grid.prompt_layers[row] if grid.prompt_layers else layer
            note = "this layer's own" if prompt_layer == layer else f"borrowed: layer {layer} has none of its own"
            fields |= {
                "prompt_layer": prompt_layer,
                "prompt_note": note,
                "model_id": repr(grid.model.id),
                "prompt_file": repr(layer_file(prompt_layer)),
                "tensor": repr(PROMPT_TENSOR),
            }
            parts.append(SOFT_PROMPT)
        parts.append(DECODE)
    parts.append(FOOTER)
    return "".join(part.format(**fields) for part in parts)
