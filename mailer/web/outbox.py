"""/outbox: the maildir shown as a mail client would, only to requests from this machine."""

from __future__ import annotations

import email
import email.policy
import ipaddress
from email.message import EmailMessage
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from mailer.send.maildir import MaildirTransport
from mailer.web.pages import Pages


def is_local(host: str | None) -> bool:
    """A request from this machine (loopback), the only kind allowed to read the outbox."""
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def _summary(key: str, msg: EmailMessage) -> dict[str, Any]:
    return {
        "key": key,
        "subject": str(msg["Subject"] or ""),
        "to": str(msg["To"] or ""),
        "date": str(msg["Date"] or ""),
    }


def mount(app: FastAPI, transport: MaildirTransport, pages: Pages) -> None:
    def local(request: Request) -> bool:
        return is_local(request.client.host if request.client else None)

    @app.get("/outbox", response_class=HTMLResponse)
    def outbox_list(request: Request) -> Response:
        if not local(request):
            return pages.message("notfound.title", "", 404)
        transport.box()  # creates the folders on a fresh install
        # A maildir message is a file in new/ or cur/; its key is the name before any ":2,flags".
        stamped = [
            (p.stat().st_mtime, p) for sub in ("new", "cur") for p in (transport.folder / sub).iterdir()
        ]
        newest = sorted(stamped, key=lambda pair: pair[0], reverse=True)[:200]  # parse only what is shown
        items = [_summary(p.name.split(":")[0], _parse(p.read_bytes())) for _, p in newest]
        return pages.page("outbox.html", items=items)

    @app.get("/outbox/{key}", response_class=HTMLResponse)
    def outbox_message(request: Request, key: str) -> Response:
        if not local(request):
            return pages.message("notfound.title", "", 404)
        box = transport.box()
        try:
            raw = box.get_bytes(key)
        except KeyError:
            return pages.message("notfound.title", "", 404)
        msg = _parse(raw)
        text_part = msg.get_body(("plain",))
        html_part = msg.get_body(("html",))
        return pages.page(
            "outbox_message.html",
            subject=str(msg["Subject"] or ""),
            headers=[(name, str(value)) for name, value in msg.items()],
            text=text_part.get_content() if text_part else "",
            html=html_part.get_content() if html_part else None,
        )
