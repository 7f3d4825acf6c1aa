"""Adapters, source pass, logit lens, fingerprints, layer specs, grid schema and prompt artifacts."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, OPTConfig, OPTForCausalLM

from future_lens.lens.architectures import ModelAdapter, UnsupportedArchitectureError, block_output_tensor
from future_lens.lens.grid import SCHEMA, Grid
from future_lens.lens.layers import LayerSpecError, parse_layers, strided_layers
from future_lens.lens.lenses import LogitLens
from future_lens.lens.models import CATALOG, DEFAULT_MODEL, LoadedModel, ModelNotAvailableError, load_model, wrap_model
from future_lens.lens.prompts import PromptArtifactError, import_paper_prompt, load_soft_prompts, save_soft_prompt
from future_lens.lens.source import EmptyTextError, run_source_pass, tokenize
from tests.conftest import TINY_VOCAB, word_tokenizer, words


def test_adapter_finds_the_modules(tiny_model: LoadedModel) -> None:
    adapter, hf = tiny_model.adapter, tiny_model.hf
    assert adapter.blocks is hf.base_model.get_submodule(adapter.spec.blocks.split(".", 1)[1])
    assert adapter.n_layers == hf.config.num_hidden_layers
    assert adapter.unembed is hf.get_output_embeddings()
    assert adapter.embed is hf.get_input_embeddings()
    assert "norm" in type(adapter.final_norm).__name__.lower()


@pytest.mark.parametrize(
    "config",
    [
        GPTNeoConfig(num_layers=2, hidden_size=32, num_heads=4, vocab_size=100, attention_types=[[["global"], 2]]),
        GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=100),
    ],
)
def test_adapter_covers_gpt_neo_and_neox(config) -> None:
    hf = {"gpt_neo": GPTNeoForCausalLM, "gpt_neox": GPTNeoXForCausalLM}[config.model_type](config).eval()
    adapter = ModelAdapter(hf)
    captured: list[torch.Tensor] = []
    handle = adapter.blocks[-1].register_forward_hook(lambda _m, _i, out: captured.append(block_output_tensor(out)))
    with torch.no_grad():
        logits = hf(torch.randint(0, 100, (1, 5))).logits
        handle.remove()
        torch.testing.assert_close(adapter.logits_from_hidden(captured[0]), logits)


def test_unsupported_architecture_is_refused() -> None:
    hf = OPTForCausalLM(
        OPTConfig(
            num_hidden_layers=1,
            hidden_size=16,
            ffn_dim=32,
            num_attention_heads=2,
            vocab_size=50,
            word_embed_proj_dim=16,
        )
    )
    with pytest.raises(UnsupportedArchitectureError, match="opt"):
        ModelAdapter(hf)


def test_source_pass_returns_block_outputs_without_the_prefix(tiny_model: LoadedModel) -> None:
    ids = tokenize(tiny_model, words(5) if tiny_model.id != "tiny-llama" else "A short sentence here")
    source = run_source_pass(tiny_model, ids)
    n_layers, d_model = tiny_model.adapter.n_layers, tiny_model.adapter.d_model
    assert source.hidden.shape == (n_layers, len(ids), d_model)
    assert source.context_prefix == [0] and source.token_ids == ids
    full = torch.tensor([source.context_prefix + ids])
    with torch.no_grad():
        reference = tiny_model.hf(full, output_hidden_states=True)
    for layer in range(n_layers - 1):  # HF's last hidden state has the final norm applied; the others are raw
        torch.testing.assert_close(source.hidden[layer], reference.hidden_states[layer + 1][0, 1:])
    assert torch.equal(source.next_token_ids, reference.logits[0, 1:].argmax(-1))


def test_empty_text_is_refused(tiny_gpt2: LoadedModel) -> None:
    with pytest.raises(EmptyTextError):
        run_source_pass(tiny_gpt2, [])


def test_logit_lens_last_layer_equals_model_logits(tiny_model: LoadedModel) -> None:
    text = words(6) if tiny_model.id != "tiny-llama" else "The cat sat on the mat"
    ids = tokenize(tiny_model, text)
    n_layers = tiny_model.adapter.n_layers
    grid = LogitLens(tiny_model).grid(text, layers=list(range(n_layers)), n_future=4, top_k=5)
    assert grid.n_future == 1  # the logit lens reads the next token only
    with torch.no_grad():
        probs = torch.softmax(tiny_model.hf(torch.tensor([[0, *ids]])).logits[0, 1:], -1)
    top_probs, top_ids = probs.topk(5, dim=-1)
    for t, cell in enumerate(grid.cells[-1]):
        assert [tok.id for tok in cell.topk] == top_ids[t].tolist()
        torch.testing.assert_close(torch.tensor([tok.prob for tok in cell.topk]), top_probs[t], atol=1e-5, rtol=0)
        assert cell.tokens[0].id == grid.next_tokens[t].id


def test_fingerprint_identifies_the_weights(tiny_gptj: LoadedModel) -> None:
    import copy

    same = wrap_model("same", copy.deepcopy(tiny_gptj.hf), tiny_gptj.tokenizer)
    assert same.fingerprint == tiny_gptj.fingerprint
    for parameter in ("lm_head.weight", "transformer.h.1.mlp.fc_in.weight", "transformer.ln_f.bias"):
        changed = copy.deepcopy(tiny_gptj.hf)  # every parameter counts, not only the (un)embedding
        with torch.no_grad():
            changed.get_parameter(parameter).view(-1)[0] += 1.0
        assert wrap_model("changed", changed, tiny_gptj.tokenizer).fingerprint != tiny_gptj.fingerprint, parameter
    other_tokenizer = word_tokenizer(vocab_size=999)  # same weights, another tokenizer
    assert wrap_model("retokenized", tiny_gptj.hf, other_tokenizer).fingerprint != tiny_gptj.fingerprint


def test_loading_remembers_the_fingerprint_per_weight_files(tmp_path, monkeypatch) -> None:
    """`load_model` hashes a folder's weights once; a changed weight file is hashed again."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from future_lens.lens import models

    monkeypatch.setenv("FUTURE_LENS_CACHE", str(tmp_path / "cache"))
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=TINY_VOCAB)).save_pretrained(tmp_path / "m")
    word_tokenizer().save_pretrained(tmp_path / "m")
    first = load_model(str(tmp_path / "m"))
    calls = []
    monkeypatch.setattr(models, "weights_fingerprint", lambda *args: calls.append(args) or "recomputed")
    assert load_model(str(tmp_path / "m")).fingerprint == first.fingerprint and not calls
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=TINY_VOCAB)).save_pretrained(tmp_path / "m")
    assert load_model(str(tmp_path / "m")).fingerprint == "recomputed" and len(calls) == 1


