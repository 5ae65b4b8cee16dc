"""A daemon thread started on first use: the wake-up publisher, the sign-up writer."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    """`target` on a daemon thread of its own, started by the first `ensure()` (from any thread)
    and running for the life of the process. A daemon: what it had not yet done is lost at exit."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.target = target
        self.name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ensure(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self.target, name=self.name, daemon=True)
                    self._thread.start()
