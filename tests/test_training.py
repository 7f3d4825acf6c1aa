"""Training pipeline: data prep, the KL objective, training, resumability, artifacts, baselines, eval and CLI."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from future_lens.defaults import DEFAULT_LIMITS
from future_lens.lens.models import LoadedModel
from future_lens.lens.prompts import load_soft_prompts, read_manifest
from future_lens.server.cli import cli
from future_lens.training import train as train_module
from future_lens.training.baselines import bigram_table, ridge
from future_lens.training.data import DataConfig, Dataset, Examples, prepare_dataset, split_documents
from future_lens.training.objective import kl_divergence, original_log_probs, patched_logits
from future_lens.training.plot import figure_data, learning_curve_data
from future_lens.training.train import TrainConfig, group_loss, init_prompts, train_prompts
from tests.conftest import words


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Datasets and runs go to a temporary folder, never the repository's data-cache/."""
    monkeypatch.setenv("FUTURE_LENS_DATA_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": words(60, seed=i)}) + "\n" for i in range(20)))
    return path


def tiny_dataset(model: LoadedModel, corpus: Path, n_train: int = 48, n_dev: int = 16, **config: int) -> Dataset:
    data = DataConfig(corpus=str(corpus), max_train=n_train, max_dev=n_dev, cuts_per_doc=8, **config)
    return prepare_dataset(model, data)[0]


def test_split_is_by_document_and_seeded():
    train, dev = split_documents(50, 0.2, seed=3)
    assert not set(train) & set(dev) and len(train) + len(dev) == 50 and len(dev) == 10
    assert (train, dev) == split_documents(50, 0.2, seed=3) != split_documents(50, 0.2, seed=4)


def test_dataset_matches_the_model_and_is_cached(tiny_gptj, corpus):
    dataset = tiny_dataset(tiny_gptj, corpus)
    train = dataset.train
    assert len(train) == 48 and len(dataset.dev) == 16
    assert ((train.lengths >= 1) & (train.lengths <= 64)).all()  # every grid position, the early ones too
    assert train.lengths.min() <= 8 and train.lengths.max() > 32
    # teacher = the model's own greedy continuation; states = block outputs at the last context token
    row = 5
    ids = [*tiny_gptj.context_prefix, *train.contexts[row, : train.lengths[row]].tolist()]
    generated = tiny_gptj.hf.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated[0, len(ids) :].tolist() == train.teacher[row].tolist()
    with torch.no_grad():
        out = tiny_gptj.hf(torch.tensor([ids]), output_hidden_states=True)
    torch.testing.assert_close(train.states[row, 0], out.hidden_states[1][0, -1], atol=1e-4, rtol=1e-4)
    again = tiny_dataset(tiny_gptj, corpus)
    assert torch.equal(again.train.states, train.states) and again.meta == dataset.meta


def test_kl_is_zero_when_patched_equals_original(tiny_llama, corpus):
    """Patching a state into its own context reproduces the original distributions at every future offset."""
    dataset = tiny_dataset(tiny_llama, corpus, n_train=8, n_dev=4)
    examples = dataset.train.subset(slice(0, 4))
    for row in range(len(examples)):
        ids = torch.tensor([*tiny_llama.context_prefix, *examples.contexts[row, : examples.lengths[row]].tolist()])
        context = tiny_llama.adapter.embed_tokens(ids)[None].detach()
        layer = row % tiny_llama.adapter.n_layers
        with torch.no_grad():
            logits = patched_logits(
                tiny_llama,
                context,
                torch.zeros(1, dtype=torch.long),
                torch.tensor([layer]),
                examples.states[row : row + 1, layer],
                examples.teacher[row : row + 1, :3],
                keep=4,
            )
        log_q = torch.log_softmax(logits.float(), -1)[0]
        log_p = original_log_probs(tiny_llama, examples.future_final[row])
        assert kl_divergence(log_p, log_q).max() < 1e-4
    other = torch.log_softmax(torch.randn(4, 50), -1)
    assert kl_divergence(other, other).abs().max() < 1e-6
    assert (kl_divergence(other, other.roll(1, 0)) > 0).all()


