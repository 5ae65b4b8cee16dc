"""A newcomer on the embedded default, in headless Chromium: the form under the pages' policy, and
the confirmation read and clicked in /outbox."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright
from sqlalchemy import select

from mailer.db import session_scope
from mailer.models import Subscriber
from tests.conftest import Clock
from tests.e2e.test_browser import CHROMIUM_ARGS
from tests.local_site import LocalSite, local_site

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

SCREENSHOT = Path("/tmp/outbox.png")


@pytest.fixture
def site(home: Path, database_url: str, clock: Clock) -> Iterator[LocalSite]:
    with local_site(home, database_url, clock) as served:
        yield served


@pytest.fixture
def violations() -> list[str]:
    """What the browser reported as blocked by a Content-Security-Policy."""
    return []


@pytest.fixture
def page(violations: list[str]) -> Iterator[Page]:
    """A Chromium tab in New York with a Japanese locale."""

    def watch(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(timezone_id="America/New_York", locale="ja-JP")
        try:
            tab = context.new_page()
            tab.on("console", watch)
            yield tab
        finally:
            context.close()
            browser.close()


def test_the_form_records_the_browsers_zone_with_no_inline_script(
    page: Page, site: LocalSite, violations: list[str]
) -> None:
    """The time zone script, now a file of the site's own, still fills in the browser's zone."""
    page.goto(f"{site.url}/")
    page.fill("#email", "zone@example.com")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("確認メールをお送りしました")
    with session_scope(site.runtime.sessions) as session:
        assert session.scalars(select(Subscriber.timezone)).one() == "America/New_York"
    assert violations == []


def test_a_newcomer_confirms_with_the_button_inside_the_framed_mail(
    page: Page, site: LocalSite, violations: list[str]
) -> None:
    """The empty outbox shows the confirmation by itself; its button opens the confirm page in the
    outbox's tab (not a frame the page refuses)."""
    page.goto(f"{site.url}/outbox")
    expect(page.locator("main")).to_contain_text("まだメールはありません")
    site.sign_up("newcomer@example.com", name="山田 花子")
    link = page.locator("table.outbox a")
    expect(link).to_have_count(1, timeout=10_000)  # the page refreshed itself
    link.click()
    button = page.frame_locator("iframe").get_by_text("メールアドレスを確認する")
    expect(button).to_be_visible()
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    with page.expect_response(re.compile(r"/confirm/")) as answer:
        button.click()
    assert answer.value.status == 200
    page.wait_for_url(re.compile(r"/confirm/"))
    assert page.main_frame.url.startswith(f"{site.url}/confirm/")  # the tab, not the frame
    heading = page.locator("h1")
    expect(heading).to_be_visible()
    assert heading.inner_text() not in {"ページが見つかりません", "このリンクは使えません"}
    assert violations == []


def test_no_script_runs_in_the_framed_mail(page: Page, site: LocalSite) -> None:
    """A script in a mail's HTML stays text in the outbox: the frame runs none."""
    mail = (
        b'To: a@example.com\nSubject: script\nMIME-Version: 1.0\nContent-Type: text/html; charset="utf-8"\n\n'
        b"<html><head></head><body onload=\"document.body.dataset.loaded='yes'\"><p>hello</p>"
        b"<script>document.body.dataset.ran = 'yes';</script></body></html>\n"
    )
    key = site.box().add(mail)
    page.goto(f"{site.url}/outbox/{key}")
    frame = page.frame_locator("iframe")
    expect(frame.locator("p")).to_have_text("hello")
    body = frame.locator("body")
    assert body.get_attribute("data-ran") is None
    assert body.get_attribute("data-loaded") is None
