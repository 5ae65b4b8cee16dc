"""The mail magazine under faults in real processes: workers SIGKILLed while they send an issue."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

from mailer.broadcasts import issues
from tests.chaos.stack import Stack, Tally, running, wait_until
from tests.chaos.test_chaos import COMMIT_EVERY, CONCURRENCY, addresses, report, sent_at_least, settle
from tests.magazine import create, readers, rows_by_state

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(420)]

READERS = 1000
KILLS = 3


def chaos_issue(home: Path) -> Path:
    """An issue whose subject the chaos tally reads (`chaos-issue`)."""
    folder = home / "issues" / "chaos"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("chaos-issue", encoding="utf-8")
    (folder / "body.txt").write_text("{{ name }}さん、今月号です。", encoding="utf-8")
    return folder


def issue_done(stack: Stack, issue: int) -> bool:
    with stack.runtime.transaction() as session:
        return issues.get(session, issue).state == issues.IssueState.SENT


def test_workers_killed_mid_issue_lose_no_reader(stack: Stack) -> None:
    """Three SIGKILLs of `mailer worker` while an issue of 1,000 goes out: every reader gets it,
    duplicates stay within the groups in flight, and the beats close the issue as sent."""
    stack.sink.handler.delay = 0.004  # a slower relay: the send lasts long enough to kill into
    runtime = stack.runtime
    with running(stack):
        readers(runtime, READERS, datetime.now(UTC))
        issue = create(runtime, chaos_issue(stack.home), datetime.now(UTC))
        with runtime.transaction() as session:  # `mailer broadcast send`: the beats write the audience
            issues.start(session, issue, datetime.now(UTC))
        for kill, name in zip(range(KILLS), itertools.cycle(["worker0", "worker1", "worker2"]), strict=False):
            wait_until(partial(sent_at_least, stack, (kill + 1) * READERS // (KILLS + 2)), 120, "sending")
            stack.kill(name)  # SIGKILL: its claimed rows wait for their lease (15 s)
            stack.start(name, "worker")
        sent_at_last_kill = len(stack.sink.received)
        seconds = settle(stack, READERS)
        wait_until(partial(issue_done, stack, issue), 60, "the issue closed as sent")
    tally = Tally.of(stack.sink)
    lost = tally.lost(addresses(READERS), ("issue",))
    bound = KILLS * CONCURRENCY * COMMIT_EVERY
    report(
        f"SIGKILL a worker {KILLS} times mid-issue",
        lost=lost,
        duplicates=tally.duplicates,
        bound=bound,
        sent_at_last_kill=sent_at_last_kill,
        seconds_to_finish=f"{seconds:.1f}",
    )
    assert lost == 0
    assert tally.duplicates <= bound
    assert sent_at_last_kill < READERS, "the kills came after the send was over"
    assert rows_by_state(runtime, issue) == {"sent": READERS}
