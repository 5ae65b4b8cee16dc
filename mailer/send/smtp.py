"""SMTP through smtplib: one connection for many messages, and the only place smtplib errors are
translated (4xx and lost connections are transient, 5xx permanent)."""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from mailer.errors import PermanentDeliveryError, TransientDeliveryError

log = logging.getLogger(__name__)


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def classify(code: int, message: bytes | str) -> TransientDeliveryError | PermanentDeliveryError:
    text = f"{code} {_text(message)}"
    if 400 <= code < 500:
        return TransientDeliveryError(text, code)
    return PermanentDeliveryError(text, code)


# A line that starts with "." must be doubled (RFC 5321 4.5.2); our own mail never has one.
_DOT_LINE = re.compile(rb"(?:^|\n)\.")
IDLE_CHECK = 10.0  # a pooled session idle longer than this is checked with NOOP before use
IDLE_LIMIT = 240.0  # and one idle longer than this is closed: relays drop idle sessions at 300 s


class SMTPConnection:
    """A session with the relay, opened on first use and again after the server drops it.

    One mail is one transaction: MAIL, RCPT and DATA go out in one write when the server offers
    PIPELINING (RFC 2920), else one by one; any refusal is followed by RSET.
    """

    def __init__(self, transport: SMTPTransport) -> None:
        self.t = transport
        self.client: smtplib.SMTP | None = None
        self.used = time.monotonic()

    def _open(self) -> smtplib.SMTP:
        t = self.t
        context = ssl.create_default_context(cafile=t.cafile)
        client: smtplib.SMTP | None = None
        try:
            if t.ssl:
                client = smtplib.SMTP_SSL(t.host, t.port, timeout=t.timeout, context=context)
            else:
                client = smtplib.SMTP(t.host, t.port, timeout=t.timeout)
            client.ehlo()
            if t.starttls:
                client.starttls(context=context)
                client.ehlo()
            if t.username:
                client.login(t.username, t.password or "")
        except BaseException:
            if client is not None:
                with suppress(OSError, smtplib.SMTPException):
                    client.close()
            raise
        return client

    def _connect(self) -> smtplib.SMTP:
        t = self.t
        try:
            return self._open()
        except smtplib.SMTPAuthenticationError as exc:
            raise TransientDeliveryError(f"smtp: login refused: {exc.smtp_code}", exc.smtp_code) from exc
        except smtplib.SMTPResponseException as exc:
            raise classify(exc.smtp_code, exc.smtp_error) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientDeliveryError(f"smtp: cannot connect to {t.host}:{t.port}: {exc}") from exc

    def _drop(self) -> None:
        if self.client is not None:
            with suppress(OSError, smtplib.SMTPException):
                self.client.close()
        self.client = None

    def refresh(self) -> None:
        """After sitting in the pool: close a long-idle session, check a fairly idle one."""
        if self.client is None:
            return
        idle = time.monotonic() - self.used
        if idle > IDLE_LIMIT:
            self.close()
        elif idle > IDLE_CHECK:
            try:
                code, _ = self.client.noop()
            except (OSError, smtplib.SMTPException):
                code = 0
            if code != 250:
                self._drop()

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        fresh = self.client is None
        if self.client is None:
            self.client = self._connect()
        try:
            self._transaction(self.client, sender, recipient, message)
        except _NotStartedError as exc:
            # The server had closed a reused session before taking anything: once more, anew.
            self._drop()
            if fresh:
                raise TransientDeliveryError(f"smtp: connection lost: {exc.__cause__}") from exc
            self.client = self._connect()
            try:
                self._transaction(self.client, sender, recipient, message)
            except _NotStartedError as again:
                self._drop()
                raise TransientDeliveryError(f"smtp: connection lost: {again.__cause__}") from again
        finally:
            self.used = time.monotonic()

    def _transaction(self, client: smtplib.SMTP, sender: str, recipient: str, message: bytes) -> None:
        if not (sender.isascii() and recipient.isascii()):
            self._sendmail_utf8(client, sender, recipient, message)
            return
        commands = f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode("ascii")
        try:
            if client.has_extn("pipelining"):
                client.send(commands)
                replies = [client.getreply() for _ in range(3)]
            else:
                replies = []
                for line in commands.splitlines(keepends=True):
                    client.send(line)
                    replies.append(reply := client.getreply())
                    if reply[0] >= 400:
                        break
        except smtplib.SMTPServerDisconnected as exc:
            raise _NotStartedError from exc
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise TransientDeliveryError(f"smtp: {exc}") from exc
        try:
            refusal = next(((c, m) for c, m in replies[:2] if c not in {250, 251}), None)
            if refusal is None and replies[2:] and replies[2][0] != 354:
                refusal = replies[2]
            if refusal is not None or len(replies) < 3:
                if len(replies) == 3 and replies[2][0] == 354:  # DATA taken after all: end it empty
                    client.send(b".\r\n")
                    client.getreply()
                code, text = refusal or replies[-1]
                self._reset(code)
                raise classify(code, text)
            if message.startswith(b".") or b"\n." in message:  # never in our own mail: no regex
                message = _DOT_LINE.sub(lambda m: m.group(0) + b".", message)
            end = b".\r\n" if message.endswith(b"\r\n") else b"\r\n.\r\n"
            client.send(message + end)
            code, text = client.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise TransientDeliveryError(f"smtp: connection lost: {exc}") from exc
        if code != 250:
            self._reset(code)
            raise classify(code, text)

    def _sendmail_utf8(self, client: smtplib.SMTP, sender: str, recipient: str, message: bytes) -> None:
        """An internationalised address: smtplib's own sendmail, with SMTPUTF8 (RFC 6531)."""
        try:
            client.sendmail(sender, [recipient], message, mail_options=["SMTPUTF8"])
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients[recipient]
            self._reset(code)
            raise classify(code, text) from exc
        except smtplib.SMTPServerDisconnected as exc:
            raise _NotStartedError from exc
        except smtplib.SMTPResponseException as exc:
            self._reset(exc.smtp_code)
            raise classify(exc.smtp_code, exc.smtp_error) from exc
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise TransientDeliveryError(f"smtp: {exc}") from exc

    def _reset(self, code: int) -> None:
        """RSET after a refusal, so the next MAIL FROM is not "503 sender already specified".
        A 421 means the server is closing the session: open a new one next time."""
        if self.client is None:
            return
        if code == 421:
            self._drop()
            return
        try:
            self.client.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def close(self) -> None:
        if self.client is not None:
            with suppress(OSError, smtplib.SMTPException):
                self.client.quit()
        self._drop()


class _NotStartedError(Exception):
    """The session was gone before the server took any part of this mail."""


class SMTPTransport:
    """The relay, with a pool of sessions this process reuses from one task to the next."""

    name = "smtp"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl: bool = False,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        cafile: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl
        self.starttls = starttls
        self.username = username
        self.password = password
        self.timeout = timeout
        self.cafile = cafile
        self._idle: list[SMTPConnection] = []
        self._lock = threading.Lock()

    @contextmanager
    def session(self) -> Iterator[SMTPConnection]:
        """A pooled session (each thread gets its own); back to the pool when the block ends."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = SMTPConnection(self)
        else:
            connection.refresh()
        try:
            yield connection
        except BaseException:
            connection.close()
            raise
        with self._lock:
            self._idle.append(connection)

    def close(self) -> None:
        """QUIT every idle session (a worker shutting down)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
