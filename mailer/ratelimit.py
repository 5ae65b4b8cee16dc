"""Rate limits: how many times a key may act in a window. In-process here; shared later via Redis."""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from datetime import datetime, timedelta


class WindowLimiter:
    """At most `limit` hits per key in any `window`; the oldest hits fall out as time passes."""

    def __init__(self, limit: int, window: timedelta) -> None:
        self.limit = limit
        self.window = window
        self._hits: defaultdict[str, deque[datetime]] = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, key: str, now: datetime) -> bool:
        with self._lock:
            hits = self._hits[key]
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return False
            hits.append(now)
            if len(self._hits) > 100_000:  # a flood of distinct keys must not grow memory forever
                self._hits = defaultdict(deque, {k: v for k, v in self._hits.items() if v})
            return True
