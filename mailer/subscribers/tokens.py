"""Signed tokens for links: they carry ids, encrypted, never an address; confirm tokens expire.

A token is `<payload>.<signature>` (a confirm token also has itsdangerous' timestamp between them).
The payload is the two ids as one 128-bit block through a keyed permutation, base64 without padding:
anyone can decode the base64, nobody without the secret key learns the ids from it, so a link tells
nothing of the list's size or growth. Every token has the same length, whatever its ids. The signature
is checked before the block is decrypted, so a tampered token is refused before any lookup.

Tokens made before the ids were encrypted (`[id, id]` in base64 JSON) are still read: an unsubscribe
link never expires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass

from itsdangerous import (
    BadData,
    Signer,
    TimestampSigner,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)

_HALVES = struct.Struct(">QQ")
_ID_LIMIT = 2**64
_ROUNDS = 4  # Luby-Rackoff: four Feistel rounds of a pseudorandom function give a strong permutation


@dataclass(frozen=True)
class ConfirmClaim:
    enrolment_id: int
    nonce: int


@dataclass(frozen=True)
class UnsubscribeClaim:
    subscriber_id: int
    delivery_id: int | None  # the mail the link came in: which step people leave at


class _Permutation:
    """A keyed permutation of pairs of 64-bit ids: a Feistel network with HMAC-SHA256 rounds."""

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def _round(self, index: int, half: int) -> int:
        mac = self._mac.copy()  # the key's pads are computed once, not per round
        mac.update(index.to_bytes(1, "big") + half.to_bytes(8, "big"))
        return int.from_bytes(mac.digest()[:8], "big")

    def encrypt(self, left: int, right: int) -> bytes:
        if not (0 <= left < _ID_LIMIT and 0 <= right < _ID_LIMIT):
            raise ValueError("a token carries ids from 0 to 2**64 - 1")
        for index in range(_ROUNDS):
            left, right = right, left ^ self._round(index, right)
        return _HALVES.pack(left, right)

    def decrypt(self, block: bytes) -> tuple[int, int]:
        left, right = _HALVES.unpack(block)
        for index in reversed(range(_ROUNDS)):
            left, right = right ^ self._round(index, left), left
        return left, right


def _encode(block: bytes) -> bytes:
    return base64.urlsafe_b64encode(block).rstrip(b"=")


def _decode(payload: bytes) -> bytes | None:
    try:
        block = base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        return None
    return block if len(block) == _HALVES.size else None


class Tokens:
    def __init__(self, secret_key: str) -> None:
        secret = secret_key.encode()
        # Each kind of token has its own signing salt and its own permutation: a confirm token can
        # neither unsubscribe anyone nor be read as the other kind.
        self._confirm = TimestampSigner(secret_key, salt="mailer.confirm.v2")
        self._unsubscribe = Signer(secret_key, salt="mailer.unsubscribe.v2")
        self._confirm_ids = _Permutation(hmac.digest(secret, b"mailer.confirm.ids", "sha256"))
        self._unsubscribe_ids = _Permutation(hmac.digest(secret, b"mailer.unsubscribe.ids", "sha256"))
        # The first format, `[id, id]` in plain base64 JSON: read, never written.
        self._legacy_confirm = URLSafeTimedSerializer(secret_key, salt="mailer.confirm")
        self._legacy_unsubscribe = URLSafeSerializer(secret_key, salt="mailer.unsubscribe")

    def confirm(self, enrolment_id: int, nonce: int) -> str:
        return self._confirm.sign(_encode(self._confirm_ids.encrypt(enrolment_id, nonce))).decode()

    def read_confirm(self, token: str, max_age_seconds: int) -> ConfirmClaim | None:
        """None for a tampered or expired token; a reused one is caught by its nonce."""
        try:
            block = _decode(self._confirm.unsign(token, max_age=max_age_seconds))
        except (BadData, UnicodeError):
            # A link mailed before the ids were encrypted; gone once confirm_days have passed.
            return self._read_legacy_confirm(token, max_age_seconds)
        if block is None:
            return None
        return ConfirmClaim(*self._confirm_ids.decrypt(block))

    def unsubscribe(self, subscriber_id: int, delivery_id: int | None) -> str:
        """A token for the link in the mail `delivery_id` (None, or 0, for a link outside any mail)."""
        # Unsubscribe links never expire: a mail read a year later must still work (RFC 8058).
        block = self._unsubscribe_ids.encrypt(subscriber_id, delivery_id or 0)
        return self._unsubscribe.sign(_encode(block)).decode()

    def read_unsubscribe(self, token: str) -> UnsubscribeClaim | None:
        try:
            block = _decode(self._unsubscribe.unsign(token))
        except (BadData, UnicodeError):
            # A link mailed before the ids were encrypted: it must keep working for good.
            return self._read_legacy_unsubscribe(token)
        if block is None:
            return None
        subscriber_id, delivery_id = self._unsubscribe_ids.decrypt(block)
        return UnsubscribeClaim(subscriber_id, delivery_id or None)

    def _read_legacy_confirm(self, token: str, max_age_seconds: int) -> ConfirmClaim | None:
        try:
            enrolment_id, nonce = self._legacy_confirm.loads(token, max_age=max_age_seconds)
        except (BadData, ValueError, TypeError):
            return None
        if not isinstance(enrolment_id, int) or not isinstance(nonce, int):
            return None
        return ConfirmClaim(enrolment_id, nonce)

    def _read_legacy_unsubscribe(self, token: str) -> UnsubscribeClaim | None:
        try:
            subscriber_id, delivery_id = self._legacy_unsubscribe.loads(token)
        except (BadData, ValueError, TypeError):
            return None
        if not isinstance(subscriber_id, int) or not (delivery_id is None or isinstance(delivery_id, int)):
            return None
        return UnsubscribeClaim(subscriber_id, delivery_id)