def test_fingerprint_is_dtype_independent_for_bf16_exact_weights(tiny_gpt2: LoadedModel) -> None:
    import copy

    exact = copy.deepcopy(tiny_gpt2.hf).to(torch.bfloat16).to(torch.float32)  # weights representable in bf16
    fp32 = wrap_model("a", exact, tiny_gpt2.tokenizer)
    bf16 = wrap_model("b", copy.deepcopy(exact).to(torch.bfloat16), tiny_gpt2.tokenizer)
    assert fp32.fingerprint == bf16.fingerprint


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", list(range(30))),
        (None, list(range(30))),
        ("0-3", [0, 1, 2, 3]),
        ("0,5,10", [0, 5, 10]),
        ("::10", [0, 10, 20]),
        ("25:", [25, 26, 27, 28, 29]),
        ("0-1, 28:", [0, 1, 28, 29]),
        ([3, 1, 3], [1, 3]),
    ],
)
def test_layer_specs(spec, expected) -> None:
    assert parse_layers(spec, 30) == expected


@pytest.mark.parametrize("spec", ["", "30", "0-30", "5-2", "a", "::0", "1:2:3:4", [31], [-1]])
def test_bad_layer_specs(spec) -> None:
    with pytest.raises(LayerSpecError):
        parse_layers(spec, 30)


def test_strided_layers_keep_the_last() -> None:
    assert strided_layers(30, 4) == [0, 4, 8, 12, 16, 20, 24, 28, 29]
    assert strided_layers(30, 1) == list(range(30))


def test_grid_json_validates_against_the_schema(tiny_gpt2: LoadedModel) -> None:
    grid = LogitLens(tiny_gpt2).grid(words(3), layers=[0, 2], n_future=1, top_k=2)
    payload = json.loads(grid.model_dump_json())
    assert payload["schema"] == SCHEMA
    required = {"schema", "model", "method", "n_future", "tokens", "layers", "context_prefix", "cells", "timings_ms"}
    assert required <= payload.keys()
    assert set(payload["model"]) == {"id", "n_layers", "d_model", "dtype", "fingerprint", "quantization"}
    assert set(payload["cells"][0][0]) == {"tokens", "mean_prob", "topk", "next_rank", "entropy", "kl"}
    assert Grid.model_validate(payload) == grid
    payload["cells"][0][0]["tokens"] = "oops"
    with pytest.raises(ValueError):
        Grid.model_validate(payload)


