"""The permalink store's interface and what every backend shares: records, ids, errors, the retention policy.

`GridStore` is the small interface the web app uses. Ids are an HMAC of the canonical request under the
deployment's secret (`grid_id`), so identical requests share an id on one deployment while nobody without the
secret can tell whether a given text was submitted. Each store keeps a generated secret (`GridStore.secret`) for
deployments that configure none. Stored grids record when they were last opened; `RetentionPolicy` says which grids
a store deletes (`GridStore.apply_retention`): none by default.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

from future_lens.canonical import canonical_json

ID_LENGTH = 12
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
#: Opening a grid records the time at most this often (one write per grid per minute however popular it is).
TOUCH_EVERY_S = 60.0
#: Name of the generated permalink secret in a store's `future_lens_meta` table.
SECRET_NAME = "permalink_secret"


class StoreError(RuntimeError):
    """The store cannot be opened or used (unreadable or corrupt file, wrong schema)."""


@dataclass(frozen=True)
class StoredGrid:
    """One stored grid: the canonical request (JSON) and the response document (JSON) exactly as served."""

    id: str
    model_id: str
    request_json: str
    document_json: str
    created_at: float
    #: When the grid was stored or last opened (Unix time; None before it is stored). Not part of equality.
    last_accessed: float | None = dataclasses.field(default=None, compare=False)

    @property
    def size_bytes(self) -> int:
        """What the grid costs the store: its request and document in UTF-8 (what the size limit counts)."""
        return sum(len(text.encode("utf-8", "surrogatepass")) for text in (self.request_json, self.document_json))

    def accessed(self) -> float:
        return self.created_at if self.last_accessed is None else self.last_accessed


class StoreEntry(NamedTuple):
    """What retention looks at: a grid's id, when it was last stored or opened, and its size."""

    id: str
    last_accessed: float
    size_bytes: int


@dataclass(frozen=True)
class RetentionPolicy:
    """Which stored grids are deleted. A grid's idle time is the time since it was stored or last opened.

    - `max_age_s`: grids idle longer than this are deleted (None: no age limit).
    - `max_bytes`: while the grids' total size is over this, the longest idle are deleted first, except grids idle
      for at most `keep_recent_s`, which the size limit never deletes (so it is exceeded when all grids are recent).
    Nothing else is ever deleted: with neither limit set (the default) every grid is kept forever."""

    max_age_s: float | None = None
    max_bytes: int | None = None
    keep_recent_s: float = 86_400.0

    @property
    def active(self) -> bool:
        return self.max_age_s is not None or self.max_bytes is not None

    def expired(self, entries: Iterable[StoreEntry], now: float) -> list[StoreEntry]:
        """The entries to delete at time `now`."""
        doomed: list[StoreEntry] = []
        kept_bytes, full = 0, False
        for entry in sorted(entries, key=lambda e: (-e.last_accessed, e.id)):  # most recently used first
            idle = now - entry.last_accessed
            too_old = self.max_age_s is not None and idle > self.max_age_s
            if not too_old and self.max_bytes is not None and idle > self.keep_recent_s:
                full = full or kept_bytes + entry.size_bytes > self.max_bytes
            if too_old or (full and idle > self.keep_recent_s):
                doomed.append(entry)
            else:
                kept_bytes += entry.size_bytes
        return doomed


def grid_id(canonical_request: dict[str, object], secret: bytes | None = None) -> str:
    """Short id: the first 60 bits of HMAC-SHA256 under `secret` over the canonical request, in lowercase base32
    (12 characters). Without a secret, plain sha256 (how ids were derived before secrets; such ids still open)."""
    message = canonical_json(canonical_request).encode("ascii")
    digest = hashlib.sha256(message).digest() if secret is None else hmac.digest(secret, message, "sha256")
    return base64.b32encode(digest).decode("ascii").lower()[:ID_LENGTH]


def is_grid_id(text: str) -> bool:
    """True when `text` has the shape of an id (so lookups never see arbitrary strings)."""
    return len(text) == ID_LENGTH and all(char in ID_ALPHABET for char in text)


class GridStore(ABC):
    """Where permalinks live. `put` is idempotent: the first grid stored under an id is the one kept."""

    @abstractmethod
    def get(self, grid_id: str) -> StoredGrid | None:
        """The grid stored under `grid_id`, or None."""

    @abstractmethod
    def put(self, grid: StoredGrid) -> StoredGrid:
        """Store `grid` unless its id is taken; return what is stored under the id afterwards."""

    @abstractmethod
    def count(self) -> int:
        """How many grids are stored."""

    @abstractmethod
    def _touch(self, grid_id: str, at: float) -> None:
        """Set the grid's last access to `at` if it is earlier (never moves it back)."""

    @abstractmethod
    def _entries(self) -> list[StoreEntry]:
        """Every stored grid's id, last access and size."""

    @abstractmethod
    def _remove(self, entries: Sequence[StoreEntry]) -> int:
        """Delete these grids unless opened since `entries` were read (last access changed); how many went."""

    @abstractmethod
    def _keep_first(self, name: str, value: str) -> str:
        """Record `value` under `name` in the store's metadata unless a value is there; return the recorded one."""

    def opened(self, grid: StoredGrid, now: float | None = None) -> None:
        """Record that `grid` was opened (at most once per `TOUCH_EVERY_S`): retention keeps recently used grids."""
        now = time.time() if now is None else now
        if now - grid.accessed() >= TOUCH_EVERY_S:
            self._touch(grid.id, now)

    def apply_retention(self, policy: RetentionPolicy, now: float | None = None) -> int:
        """Delete the grids `policy` says have expired; how many were deleted."""
        if not policy.active:
            return 0
        doomed = policy.expired(self._entries(), time.time() if now is None else now)
        return self._remove(doomed) if doomed else 0

    def secret(self) -> bytes:
        """The permalink secret kept in the store: generated by the first caller and shared by every process that
        opens the same store (replicas of one PostgreSQL database); 32 random bytes."""
        return bytes.fromhex(self._keep_first(SECRET_NAME, secrets.token_hex(32)))

    @contextmanager
    def computing_all(self, grid_ids: Sequence[str]) -> Iterator[None]:
        """Held around computing and storing `grid_ids` so that processes sharing the store compute each once (a
        no-op here: one process's worker already computes an id once; shared stores take cross-process locks)."""
        yield

    @contextmanager
    def computing(self, grid_id: str) -> Iterator[None]:
        """`computing_all` for one id."""
        with self.computing_all([grid_id]):
            yield

    def close(self) -> None:  # noqa: B027 (optional hook: most stores hold nothing to release)
        """Release resources (no-op by default)."""


def new_stored_grid(grid_id: str, model_id: str, request: dict[str, object], document_json: str) -> StoredGrid:
    """A record stamped with the current time (stored and last accessed now)."""
    now = time.time()
    return StoredGrid(grid_id, model_id, canonical_json(request), document_json, now, now)
