"""Applying the permalink retention policy (`RetentionPolicy` in future_lens/server/store/base.py): a background
thread of the app applies it to the store at start and then every `interval_s`.
Off (no thread) unless a limit is configured."""

from __future__ import annotations

import logging
import threading

from future_lens.server.config import Settings
from future_lens.server.store import GridStore, RetentionPolicy, StoreError

log = logging.getLogger(__name__)
HOUR_S = 3600.0
DAY_S = 24 * HOUR_S


def retention_policy(settings: Settings) -> RetentionPolicy:
    """The policy the settings describe (days, MB and hours turned into seconds and bytes)."""
    max_age_days, max_mb = settings.retention_max_age_days, settings.retention_max_mb
    return RetentionPolicy(
        max_age_s=None if max_age_days is None else max_age_days * DAY_S,
        max_bytes=None if max_mb is None else round(max_mb * 1_000_000),
        keep_recent_s=settings.retention_keep_recent_hours * HOUR_S,
    )


class RetentionJanitor:
    """Applies `policy` to `store` once on `start()` and every `interval_s` until `stop()` (a daemon thread)."""

    def __init__(self, store: GridStore, policy: RetentionPolicy, interval_s: float):
        self.store = store
        self.policy = policy
        self.interval_s = interval_s
        self.deleted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def apply(self) -> int:
        """Apply the policy now; how many grids went. A store failure is logged, and retried next time."""
        try:
            deleted = self.store.apply_retention(self.policy)
        except StoreError as error:
            log.warning("retention: %s", error)
            return 0
        self.deleted += deleted
        if deleted:
            log.info("retention: deleted %d stored grids", deleted)
        return deleted

    def _run(self) -> None:
        while True:
            self.apply()
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> RetentionJanitor:
        if self.policy.active:
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