def test_prompt_artifacts_round_trip_and_refuse_other_weights(tmp_path, tiny_gptj, tiny_gpt2) -> None:
    prompt = torch.randn(10, 64)
    path = save_soft_prompt(tmp_path, tiny_gptj, 2, prompt, {"trained_on_n": 1, "examples": 5, "seed": 0})
    assert path.name == "layer_02.safetensors"
    loaded = load_soft_prompts(tmp_path, tiny_gptj)
    assert torch.equal(loaded.prompts[2], prompt)
    assert loaded.metadata[2]["model_fingerprint"] == tiny_gptj.fingerprint
    assert loaded.source_layer(0) == 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["layers"]["2"]["file"] == "layer_02.safetensors"
    with pytest.raises(PromptArtifactError, match="fingerprint"):
        load_soft_prompts(tmp_path, tiny_gpt2)


def test_missing_prompts_give_a_clear_error(tmp_path, tiny_gptj) -> None:
    with pytest.raises(PromptArtifactError, match="no trained soft prompts"):
        load_soft_prompts(tmp_path, tiny_gptj)


def test_import_paper_prompt(tmp_path, tiny_gptj) -> None:
    released = tmp_path / "prompt.pt"
    torch.save(torch.nn.Parameter(torch.randn(10, 64)), released)
    path = import_paper_prompt(released, tiny_gptj, 1, tmp_path / "out")
    assert load_soft_prompts(path.parent, tiny_gptj).prompts[1].shape == (10, 64)
    torch.save(torch.randn(10, 32), released)
    with pytest.raises(PromptArtifactError, match=r"\[P, 64\]"):
        import_paper_prompt(released, tiny_gptj, 1, tmp_path / "out")


def test_unprepared_embedded_model_says_to_run_prepare(tmp_path, monkeypatch) -> None:
    """No converted folder, no installed distribution, no cached wheel: loading names `future-lens prepare` and
    downloads nothing (only `prepare` does)."""
    from importlib import metadata

    from future_lens.lens import catalog

    def not_installed(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setenv("FUTURE_LENS_CACHE", str(tmp_path))
    monkeypatch.setattr(catalog.metadata, "distribution", not_installed)
    monkeypatch.setattr(catalog.subprocess, "run", lambda *args, **kwargs: pytest.fail("load_model ran pip"))
    with pytest.raises(ModelNotAvailableError, match=r"run `future-lens prepare --model smollm2-135m-instruct`"):
        load_model(DEFAULT_MODEL, device="cpu")
    assert CATALOG[DEFAULT_MODEL].source == "gguf-package"


def test_unknown_model_is_refused() -> None:
    from future_lens.lens.models import model_directory

    with pytest.raises(ModelNotAvailableError, match="unknown model"):
        model_directory("no-such-model")


def test_local_directory_loads(tmp_path, tiny_gpt2) -> None:
    from future_lens.lens.models import load_model

    tiny_gpt2.hf.save_pretrained(tmp_path / "tiny", safe_serialization=True)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path / "tiny")
    loaded = load_model(str(tmp_path / "tiny"), device="cpu", dtype="float32")
    assert loaded.id == "tiny" and loaded.fingerprint == tiny_gpt2.fingerprint


def test_pickle_only_directory_is_refused(tmp_path, tiny_gpt2) -> None:
    from future_lens.lens.models import load_model

    folder = tmp_path / "pickled"
    tiny_gpt2.hf.config.save_pretrained(folder)
    tiny_gpt2.tokenizer.save_pretrained(folder)
    torch.save(tiny_gpt2.hf.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailableError, match="pickle checkpoints are refused"):
        load_model(str(tmp_path / "pickled"), device="cpu")


@pytest.mark.embedded
def test_embedded_model_logit_lens_matches_greedy(smollm2: LoadedModel) -> None:
    assert (smollm2.adapter.n_layers, smollm2.adapter.d_model) == (30, 576)
    text = "The Eiffel Tower is in the city of"
    grid = LogitLens(smollm2).grid(text, layers=[29], n_future=1, top_k=5)
    ids = tokenize(smollm2, text)
    generated = smollm2.hf.generate(torch.tensor([[0, *ids]]), max_new_tokens=1, do_sample=False)
    assert grid.cells[0][-1].tokens[0].id == generated[0, -1].item()
    assert grid.cells[0][-1].tokens[0].text == " Paris"
    assert [c.tokens[0].id for c in grid.cells[0]] == [t.id for t in grid.next_tokens]
    assert grid.context_prefix == [0] and grid.tokens[0].text == "The"
