"""Training/eval data: cut corpus documents into prefixes and record what the model itself does after each one.

A prefix is a window of a document, of a length drawn uniformly from 1..`max_context` (the grid's longest text),
preceded by the context prefix: so examples sit at every position a grid column can have, the early ones included.
For every example we keep the context tokens, every block's output at the last context token (the source states),
the model's greedy continuation of `TEACHER_LEN` tokens (the teacher) and the final block's output at each of the
future positions (so the original next-token distributions are recomputed exactly with `logits_from_hidden`).
The result is cached as one safetensors file (tensors + JSON metadata; no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from future_lens.atomic import atomic_path
from future_lens.defaults import DEFAULT_LIMITS
from future_lens.lens.engine import greedy_continuation
from future_lens.lens.interventions import capture_block_outputs
from future_lens.lens.kv_cache import cached_forward, new_cache
from future_lens.lens.models import LoadedModel
from future_lens.paths import user_cache_dir

TEACHER_LEN = 4
DATA_SCHEMA = "future-lens.data/1"


@dataclass(frozen=True)
class DataConfig:
    """How examples are cut from the corpus; recorded in the cache so a mismatch rebuilds it."""

    corpus: str
    seed: int = 0
    dev_fraction: float = 0.2
    cuts_per_doc: int = 32
    min_context: int = 1
    max_context: int = DEFAULT_LIMITS.max_text_tokens  # the grid's longest text
    max_train: int = 12_000
    max_dev: int = 960

    def key(self, model: LoadedModel) -> str:
        raw = json.dumps({**self.__dict__, "model": model.fingerprint, "prefix": model.context_prefix}, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:12]


@dataclass
class Examples:
    """One split. contexts [n, max_context] padded with -1 (lengths [n]); states [n, L, d]; teacher [n, 4];
    future_final [n, 4, d] = last block's output at the positions predicting teacher[:, k]."""

    contexts: torch.Tensor
    lengths: torch.Tensor
    states: torch.Tensor
    teacher: torch.Tensor
    future_final: torch.Tensor

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, index: torch.Tensor | slice) -> Examples:
        return Examples(*(getattr(self, f)[index] for f in Examples.__dataclass_fields__))

    def last_tokens(self) -> torch.Tensor:
        """The last context token of each example."""
        return self.contexts[torch.arange(len(self)), self.lengths - 1]


@dataclass
class Dataset:
    train: Examples
    dev: Examples
    meta: dict


def data_cache_root() -> Path:
    """Where datasets and training runs are cached (the user's cache; override with FUTURE_LENS_DATA_CACHE)."""
    configured = os.environ.get("FUTURE_LENS_DATA_CACHE")
    return Path(configured) if configured else user_cache_dir() / "data"


def read_corpus(path: Path) -> list[str]:
    """Documents from a JSONL file (`text` field), a .txt file (one document), or a folder of .txt files."""
    if path.is_dir():
        return [p.read_text(errors="replace") for p in sorted(path.glob("*.txt"))]
    if path.suffix == ".jsonl":
        with path.open() as lines:
            return [json.loads(line)["text"] for line in lines if line.strip()]
    return [path.read_text(errors="replace")]


