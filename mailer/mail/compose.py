"""Jinja2 environment; a mail's content placed in the `_base` layout and composed for each reader.

A step's templates are its content alone. The layout `templates/mail/_base/` adds the header and
the footer (sender, postal address, contact, the right to refuse, the unsubscribe link, the
disclaimer), so no mail leaves without what 特定電子メール法 requires, whatever the step says.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

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
from mailer.mail.skeleton import (
    MAIL_POLICY,
    SMTPUTF8_POLICY,
    Skeleton,
    clean_header_text,
    list_unsubscribe,
    literal_mailbox,
    literal_text,
)
from mailer.seminars.sequences import Sequence, Step
from mailer.subscribers.tokens import Tokens

_INLINER = css_inline.CSSInliner(keep_style_tags=True)  # keep <style> for @media rules


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


def _plain(value: str) -> bool:
    """A value the shared rendering can take as is: no edge whitespace, no control characters."""
    return value == value.strip() and value.isprintable()


@dataclass(frozen=True)
class Slotted:
    """A mail's content rendered with a placeholder for each reader's own values."""

    composed: Composed
    marks: dict[str, str]  # slot -> placeholder

    def fill(self, values: dict[str, str]) -> Composed:
        c = self.composed
        subject, text, html = c.subject, c.text, c.html
        for slot, mark in self.marks.items():
            value = values[slot]
            subject = subject.replace(mark, value)
            text = text.replace(mark, value)
            if html is not None:
                html = html.replace(mark, str(Markup.escape(value)))
        return Composed(" ".join(subject.split()), text, html, values.get("unsubscribe_url"))


class MailTemplate:
    """One kind of mail (a step, the confirmation), compiled once and rendered per recipient.

    The content is rendered once with placeholders for each reader's name and links, checked to
    treat them as plain text (a template that transforms them is rendered per reader instead),
    then filled per reader; the MIME message is assembled from prebuilt bytes. Building an
    `EmailMessage` per reader (`message()`) gives the same mail, parsed, some 50 times slower.
    """

    def __init__(
        self,
        renderer: Renderer,
        folder: str,
        *,
        sequence: Sequence,
        step: Step | None,
        list_mail: bool,
        sources: Mapping[str, str | None] | None = None,
    ) -> None:
        env = renderer.env
        self.renderer = renderer
        self.folder = folder
        self.sequence = sequence
        self.step = step
        self.list_mail = list_mail  # seminar and magazine mail: List-* headers and unsubscribe
        self.body_html: Template | None
        if sources is not None:  # a magazine issue: its files as they were when it was created
            self.subject = env.from_string(sources["subject.txt"] or "")
            self.body_text = env.from_string(sources["body.txt"] or "")
            html = sources.get("body.html")
            self.body_html = env.from_string(html) if html is not None else None
        else:
            self.subject = env.get_template(f"{folder}/subject.txt")
            self.body_text = env.get_template(f"{folder}/body.txt")
            try:
                self.body_html = env.get_template(f"{folder}/body.html")
            except TemplateNotFound:
                self.body_html = None
        self.base_text = env.get_template("mail/_base/body.txt")
        self.base_html = env.get_template("mail/_base/body.html")
        self._html_path = renderer.site.home / "templates" / folder / "body.html"
        self._shared: dict[tuple[tuple[str, Any], ...], Slotted | None] = {}
        self._skeleton: Skeleton | None = None

    def up_to_date(self) -> bool:
        """No template file it was built from has changed since (nor has a body.html appeared)."""
        templates = (self.subject, self.body_text, self.body_html, self.base_text, self.base_html)
        if not all(t.is_up_to_date for t in templates if t is not None):
            return False
        return self.body_html is not None or not self._html_path.exists()

    def values(self, recipient: Recipient, confirm_url: str | None = None) -> dict[str, str]:
        """The reader's own values, by slot."""
        r = self.renderer
        values = {"name": recipient.name or r.t("reader")}
        if self.list_mail:
            token = r.tokens.unsubscribe(recipient.subscriber_id, recipient.delivery_id or None)
            values["unsubscribe_url"] = f"{r.base_url}/unsubscribe/{token}"
        if confirm_url is not None:
            values["confirm_url"] = confirm_url
        return values

    def compose(self, recipient: Recipient, **extra: Any) -> Composed:
        values = self.values(recipient, extra.pop("confirm_url", None))
        shared = self.shared(tuple(values), extra)
        if shared is None or not all(_plain(v) for v in values.values()):
            return self.compose_fully(values, extra)
        return shared.fill(values)

    def shared(self, slots: tuple[str, ...], constants: dict[str, Any]) -> Slotted | None:
        """The content with placeholders, for these slots and constants; None if the template
        does more with a reader's value than print it (a filter, a test on its text)."""
        key = (*((slot, None) for slot in slots), *sorted(constants.items()))
        if key not in self._shared:
            one = {slot: f"mailerslot{n}a{secrets.token_hex(6)}" for n, slot in enumerate(slots)}
            two = {slot: f"mailerslot{n}b{secrets.token_hex(6)}" for n, slot in enumerate(slots)}
            first = Slotted(self.compose_fully(one, constants), one)
            second = self.compose_fully(two, constants)
            filled = first.fill(two)
            same = (filled.subject, filled.text, filled.html) == (second.subject, second.text, second.html)
            self._shared[key] = first if same else None
        return self._shared[key]

    def compose_fully(self, values: dict[str, str], constants: dict[str, Any]) -> Composed:
        """Render every template for these values: what a reader sees, in the layout."""
        context = {"sequence": self.sequence, "step": self.step, "unsubscribe_url": None}
        context |= constants | values
        subject = " ".join(self.subject.render(context).split())
        text = self.base_text.render(context, content=self.body_text.render(context).strip())
        html = None
        if self.body_html is not None:
            content = Markup(self.body_html.render(context))  # noqa: S704 (autoescaped template output)
            html = _INLINER.inline(self.base_html.render(context, content=content, subject=subject))
        return Composed(subject, text, html, values.get("unsubscribe_url"))

    def render(self, recipient: Recipient, now: datetime, **extra: Any) -> bytes:
        """The mail for this reader, as the bytes handed to SMTP."""
        if not recipient.email.isascii():  # an SMTPUTF8 address: the email package's way
            return self.message(recipient, now, **extra).as_bytes()
        composed = self.compose(recipient, **extra)
        if self._skeleton is None:
            self._skeleton = Skeleton(self)
        return self._skeleton.assemble(self, recipient, composed, now)

    def message(self, recipient: Recipient, now: datetime, **extra: Any) -> EmailMessage:
        """The same mail built with the email package: the reference `render()` is tested against."""
        composed = self.compose(recipient, **extra)
        r = self.renderer
        sender = r.site.sender
        # An SMTPUTF8 address (RFC 6532) is written in UTF-8 headers, for a relay that offers it.
        msg = EmailMessage(policy=MAIL_POLICY if recipient.email.isascii() else SMTPUTF8_POLICY)
        msg["From"] = Address(display_name=sender.name, addr_spec=sender.address)
        name = clean_header_text(recipient.name)
        if "=?" in name:  # a name that reads as an encoded word: only written as given it stays a name
            msg.set_raw("To", literal_mailbox(name, recipient.email))
        else:
            local, _, domain = recipient.email.rpartition("@")  # addr_spec= refuses a non-ASCII local part
            msg["To"] = Address(display_name=name, username=local, domain=domain)
        if "=?" in composed.subject:  # it may hold a reader's name: never decoded into headers
            msg.set_raw("Subject", literal_text("Subject", composed.subject))
        else:
            msg["Subject"] = composed.subject
        msg["Date"] = format_datetime(now)
        msg["Message-ID"] = r.message_id(recipient.delivery_id)
        if composed.unsubscribe_url:
            msg["List-Id"] = self.list_id
            msg["List-Unsubscribe"] = list_unsubscribe(composed.unsubscribe_url, sender.unsubscribe_mailto)
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
        # base64 keeps Japanese 7-bit clean for any relay (quoted-printable would triple it).
        msg.set_content(composed.text, charset="utf-8", cte="base64")
        if composed.html is not None:
            msg.add_alternative(composed.html, subtype="html", charset="utf-8", cte="base64")
        return msg

    @property
    def list_id(self) -> str:
        domain = self.renderer.site.sender.domain
        return f"{clean_header_text(self.sequence.title)} <{self.sequence.id}.{domain}>"


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
        # Built once and kept while its seminar and its files stay as they were: building one
        # (its shared rendering, its skeleton) costs milliseconds, and a rush of sign-ups sends
        # many small batches of the same confirmation.
        self._templates: dict[str, MailTemplate] = {}

    def message_id(self, delivery_id: int) -> str:
        """`<tag@domain>`, the tag a keyed hash of the delivery: the id itself stays out of sight."""
        # 96 bits: among ten million deliveries the chance of any two sharing a tag is below 1e-15.
        mac = hmac.new(self._msgid_key, b"mailer.message-id:%d" % delivery_id, "sha256")
        return f"<{mac.hexdigest()[:24]}@{self.site.sender.domain}>"

    def step(self, sequence: Sequence, step: Step) -> MailTemplate:
        return self._template(f"mail/{sequence.id}/{step.id}", sequence, step, list_mail=True)

    def broadcast(self, magazine: Sequence, name: str, sources: Mapping[str, str | None]) -> MailTemplate:
        """A magazine issue: its own templates, in the magazine's layout and under its List-Id."""
        return MailTemplate(
            self, f"broadcast/{name}", sequence=magazine, step=None, list_mail=True, sources=sources
        )

    def confirm(self, sequence: Sequence) -> MailTemplate:
        return self._template(f"mail/_confirm:{sequence.id}", sequence, None, list_mail=False)

    def _template(self, key: str, sequence: Sequence, step: Step | None, *, list_mail: bool) -> MailTemplate:
        kept = self._templates.get(key)
        # A reloaded catalog makes new Sequence objects: a template of the old one is rebuilt.
        if kept is None or kept.sequence is not sequence or kept.step is not step or not kept.up_to_date():
            folder = key.partition(":")[0]
            kept = MailTemplate(self, folder, sequence=sequence, step=step, list_mail=list_mail)
            self._templates[key] = kept
        return kept
