"""One reader's mail that cannot be prepared never holds back anyone else's."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from mailer.deliver.jobs import Claimed
from mailer.runtime import Runtime
from tests.conftest import Sink
from tests.helpers import at, identity, join, ledger_row, run_mailer


def test_an_exception_preparing_one_row_retries_that_row_alone(
    runtime: Runtime, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """A mail whose preparation raises is retried alone, counted and logged by id; the batch goes."""
    ids = [join(runtime, sink, f"p{n}@example.com", at("2026-12-01 10:00")) for n in range(5)]
    runtime.plan(at("2026-12-02 09:00"))
    sink.clear()
    bad = ledger_row(runtime, ids[2], "lesson-1").id

    def crash_for_one(row: Claimed, message: bytes) -> bytes:
        if row.id == bad:
            raise RuntimeError("a finishing step that breaks on this mail")
        return message

    deliverer = runtime.deliverer()
    deliverer.finishers = (crash_for_one,)
    report = deliverer.run(lambda: at("2026-12-02 09:00"))

    assert (report.sent, report.retried, report.failed) == (4, 1, 0)
    assert sorted(r.recipients[0] for r in sink.received) == [f"p{n}@example.com" for n in (0, 1, 3, 4)]
    row = ledger_row(runtime, ids[2], "lesson-1")
    assert (row.state, row.attempts, row.claimed_by) == ("pending", 1, None)
    assert (row.last_error or "").startswith("prepare: RuntimeError")
    assert f"delivery.prepare_failed delivery_id={bad} error=RuntimeError" in caplog.text

    runtime.tick(lambda: at("2026-12-02 09:10"))  # past the backoff, with nothing broken
    assert [r.recipients[0] for r in sink.received][-1] == "p2@example.com"
    assert ledger_row(runtime, ids[2], "lesson-1").state == "sent"


def test_a_row_that_never_prepares_fails_after_its_attempts(runtime: Runtime, sink: Sink) -> None:
    """A row that raises on every try fails for good after max_attempts, without a crash loop."""
    reader = join(runtime, sink, "never@example.com", at("2026-12-01 10:00"))
    runtime.plan(at("2026-12-02 09:00"))
    deliverer = runtime.deliverer()

    def always(row: Claimed, message: bytes) -> bytes:
        raise ValueError(row.email)

    deliverer.finishers = (always,)
    moment = at("2026-12-02 09:00")
    for _ in range(runtime.site.delivery.max_attempts):
        deliverer.run(partial(identity, moment))
        moment = ledger_row(runtime, reader, "lesson-1").available_at
    row = ledger_row(runtime, reader, "lesson-1")
    assert (row.state, row.attempts) == ("failed", runtime.site.delivery.max_attempts)


def test_a_step_whose_template_went_missing_is_shown_held_back_by_stats(
    home: Path, runtime: Runtime, sink: Sink, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A step's body deleted after `sequences check`: its mail waits (logged by id) and `mailer
    stats` names the seminar, the step, how many wait and why, above its other tables."""
    readers = [join(runtime, sink, f"m{n}@example.com", at("2026-12-01 10:00")) for n in range(3)]
    (home / "templates" / "mail" / "web-business" / "lesson-1" / "body.txt").unlink()
    sink.clear()
    report = runtime.tick(lambda: at("2026-12-02 09:00"))[1]
    assert (report.sent, report.retried) == (0, 3)
    assert caplog.text.count("delivery.prepare_failed") == 3
    assert all(ledger_row(runtime, r, "lesson-1").state == "pending" for r in readers)

    held = json.loads(run_mailer(home, "stats", "--json", db=database_url).stdout)["held_back"]
    assert [(h["sequence"], h["step"], h["count"]) for h in held] == [("web-business", "lesson-1", 3)]
    assert "TemplateNotFound" in held[0]["error"]
    table = run_mailer(home, "stats", db=database_url).stdout
    assert "Held back" in table
    assert "lesson-1" in table.split("Subscribers")[0]
