"""Signed tokens for links: they carry ids only, never an address; confirm tokens expire."""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer


@dataclass(frozen=True)
class ConfirmClaim:
    enrolment_id: int
    nonce: int


@dataclass(frozen=True)
class UnsubscribeClaim:
    subscriber_id: int
    delivery_id: int | None  # the mail the link came in: which step people leave at


class Tokens:
    def __init__(self, secret_key: str) -> None:
        self._confirm = URLSafeTimedSerializer(secret_key, salt="mailer.confirm")
        self._unsubscribe = URLSafeSerializer(secret_key, salt="mailer.unsubscribe")

    def confirm(self, enrolment_id: int, nonce: int) -> str:
        return self._confirm.dumps([enrolment_id, nonce])

    def read_confirm(self, token: str, max_age_seconds: int) -> ConfirmClaim | None:
        """None for a tampered or expired token; a reused one is caught by its nonce."""
        try:
            enrolment_id, nonce = self._confirm.loads(token, max_age=max_age_seconds)
        except (BadSignature, SignatureExpired, ValueError, TypeError):
            return None
        if not isinstance(enrolment_id, int) or not isinstance(nonce, int):
            return None
        return ConfirmClaim(enrolment_id, nonce)

    def unsubscribe(self, subscriber_id: int, delivery_id: int | None) -> str:
        # Unsubscribe links never expire: a mail read a year later must still work (RFC 8058).
        return self._unsubscribe.dumps([subscriber_id, delivery_id])

    def read_unsubscribe(self, token: str) -> UnsubscribeClaim | None:
        try:
            subscriber_id, delivery_id = self._unsubscribe.loads(token)
        except (BadSignature, ValueError, TypeError):
            return None
        if not isinstance(subscriber_id, int) or not (delivery_id is None or isinstance(delivery_id, int)):
            return None
        return UnsubscribeClaim(subscriber_id, delivery_id)