def test_a_trained_prompt_beats_a_random_one(tiny_gptj, corpus, tmp_path):
    dataset = tiny_dataset(tiny_gptj, corpus, n_train=96, n_dev=16)
    config = TrainConfig(layers=[1], examples=96, lr=2e-2, init="normal", curve_points=[0], curve_dev=16)
    state = train_prompts(tiny_gptj, dataset, config, tmp_path / "run", None, progress=False)
    random_prompt = init_prompts(tiny_gptj, 1, 10, "normal", seed=0)
    layers = torch.tensor([1])
    with torch.no_grad():
        trained = group_loss(tiny_gptj, state.prompts, layers, dataset.dev, (1,)).item()
        baseline = group_loss(tiny_gptj, random_prompt, layers, dataset.dev, (1,)).item()
    assert trained < 0.9 * baseline  # the random prompt is where training started: held-out KL fell >10 %
    assert [p["examples"] for p in state.curve] == [0, 96]


def test_artifacts_round_trip_with_contract_metadata(tiny_gptj, corpus, tmp_path):
    dataset = tiny_dataset(tiny_gptj, corpus, n_train=16, n_dev=8)
    config = TrainConfig(layers=[0, 2], examples=16, targets=(0, 1, 2, 3), curve_points=[], curve_dev=8)
    state = train_prompts(tiny_gptj, dataset, config, tmp_path / "run", tmp_path / "prompts", progress=False)
    loaded = load_soft_prompts(tmp_path / "prompts", tiny_gptj)
    assert sorted(loaded.prompts) == [0, 2]
    torch.testing.assert_close(loaded.prompts[2], state.prompts[1].float())
    meta = loaded.metadata[0]
    assert meta["trained_on_n"] == "0,1,2,3" and meta["examples"] == "16" and meta["steps"] == "2"
    assert meta["model_fingerprint"] == tiny_gptj.fingerprint and float(meta["final_loss"]) > 0
    assert "kl" in meta["objective"]
    metrics = read_manifest(tmp_path / "prompts")["layers"]["2"]["metrics"]
    assert 0 <= metrics["N1_p1"] <= 1 and metrics["dev_examples"] == 8


def test_training_resumes_where_it_stopped(tiny_gptj, corpus, tmp_path, monkeypatch):
    dataset = tiny_dataset(tiny_gptj, corpus, n_train=32, n_dev=8)
    config = TrainConfig(layers=[1, 2], examples=32, lr=1e-2, checkpoint_every=1, curve_points=[], curve_dev=8)
    straight = train_prompts(tiny_gptj, dataset, config, tmp_path / "a", None, progress=False)

    real_save = train_module.save_run

    def crash_after_two(run_dir, state, cfg):
        real_save(run_dir, state, cfg)
        if state.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_run", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        train_prompts(tiny_gptj, dataset, config, tmp_path / "b", None, progress=False)
    monkeypatch.setattr(train_module, "save_run", real_save)
    assert json.loads((tmp_path / "b" / "progress.json").read_text())["step"] == 2
    resumed = train_prompts(tiny_gptj, dataset, config, tmp_path / "b", None, progress=False)
    assert resumed.step == straight.step == 4
    torch.testing.assert_close(resumed.prompts, straight.prompts, atol=1e-6, rtol=1e-5)
    assert resumed.losses == straight.losses


def test_bigram_table_counts_successors():
    table, seen = bigram_table([[5, 7, 5, 7, 5, 9], [7, 9, 7, 9, 7, 9]], vocab_size=12)
    assert table[5, :2].tolist() == [7, 9]
    assert table[7, 0].item() == 9 and seen[7].item() == 5


