"""Shared fixtures: tiny random models of several families (built from configs, offline), the embedded model, and a
throwaway PostgreSQL server."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import settings
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    GemmaConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoConfig,
    GPTNeoXConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from future_lens.lens.models import CATALOG, DEFAULT_MODEL, LoadedModel, load_model, prepare_gguf_cache, wrap_model
from tests.postgres_helpers import PostgresServer, missing_postgres, postgres_bin_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Hypothesis replays the same examples on every run, everywhere, so a test passes or fails the same way each time.
# To hunt for new failures with random examples: `HYPOTHESIS_PROFILE=explore pytest ...` (keep what it finds as an
# explicit regression example).
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))
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


def tiny_llama_config(vocab_size: int, n_layers: int) -> LlamaConfig:
    """A tiny random Llama's config for SmolLM2's tokenizer: hidden 64, 4 query heads sharing 2 key/value heads."""
    return LlamaConfig(
        num_hidden_layers=n_layers,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        initializer_range=0.2,
        tie_word_embeddings=True,
    )


@pytest.fixture(scope="session")
def tiny_llama(embedded_dir) -> LoadedModel:
    """A 2-block random Llama with SmolLM2's real tokenizer."""
    torch.manual_seed(3)
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    hf = LlamaForCausalLM(tiny_llama_config(len(tokenizer), n_layers=2))
    return wrap_model("tiny-llama", hf.to(TEST_DEVICE), tokenizer, CATALOG[DEFAULT_MODEL])


@pytest.fixture(scope="session")
def smollm2(embedded_dir) -> LoadedModel:
    """The real embedded default model, float32 (on CPU unless FUTURE_LENS_TEST_DEVICE says otherwise)."""
    return load_model(DEFAULT_MODEL, device=TEST_DEVICE, dtype="float32")


def _llama_like(config_class: type[PretrainedConfig], **extra: object) -> PretrainedConfig:
    """A 3-block config of a Llama-like family: hidden 64, 4 query heads sharing 2 key/value heads."""
    return config_class(
        num_hidden_layers=3,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=TINY_VOCAB,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        initializer_range=0.2,
        **extra,
    )


# Windows shorter than every context the engine tests use (10 soft-prompt vectors, a 5-word fixed prompt), so
# local attention really drops positions.
SHORT_WINDOW = 4

#: The other advertised families (`future_lens/lens/architectures.py`): config builders for tiny random models.
TINY_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "mistral": lambda: _llama_like(MistralConfig, sliding_window=SHORT_WINDOW),
    "qwen2": lambda: _llama_like(
        Qwen2Config, use_sliding_window=True, sliding_window=SHORT_WINDOW, max_window_layers=1
    ),
    "qwen3": lambda: _llama_like(Qwen3Config, head_dim=16),
    "gemma": lambda: _llama_like(GemmaConfig, head_dim=16),
    "gemma2": lambda: _llama_like(
        Gemma2Config, head_dim=16, sliding_window=SHORT_WINDOW, final_logit_softcapping=5.0, attn_logit_softcapping=5.0
    ),
    "gpt_neo": lambda: GPTNeoConfig(
        num_layers=3,
        attention_types=[[["global", "local"], 1], [["global"], 1]],
        window_size=SHORT_WINDOW,
        hidden_size=64,
        num_heads=4,
        vocab_size=TINY_VOCAB,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.2,
    ),
    "gpt_neox": lambda: GPTNeoXConfig(
        num_hidden_layers=3,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=TINY_VOCAB,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.2,
    ),
}


@pytest.fixture(scope="session")
def tiny_architectures() -> dict[str, LoadedModel]:
    """One tiny random model per family of `TINY_CONFIGS` (word-level vocabulary, fixed seed), keyed by model type."""
    built = {}
    for seed, (model_type, make_config) in enumerate(TINY_CONFIGS.items(), start=10):
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(make_config())
        built[model_type] = _tiny(f"tiny-{model_type}", hf, word_tokenizer())
    return built


def tiny_model_named(request: pytest.FixtureRequest, name: str) -> LoadedModel:
    """The tiny model `name`: a fixture's name or a key of `TINY_CONFIGS`."""
    if name in TINY_CONFIGS:
        return request.getfixturevalue("tiny_architectures")[name]
    return request.getfixturevalue(name)


TINY_MODELS = ["tiny_gptj", "tiny_llama", "tiny_gpt2"]
#: A tiny model of every family in `future_lens.lens.architectures.ARCHITECTURES` (fixture names, `TINY_CONFIGS` keys):
#: `@pytest.mark.parametrize("tiny_model", ALL_ARCHITECTURES, indirect=True)`. Sliding windows (4) are shorter than
#: the lens contexts, so the engine's caches must keep every prefix position (`kv_cache.full_cache`).
ALL_ARCHITECTURES = [*TINY_MODELS, *TINY_CONFIGS]


@pytest.fixture(params=TINY_MODELS)
def tiny_model(request: pytest.FixtureRequest) -> LoadedModel:
    """A tiny GPT-J, Llama or GPT-2 (parametrize it indirectly with `ALL_ARCHITECTURES` for every family)."""
    return tiny_model_named(request, request.param)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (tests/postgres_helpers.py); skipped, or failed in CI, without one."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        missing_postgres()
    server = PostgresServer(bin_dir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new empty database on the session's server, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
