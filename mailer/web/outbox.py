"""/outbox: the maildir shown as a mail client would, only to requests from this machine.

Every stored mail is shown, whatever its headers: one the email package cannot parse, or one
that decodes to a control character (an encoded word hiding CR LF), is shown as it is written.
The HTML part is served apart, into a sandboxed frame where no script runs and a link opens in
the outbox's own tab.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from pathlib import Path
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from mailer.send.maildir import MaildirTransport
from mailer.web.local import local_only
from mailer.web.pages import Pages

log = logging.getLogger(__name__)

SHOWN = 200  # the newest mails listed; only these are parsed
POLICY = email.policy.default
# The frame's own policy: the mail's styles and images, nothing else; no script, no form, no plugin.
# `sandbox` again in the header, so the page is sandboxed even when opened outside the frame.
FRAME_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src * data:; font-src * data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; "
    "sandbox allow-popups allow-top-navigation-by-user-activation"
)
# Links in the mail open in the outbox's tab, as the reader's pages may not be framed.
_LINKS_ON_TOP = '<base target="_top">'
_HEAD = re.compile(r"<head\b[^>]*>", re.IGNORECASE)
_DOCTYPE = re.compile(r"\s*<!doctype[^>]*>", re.IGNORECASE)


def visible(text: str) -> str:
    """The text with whitespace as spaces and any other control character (or undecodable
    byte) as U+FFFD: nothing shown can pass for a line of its own."""
    return "".join(
        ch if ch.isprintable() else " " if ch.isspace() else "\N{REPLACEMENT CHARACTER}" for ch in text
    )


def header_text(name: str, raw: str) -> str:
    """A header as a mail client shows it, or as written (unfolded) when it does not decode to
    plain text."""
    try:
        value = str(POLICY.header_fetch_parse(name, raw))
    except Exception:
        value = "\n"  # not plain: the raw text below
    return value if value.isprintable() else visible("".join(raw.splitlines()))


def _mailboxes(msg: Message) -> list[tuple[str, str]]:
    """(display name, address) of each `To:` mailbox; the raw header as one name if it is odd."""
    raw = next((value for name, value in msg.raw_items() if name.lower() == "to"), "")
    try:
        header = POLICY.header_fetch_parse("To", raw)
        pairs = [(a.display_name, a.addr_spec) for a in header.addresses]
    except Exception:
        pairs = []
    if pairs and all(name.isprintable() and address.isprintable() for name, address in pairs):
        return pairs
    return [(header_text("To", raw), "")]


def local_date(msg: Message, zone: ZoneInfo) -> str:
    """The Date header in the site's zone, or as written when it is not a date."""
    raw = next((value for name, value in msg.raw_items() if name.lower() == "date"), "")
    try:
        moment: datetime = POLICY.header_fetch_parse("Date", raw).datetime
    except Exception:
        return header_text("Date", raw)
    if moment is None:
        return header_text("Date", raw)
    if moment.tzinfo is None:  # "-0000": UTC, place unknown (RFC 5322 3.3)
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def _content(msg: EmailMessage, subtype: str) -> str | None:
    """The text of the part a mail client would show for `subtype`; as written if it does not
    decode (an unknown charset, say)."""
    try:
        part = msg.get_body((subtype,))
    except Exception:
        return None
    if part is None:
        return None
    try:
        return str(part.get_content()).replace("\r\n", "\n")  # base64 keeps the mail's CRLF
    except Exception:
        log.warning("outbox.undecodable_part subtype=%s", subtype)
        payload = part.get_payload()
        return visible(payload) if isinstance(payload, str) else ""


@dataclass(frozen=True)
class Summary:
    key: str
    date: str
    to: list[tuple[str, str]]
    subject: str


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=POLICY)
    assert isinstance(message, EmailMessage)  # the default policy's message class
    return message


def subject_of(msg: Message) -> str:
    raw = next((value for name, value in msg.raw_items() if name.lower() == "subject"), "")
    return header_text("Subject", raw)


def summary(key: str, msg: Message, zone: ZoneInfo) -> Summary:
    return Summary(key, local_date(msg, zone), _mailboxes(msg), subject_of(msg))


def framed(html: str) -> str:
    """The mail's HTML with links opening in the outbox's tab (a `<base>` first in its head)."""
    found = _HEAD.search(html) or _DOCTYPE.match(html)
    at = found.end() if found else 0
    return html[:at] + _LINKS_ON_TOP + html[at:]


def newest(folder: Path) -> list[tuple[str, Path]]:
    """(key, file) of the newest mails; a maildir key is the file name before any ":2,flags"."""
    stamped = [(p.stat().st_mtime, p) for sub in ("new", "cur") for p in (folder / sub).iterdir()]
    return [(p.name.split(":")[0], p) for _, p in sorted(stamped, key=lambda pair: pair[0], reverse=True)]


def router(
    transport: MaildirTransport, pages: Pages, *, base_url: str, zone: Callable[[], ZoneInfo]
) -> APIRouter:
    """The outbox's routes, each behind the check that the request is this machine's own."""
    routes = APIRouter(default_response_class=HTMLResponse, dependencies=[Depends(local_only(base_url))])

    def read(key: str) -> EmailMessage | None:
        try:
            return parse(transport.box().get_bytes(key))
        except KeyError:
            return None

    @routes.get("/outbox")
    def outbox_list() -> Response:
        transport.box()  # creates the folders on a fresh install
        site_zone = zone()
        items = []
        for key, path in newest(transport.folder)[:SHOWN]:
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # a mail client moved it from new/ to cur/ meanwhile
                continue
            items.append(summary(key, parse(raw), site_zone))
        return pages.page("outbox.html", items=items)

    @routes.get("/outbox/{key}")
    def outbox_message(key: str) -> Response:
        msg = read(key)
        if msg is None:
            return pages.message("notfound.title", "", 404)
        return pages.page(
            "outbox_message.html",
            key=key,
            subject=subject_of(msg),
            headers=[(visible(name), header_text(name, value)) for name, value in msg.raw_items()],
            text=_content(msg, "plain") or "",
            html=_content(msg, "html") is not None,
        )

    @routes.get("/outbox/{key}/html")
    def outbox_frame(key: str) -> Response:
        msg = read(key)
        html = _content(msg, "html") if msg is not None else None
        if html is None:
            return pages.message("notfound.title", "", 404)
        headers = {
            "Content-Security-Policy": FRAME_POLICY,
            "X-Frame-Options": "SAMEORIGIN",  # the outbox's message page frames it; no one else
            "Cache-Control": "no-store",
        }
        return HTMLResponse(visible_html(framed(html)), headers=headers)

    return routes


def visible_html(html: str) -> str:
    """The HTML as UTF-8 can carry it: an undecodable byte becomes U+FFFD, not a 500."""
    return html.encode("utf-8", "replace").decode("utf-8")
