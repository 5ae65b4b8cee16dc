"""A transport that keeps messages in a list: for tests that need no socket."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class MemoryTransport:
    name: str = "memory"
    sent: list[tuple[str, str, bytes]] = field(default_factory=list)

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        self.sent.append((sender, recipient, message))

    @contextmanager
    def session(self) -> Iterator[MemoryTransport]:
        yield self
