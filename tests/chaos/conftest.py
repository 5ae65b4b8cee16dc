"""The chaos tests' stack: the production processes over a PostgreSQL of each module's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.stack import Stack, write_chaos_site
from tests.conftest import Sink
from tests.services import PostgresServer, postgres_server, redis_server


@pytest.fixture(scope="module")
def chaos_postgres() -> Iterator[PostgresServer]:
    """A server of the module's own: one test takes it away for 20 seconds."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def stack(home: Path, chaos_postgres: PostgresServer, sink: Sink, tmp_path: Path) -> Iterator[Stack]:
    write_chaos_site(home)
    logs = tmp_path / "logs"
    logs.mkdir()
    with redis_server() as redis:
        stack = Stack(home, chaos_postgres, chaos_postgres.new_database(), redis, sink, logs)
        yield stack
        stack.runtime.close()
