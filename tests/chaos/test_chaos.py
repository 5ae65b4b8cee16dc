"""Faults against the production stack in real processes: nothing lost, nothing doubled.

Each test prints its figures (run with -s to see them; CI logs keep them): lost, duplicates, time
to recover. The ledger's promise from DESIGN.md: a crash re-sends at most the mail in flight.
"""

from __future__ import annotations

import itertools
import threading
import time
from functools import partial

import httpx
import pytest
from sqlalchemy import select

from mailer.db import session_scope
from mailer.models import Delivery, Subscriber
from mailer.subscribers.tokens import Tokens
from tests.chaos.stack import (
    STEPS,
    Stack,
    Tally,
    ledger_states,
    running,
    seed_readers,
    wait_until,
)
from tests.conftest import SECRET

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(420)]

READERS = 2000  # the full run; the fault tests use FAULT_READERS to stay within minutes
FAULT_READERS = 1000
CONCURRENCY = 2  # threads per `mailer worker` in docker-compose.yml
COMMIT_EVERY = 10  # the chaos site's delivery.commit_every: the most one thread has in flight


def addresses(count: int) -> list[str]:
    return [f"r{n}@example.com" for n in range(count)]


def settle(stack: Stack, expected: int, timeout: float = 180) -> float:
    """Wait for `expected` distinct mails, then a few ticks more for any late duplicate."""
    received = stack.sink.handler.received  # len() only: parsing thousands of mails slows the sink

    def arrived() -> bool:
        return len(received) >= expected and len(Tally.of(stack.sink).counts) >= expected

    seconds = wait_until(arrived, timeout, f"{expected} mails")
    time.sleep(3)
    return seconds


def sent_at_least(stack: Stack, count: int) -> bool:
    return len(stack.sink.received) >= count


