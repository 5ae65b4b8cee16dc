"""`/archive`: the back numbers of the magazine, as anyone on the web sees them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from mailer.runtime import Runtime
from tests.conftest import Clock, Sink
from tests.magazine import create, issue_folder, readers, start

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def sent_issue(rt: Runtime, home: Path, clock: Clock, name: str, *, archive: bool = True) -> int:
    issue = create(rt, issue_folder(home, name), clock(), archive=archive)
    start(rt, issue, clock())
    rt.tick(clock)
    rt.tick(clock)
    clock.now += timedelta(days=7)
    return issue


@sqlite_only
def test_only_issues_sent_for_the_archive_are_listed_newest_first(
    runtime: Runtime, sink: Sink, live: str, home: Path, clock: Clock
) -> None:
    """Sent issues created with --archive are listed, newest first; a draft, a private issue and
    one still on its way are not, and their pages answer 404 like an unknown id."""
    readers(runtime, 2, clock())
    older = sent_issue(runtime, home, clock, "2026-11")
    private = sent_issue(runtime, home, clock, "private", archive=False)
    newer = sent_issue(runtime, home, clock, "2026-12")
    draft = create(runtime, issue_folder(home, "draft"), clock(), archive=True)
    page = httpx.get(f"{live}/archive", timeout=10)
    assert page.status_code == 200
    assert "メルマガのバックナンバー" in page.text
    assert page.text.index(f'href="/archive/{newer}"') < page.text.index(f'href="/archive/{older}"')
    assert f"/archive/{private}" not in page.text
    assert f"/archive/{draft}" not in page.text
    for hidden in (private, draft, 999):
        assert httpx.get(f"{live}/archive/{hidden}", timeout=10).status_code == 404
    assert len(sink.received) == 6


@sqlite_only
def test_an_archived_issue_shows_no_reader_and_no_link_of_theirs(
    runtime: Runtime, sink: Sink, live: str, home: Path, clock: Clock
) -> None:
    """The issue page has the content for a neutral reader: no name, no unsubscribe token, no
    address, and no footer of a reader's mail."""
    readers(runtime, 1, clock())
    issue = sent_issue(runtime, home, clock, "2026-12")
    page = httpx.get(f"{live}/archive/{issue}", timeout=10).text
    assert "読者さん、こんにちは。" in page
    assert "読者さんへ WEBビジネス通信 12月号" in page
    assert "読者0" not in page
    assert "/unsubscribe/" not in page
    assert "@" not in page.replace(runtime.site.sender.contact, "")
    mail = sink.received[0].message
    assert "読者0さん" in str(mail["Subject"])  # the reader's own copy was personal


@sqlite_only
def test_the_archive_is_in_english_on_an_english_site(
    runtime: Runtime, live: str, home: Path, clock: Clock
) -> None:
    """With `locale = "en"` the archive's own words are English (the issue stays as written)."""
    site = home / "mailer.toml"
    site.write_text(
        site.read_text(encoding="utf-8").replace('locale = "ja"', 'locale = "en"'), encoding="utf-8"
    )
    from mailer.web.app import create_app
    from tests.conftest import serve
    from tests.services import free_port

    english = Runtime(runtime.settings.model_copy(), clock=clock)
    with serve(create_app(english), free_port()) as url:
        page = httpx.get(f"{url}/archive", timeout=10).text
    english.close()
    assert "Back numbers of the mail magazine" in page
    assert "No back numbers are published yet." in page
