"""The skeleton of a mail: the bytes every reader's copy shares, prebuilt once per template and
batch, and one reader's mail assembled from them with their own parts (name, links).

Building an `EmailMessage` per reader costs hundreds of microseconds; this costs a few. The bytes
are what the email package writes for the same mail (tests compare the two).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import string
from datetime import datetime
from email.headerregistry import Address
from email.policy import EmailPolicy
from email.utils import format_datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from mailer.mail.compose import Composed, MailTemplate, Recipient

_URL_HEADERS = frozenset({"list-unsubscribe", "list-unsubscribe-post"})


class MailPolicy(EmailPolicy):
    """SMTP's policy, except that URL headers are folded between their <...> items, never
    RFC 2047-encoded: the email package encodes any word longer than a line, which breaks links."""

    def fold(self, name: str, value: str) -> str:
        if name.lower() in _URL_HEADERS:
            return f"{name}: " + ",\r\n ".join(part.strip() for part in value.split(",")) + "\r\n"
        return str(super().fold(name, value))

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _URL_HEADERS:
            return self.fold(name, value).encode("ascii")
        return super().fold_binary(name, value)


# refold_source="none": a header set as written (`set_raw`, the literal names below) is written so.
MAIL_POLICY = MailPolicy(linesep="\r\n", refold_source="none")
SMTPUTF8_POLICY = MAIL_POLICY.clone(utf8=True)  # headers in UTF-8, for a relay that offers SMTPUTF8


def clean_header_text(value: str) -> str:
    """No control character reaches a header, whatever came in through an import or the API."""
    return "".join(ch for ch in value if ch.isprintable()).strip()


def list_unsubscribe(url: str, mailto: str) -> str:
    token = url.rsplit("/", 1)[1]
    return f"<{url}>, <mailto:{mailto}?subject={quote('unsubscribe ' + token)}>"


def _fold(name: str, value: str) -> bytes:
    return MAIL_POLICY.fold_binary(name, MAIL_POLICY.header_factory(name, value))


def _base64(text: str) -> bytes:
    """What the email package writes for a text part: CRLF lines, base64 in lines of 76."""
    data = b"\r\n".join(text.encode("utf-8").splitlines()) + b"\r\n"
    encoded = binascii.b2a_base64(data, newline=False)
    return b"".join([encoded[i : i + 76] + b"\r\n" for i in range(0, len(encoded), 76)])


_ATEXT = frozenset(string.ascii_letters + string.digits + " !#$%&'*+-/=?^_`{|}~")
_WORD_BYTES = 45  # base64 of 45 bytes is 60 characters: "=?utf-8?b?" + 60 + "?=" is 72, within 75


def literal_words(text: str) -> list[str]:
    """`text` as RFC 2047 encoded words (base64 of its UTF-8), each within RFC 2047's 75
    characters and none splitting a character. Readers join adjacent words without the space
    between them (RFC 2047 6.2), so they show `text` exactly."""
    chunks = [b""]
    for ch in text:
        data = ch.encode()
        if len(chunks[-1]) + len(data) > _WORD_BYTES:
            chunks.append(b"")
        chunks[-1] += data
    return [f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=" for chunk in chunks]


def _fold_words(field: str, tokens: list[str]) -> str:
    """Tokens joined by spaces, folded so no line is longer than 78 characters where it can be."""
    lines: list[str] = []
    line = ""
    for token in tokens:
        if line and len(field) + 2 + len(line) + 1 + len(token) > 78:
            lines.append(line)
            line = ""
        line = f"{line} {token}" if line else token
    lines.append(line)
    return "\r\n ".join(lines)


def literal_mailbox(name: str, address: str) -> str:
    """The value of `To:` for a name that contains `=?`, folded within 78 characters a line.

    Written as it stands, or quoted, such a name is an encoded word to the parsers that decode
    one wherever it appears (Python's email package does, even inside quotes): a reader who
    typed `=?utf-8?q?x=0D=0ABcc:_x@y.z?=` would be shown CR LF and a Bcc line, or break the
    page that lists the mail. As an encoded word itself, its decoding is the literal text.
    The email package has no way to write it so: both paths write this value as given."""
    return _fold_words("To", [*literal_words(name), f"<{address}>"])


def literal_text(field: str, text: str) -> str:
    """The value of an unstructured header (Subject) that contains `=?`, as encoded words of
    its literal text. A subject template that names the reader would otherwise let their name
    decode into CR LF and write a header of its own (the email package re-folds what it
    decoded as it stands)."""
    return _fold_words(field, literal_words(text))


def subject_header(subject: str) -> bytes:
    """`Subject:` as the email package writes it when it is ASCII; otherwise as encoded words of
    its literal text, which a reader's client shows the same. A subject that names the reader
    (「{{ name }}さんへ」, common in a magazine) is folded for every mail: the email package takes
    some 600 µs for that, these words some 10 µs."""
    if "=?" in subject or not subject.isascii():
        return f"Subject: {literal_text('Subject', subject)}\r\n".encode("ascii")
    return _fold("Subject", subject)


def _mailbox(name: str, address: str) -> bytes:
    """`To:` for one reader, as the email package writes it; its folding only for long lines."""
    name = clean_header_text(name)
    if "=?" in name:
        return f"To: {literal_mailbox(name, address)}\r\n".encode("ascii")
    if not name:
        line = address
    elif name.isascii() and set(name) <= _ATEXT:
        line = f"{name} <{address}>"
    elif name.isascii():
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        line = f'"{quoted}" <{address}>'
    else:
        line = f"=?utf-8?b?{base64.b64encode(name.encode()).decode('ascii')}?= <{address}>"
    if len(line) <= 74:  # "To: " + line within 78 characters: nothing to fold
        return f"To: {line}\r\n".encode("ascii")
    return _fold("To", str(Address(display_name=name, addr_spec=address)))


class Skeleton:
    """The bytes every mail of one template shares, and the assembly of one mail from them."""

    def __init__(self, template: MailTemplate) -> None:
        sender = template.renderer.site.sender
        self.sender = sender
        self.head = _fold("From", str(Address(display_name=sender.name, addr_spec=sender.address)))
        self.list_id = _fold("List-Id", template.list_id) if template.list_mail else b""
        self.one_click = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        self.boundary = f"==============={secrets.randbelow(10**19)}==".encode("ascii")
        self._subject: tuple[str, bytes] = ("", b"")
        self._date: tuple[datetime | None, bytes] = (None, b"")

    def assemble(
        self, template: MailTemplate, recipient: Recipient, composed: Composed, now: datetime
    ) -> bytes:
        if self._subject[0] != composed.subject:  # the same for every reader unless it names them
            self._subject = (composed.subject, subject_header(composed.subject))
        if self._date[0] != now:
            self._date = (now, f"Date: {format_datetime(now)}\r\n".encode("ascii"))
        parts = [
            self.head,
            _mailbox(recipient.name, recipient.email),
            self._subject[1],
            self._date[1],
            f"Message-ID: {template.renderer.message_id(recipient.delivery_id)}\r\n".encode("ascii"),
        ]
        if composed.unsubscribe_url:
            unsubscribe = list_unsubscribe(composed.unsubscribe_url, self.sender.unsubscribe_mailto)
            parts += [
                self.list_id,
                MAIL_POLICY.fold_binary("List-Unsubscribe", unsubscribe),
                self.one_click,
            ]
        text = _base64(composed.text)
        if composed.html is None:
            parts += [
                b'Content-Type: text/plain; charset="utf-8"\r\n',
                b"Content-Transfer-Encoding: base64\r\nMIME-Version: 1.0\r\n\r\n",
                text,
            ]
            return b"".join(parts)
        b = self.boundary
        parts += [
            b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary="' + b + b'"\r\n\r\n',
            b"--" + b + b'\r\nContent-Type: text/plain; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            text,
            b"\r\n--" + b + b'\r\nContent-Type: text/html; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            _base64(composed.html),
            b"\r\n--" + b + b"--\r\n",
        ]
        return b"".join(parts)
