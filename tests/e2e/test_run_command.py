"""`mailer run` on the embedded default, as a newcomer starts it: nothing configured but the port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.services import free_port

pytestmark = pytest.mark.slow


class Running:
    def __init__(self, proc: subprocess.Popen[str], port: int, home: Path) -> None:
        self.proc, self.port, self.home = proc, port, home
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.proc.stdout.read() if self.proc.stdout else ""


def wait_until(check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.fixture
def running(home: Path) -> Iterator[Running]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "run", "--port", str(port)],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, 30)
    try:
        yield Running(proc, port, home)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def outbox_links(url: str) -> list[str]:
    return re.findall(r'href="(/outbox/[^"]+)"', httpx.get(f"{url}/outbox", timeout=5).text)


def test_newcomer_story_through_the_outbox(running: Running) -> None:
    """Sign up, find the confirmation at /outbox within seconds, confirm, read the welcome, leave."""
    url = running.url
    assert (
        httpx.post(
            f"{url}/subscribe", data={"email": "newcomer@example.com", "name": "新人"}, timeout=5
        ).status_code
        == 200
    )
    [link] = wait_until(lambda: outbox_links(url), 15)
    confirmation = httpx.get(f"{url}{link}", timeout=5).text
    confirm_url = re.search(rf'href="(http://localhost:{running.port}/confirm/[^"]+)"', confirmation)
    assert confirm_url, "the outbox shows the confirmation link as a link"
    assert "登録を完了する" in httpx.get(confirm_url.group(1), timeout=5).text
    assert "登録が完了しました" in httpx.post(confirm_url.group(1), timeout=5).text
    links = wait_until(lambda: (found := outbox_links(url)) and len(found) >= 2 and found, 15)
    welcome = httpx.get(f"{url}{links[0]}", timeout=5).text  # newest first
    assert "ようこそ" in welcome
    unsubscribe = re.search(rf"(http://localhost:{running.port}/unsubscribe/[A-Za-z0-9_.\-]+)", welcome)
    assert unsubscribe
    assert (
        "配信を停止しました"
        in httpx.post(unsubscribe.group(1), data={"List-Unsubscribe": "One-Click"}, timeout=5).text
    )
    assert (running.home / "instance" / "secret_key").stat().st_mode & 0o777 == 0o600
    assert (running.home / "mailer.db").exists()

    running.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert running.proc.wait(20) == 0
    output = running.output()
    assert "Traceback" not in output
    assert "newcomer@example.com" not in output, "an address reached the log"


def test_sigterm_stops_everything_cleanly(running: Running) -> None:
    """SIGTERM (systemd, docker stop) ends web, worker and scheduler with no traceback."""
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(20) == 0
    assert "Traceback" not in running.output()


def test_the_embedded_scheduler_leaves_no_schedule_file(running: Running) -> None:
    """Beat keeps its schedule in memory: after a run, no celerybeat-schedule file is left behind."""
    time.sleep(2)  # beat has sent its first ticks
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(20) == 0
    assert sorted(p.name for p in running.home.glob("celerybeat-schedule*")) == []
