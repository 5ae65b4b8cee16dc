"""A reader drives the sign-up, confirmation and unsubscribe pages in headless Chromium."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from sqlalchemy import select

from mailer.db import session_scope
from mailer.models import Subscriber
from tests.helpers import CONFIRM_LINK, text_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mailer.runtime import Runtime
    from tests.conftest import Sink

pytestmark = pytest.mark.browser

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
UNSUBSCRIBE_LINK = re.compile(r"https?://\S+/unsubscribe/[A-Za-z0-9_.\-]+")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no calls to the (closed) network
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page() -> Iterator[Page]:
    """A Chromium tab in New York with a Japanese locale."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(timezone_id="America/New_York", locale="ja-JP")
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def subscribers(runtime: Runtime) -> list[Subscriber]:
    with session_scope(runtime.sessions) as session:
        rows = list(session.scalars(select(Subscriber)))
        session.expunge_all()
        return rows


@sqlite_only
def test_reader_signs_up_confirms_and_unsubscribes(
    page: Page, live: str, runtime: Runtime, sink: Sink
) -> None:
    """A reader can sign up, confirm by the page's button and leave in a real browser; their time zone is kept."""
    address = "hanako@example.com"
    page.goto(f"{live}/")
    page.fill("#email", address)
    page.fill("#name", "山田 花子")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("確認メールをお送りしました")

    runtime.tick(runtime.clock)
    [confirmation] = sink.to(address)
    link = CONFIRM_LINK.search(text_of(confirmation))
    assert link, "no confirmation link in the mail"
    page.goto(link.group(0))
    expect(page.locator("h1")).to_have_text("登録の確認")
    assert [s.state for s in subscribers(runtime)] == ["pending"]
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("登録が完了しました")
    page.goto(link.group(0))
    expect(page.locator("h1")).to_have_text("登録は完了しています")
    [reader] = subscribers(runtime)
    assert (reader.name, reader.timezone) == ("山田 花子", "America/New_York")

    runtime.tick(runtime.clock)
    _, welcome = sink.to(address)
    unsubscribe = UNSUBSCRIBE_LINK.search(text_of(welcome))
    assert unsubscribe, "no unsubscribe link in the welcome mail's footer"
    page.goto(unsubscribe.group(0))
    page.click("button")
    expect(page.locator("h1")).to_have_text("配信を停止しました")
    assert [s.state for s in subscribers(runtime)] == ["unsubscribed"]
    page.goto(unsubscribe.group(0))
    expect(page.locator("h1")).to_have_text("配信は停止済みです")


@sqlite_only
def test_blocked_provider_is_refused_by_name(page: Page, live: str, runtime: Runtime, sink: Sink) -> None:
    """A blocked provider is refused by name on the page, and nothing is stored or sent."""
    address = "taro..yamada@docomo.ne.jp"
    page.goto(f"{live}/")
    page.fill("#email", address)
    page.click("button[type=submit]")
    expect(page.locator("#error[role=alert]")).to_contain_text("docomo")
    expect(page.locator("#email")).to_have_value(address)

    runtime.tick(runtime.clock)
    assert subscribers(runtime) == []
    assert sink.received == []