def report(title: str, **figures: object) -> None:
    print(f"\n[chaos] {title}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))  # noqa: T201


def assert_fault_survived(stack: Stack, title: str, allowed_duplicates: int, **figures: object) -> None:
    """The fault's figures printed, then the ledger's promise over FAULT_READERS readers: no mail
    lost, at most `allowed_duplicates` sent twice, every row sent."""
    tally = Tally.of(stack.sink)
    lost = tally.lost(addresses(FAULT_READERS))
    report(title, lost=lost, duplicates=tally.duplicates, **figures)
    assert lost == 0
    assert tally.duplicates <= allowed_duplicates
    assert ledger_states(stack.runtime) == {"sent": FAULT_READERS * len(STEPS)}


def test_three_workers_and_two_beats_send_each_step_once(stack: Stack) -> None:
    runtime = stack.runtime
    with running(stack):
        started = time.monotonic()
        seed_readers(runtime, READERS)
        seconds = settle(stack, READERS * len(STEPS))
    tally = Tally.of(stack.sink)
    report(
        "3 workers, 2 beats, PostgreSQL + Redis",
        readers=READERS,
        mails=len(stack.sink.received),
        lost=tally.lost(addresses(READERS)),
        duplicates=tally.duplicates,
        seconds=f"{seconds:.1f}",
        since_seeding=f"{time.monotonic() - started:.1f}",
    )
    assert tally.lost(addresses(READERS)) == 0
    assert tally.duplicates == 0
    assert len(stack.sink.received) == READERS * len(STEPS)
    assert ledger_states(runtime) == {"sent": READERS * len(STEPS)}
    assert set(stack.exit_codes.values()) == {0}, stack.exit_codes  # SIGTERM: a clean stop
    tracebacks = [line for line in stack.log_text().splitlines() if "Traceback" in line or "ERROR" in line]
    assert tracebacks == []


def test_a_worker_killed_five_times_mid_send_loses_nothing(stack: Stack) -> None:
    stack.sink.handler.delay = 0.004  # a slower relay: the send lasts long enough to kill into
    runtime = stack.runtime
    total = FAULT_READERS * len(STEPS)
    with running(stack):
        seed_readers(runtime, FAULT_READERS)
        for kill, name in zip(range(5), itertools.cycle(["worker0", "worker1", "worker2"]), strict=False):
            wait_until(partial(sent_at_least, stack, (kill + 1) * total // 7), 120, "sending")
            stack.kill(name)  # SIGKILL: no goodbye, its claimed rows wait for their lease
            stack.start(name, "worker")
        sent_at_last_kill = len(stack.sink.received)
        seconds = settle(stack, total)
    in_flight_bound = 5 * CONCURRENCY * COMMIT_EVERY
    assert_fault_survived(
        stack,
        "SIGKILL a worker 5 times",
        in_flight_bound,
        bound=in_flight_bound,
        sent_at_last_kill=sent_at_last_kill,
        seconds_to_finish=f"{seconds:.1f}",
    )
    assert sent_at_last_kill < total, "the kills came after the send was over"


def test_redis_restarted_empty_mid_send_loses_nothing_and_resumes(stack: Stack) -> None:
    stack.sink.handler.delay = 0.002
    runtime = stack.runtime
    total = FAULT_READERS * len(STEPS)
    with running(stack):
        seed_readers(runtime, FAULT_READERS)
        wait_until(lambda: len(stack.sink.received) >= total // 4, 120, "sending")
        stack.redis.stop()
        wait_until(lambda: stack.health() == (503, _health("ok", "down")), 15, "/healthz to say 503")
        stack.redis.start()  # same port, nothing in it: every queued and unacked message is gone
        restarted, before = time.monotonic(), len(stack.sink.received)
        wait_until(lambda: len(stack.sink.received) > before + 50, 60, "sending to resume")
        resumed = time.monotonic() - restarted
        settle(stack, total)
        exited = stack.exited()
    assert exited == {}, "a process died with Redis instead of reconnecting"
    assert_fault_survived(
        stack, "Redis restarted empty", 3 * CONCURRENCY * COMMIT_EVERY, seconds_to_resume=f"{resumed:.1f}"
    )


def test_postgresql_away_for_20_seconds_loses_nothing(stack: Stack) -> None:
    stack.sink.handler.delay = 0.002
    runtime = stack.runtime
    total = FAULT_READERS * len(STEPS)
    with running(stack):
        seed_readers(runtime, FAULT_READERS)
        wait_until(lambda: len(stack.sink.received) >= total // 4, 120, "sending")
        stack.postgres.stop()
        stopped = time.monotonic()
        wait_until(lambda: stack.health() == (503, _health("down", "ok")), 10, "/healthz to say 503")
        time.sleep(max(0.0, 20 - (time.monotonic() - stopped)))
        before = len(stack.sink.received)
        stack.postgres.start()
        started = time.monotonic()
        healthy = wait_until(lambda: stack.health()[0] == 200, 30, "/healthz to say 200")
        wait_until(lambda: len(stack.sink.received) > before + 50, 60, "sending to resume")
        resumed = time.monotonic() - started
        settle(stack, total)
        exited = stack.exited()
    assert exited == {}, "a process died with PostgreSQL instead of waiting for it"
    assert_fault_survived(
        stack,
        "PostgreSQL away 20 s",
        3 * CONCURRENCY * COMMIT_EVERY,
        seconds_to_healthy=f"{healthy:.1f}",
        seconds_to_resume=f"{resumed:.1f}",
    )


def _health(database: str, broker: str) -> dict[str, str]:
    return {"status": "unavailable", "database": database, "broker": broker}


def test_421_one_in_ten_is_retried_and_a_550_fails_only_its_row(stack: Stack) -> None:
    readers = FAULT_READERS
    refused = "r7@example.com"
    handler = stack.sink.handler
    counter = itertools.count(1)
    refusals: list[str] = []
    lock = threading.Lock()

    def one_in_ten(_rcpts: list[str]) -> str | None:
        with lock:
            return "421 4.7.0 Try again later" if next(counter) % 10 == 0 else None

    def no_such_user(rcpt: str) -> str | None:
        if rcpt != refused:
            return None
        refusals.append(rcpt)
        return "550 5.1.1 No such user"

    handler.data_fault, handler.rcpt_fault = one_in_ten, no_such_user
    runtime = stack.runtime
    with running(stack):
        seed_readers(runtime, readers)
        settle(stack, (readers - 1) * len(STEPS))
    tally = Tally.of(stack.sink)
    others = [a for a in addresses(readers) if a != refused]
    with session_scope(runtime.sessions) as session:
        retried = session.scalars(select(Delivery).where(Delivery.attempts > 1)).all()
        suppressed = session.scalars(select(Subscriber).where(Subscriber.email == refused)).one()
        their_rows = session.scalars(select(Delivery).where(Delivery.subscriber_id == suppressed.id)).all()
    report(
        "421 for 1 in 10, 550 for one reader",
        lost=tally.lost(others),
        duplicates=tally.duplicates,
        rows_retried=len(retried),
        attempts_at_550=len(refusals),
    )
    assert tally.lost(others) == 0
    assert tally.duplicates == 0
    assert len(retried) >= (readers - 1) * len(STEPS) // 10 * 0.9
    assert all(row.state == "sent" for row in retried)
    assert refusals == [refused], "the 550 address was tried again"
    assert suppressed.state == "bounced"
    assert [(row.step_id, row.state) for row in their_rows] == [("welcome", "failed")]
    assert "5.1.1" in (their_rows[0].last_error or "")


def test_nothing_goes_to_a_reader_after_their_unsubscribe_commits(stack: Stack) -> None:
    stack.sink.handler.delay = 0.003
    runtime = stack.runtime
    tokens = Tokens(SECRET)
    total = FAULT_READERS * len(STEPS)
    with running(stack):
        ids = seed_readers(runtime, FAULT_READERS)
        wait_until(lambda: len(stack.sink.received) >= total // 5, 120, "sending")
        left: dict[str, float] = {}
        with httpx.Client(timeout=30) as client:
            for n in range(0, FAULT_READERS, 20):  # one reader in twenty leaves, mid-send
                response = client.post(
                    f"{stack.url}/unsubscribe/{tokens.unsubscribe(ids[n], None)}",
                    data={"List-Unsubscribe": "One-Click"},
                )
                assert response.status_code == 200
                left[f"r{n}@example.com"] = time.monotonic()  # committed before the answer
        stayed = [a for a in addresses(FAULT_READERS) if a not in left]
        settle(stack, len(stayed) * len(STEPS))
        wait_until(lambda: Tally.of(stack.sink).lost(stayed) == 0, 60, "the others' mail")
        time.sleep(3)
    after = [r for r in stack.sink.received for a in r.recipients if a in left and r.at >= left[a]]
    spared = sum(len(STEPS) for _ in left) - sum(
        1 for r in stack.sink.received for a in r.recipients if a in left
    )
    report(
        "unsubscribes during a send",
        readers_left=len(left),
        mails_after_unsubscribe=len(after),
        mails_spared=spared,
    )
    assert spared > 0, "every leaver had all their mail before leaving: the test proved nothing"
    assert after == []
    assert Tally.of(stack.sink).duplicates == 0
