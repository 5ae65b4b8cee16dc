"""What a newcomer hit at the command line: a taken port, output cut at 80 columns."""

from __future__ import annotations

import socket
import time
import tomllib
from pathlib import Path

from tests.helpers import run_mailer
from tests.services import free_port


def test_mailer_run_on_a_taken_port_fails_before_anything_starts(home: Path) -> None:
    """`mailer run` on a port in use says so in one line and exits 1 before a worker or a tick runs."""
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        started = time.monotonic()
        result = run_mailer(home, "run", "--port", str(port), columns=None)
    assert result.returncode == 1
    assert time.monotonic() - started < 15
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (home / "mailer.db").exists(), "the database was touched before the port was checked"


def test_piped_output_keeps_each_line_whole(home: Path) -> None:
    """Piped, `sequences check` prints each error on one line, however long, and `preview` keeps
    the footer's lines as the reader gets them."""
    step = home / "templates" / "mail" / "web-business" / "lesson-1" / "body.txt"
    step.write_text(
        "{{ a_variable_name_long_enough_to_push_the_line_past_eighty_columns }}", encoding="utf-8"
    )
    result = run_mailer(home, "sequences", "check", columns=None)
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if "lesson-1" in line]
    assert len(line) > 80
    assert "a_variable_name_long_enough_to_push_the_line_past_eighty_columns" in line

    preview = run_mailer(home, "sequences", "preview", "web-business", "welcome", columns=None)
    assert preview.returncode == 0, preview.stderr
    disclaimer = tomllib.loads((home / "mailer.toml").read_text(encoding="utf-8"))["sender"]["disclaimer"]
    assert len(disclaimer) * 2 > 80, "the disclaimer fits in 80 columns: the check would prove nothing"
    assert f"※{disclaimer}" in preview.stdout.splitlines()
    [link] = [line for line in preview.stdout.splitlines() if "/unsubscribe/" in line]
    assert link.split("/unsubscribe/")[1].strip(), "the unsubscribe link was cut from its token"