def test_ridge_recovers_a_linear_map():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=generator)
    weight, bias = torch.randn(6, 3, generator=generator), torch.randn(3, generator=generator)
    fitted_w, fitted_b = ridge(x, x @ weight + bias, alpha=1e-8)
    torch.testing.assert_close(fitted_w, weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted_b, bias, atol=1e-4, rtol=1e-4)


def test_figure_data_is_normalised_to_depth():
    report = {
        "model_id": "m",
        "n_layers": 4,
        "methods": {
            "learned_prompt": {"layers": {str(i): {f"N{n}": {"p1": 0.1 * i} for n in range(4)} for i in range(4)}}
        },
    }
    paper = {"precision_at_1_prompt_trained_on_N1": {"learned_prompt": {"N1": [0.3, None, 0.5]}}}
    data = figure_data(report, paper)
    assert list(data["panels"]) == ["N0", "N1", "N2", "N3"]
    ours, reference = data["panels"]["N1"]
    assert ours["x"] == [0.25, 0.5, 0.75, 1.0] and not ours["dashed"]
    assert reference["dashed"] and reference["x"] == [round(1 / 3, 4), 1.0] and reference["y"] == [0.3, 0.5]
    curve = learning_curve_data([{"examples": 8, "layers": report["methods"]["learned_prompt"]["layers"]}])
    assert curve["series"][1]["y"] == [pytest.approx(0.3)]


