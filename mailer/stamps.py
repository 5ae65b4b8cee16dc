"""A folder's stamp (its files' names, times and sizes), taken again at most once a second.

The page templates and the seminar files are read on every sign-up; a `scandir` and a `stat` per
file per request was a fifth of a rush's time. An edit is seen within `RECHECK` seconds, or at
once by a reader that asks for a fresh stamp (the scheduler's tick).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

RECHECK = 1.0  # seconds an edit may go unseen

Stamp = tuple[tuple[str, int, int], ...]


class FolderStamp:
    """The stamp of the files in `folder` whose names end with `suffix`."""

    def __init__(
        self,
        folder: Path,
        suffix: str = "",
        *,
        recheck: float = RECHECK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = folder
        self.suffix = suffix
        self.recheck = recheck
        self._clock = clock
        self._stamp: Stamp | None = None
        self._taken = 0.0

    def current(self, *, fresh: bool = False) -> Stamp:
        """The stamp, taken again if `recheck` seconds have passed or `fresh` asks for it now."""
        now = self._clock()
        if fresh or self._stamp is None or now - self._taken >= self.recheck:
            self._stamp, self._taken = self._take(), now
        return self._stamp

    def _take(self) -> Stamp:
        stamps = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if entry.name.endswith(self.suffix) and entry.is_file():
                    stat = entry.stat()
                    stamps.append((entry.name, stat.st_mtime_ns, stat.st_size))
        return tuple(sorted(stamps))
