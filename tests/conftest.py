"""Shared fixtures: tiny random models of several families (built from configs, offline) and the embedded model."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from app.lens.models import CATALOG, DEFAULT_MODEL, LoadedModel, load_model, prepare_gguf_cache, wrap_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# CI replays the same examples every run (a failure found locally is kept as a regression test instead).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
TINY_VOCAB = 1000
# Where the tiny models and the embedded model run: "cpu" here and in CI; "cuda" for the GPU check
# (`FUTURE_LENS_TEST_DEVICE=cuda pytest tests/test_engine.py`), so the same equivalence tests cover the CUDA path.
TEST_DEVICE = os.environ.get("FUTURE_LENS_TEST_DEVICE", "cpu")


def word_tokenizer(vocab_size: int = TINY_VOCAB) -> PreTrainedTokenizerFast:
    """An in-memory word-level tokenizer: '<|endoftext|>' is id 0, then w1 ... w{vocab-1} (unknown words: id 1)."""
    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
    )


def words(n: int, seed: int = 0) -> str:
    """A text of n random tiny-vocabulary words."""
    generator = torch.Generator().manual_seed(seed)
    return " ".join(f"w{i}" for i in torch.randint(2, TINY_VOCAB, (n,), generator=generator).tolist())


def _tiny(model_id: str, hf: torch.nn.Module, tokenizer) -> LoadedModel:
    return wrap_model(model_id, hf.to(TEST_DEVICE), tokenizer, None)


@pytest.fixture(scope="session")
def tiny_gptj() -> LoadedModel:
    torch.manual_seed(1)
    config = GPTJConfig(
        n_layer=3,
        n_embd=64,
        n_head=4,
        rotary_dim=16,
        vocab_size=TINY_VOCAB,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.2,
    )
    return _tiny("tiny-gptj", GPTJForCausalLM(config), word_tokenizer())


@pytest.fixture(scope="session")
def tiny_gpt2() -> LoadedModel:
    torch.manual_seed(2)
    config = GPT2Config(
        n_layer=3,
        n_embd=64,
        n_head=4,
        vocab_size=TINY_VOCAB,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.2,
    )
    return _tiny("tiny-gpt2", GPT2LMHeadModel(config), word_tokenizer())


@pytest.fixture(scope="session")
def embedded_dir():
    return prepare_gguf_cache(CATALOG[DEFAULT_MODEL])


@pytest.fixture(scope="session")
def tiny_llama(embedded_dir) -> LoadedModel:
    """A 2-block random Llama with SmolLM2's real tokenizer."""
    torch.manual_seed(3)
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        initializer_range=0.2,
        tie_word_embeddings=True,
    )
    return wrap_model("tiny-llama", LlamaForCausalLM(config).to(TEST_DEVICE), tokenizer, CATALOG[DEFAULT_MODEL])


@pytest.fixture(scope="session")
def smollm2(embedded_dir) -> LoadedModel:
    """The real embedded default model, float32 (on CPU unless FUTURE_LENS_TEST_DEVICE says otherwise)."""
    return load_model(DEFAULT_MODEL, device=TEST_DEVICE, dtype="float32")


@pytest.fixture(params=["tiny_gptj", "tiny_llama", "tiny_gpt2"])
def tiny_model(request) -> LoadedModel:
    return request.getfixturevalue(request.param)
