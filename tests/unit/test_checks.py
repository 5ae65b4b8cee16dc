"""What `sequences check` finds, called as a function: the example passes, each fault gets its line."""

from __future__ import annotations

from pathlib import Path

from mailer.config import load_site
from mailer.mail.compose import Renderer
from mailer.seminars.checks import CheckResult, check, sample_recipient
from mailer.subscribers.tokens import Tokens
from tests.conftest import SECRET


def run_check(home: Path) -> CheckResult:
    """The check over `home`, with the renderer a process would build from it."""
    site = load_site(home)
    renderer = Renderer(site, "http://localhost:8000", Tokens(SECRET), SECRET)
    return check(home, site, renderer)


def step_folder(home: Path, step: str) -> Path:
    return home / "templates" / "mail" / "web-business" / step


def test_the_example_site_passes_with_its_counts(home: Path) -> None:
    """The repository's site has no errors: two seminars, seven steps rendered."""
    result = run_check(home)
    assert result.ok
    assert result == CheckResult(errors=(), seminars=2, steps=7)


def test_a_broken_template_is_named_and_not_counted(home: Path) -> None:
    """An undefined variable gives one line naming the folder, the step and the seminar."""
    (step_folder(home, "lesson-2") / "body.txt").write_text("{{ nmae }}さん", encoding="utf-8")
    result = run_check(home)
    where = step_folder(home, "lesson-2")
    line = f"{where}: step 'lesson-2' of 'web-business': UndefinedError: 'nmae' is undefined"
    assert result.errors == (line,)
    assert result.steps == 6


def test_a_footer_lacking_an_item_gives_a_line_per_step(home: Path) -> None:
    """A layout without the postal address in the text part fails every step that uses it."""
    base = home / "templates" / "mail" / "_base" / "body.txt"
    text = base.read_text(encoding="utf-8")
    base.write_text(text.replace("{{ site.sender.postal_address }}", ""), encoding="utf-8")
    result = run_check(home)
    assert (
        f"{step_folder(home, 'welcome')}: step 'welcome': the footer lacks the postal address in the text part"
        in result.errors
    )
    assert len(result.errors) == 7
    assert result.steps == 7


def test_an_empty_subject_is_named(home: Path) -> None:
    """A step whose subject renders empty gives a line naming its subject.txt."""
    (step_folder(home, "lesson-3") / "subject.txt").write_text("\n", encoding="utf-8")
    result = run_check(home)
    assert result.errors == (
        f"{step_folder(home, 'lesson-3')}/subject.txt: step 'lesson-3': the subject is empty",
    )


def test_the_sample_reader_is_named_in_the_site_language() -> None:
    """Check and preview render for a sample reader with a local name and no real ids."""
    sample = sample_recipient("ja")
    assert (sample.delivery_id, sample.subscriber_id, sample.name) == (0, 0, "山田 太郎")
