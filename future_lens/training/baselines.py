"""The paper's baselines, each giving teacher-forced top-k predictions [D, n_offsets, K] on the dev split.

- logit lens: final norm + unembedding of h (N=0 only);
- bigram: the most frequent successor of the preceding token (context end for N=0, teacher token N for N>=1),
  counted on the training documents;
- linear model approximation: h -> last block's output at the future position (d -> d, least squares), then the
  frozen final norm + unembedding; fine-tuned with cross-entropy on the greedy token;
- linear vocabulary probe: h -> token (d -> V), least-squares init on one-hot targets, fine-tuned with
  cross-entropy. Probes are trained on the training split only; the fine-tune scores only the vocabulary seen as
  training targets (the rest of the vocabulary cannot be learned from those examples anyway).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from future_lens.lens.models import LoadedModel
from future_lens.training.data import Examples
from future_lens.training.metrics import MAX_N, TOP_K

OFFSETS = list(range(MAX_N + 1))


def bigram_table(token_lists: list[list[int]], vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every token: its K most frequent successors (ids [V, K]) and how often it was seen as a predecessor."""
    pairs = torch.cat([torch.tensor(t, dtype=torch.long).unfold(0, 2, 1) for t in token_lists if len(t) > 1])
    keys, counts = torch.unique(pairs[:, 0] * vocab_size + pairs[:, 1], return_counts=True)
    first, second = keys // vocab_size, keys % vocab_size
    unigram = torch.bincount(pairs[:, 1], minlength=vocab_size)
    fallback = unigram.topk(TOP_K).indices
    table = fallback.repeat(vocab_size, 1)
    # order by (predecessor, -count) so each predecessor's successors come most-frequent first
    order = torch.argsort(first * (counts.max() + 1) - counts, stable=True)
    first, second = first[order], second[order]
    starts = torch.searchsorted(first, torch.arange(vocab_size))
    ends = torch.searchsorted(first, torch.arange(vocab_size), right=True)
    for token in torch.nonzero(ends > starts).squeeze(1).tolist():
        successors = second[starts[token] : min(ends[token], starts[token] + TOP_K)]
        table[token, : len(successors)] = successors
    return table, torch.bincount(pairs[:, 0], minlength=vocab_size)


def bigram_topk(table: torch.Tensor, examples: Examples) -> torch.Tensor:
    """Top-k [D, 4, K]: successors of the token preceding each future position (teacher-forced)."""
    previous = torch.cat([examples.last_tokens()[:, None], examples.teacher[:, :MAX_N]], dim=1)
    return table[previous]


def bigram_chain(table: torch.Tensor, last_tokens: torch.Tensor, steps: int) -> torch.Tensor:
    """Free-running bigram [D, steps]: each token is the most frequent successor of the previous prediction."""
    chain, previous = [], last_tokens
    for _ in range(steps):
        previous = table[previous, 0]
        chain.append(previous)
    return torch.stack(chain, 1)


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Scale features with the training split's mean/std (per dimension)."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def ridge(x: torch.Tensor, y: torch.Tensor, alpha: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares y ≈ x W + b with a small ridge (relative to the features' scale); float64 solve."""
    x64, y64 = x.double(), y.double()
    xm, ym = x64.mean(0), y64.mean(0)
    xc = x64 - xm
    gram = xc.T @ xc
    gram += alpha * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    weight = torch.linalg.solve(gram, xc.T @ (y64 - ym))
    return weight.float(), (ym - xm @ weight).float()


def finetune(
    head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 1e-3, batch: int = 64
) -> None:
    """Cross-entropy fine-tune of `head` (features -> logits over a vocabulary) on (x, y)."""
    if epochs <= 0:
        return
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(batch):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(head(x[index]), y[index]).backward()
            optimizer.step()


class LinearModelHead(torch.nn.Module):
    """h -> W h + b -> frozen final norm + unembedding rows `vocab` (all rows at evaluation)."""

    def __init__(self, model: LoadedModel, weight: torch.Tensor, bias: torch.Tensor, vocab: torch.Tensor):
        super().__init__()
        self.model = model
        self.linear = torch.nn.Linear(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(weight.T)
            self.linear.bias.copy_(bias)
        self.vocab = vocab

    def forward(self, x: torch.Tensor, full: bool = False) -> torch.Tensor:
        hidden = self.model.adapter.final_norm(self.linear(x))
        unembed = self.model.adapter.unembed
        weight = unembed.weight if full else unembed.weight[self.vocab]
        bias = getattr(unembed, "bias", None)
        if bias is not None:
            bias = bias if full else bias[self.vocab]
        return torch.nn.functional.linear(hidden, weight, bias)


def target_vocab(train: Examples) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens seen as training targets (sorted) and a map from token id to its index in that list."""
    vocab = torch.unique(train.teacher)
    lookup = torch.full((int(vocab.max()) + 1,), -1, dtype=torch.long)
    lookup[vocab] = torch.arange(len(vocab))
    return vocab, lookup


def linear_baselines(
    model: LoadedModel,
    train: Examples,
    dev: Examples,
    layers: list[int],
    epochs: int = 2,
    progress: bool = True,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Top-k [D, 4, K] per layer for the linear model approximation and the linear vocabulary probe."""
    vocab, lookup = target_vocab(train)
    model_topk, probe_topk = {}, {}
    for layer in tqdm(layers, desc="linear baselines", disable=not progress):
        x_train, x_dev = standardize(train.states[:, layer].float(), dev.states[:, layer].float())
        model_cols, probe_cols = [], []
        for n in OFFSETS:
            y = lookup[train.teacher[:, n]]
            weight, bias = ridge(x_train, train.future_final[:, n].float())
            head = LinearModelHead(model, weight, bias, vocab)
            finetune(head, x_train, y, epochs)
            probe = torch.nn.Linear(x_train.shape[1], len(vocab))
            weight, bias = ridge(x_train, torch.nn.functional.one_hot(y, len(vocab)).float())
            with torch.no_grad():
                probe.weight.copy_(weight.T)
                probe.bias.copy_(bias)
            finetune(probe, x_train, y, epochs)
            with torch.inference_mode():
                model_cols.append(head(x_dev, full=True).topk(TOP_K, -1).indices)
                probe_cols.append(vocab[probe(x_dev).topk(TOP_K, -1).indices])
        model_topk[layer] = torch.stack(model_cols, 1)
        probe_topk[layer] = torch.stack(probe_cols, 1)
    return model_topk, probe_topk
