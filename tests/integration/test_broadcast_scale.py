"""An issue to 100,000 readers: the audience is written in seconds, and the form keeps answering."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mailer.broadcasts import issues
from mailer.runtime import Runtime
from mailer.subscribers import signup
from tests.conftest import Clock
from tests.helpers import subscribe
from tests.magazine import create, issue_folder, readers, rows_by_state

pytestmark = pytest.mark.slow

READERS = 100_000


def test_an_audience_of_100000_is_written_in_seconds_while_sign_ups_go_on(
    runtime: Runtime, home: Path, clock: Clock
) -> None:
    """`send` writes 100,000 ledger rows in batches; sign-ups made meanwhile never wait long for
    the write lock, and none of them joins the issue."""
    readers(runtime, READERS, clock())
    issue = create(runtime, issue_folder(home), clock())
    with runtime.transaction() as session:
        issues.start(session, issue, clock())
    took: list[float] = []
    writer = threading.Thread(target=lambda: took.append(time_it(runtime, issue, clock)))
    writer.start()
    waits = []
    n = 0
    while writer.is_alive():
        asked = time.monotonic()
        assert isinstance(subscribe(runtime, f"new{n}@example.com", clock()), signup.Accepted)
        waits.append(time.monotonic() - asked)
        n += 1
        time.sleep(0.02)
    writer.join()
    assert rows_by_state(runtime, issue) == {"pending": READERS}
    figures = f"{took[0]:.2f} s to write, {n} sign-ups meanwhile, the slowest {max(waits):.3f} s"
    print(f"\n[magazine] audience of {READERS:,}: {figures}")  # noqa: T201 (pytest -s shows the figures)
    assert took[0] < 30
    assert max(waits) < 1.0


def time_it(rt: Runtime, issue: int, clock: Clock) -> float:
    started = time.monotonic()
    issues.write_audience(rt.sessions, issue, clock())
    return time.monotonic() - started