def test_cli_train_and_eval_end_to_end(tiny_gptj, corpus, tmp_path):
    model_dir = tmp_path / "tiny-gptj"
    tiny_gptj.hf.save_pretrained(model_dir)
    tiny_gptj.tokenizer.save_pretrained(model_dir)
    prompts, reports = tmp_path / "prompts", tmp_path / "reports"
    common = ["--model", str(model_dir), "--corpus", str(corpus), "--limit", "16", "--report-dir", str(reports)]
    runner = CliRunner()
    result = runner.invoke(cli, ["train", *common, "--layers", "all", "--prompt-dir", str(prompts)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in prompts.glob("layer_*.safetensors")) == [
        f"layer_{i:02d}.safetensors" for i in range(3)
    ]
    assert (reports / "learning_curve.png").is_file()
    baselines = "fixed_prompt,logit_lens,bigram,linear_model,linear_vocab"
    result = runner.invoke(cli, ["eval", *common, "--methods", baselines, "--probe-epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "learned_prompt" not in json.loads((reports / "eval.json").read_text())["methods"]
    result = runner.invoke(cli, ["eval", *common, "--prompt-dir", str(prompts), "--methods", "learned_prompt"])
    assert result.exit_code == 0, result.output
    report = json.loads((reports / "eval.json").read_text())
    assert set(report["methods"]) == {
        "learned_prompt",
        "fixed_prompt",
        "logit_lens",
        "bigram",
        "linear_model",
        "linear_vocab",
    }
    assert report["dev_part"] == "report" and "N1" in report["headline"]["margins"]
    # the dev split's two parts: the selection part's examples choose each best layer, the others are reported
    assert report["dev_examples"] + report["selection_examples"] == 16 and report["selection_examples"] > 0
    assert set(report["methods"]["fixed_prompt"]["selection_layers"]) == set(
        report["methods"]["fixed_prompt"]["layers"]
    )
    assert (reports / "eval.png").is_file() and (reports / "eval.svg").is_file()
    assert "learned prompt" in (reports / "eval.md").read_text()
    assert read_manifest(prompts)["layers"]["1"]["metrics"]["dev_examples"] == report["dev_examples"]
    bad = runner.invoke(cli, ["train", *common, "--targets", "7"])
    assert bad.exit_code == 2 and "--targets" in bad.output


def test_layer_rows_pair_each_layer_with_its_states(tiny_gptj, corpus):
    dataset = tiny_dataset(tiny_gptj, corpus, n_train=8, n_dev=4)
    batch: Examples = dataset.train.subset(slice(0, 3))
    rows = train_module.layer_rows(torch.tensor([2, 0]), batch, (1, 1))
    assert rows["layers"].tolist() == [2, 2, 2, 0, 0, 0]
    torch.testing.assert_close(rows["states"][4], batch.states[1, 0])
    assert rows["teacher"].shape == (6, 1)
    assert asdict(DataConfig(corpus="x"))["max_context"] == DEFAULT_LIMITS.max_text_tokens == 64


def test_a_run_can_be_extended_with_more_examples(tiny_gptj, corpus, tmp_path):
    """Rerunning with a larger --examples continues the checkpoint instead of starting over."""
    dataset = tiny_dataset(tiny_gptj, corpus, n_train=32, n_dev=8)
    short = TrainConfig(layers=[2], examples=16, lr=1e-2, curve_points=[], curve_dev=8)
    long = TrainConfig(layers=[2], examples=32, lr=1e-2, curve_points=[], curve_dev=8)
    train_prompts(tiny_gptj, dataset, short, tmp_path / "run", None, progress=False)
    extended = train_prompts(tiny_gptj, dataset, long, tmp_path / "run", None, progress=False)
    straight = train_prompts(tiny_gptj, dataset, long, tmp_path / "other", None, progress=False)
    assert extended.step == 4 and [p["examples"] for p in extended.curve] == [16, 32]
    torch.testing.assert_close(extended.prompts, straight.prompts, atol=1e-6, rtol=1e-5)


def test_example_order_repeats_the_pool_in_fresh_shuffles():
    """A budget beyond the pool takes whole epochs (each a permutation), and its first epoch is the one-epoch order."""
    order = train_module.example_order(available=10, count=25, seed=3)
    assert len(order) == 25
    for epoch in (order[:10], order[10:20]):
        assert sorted(epoch.tolist()) == list(range(10))
    assert order[20:].unique().numel() == 5
    assert not torch.equal(order[:10], order[10:20])
    torch.testing.assert_close(order[:10], train_module.example_order(available=10, count=10, seed=3))


def test_a_budget_beyond_the_pool_trains_more_steps(tiny_gptj, corpus, tmp_path):
    """--examples larger than the training pool is honoured (several epochs), not silently capped at the pool."""
    dataset = tiny_dataset(tiny_gptj, corpus, n_train=16, n_dev=8)
    config = TrainConfig(layers=[1], examples=40, batch=8, lr=1e-2, curve_points=[], curve_dev=8)
    state = train_prompts(tiny_gptj, dataset, config, tmp_path / "run", None, progress=False)
    assert len(dataset.train) < 40 and state.step == 5 and state.curve[-1]["examples"] == 40


def test_prompts_train_in_float32_on_a_bf16_model(tiny_gptj, corpus, tmp_path):
    """AdamW's steps of ~lr (1e-5 here) survive: in a bf16 prompt (~0.4 % resolution) they would round away."""
    import copy

    from future_lens.lens.models import wrap_model

    bf16 = wrap_model("tiny-gptj-bf16", copy.deepcopy(tiny_gptj.hf).to(torch.bfloat16), tiny_gptj.tokenizer)
    dataset = tiny_dataset(bf16, corpus, n_train=8, n_dev=4)
    config = TrainConfig(layers=[1], examples=8, lr=1e-5, init="normal", curve_points=[], curve_dev=4)
    start = init_prompts(bf16, 1, config.prompt_len, "normal", config.seed)
    state = train_prompts(bf16, dataset, config, tmp_path / "run", None, progress=False)
    assert state.prompts.dtype == torch.float32
    moved = (state.prompts - start).abs()
    assert moved.max() > 0 and (moved > 0).float().mean() > 0.5


def test_prompt_summary_says_which_layers_had_which_budget():
    """Layers trained with different budgets are reported as such, not as the first layer's budget."""
    from future_lens.lens.prompts import SoftPromptSet
    from future_lens.server.web.reports import prompt_training
    from future_lens.training.evaluate import prompt_summary

    metadata = {layer: {"examples": "10000" if 1 <= layer <= 2 else "4160", "lr": "0.002"} for layer in range(4)}
    prompts = SoftPromptSet(None, dict.fromkeys(range(4), torch.zeros(2, 3)), metadata)
    summary = prompt_summary(prompts)
    assert summary["examples"] == {"4160": [0, 3], "10000": [1, 2]} and summary["lr"] == "0.002"
    line = prompt_training(summary)
    assert "4160 (layers 0, 3), 10000 (layers 1–2) examples per layer" in line and "learning rate 0.002" in line


def test_linear_schedule_decays_to_zero_and_steps_with_it(tiny_gptj, corpus, tmp_path, monkeypatch):
    """lr_at: constant is the base rate; linear falls from it by 1/steps each step; the optimizer uses that rate."""
    config = TrainConfig(layers=[1], examples=32, batch=8, lr=1e-2, lr_schedule="linear")
    assert [config.lr_at(step) for step in range(4)] == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])
    assert TrainConfig(layers=[1], lr=3e-4).lr_at(999) == 3e-4
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(layers=[1], lr_schedule="cosine").lr_at(0)
    seen: list[float] = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    dataset = tiny_dataset(tiny_gptj, corpus, n_train=32, n_dev=8)
    config = TrainConfig(layers=[1], examples=32, lr=1e-2, lr_schedule="linear", curve_points=[], curve_dev=8)
    train_prompts(tiny_gptj, dataset, config, tmp_path / "run", None, progress=False)
    assert seen == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])


