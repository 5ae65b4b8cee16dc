"""/outbox for a newcomer: every stored mail readable whatever its headers, dates in the site's
zone, addresses kept whole, the list refreshing itself while empty, the HTML framed safely."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from email.header import decode_header, make_header
from pathlib import Path

import pytest

from mailer.web.outbox import FRAME_POLICY
from tests.conftest import Clock
from tests.local_site import LocalSite, local_site

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# Accepted by the form (no control character, no < >), and an encoded word hiding CR LF Bcc:.
ENCODED_LOOKING = "=?utf-8?q?x=0D=0ABcc:_x@y.z?="


@pytest.fixture
def site(home: Path, database_url: str, clock: Clock) -> Iterator[LocalSite]:
    with local_site(home, database_url, clock) as served:
        yield served


def keys(site: LocalSite) -> list[str]:
    return [p.name.split(":")[0] for sub in ("new", "cur") for p in (site.folder / sub).iterdir()]


def header_names(page: str) -> list[str]:
    return re.findall(r"<tr><th>([^<]*)</th>", page)


def test_a_name_that_looks_like_an_encoded_word_stays_the_name_typed(site: LocalSite) -> None:
    """Such a name is written so no parser decodes it; the outbox lists and shows it as typed."""
    site.sign_up("named@example.com", name=ENCODED_LOOKING)
    [key] = keys(site)
    raw = site.box().get_bytes(key)
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert mail["To"].addresses[0].display_name == ENCODED_LOOKING
    assert "Bcc" not in mail
    old_style = email.message_from_bytes(raw, policy=email.policy.compat32)
    # The other decoder of the standard library (RFC 2047 words alone) reads the literal text too.
    assert str(make_header(decode_header(str(old_style["To"])))) == f"{ENCODED_LOOKING} <named@example.com>"

    listing = site.get("/outbox")
    assert listing.status_code == 200
    assert ENCODED_LOOKING in listing.text
    page = site.get(f"/outbox/{key}")
    assert page.status_code == 200
    assert ENCODED_LOOKING in page.text
    assert "Bcc" not in header_names(page.text)
    assert "\r" not in page.text
    assert "x\nBcc" not in page.text


BROKEN = {
    # What the engine wrote before names were encoded: the email package decodes it to CR LF.
    "quoted-word": b'To: "=?utf-8?q?x=0D=0ABcc:_x@y.z?=" <old@example.com>\nSubject: old\n\nbody\n',
    "subject-word": b"To: a@example.com\nSubject: =?utf-8?q?hi=0D=0ABcc:_v@x.y?=\n\nbody\n",
    "bad-words": b"To: =?utf-8?b?!!!?= <a@example.com>\nSubject: =?x-unknown?q?abc?=\n\nbody\n",
    "bad-address": b'To: <<<@@>>>, "unclosed\nSubject: s\n\nbody\n',
    "bad-date": b"To: a@example.com\nDate: the day after tomorrow\nSubject: s\n\nbody\n",
    "eight-bit": b"To: \xff\xfe <a@example.com>\nSubject: caf\xc3\xa9 \xff\n\nbody \xff\n",
    "charset": (
        b'To: a@example.com\nSubject: s\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="b"\n\n'
        b'--b\nContent-Type: text/plain; charset="x-unknown"\n\nplain\n'
        b'--b\nContent-Type: text/html; charset="x-unknown"\n\n<p>html</p>\n--b--\n'
    ),
    "no-headers": b"\n\njust a body\n",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_no_stored_mail_breaks_the_outbox(site: LocalSite, name: str) -> None:
    """Whatever a stored mail's headers, the list and its page answer 200, with nothing injected."""
    key = site.box().add(BROKEN[name])
    listing = site.get("/outbox")
    assert listing.status_code == 200
    assert f"/outbox/{key}" in listing.text
    page = site.get(f"/outbox/{key}")
    assert page.status_code == 200
    for text in (listing.text, page.text):
        assert "\r" not in text
        assert "Bcc" not in header_names(text)
    frame = site.get(f"/outbox/{key}/html")
    assert frame.status_code in {200, 404}
    if name == "quoted-word":  # shown as written, not decoded
        assert ENCODED_LOOKING in listing.text
        assert ENCODED_LOOKING in page.text


def test_dates_are_shown_in_the_site_zone(site: LocalSite, clock: Clock) -> None:
    """A mail written at 01:00 UTC is listed at 10:00 in Tokyo, the default seminar's zone."""
    site.sign_up("date@example.com")
    assert clock.now.hour == 1
    assert "2026-12-01 10:00 JST" in site.get("/outbox").text


def test_an_empty_outbox_refreshes_itself_until_mail_arrives(site: LocalSite) -> None:
    """A newcomer who just signed up sees the confirmation appear without reloading."""
    refresh = '<meta http-equiv="refresh" content="2">'
    assert refresh in site.get("/outbox").text
    site.sign_up("wait@example.com")
    listing = site.get("/outbox").text
    assert refresh not in listing
    assert "wait@example.com" in listing


def test_addresses_are_never_broken_across_lines(site: LocalSite) -> None:
    """Each listed address is one unbreakable piece of text."""
    site.sign_up("a-rather-long-address.of-a-reader@example.com", name="山田 花子")
    listing = site.get("/outbox").text
    assert (
        '山田 花子 <span class="address">&lt;a-rather-long-address.of-a-reader@example.com&gt;</span>'
        in listing
    )
    assert re.search(r"\.address \{[^}]*white-space: nowrap", site.get("/static/site.css").text)


def test_the_mails_html_is_framed_without_scripts_and_opens_links_on_top(site: LocalSite) -> None:
    """The HTML part comes from its own URL: only the outbox may frame it, no script runs in it,
    and its links (the confirm button) open in the outbox's tab, where the reader's pages work."""
    site.sign_up("frame@example.com")
    [key] = keys(site)
    page = site.get(f"/outbox/{key}").text
    [frame_tag] = re.findall(r"<iframe[^>]*>", page)
    assert f'src="/outbox/{key}/html"' in frame_tag
    sandbox = re.search(r'sandbox="([^"]*)"', frame_tag)
    assert sandbox
    assert "allow-scripts" not in sandbox.group(1)
    assert "allow-same-origin" not in sandbox.group(1)

    frame = site.get(f"/outbox/{key}/html")
    assert frame.status_code == 200
    assert frame.headers["Content-Security-Policy"] == FRAME_POLICY
    assert frame.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "script-src" not in FRAME_POLICY
    assert "default-src 'none'" in FRAME_POLICY
    assert "sandbox" in FRAME_POLICY
    assert "frame-ancestors 'self'" in FRAME_POLICY
    assert re.search(r"<head>\s*<base target=\"_top\">", frame.text)
    assert "/confirm/" in frame.text
    # Elsewhere the pages still may not be framed at all.
    assert site.get(f"/outbox/{key}").headers["X-Frame-Options"] == "DENY"


def test_a_text_only_mail_has_no_frame(site: LocalSite) -> None:
    """No HTML part: no frame on its page and a 404 at the frame's URL."""
    key = site.box().add(b"To: a@example.com\nSubject: plain\n\ntext only\n")
    assert "<iframe" not in site.get(f"/outbox/{key}").text
    assert site.get(f"/outbox/{key}/html").status_code == 404
