"""The `mailer` command as an operator runs it: clear output, one-line errors, non-zero exits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SECRET, Sink
from tests.helpers import run_mailer, step_subjects


def test_sequences_check_passes_on_the_example(home: Path) -> None:
    """The repository's example seminar and site pass the operator's check."""
    result = run_mailer(home, "sequences", "check")
    assert result.returncode == 0, result.stderr
    assert "ok: 2 seminars, 7 steps" in result.stdout


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.replace('id = "lesson-3"\nday = 5', 'id = "lesson-3"\nday = 2'),
            ":22: step 'lesson-3': day 2 is smaller than day 3",
        ),
        (
            lambda t: t.replace('id = "lesson-1"\nday = 1', 'id = "lesson-1"\ndya = 1'),
            "step 'lesson-1': unknown key 'dya'",
        ),
        (
            lambda t: t.replace('send_at = "09:00"', 'send_at = "9am"'),
            "send_at '9am' is not a time",
        ),
        (lambda t: t.replace('title = "', "title = "), "web-business.toml:2: not valid TOML"),
    ],
)
def test_a_broken_seminar_file_is_named_with_line_and_step(home: Path, edit, expected: str) -> None:  # type: ignore[no-untyped-def]
    """A broken file fails the check with the file, the line, the step and what is wrong; no traceback."""
    path = home / "sequences" / "web-business.toml"
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    result = run_mailer(home, "sequences", "check")
    assert result.returncode == 1
    assert "web-business.toml" in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_template_error_is_named(home: Path) -> None:
    """An unknown variable or a missing template fails the check naming the step and the file."""
    body = home / "templates" / "mail" / "web-business" / "lesson-2" / "body.txt"
    body.write_text("{{ nmae }}さん", encoding="utf-8")
    (home / "templates" / "mail" / "web-business" / "lesson-4" / "subject.txt").unlink()
    result = run_mailer(home, "sequences", "check")
    assert result.returncode == 1
    assert "step 'lesson-2'" in result.stderr
    assert "'nmae' is undefined" in result.stderr
    assert "lesson-4/subject.txt" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_layout_without_the_legal_footer_fails_the_check(home: Path) -> None:
    """Removing the postal address or the unsubscribe link from the layout fails every step."""
    base = home / "templates" / "mail" / "_base" / "body.txt"
    text = base.read_text(encoding="utf-8")
    base.write_text(
        text.replace("{{ site.sender.postal_address }}", "").replace("{{ unsubscribe_url }}", ""),
        encoding="utf-8",
    )
    result = run_mailer(home, "sequences", "check")
    assert result.returncode == 1
    assert "the footer lacks the postal address in the text part" in result.stderr
    assert "the footer lacks the unsubscribe link in the text part" in result.stderr


def test_site_without_sender_identity_is_refused(home: Path) -> None:
    """A mailer.toml without the postal address stops every command with one clear line."""
    site = home / "mailer.toml"
    site.write_text(
        "\n".join(
            line
            for line in site.read_text(encoding="utf-8").splitlines()
            if not line.startswith("postal_address")
        ),
        encoding="utf-8",
    )
    result = run_mailer(home, "sequences", "check")
    assert result.returncode == 1
    assert "[sender] lacks postal_address" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [("sequences", "check"), ("tick",)])
def test_a_wrong_value_in_the_site_file_is_one_line(home: Path, command: tuple[str, ...]) -> None:
    """A string where mailer.toml wants a number stops the command with one line naming file and key."""
    site = home / "mailer.toml"
    site.write_text(
        site.read_text(encoding="utf-8").replace("batch_size = 200", 'batch_size = "many"'), encoding="utf-8"
    )
    result = run_mailer(home, *command)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {site}: delivery.batch_size: expected a whole number, got 'many'"
    )
    assert "Traceback" not in result.stdout


def test_preview_renders_a_step_for_a_sample_subscriber(home: Path, tmp_path: Path) -> None:
    """Preview prints the subject and the text in its layout, or writes the HTML to a file."""
    result = run_mailer(home, "sequences", "preview", "web-business", "lesson-2")
    assert result.returncode == 0, result.stderr
    subject = next(s for s, step in step_subjects(home).items() if step == "lesson-2")
    assert f"Subject: {subject}" in result.stdout
    assert "山田 太郎さん" in result.stdout
    assert "〒150-0001" in result.stdout
    out = tmp_path / "preview.html"
    assert (
        run_mailer(home, "sequences", "preview", "web-business", "lesson-2", "--html", str(out)).returncode
        == 0
    )
    assert "<!DOCTYPE html>" in out.read_text(encoding="utf-8")
    missing = run_mailer(home, "sequences", "preview", "web-business", "nope")
    assert missing.returncode == 1
    assert "has no step 'nope'" in missing.stderr


def test_tick_and_stats(home: Path, sink: Sink) -> None:
    """`tick --now` sends what is due then; `stats --json` counts subscribers and deliveries."""
    from mailer.config import Settings
    from mailer.runtime import Runtime
    from tests.helpers import at, join

    db = f"sqlite:///{home / 'mailer.db'}"
    rt = Runtime(Settings(_env_file=None, database_url=db, home=home, smtp_url=sink.url, secret_key=SECRET))  # type: ignore[call-arg]
    rt.upgrade_db()
    join(rt, sink, "cli@example.com", at("2026-12-01 10:00"))
    rt.close()
    result = run_mailer(home, "tick", "--now", "2026-12-02T09:00:00+09:00", db=db, smtp=sink.url)
    assert result.returncode == 0, result.stderr
    assert "planned 1, sent 1" in result.stdout
    assert [step_subjects(home).get(str(m["Subject"])) for m in sink.to("cli@example.com")][-1] == "lesson-1"
    stats = json.loads(run_mailer(home, "stats", "--json", db=db).stdout)
    assert stats["subscribers"] == {"confirmed": 1}
    assert stats["enrolments"] == [
        {"sequence": "web-business", "state": "active", "next_step": "lesson-2", "count": 1}
    ]
    sent = {(d["kind"], d["step"]): d["count"] for d in stats["deliveries"] if d["state"] == "sent"}
    assert sent == {("confirm", None): 1, ("step", "welcome"): 1, ("step", "lesson-1"): 1}
    table = run_mailer(home, "stats", db=db)
    assert table.returncode == 0
    assert "lesson-1" in table.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("tick", "--now", "yesterday"), "is not an ISO-8601 time"),
        (("tick", "--now", "[/x]"), "--now '[/x]' is not an ISO-8601 time"),
        (("sequences", "preview", "nope", "welcome"), "no seminar 'nope'"),
    ],
)
def test_bad_arguments_give_one_clear_line(home: Path, args: tuple[str, ...], expected: str) -> None:
    """Wrong input exits non-zero with one line saying what is wrong, never a traceback."""
    result = run_mailer(home, *args)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_environment_is_one_clear_line(home: Path) -> None:
    """A malformed SMTP URL or an unreachable database is reported in one line, no traceback."""
    result = run_mailer(home, "tick", smtp="http://nope")
    assert result.returncode == 1
    assert "MAILER_SMTP_URL" in result.stderr
    result = run_mailer(home, "db", "upgrade", db="postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_command_has_help(home: Path) -> None:
    """`mailer --help` lists the commands and each has its own --help."""
    top = run_mailer(home, "--help")
    assert top.returncode == 0
    for command in ("run", "web", "worker", "beat", "db", "sequences", "tick", "stats"):
        assert command in top.stdout
        assert run_mailer(home, command, "--help").returncode == 0


def imported(home: Path, *args: str) -> set[str]:
    """The top-level packages `mailer ARGS` imports (Python's own -X importtime report)."""
    done = run_mailer(home, *args, python=("-X", "importtime"))
    assert done.returncode == 0, done.stderr
    lines = [
        line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
    ]
    return {name.split(".")[0] for name in lines}


def test_help_and_an_empty_tick_import_only_what_they_use(home: Path) -> None:
    """`mailer --help` loads no database, web, Celery or rich code; an empty tick on a current
    schema loads no web server, no Celery and no Alembic (each costs a short command its start)."""
    heavy = {"sqlalchemy", "celery", "kombu", "fastapi", "starlette", "uvicorn", "jinja2", "alembic"}
    assert imported(home, "--help") & (heavy | {"rich", "pydantic"}) == set()
    assert run_mailer(home, "db", "upgrade").returncode == 0
    assert imported(home, "tick") & {"celery", "kombu", "fastapi", "starlette", "uvicorn", "alembic"} == set()
