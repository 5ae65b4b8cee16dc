"""The production shape on the embedded default: `mailer web`, `worker` and `beat` as separate processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Sink
from tests.helpers import text_of
from tests.services import free_port

pytestmark = pytest.mark.slow


def test_separate_processes_share_the_embedded_broker(home: Path, sink: Sink) -> None:
    """A sign-up taken by `mailer web` is sent by `mailer worker`; `mailer beat` ticks; all stop on SIGTERM."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")} | {
        "MAILER_SMTP_URL": sink.url,
        "MAILER_BASE_URL": f"http://127.0.0.1:{port}",
    }
    commands = [["web", "--port", str(port)], ["worker"], ["beat"]]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mailer", *c],
            cwd=home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for c in commands
    ]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mailer web did not start"
            time.sleep(0.2)
        assert (
            httpx.post(
                f"http://127.0.0.1:{port}/subscribe", data={"email": "proc@example.com"}, timeout=5
            ).status_code
            == 200
        )
        [confirmation] = [r.message for r in sink.wait_for(1, timeout=20)]
        link = re.search(r"/confirm/([A-Za-z0-9_.\-]+)", text_of(confirmation))
        assert link
        url = f"http://127.0.0.1:{port}/confirm/{link.group(1)}"
        assert httpx.get(url, timeout=5).status_code == 200  # the page with the button
        assert httpx.post(url, timeout=5).status_code == 200  # the button
        assert "ようこそ" in str(sink.wait_for(2, timeout=20)[1].message["Subject"])
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = []
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            outputs.append(proc.stdout.read() if proc.stdout else "")
            if proc.stdout:
                proc.stdout.close()
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert not any("Traceback" in o for o in outputs), outputs
