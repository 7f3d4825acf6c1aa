"""The dev split's two parts: a selection part for every choice and a report part for the figures alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from future_lens.training.data import DataConfig, dev_example_parts, dev_parts, prepare_dataset, read_corpus
from future_lens.training.evaluate import best_layers, who_wins
from tests.conftest import words


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUTURE_LENS_DATA_CACHE", str(tmp_path / "cache"))


def test_parts_split_the_dev_documents_in_two_disjoint_seeded_halves():
    docs = list(range(3, 40, 2))
    parts = dev_parts(docs, seed=0)
    assert sorted(parts["selection"] + parts["report"]) == docs and not set(parts["selection"]) & set(parts["report"])
    assert abs(len(parts["selection"]) - len(parts["report"])) <= 1
    assert parts == dev_parts(docs, seed=0) != dev_parts(docs, seed=1)


def test_each_dev_example_belongs_to_a_document_of_its_part(tiny_gptj, tmp_path: Path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": words(60, seed=i)}) + "\n" for i in range(30)))
    config = DataConfig(corpus=str(corpus), max_train=32, max_dev=40, cuts_per_doc=8)
    dataset = prepare_dataset(tiny_gptj, config)[0]
    index = dev_example_parts(tiny_gptj, dataset)
    assert sorted(index["selection"].tolist() + index["report"].tolist()) == list(range(len(dataset.dev)))
    docs = read_corpus(corpus)
    parts = dev_parts(dataset.meta["dev_docs"], config.seed)
    for name, rows in index.items():
        texts = [tiny_gptj.tokenizer(docs[i], add_special_tokens=False).input_ids for i in parts[name]]
        for row in rows.tolist():
            context = dataset.dev.contexts[row, : dataset.dev.lengths[row]].tolist()
            assert any(
                text[i : i + len(context)] == context for text in texts for i in range(len(text) - len(context) + 1)
            ), (name, row)


def layer(p1: float) -> dict:
    return {"N0": {"p1": p1}, "free": {"N0": {"p1": p1}}}


def test_the_best_layer_is_chosen_on_the_selection_part_and_reported_from_the_report_part():
    report = {"0": layer(0.9), "1": layer(0.5), "2": layer(0.4)}
    selection = {"0": layer(0.1), "1": layer(0.2), "2": layer(0.7)}
    assert best_layers(report)["N0"] == {"layer": 0, "p1": 0.9}  # chosen on the reported examples themselves
    assert best_layers(report, chosen_on=selection)["N0"] == {"layer": 2, "p1": 0.4}
    assert best_layers(report, "free_running", selection)["N0"] == {"layer": 2, "p1": 0.4}


def test_who_wins_states_the_leader_and_the_kl_winner_from_the_numbers():
    methods = {
        "logit_lens": {"layers": {"0": {"kl": 3.0}, "1": {"kl": 1.0}}},
        "tuned_lens": {"layers": {"0": {"kl": 2.0}, "1": {"kl": 1.5}}},
    }
    head = {"logit_lens": {"N0": {"p1": 0.5}}, "tuned_lens": {"N0": {"p1": 0.625}}}
    lines = who_wins({"methods": methods, "headline": {"table": head}})
    assert lines[0] == "N=0: tuned lens leads at 0.625, then logit lens at 0.500 (+0.125)."
    assert lines[1] == "Lowest KL to the model at N=0: tuned lens at 1 of 2 layers; logit lens at 1 of 2 layers."
