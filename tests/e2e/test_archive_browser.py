"""The magazine's back numbers in headless Chromium: the list, one issue, under the pages' policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from mailer.runtime import Runtime
from tests.conftest import Clock, Sink
from tests.e2e.test_browser import CHROMIUM_ARGS
from tests.integration.test_archive import sent_issue
from tests.magazine import readers

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

SCREENSHOT = Path("/tmp/archive.png")


@pytest.fixture
def page_and_violations() -> Iterator[tuple[Page, list[str]]]:
    """A Chromium tab with a Japanese locale, and what it reported blocked by the page policy."""
    violations: list[str] = []

    def watch(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(locale="ja-JP", viewport={"width": 800, "height": 900})
        try:
            tab = context.new_page()
            tab.on("console", watch)
            yield tab, violations
        finally:
            context.close()
            browser.close()


def test_a_reader_browses_the_back_numbers_and_opens_an_issue(
    page_and_violations: tuple[Page, list[str]],
    runtime: Runtime,
    sink: Sink,
    live: str,
    home: Path,
    clock: Clock,
) -> None:
    """The archive lists the sent issues, newest first; an issue opens with its content for a
    neutral reader, in Japanese, and nothing on the pages breaks their policy."""
    page, violations = page_and_violations
    readers(runtime, 2, clock())
    sent_issue(runtime, home, clock, "2026-11")
    sent_issue(runtime, home, clock, "2026-12")
    page.goto(f"{live}/archive")
    expect(page.get_by_role("heading", name="メルマガのバックナンバー")).to_be_visible()
    links = page.locator("ul.archive a")
    expect(links).to_have_count(2)
    links.first.click()
    expect(page.get_by_role("heading", name="読者さんへ WEBビジネス通信 12月号")).to_be_visible()
    expect(page.locator("article.issue")).to_contain_text(
        "今月は「読まれるメルマガの書き方」をお届けします。"
    )
    expect(page.locator("body")).not_to_contain_text("読者0")
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.get_by_role("link", name="バックナンバー一覧に戻る").click()
    expect(page).to_have_url(f"{live}/archive")
    assert violations == []
