"""`mailer broadcast` as an operator runs it: ids printed, counts shown, one-line refusals."""

from __future__ import annotations

import email
import email.policy
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, select

from mailer.db import session_scope
from mailer.models import Broadcast, Delivery
from mailer.runtime import Runtime
from tests.conftest import Clock, make_settings
from tests.helpers import mailer_env, run_mailer
from tests.magazine import issue_folder, readers

pytestmark = pytest.mark.slow


@pytest.fixture
def store(home: Path, clock: Clock) -> Iterator[Runtime]:
    """The database `run_mailer` uses, with three confirmed readers in it; no quiet hours, as
    these commands run on the wall clock and no test may depend on the time of day."""
    site = home / "mailer.toml"
    site.write_text(
        site.read_text(encoding="utf-8").replace("[quiet_hours]\n", "[quiet_hours]\nenabled = false\n")
    )
    rt = Runtime(make_settings(home, f"sqlite:///{home / 'mailer.db'}", "maildir:./outbox"), clock=clock)
    rt.upgrade_db()
    readers(rt, 3, clock())
    try:
        yield rt
    finally:
        rt.close()


def outbox(home: Path) -> list[EmailMessage]:
    folder = home / "outbox" / "new"
    return (
        [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            for p in sorted(folder.iterdir())
        ]
        if folder.exists()
        else []
    )


def stored(rt: Runtime) -> tuple[int, int]:
    """Issues and issue rows in the database."""
    with session_scope(rt.sessions) as session:
        issues = session.scalar(select(func.count()).select_from(Broadcast)) or 0
        rows = session.scalar(select(func.count()).where(Delivery.broadcast_id.is_not(None))) or 0
    return issues, rows


def test_an_issue_from_create_to_sent(home: Path, store: Runtime) -> None:
    """create prints the id; send queues the audience; the tick sends it; show and list count it."""
    issue_folder(home)
    created = run_mailer(home, "broadcast", "create", "issues/2026-12", "--archive")
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines()[0] == "1"
    assert "draft" in run_mailer(home, "broadcast", "list").stdout
    sent = run_mailer(home, "broadcast", "send", "1")
    assert sent.returncode == 0, sent.stderr
    assert "3 mails queued" in sent.stdout
    run_mailer(home, "tick")
    run_mailer(home, "tick")
    assert sorted(str(m["To"]) for m in outbox(home)) == [f"読者{n} <r{n}@example.com>" for n in range(3)]
    shown = run_mailer(home, "broadcast", "show", "1")
    assert shown.returncode == 0, shown.stderr
    assert "state: sent" in shown.stdout
    assert "  sent: 3" in shown.stdout
    assert "finished: 20" in shown.stdout
    listed = run_mailer(home, "broadcast", "list").stdout
    assert "│  1 │ sent" in listed


Printed = TypeVar("Printed", str, bytes)


def ticked_until_done(home: Path, waiting: subprocess.Popen[Printed]) -> Printed:
    """A worker's part, done by ticks until the waiting command returns; what it printed."""
    try:
        for _ in range(20):
            run_mailer(home, "tick")
            if waiting.poll() is not None:
                break
        printed, _ = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    return printed


def test_send_wait_piped_prints_plain_lines_until_the_issue_is_out(home: Path, store: Runtime) -> None:
    """`send --wait` into a pipe prints plain progress lines, no bar, and returns once it is sent."""
    issue_folder(home)
    run_mailer(home, "broadcast", "create", "issues/2026-12")
    waiting = subprocess.Popen(
        [sys.executable, "-m", "mailer", "broadcast", "send", "1", "--wait"],
        cwd=home,
        env=mailer_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout = ticked_until_done(home, waiting)
    assert waiting.returncode == 0
    assert "sent 3/3" in stdout
    assert stdout.rstrip().endswith("issue 1 sent")
    assert "\x1b[" not in stdout
    assert len(outbox(home)) == 3


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` gives the command a terminal")
def test_send_wait_on_a_terminal_shows_a_progress_bar(home: Path, store: Runtime) -> None:
    """On a terminal `send --wait` draws a bar of sent / total until the issue is out."""
    issue_folder(home)
    run_mailer(home, "broadcast", "create", "issues/2026-12")
    command = f"{shlex.quote(sys.executable)} -m mailer broadcast send 1 --wait"
    env = mailer_env(home) | {"COLUMNS": "100", "TERM": "xterm"}
    env.pop("NO_COLOR")
    waiting = subprocess.Popen(
        ["script", "-qec", command, "/dev/null"],
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    screen = ticked_until_done(home, waiting)
    shown = re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", screen).decode()
    assert waiting.returncode == 0
    assert "━" in shown
    assert "3/3" in shown
    assert "issue 1 sent" in shown


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("create", "issues/none"), "issues/none: no such folder"),
        (
            ("create", "issues/2026-12", "--to", "seminar:nope"),
            "no seminar 'nope' (have: magazine, web-business)",
        ),
        (("create", "issues/2026-12", "--to", "tag:vip"), "no subscriber carries the tag 'vip'"),
        (("create", "issues/2026-12", "--at", "next friday"), "--at 'next friday' is not an ISO-8601 time"),
        (("cancel", "99"), "no issue 99"),
        (("send", "99"), "no issue 99"),
        (("schedule", "99", "--at", "2026-12-05T09:00+09:00"), "no issue 99"),
        (("test", "99", "--to", "someone@example.com"), "no issue 99"),
    ],
)
def test_bad_input_gets_one_line_and_changes_nothing(
    home: Path, store: Runtime, args: tuple[str, ...], expected: str
) -> None:
    """A missing folder, an unknown seminar, tag or id, a time that is not one: one line, exit 1."""
    issue_folder(home)
    result = run_mailer(home, "broadcast", *args)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert expected in line
    assert "Traceback" not in result.stderr + result.stdout
    assert stored(store) == (0, 0)
    assert outbox(home) == []


def test_sending_a_cancelled_issue_is_refused(home: Path, store: Runtime) -> None:
    """A cancelled issue cannot be sent, nor cancelled again: one line each, nothing queued."""
    issue_folder(home)
    run_mailer(home, "broadcast", "create", "issues/2026-12")
    assert run_mailer(home, "broadcast", "cancel", "1").returncode == 0
    for command, done in (("send", "sent"), ("cancel", "cancelled")):
        result = run_mailer(home, "broadcast", command, "1")
        assert result.returncode == 1
        assert result.stderr.strip() == f"error: issue 1 is cancelled: it cannot be {done}"
    assert stored(store) == (1, 0)


def test_a_test_send_goes_to_any_address_outside_the_ledger(home: Path, store: Runtime) -> None:
    """`test` sends the issue with [テスト] before its subject to an address with no subscriber row,
    writes no ledger row, and refuses a provider the form refuses."""
    issue_folder(home)
    run_mailer(home, "broadcast", "create", "issues/2026-12")
    refused = run_mailer(home, "broadcast", "test", "1", "--to", "taro..yamada@docomo.ne.jp")
    assert refused.returncode == 1
    assert "docomo does not take our mail" in refused.stderr
    sent = run_mailer(home, "broadcast", "test", "1", "--to", "editor@example.com")
    assert sent.returncode == 0, sent.stderr
    [mail] = outbox(home)
    assert str(mail["To"]).endswith("<editor@example.com>")
    assert str(mail["Subject"]).startswith("[テスト] ")
    assert "WEBビジネス通信" in str(mail["List-Id"])
    assert stored(store) == (1, 0)