def split_documents(n_docs: int, dev_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of document indices into train/dev (at least one dev document when there are two)."""
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    n_dev = max(1 if n_docs > 1 else 0, round(n_docs * dev_fraction))
    return sorted(order[n_dev:]), sorted(order[:n_dev])


def cut_prefixes(token_lists: list[list[int]], config: DataConfig, seed: int, limit: int) -> list[list[int]]:
    """Up to `cuts_per_doc` random windows per document, shuffled; each length uniform in min..max_context."""
    return [prefix for _, prefix in cut_documents(token_lists, config, seed, limit)]


def cut_documents(
    token_lists: list[list[int]], config: DataConfig, seed: int, limit: int
) -> list[tuple[int, list[int]]]:
    """`cut_prefixes` with each window's document (its index in `token_lists`), in the same order."""
    rng = random.Random(seed)
    cuts = []
    for doc, tokens in enumerate(token_lists):
        lengths = [n for n in range(config.min_context, config.max_context + 1) if n <= len(tokens)]
        if not lengths:
            continue
        for _ in range(config.cuts_per_doc):
            length = rng.choice(lengths)
            start = rng.randint(0, len(tokens) - length)
            cuts.append((doc, tokens[start : start + length]))
    rng.shuffle(cuts)
    return cuts[:limit]


#: The dev documents are split in two: "selection" for every choice made while fitting (schedule, budget, stopping,
#: the best layer) and "report" for the published figures alone.
DEV_PARTS = ("selection", "report")


def dev_parts(dev_docs: list[int], seed: int) -> dict[str, list[int]]:
    """The dev documents' seeded halves, by part name (`DEV_PARTS`)."""
    order = sorted(dev_docs)
    random.Random(seed + 3).shuffle(order)
    half = len(order) // 2
    return {"selection": sorted(order[:half]), "report": sorted(order[half:])}


def dev_example_parts(model: LoadedModel, dataset: Dataset) -> dict[str, torch.Tensor]:
    """Indices of the dev examples cut from each part's documents (recomputed from the corpus: the cut is seeded)."""
    config = DataConfig(**dataset.meta["config"])
    docs = read_corpus(Path(config.corpus))
    dev_docs = dataset.meta["dev_docs"]
    token_lists = [model.tokenizer(docs[i], add_special_tokens=False).input_ids for i in dev_docs]
    cuts = cut_documents(token_lists, config, config.seed + 2, config.max_dev)
    parts = dev_parts(dev_docs, config.seed)
    owner = [dev_docs[doc] for doc, _ in cuts]
    return {
        name: torch.tensor([i for i, doc in enumerate(owner) if doc in set(members)], dtype=torch.long)
        for name, members in parts.items()
    }


def document_tokens(model: LoadedModel, dataset: Dataset, documents: list[int]) -> list[list[int]]:
    """The named corpus documents as token lists."""
    docs = read_corpus(Path(dataset.meta["config"]["corpus"]))
    return [model.tokenizer(docs[i], add_special_tokens=False).input_ids for i in documents]


@torch.inference_mode()
def teacher_batch(model: LoadedModel, contexts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For equal-length contexts [B, T]: source states [B, L, d], greedy teacher [B, 4], final states [B, 4, d]."""
    prefix = torch.tensor(model.context_prefix, dtype=torch.long).expand(len(contexts), -1)
    ids = torch.cat([prefix, contexts], dim=1).to(model.device)
    cache = new_cache(model)
    n_layers = model.adapter.n_layers
    with capture_block_outputs(model.adapter) as captured:  # every block's output, one forward after another
        out = cached_forward(model, cache, input_ids=ids, logits_to_keep=1)
        probs = torch.softmax(out.logits[:, -1].float(), dim=-1)
        teacher, _ = greedy_continuation(model, cache, ids.shape[1], probs, TEACHER_LEN)
    states = torch.stack(captured[:n_layers], dim=1).float()
    finals = torch.stack(captured[n_layers - 1 :: n_layers], dim=1).float()  # last block, at each forward
    return states.cpu(), teacher.cpu(), finals.cpu()


def build_examples(model: LoadedModel, prefixes: list[list[int]], max_context: int, batch: int, desc: str) -> Examples:
    """Run the teacher over prefixes, batching equal lengths together (no padding inside the model)."""
    n = len(prefixes)
    layers, d = model.adapter.n_layers, model.adapter.d_model
    contexts = torch.full((n, max_context), -1, dtype=torch.long)
    lengths = torch.tensor([len(p) for p in prefixes], dtype=torch.long)
    states = torch.zeros(n, layers, d)
    teacher = torch.zeros(n, TEACHER_LEN, dtype=torch.long)
    finals = torch.zeros(n, TEACHER_LEN, d)
    for i, prefix in enumerate(prefixes):
        contexts[i, : len(prefix)] = torch.tensor(prefix)
    by_length: dict[int, list[int]] = {}
    for i, prefix in enumerate(prefixes):
        by_length.setdefault(len(prefix), []).append(i)
    with tqdm(total=n, desc=desc, unit="ex") as bar:
        for length, members in sorted(by_length.items()):
            for start in range(0, len(members), batch):
                rows = torch.tensor(members[start : start + batch])
                states[rows], teacher[rows], finals[rows] = teacher_batch(model, contexts[rows, :length])
                bar.update(len(rows))
    return Examples(contexts, lengths, states, teacher, finals)


def save_dataset(path: Path, dataset: Dataset) -> None:
    """One safetensors file: `<split>.<field>` tensors, metadata JSON under key `meta`."""
    tensors = {
        f"{split}.{name}": getattr(getattr(dataset, split), name).contiguous()
        for split in ("train", "dev")
        for name in Examples.__dataclass_fields__
    }
    with atomic_path(path) as staging:
        save_file(tensors, str(staging), metadata={"meta": json.dumps(dataset.meta)})


def load_dataset(path: Path) -> Dataset:
    with safe_open(str(path), framework="pt") as file:
        meta = json.loads(file.metadata()["meta"])
        splits = {
            split: Examples(*(file.get_tensor(f"{split}.{name}") for name in Examples.__dataclass_fields__))
            for split in ("train", "dev")
        }
    return Dataset(splits["train"], splits["dev"], meta)


def prepare_dataset(
    model: LoadedModel, config: DataConfig, cache_dir: Path | None = None, batch: int = 64
) -> tuple[Dataset, Path]:
    """Load the cached dataset for (model, config), building it first when absent."""
    path = (cache_dir or data_cache_root()) / f"{model.id}-{config.key(model)}.safetensors"
    if path.is_file():
        return load_dataset(path), path
    docs = read_corpus(Path(config.corpus))
    train_docs, dev_docs = split_documents(len(docs), config.dev_fraction, config.seed)
    tokenize = model.tokenizer
    token_lists = {i: tokenize(docs[i], add_special_tokens=False).input_ids for i in train_docs + dev_docs}
    train_prefixes = cut_prefixes([token_lists[i] for i in train_docs], config, config.seed + 1, config.max_train)
    dev_prefixes = cut_prefixes([token_lists[i] for i in dev_docs], config, config.seed + 2, config.max_dev)
    train = build_examples(model, train_prefixes, config.max_context, batch, "teacher (train)")
    dev = build_examples(model, dev_prefixes, config.max_context, batch, "teacher (dev)")
    meta = {
        "schema": DATA_SCHEMA,
        "model_id": model.id,
        "model_fingerprint": model.fingerprint,
        "config": config.__dict__,
        "train_docs": train_docs,
        "dev_docs": dev_docs,
        "teacher_len": TEACHER_LEN,
    }
    dataset = Dataset(train, dev, meta)
    save_dataset(path, dataset)
    return dataset, path


def train_token_stream(model: LoadedModel, dataset: Dataset) -> list[list[int]]:
    """The training split's documents as token lists (for counting bigrams)."""
    return document_tokens(model, dataset, dataset.meta["train_docs"])
