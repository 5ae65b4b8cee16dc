"""Jinja2 environment; a step's content placed in the `_base` layout; the MIME message to send.

A step's templates are its content alone. The layout `templates/mail/_base/` adds the header and
the footer (sender, postal address, contact, the right to refuse, the unsubscribe link, the
disclaimer), so no mail leaves without what 特定電子メール法 requires, whatever the step says.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import css_inline
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    select_autoescape,
)
from markupsafe import Markup

from mailer.config import Site
from mailer.i18n import translator
from mailer.sequences import Sequence, Step
from mailer.tokens import Tokens

_INLINER = css_inline.CSSInliner(keep_style_tags=True)  # keep <style> for @media rules
_URL_HEADERS = frozenset({"list-unsubscribe", "list-unsubscribe-post"})


class MailPolicy(EmailPolicy):
    """SMTP's policy, except that URL headers are folded between their <...> items, never
    RFC 2047-encoded: the email package encodes any word longer than a line, which breaks links."""

    def fold(self, name: str, value: str) -> str:
        if name.lower() in _URL_HEADERS:
            return f"{name}: " + ",\r\n ".join(part.strip() for part in value.split(",")) + "\r\n"
        return super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _URL_HEADERS:
            return self.fold(name, value).encode("ascii")
        return super().fold_binary(name, value)


MAIL_POLICY = MailPolicy(linesep="\r\n")


@dataclass(frozen=True)
class Recipient:
    delivery_id: int
    subscriber_id: int
    email: str
    name: str


@dataclass(frozen=True)
class Composed:
    """What a reader sees: the subject and the parts, already in the layout."""

    subject: str
    text: str
    html: str | None
    unsubscribe_url: str | None


def mail_environment(home: Path, site: Site, t: Callable[..., str]) -> Environment:
    env = Environment(
        loader=FileSystemLoader(home / "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,  # a typo in a variable fails `sequences check`, not a reader
        keep_trailing_newline=False,
        auto_reload=True,
    )
    env.globals["t"] = t
    env.globals["site"] = site
    return env


def _clean_header_text(value: str) -> str:
    """No control character reaches a header, whatever came in through an import or the API."""
    return "".join(ch for ch in value if ch.isprintable()).strip()


class MailTemplate:
    """One kind of mail (a step, the confirmation), compiled once and rendered per recipient."""

    def __init__(
        self,
        renderer: Renderer,
        folder: str,
        *,
        sequence: Sequence,
        step: Step | None,
        list_mail: bool,
    ) -> None:
        env = renderer.env
        self.renderer = renderer
        self.folder = folder
        self.sequence = sequence
        self.step = step
        self.list_mail = list_mail  # seminar and magazine mail: List-* headers and unsubscribe
        self.subject = env.get_template(f"{folder}/subject.txt")
        self.body_text = env.get_template(f"{folder}/body.txt")
        self.body_html: Template | None
        try:
            self.body_html = env.get_template(f"{folder}/body.html")
        except TemplateNotFound:
            self.body_html = None
        self.base_text = env.get_template("mail/_base/body.txt")
        self.base_html = env.get_template("mail/_base/body.html")

    def compose(self, recipient: Recipient, **extra: Any) -> Composed:
        r = self.renderer
        t = r.t
        unsubscribe_url = None
        if self.list_mail:
            token = r.tokens.unsubscribe(recipient.subscriber_id, recipient.delivery_id or None)
            unsubscribe_url = f"{r.base_url}/unsubscribe/{token}"
        context = {
            "name": recipient.name or t("reader"),
            "sequence": self.sequence,
            "step": self.step,
            "unsubscribe_url": unsubscribe_url,
            **extra,
        }
        subject = " ".join(self.subject.render(context).split())
        text = self.base_text.render(context, content=self.body_text.render(context).strip())
        html = None
        if self.body_html is not None:
            content = Markup(self.body_html.render(context))  # noqa: S704 (autoescaped template output)
            html = _INLINER.inline(self.base_html.render(context, content=content, subject=subject))
        return Composed(subject=subject, text=text, html=html, unsubscribe_url=unsubscribe_url)

    def message(self, recipient: Recipient, now: datetime, **extra: Any) -> EmailMessage:
        composed = self.compose(recipient, **extra)
        r = self.renderer
        sender = r.site.sender
        msg = EmailMessage(policy=MAIL_POLICY)
        msg["From"] = Address(display_name=sender.name, addr_spec=sender.address)
        msg["To"] = Address(display_name=_clean_header_text(recipient.name), addr_spec=recipient.email)
        msg["Subject"] = composed.subject
        msg["Date"] = format_datetime(now)
        msg["Message-ID"] = r.message_id(recipient.delivery_id)
        if composed.unsubscribe_url:
            token = composed.unsubscribe_url.rsplit("/", 1)[1]
            mailto = f"mailto:{sender.unsubscribe_mailto}?subject={quote('unsubscribe ' + token)}"
            msg["List-Id"] = f"{_clean_header_text(self.sequence.title)} <{self.sequence.id}.{sender.domain}>"
            msg["List-Unsubscribe"] = f"<{composed.unsubscribe_url}>, <{mailto}>"
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
        # base64 keeps Japanese 7-bit clean for any relay (quoted-printable would triple it).
        msg.set_content(composed.text, charset="utf-8", cte="base64")
        if composed.html is not None:
            msg.add_alternative(composed.html, subtype="html", charset="utf-8", cte="base64")
        return msg

    def render(self, recipient: Recipient, now: datetime, **extra: Any) -> bytes:
        return self.message(recipient, now, **extra).as_bytes()


class Renderer:
    """Templates compiled once per process; `step()` and `confirm()` are cached per seminar file."""

    def __init__(self, site: Site, base_url: str, tokens: Tokens, secret_key: str) -> None:
        self.site = site
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.t = translator(site.locale)
        self.env = mail_environment(site.home, site, self.t)
        # Message-IDs are deterministic per delivery (a re-send carries the same one) and unique
        # to this installation, without revealing how many mails it has sent to whom.
        self._msgid_key = hashlib.sha256(secret_key.encode()).digest()

    def message_id(self, delivery_id: int) -> str:
        tag = hmac.new(self._msgid_key, str(delivery_id).encode(), "sha256").hexdigest()[:12]
        return f"<{delivery_id}.{tag}@{self.site.sender.domain}>"

    def step(self, sequence: Sequence, step: Step) -> MailTemplate:
        return MailTemplate(
            self, f"mail/{sequence.id}/{step.id}", sequence=sequence, step=step, list_mail=True
        )

    def confirm(self, sequence: Sequence) -> MailTemplate:
        return MailTemplate(self, "mail/_confirm", sequence=sequence, step=None, list_mail=False)


def missing_footer_items(composed: Composed, site: Site) -> list[str]:
    """What the law requires in every list mail and this one lacks, in the text or the HTML part."""
    sender = site.sender
    required = {
        "the sender's name": sender.name,
        "the postal address": sender.postal_address,
        "the contact": sender.contact,
        "the disclaimer": sender.disclaimer,
        "the unsubscribe link": composed.unsubscribe_url or "",
    }
    missing = []
    for part_name, body in (("text", composed.text), ("HTML", composed.html)):
        if body is None:
            continue
        for label, value in required.items():
            needle = value if part_name == "text" else str(Markup.escape(value))
            if value and needle not in body:
                missing.append(f"{label} in the {part_name} part")
    return missing