def test_the_learning_curve_reads_only_the_examples_it_is_given(tiny_gptj, corpus, tmp_path, monkeypatch):
    """With curve_examples (the dev selection part's indices) the curve scores those examples and no others."""
    dataset = tiny_dataset(tiny_gptj, corpus, n_train=16, n_dev=12)
    scored: list[torch.Tensor] = []
    real_point = train_module.curve_point

    def recording_point(model, prompts, layers, dev, logp, seen):
        scored.append(dev.states.clone())
        return real_point(model, prompts, layers, dev, logp, seen)

    monkeypatch.setattr(train_module, "curve_point", recording_point)
    chosen = torch.tensor([1, 4, 7, 10])
    config = TrainConfig(layers=[1], examples=8, curve_points=[0], curve_dev=3)
    train_prompts(tiny_gptj, dataset, config, tmp_path / "run", None, progress=False, curve_examples=chosen)
    assert len(scored) == 2  # the 0 point and the final one
    torch.testing.assert_close(scored[0], dataset.dev.states[chosen[:3]])


def test_cli_trains_longer_prompts_with_a_linear_schedule(tiny_gptj, corpus, tmp_path):
    """--prompt-len and --lr-schedule reach the artifacts (their length and metadata); bad values exit 2."""
    model_dir = tmp_path / "tiny-gptj"
    tiny_gptj.hf.save_pretrained(model_dir)
    tiny_gptj.tokenizer.save_pretrained(model_dir)
    prompts = tmp_path / "prompts"
    common = ["--model", str(model_dir), "--corpus", str(corpus), "--limit", "16", "--layers", "1"]
    common += ["--report-dir", str(tmp_path / "reports"), "--prompt-dir", str(prompts)]
    runner = CliRunner()
    result = runner.invoke(cli, ["train", *common, "--prompt-len", "14", "--lr-schedule", "linear"])
    assert result.exit_code == 0, result.output
    loaded = load_soft_prompts(prompts, tiny_gptj)
    assert loaded.prompts[1].shape[0] == 14 and loaded.metadata[1]["lr_schedule"] == "linear"
    bad = runner.invoke(cli, ["train", *common, "--lr-schedule", "cosine"])
    assert bad.exit_code == 2 and "--lr-schedule" in bad.output
    bad = runner.invoke(cli, ["train", *common, "--prompt-len", "0"])
    assert bad.exit_code == 2 and "--prompt-len" in bad.output
