"""SMTP through smtplib: one connection for many messages, and the only place smtplib errors are
translated (4xx and lost connections are transient, 5xx permanent)."""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from functools import partial

from mailer.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from mailer.send import M
from mailer.send.replies import classify

log = logging.getLogger(__name__)


# A line that starts with "." must be doubled (RFC 5321 4.5.2); our own mail never has one.
_DOT_LINE = re.compile(rb"(?:^|\n)\.")
PROBE_TIMEOUT = 5.0  # seconds for the one session that asks whether the relay offers SMTPUTF8
IDLE_CHECK = 10.0  # a pooled session idle longer than this is checked with NOOP before use
IDLE_LIMIT = 240.0  # and one idle longer than this is closed: relays drop idle sessions at 300 s


class SMTPConnection:
    """A session with the relay, opened on first use and again after the server drops it.

    One mail is one transaction. When the server offers PIPELINING (RFC 2920), MAIL, RCPT and DATA
    go out in one write, and a mail's content goes out with the next mail's envelope: one round
    trip a mail. Any refusal inside a transaction is followed by RSET.
    """

    def __init__(self, transport: SMTPTransport) -> None:
        self.t = transport
        self.client: smtplib.SMTP | None = None
        self.used = time.monotonic()
        # DATA answered 354 and the content not yet sent: the server reads anything as the mail
        # now, so a session left so (its sender stopped midway) is closed without a word.
        self.in_data = False

    def _connect(self) -> smtplib.SMTP:
        t = self.t
        try:
            return t.open_client()
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
        self.in_data = False

    def refresh(self) -> None:
        """After sitting in the pool: close a long-idle session, check a fairly idle one."""
        if self.in_data:
            self._drop()
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

    def send_many(self, sender: str, mails: Iterable[M]) -> Iterator[tuple[M, DeliveryError | None]]:
        """Each mail in turn, yielded with None once the server has accepted it, or with its error.

        `mails` is read one ahead: the next mail is taken before this one's reply is in, so that
        its envelope can travel with this one's content.
        """
        queue = iter(mails)
        mail = next(queue, None)
        started: bool | DeliveryError = False  # for `mail`: its DATA answered 354, or refused
        while mail is not None:
            if not (sender.isascii() and mail.recipient.isascii()):
                utf8 = partial(
                    self._sendmail_utf8, sender=sender, recipient=mail.recipient, message=mail.message
                )
                yield mail, self._attempt(utf8)
                mail, started = next(queue, None), False
                continue
            if started is False:
                refused = self._attempt(partial(self._envelope, sender=sender, recipient=mail.recipient))
                started = True if refused is None else refused
            if isinstance(started, DeliveryError):
                yield mail, started
                mail, started = next(queue, None), False
                continue
            following = next(queue, None)
            envelope = b""
            if following is not None and following.recipient.isascii() and self._pipelining():
                envelope = _envelope_commands(sender, following.recipient)
            error, started = self._finish(mail.message, envelope)
            yield mail, error
            mail = following

    def _pipelining(self) -> bool:
        return self.client is not None and bool(self.client.has_extn("pipelining"))

    def _attempt(self, action: Callable[[smtplib.SMTP], None]) -> DeliveryError | None:
        """`action` on the session, opened if need be, and once more on a new session if the
        server had closed a reused one (or ended it with 421) before taking anything; its error
        returned, not raised."""
        fresh = self.client is None
        try:
            try:
                self._run(action)
            except _NotStartedError as exc:
                if fresh:
                    return _lost(exc)
                self._run(action)
        except _NotStartedError as again:
            return _lost(again)
        except DeliveryError as error:
            return error
        finally:
            self.used = time.monotonic()
        return None

    def _run(self, action: Callable[[smtplib.SMTP], None]) -> None:
        if self.client is None:
            self.client = self._connect()
        try:
            action(self.client)
        except _NotStartedError:
            self._drop()
            raise

    def _envelope(self, client: smtplib.SMTP, sender: str, recipient: str) -> None:
        """MAIL, RCPT and DATA for a mail, up to the server's 354; a refusal raised after RSET."""
        commands = _envelope_commands(sender, recipient)
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
        self._check_envelope(client, replies)
        self.in_data = True

    def _check_envelope(self, client: smtplib.SMTP, replies: list[tuple[int, bytes]]) -> None:
        refusal = next(((c, m) for c, m in replies[:2] if c not in {250, 251}), None)
        if refusal is None and replies[2:] and replies[2][0] != 354:
            refusal = replies[2]
        if refusal is None and len(replies) == 3:
            return
        try:
            if len(replies) == 3 and replies[2][0] == 354:  # DATA taken after all: end it empty
                client.send(b".\r\n")
                client.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise TransientDeliveryError(f"smtp: connection lost: {exc}") from exc
        code, text = refusal or replies[-1]
        self._reset(code)
        if code == 421:  # the server ends the session (a limit of mails per session, a restart)
            raise _NotStartedError from classify(code, text)
        raise classify(code, text)

    def _finish(self, message: bytes, envelope: bytes) -> tuple[DeliveryError | None, bool | DeliveryError]:
        """The content of the mail whose DATA the server took, then the next mail's `envelope`
        in the same write. This mail's error or None; then True if the next mail's DATA was taken
        too, its refusal, or False when it must start over (nothing sent, or the session lost)."""
        client = self.client
        assert client is not None  # _envelope() left the session open at 354
        if message.startswith(b".") or b"\n." in message:  # never in our own mail: no regex
            message = _DOT_LINE.sub(lambda m: m.group(0) + b".", message)
        end = b".\r\n" if message.endswith(b"\r\n") else b"\r\n.\r\n"
        try:
            client.send(message + end + envelope)
            self.in_data = False
            code, text = client.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            return TransientDeliveryError(f"smtp: connection lost: {exc}"), False
        finally:
            self.used = time.monotonic()
        error = None if code == 250 else classify(code, text)
        if not envelope or code == 421:  # 421: the server is closing; nothing more went through
            if error is not None:
                self._reset(code)
            return error, False
        # The reply ended this transaction whatever it said (RFC 5321 4.1.1.4): no RSET, which
        # would cancel the envelope already sent behind it.
        try:
            replies = [client.getreply() for _ in range(3)]
            self._check_envelope(client, replies)
        except DeliveryError as refused:
            return error, refused
        except (_NotStartedError, OSError, smtplib.SMTPException):
            self._drop()  # the next mail starts over on a new session
            return error, False
        self.in_data = True
        return error, True

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
        except smtplib.SMTPNotSupportedError as exc:  # no SMTPUTF8 here: trying again changes nothing
            raise PermanentDeliveryError(
                "smtp: the relay does not offer SMTPUTF8, which this address needs"
            ) from exc
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
        if self.client is not None and not self.in_data:
            with suppress(OSError, smtplib.SMTPException):
                self.client.quit()
        self._drop()


def _envelope_commands(sender: str, recipient: str) -> bytes:
    return f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode("ascii")


class _NotStartedError(Exception):
    """The session was gone before the server took any part of this mail."""


def _lost(exc: _NotStartedError) -> DeliveryError:
    """What a mail that never started reports: the server's 421, or the lost connection."""
    if isinstance(exc.__cause__, DeliveryError):
        return exc.__cause__
    return TransientDeliveryError(f"smtp: connection lost: {exc.__cause__}")


class SMTPTransport:
    """The relay, with a pool of sessions this process reuses from one task to the next."""

    def __init__(  # noqa: PLR0913 (keyword-only: the parts of MAILER_SMTP_URL)
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
        self._smtputf8: bool | None = None  # as the relay's last EHLO said; None: not asked yet

    def open_client(self, timeout: float | None = None) -> smtplib.SMTP:
        """A new client session: connected, TLS as configured, logged in; closed if any of it fails."""
        context = ssl.create_default_context(cafile=self.cafile)
        client: smtplib.SMTP | None = None
        timeout = timeout or self.timeout
        try:
            if self.ssl:
                client = smtplib.SMTP_SSL(self.host, self.port, timeout=timeout, context=context)
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=timeout)
            client.ehlo()
            if self.starttls:
                client.starttls(context=context)
                client.ehlo()
            self._smtputf8 = client.has_extn("smtputf8")
            if self.username:
                client.login(self.username, self.password or "")
        except BaseException:
            if client is not None:
                with suppress(OSError, smtplib.SMTPException):
                    client.close()
            raise
        return client

    def offers_smtputf8(self) -> bool:
        """As the relay's last EHLO said; asked once with a session of its own when no session has
        said yet (a web process sends nothing). A relay that cannot be reached now counts as
        offering it: most do, and a mail it then refuses fails at once, not eight times."""
        if self._smtputf8 is None:
            try:
                self.open_client(timeout=PROBE_TIMEOUT).quit()
            except (OSError, smtplib.SMTPException):
                log.warning("smtp.probe_failed")
                return True
        return bool(self._smtputf8)

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
