"""Signed link tokens: ids only, unforgeable, confirm links expire and unsubscribe links do not."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.subscribers.tokens import ConfirmClaim, Tokens, UnsubscribeClaim

KEY = "unit-test-secret"
WEEK = 7 * 24 * 3600

# Made with KEY long ago (the confirm one carries a 2020-01-01 timestamp): links in old mails.
OLD_UNSUBSCRIBE = "WzQyLDdd.wUOC_c0kXDrMxUuEmUGHzAFoI9U"  # subscriber 42, delivery 7
OLD_CONFIRM = "WzUsOTld.XgvhAA.w8-j_4eeGyKXOKWcHhYUN0gVTS8"  # enrolment 5, nonce 99

ids = st.integers(min_value=1, max_value=2**63 - 1)


def tokens(key: str = KEY) -> Tokens:
    return Tokens(key)


def payload(token: str) -> object:
    """The JSON a token carries, as anyone holding the link could decode it."""
    part = token.split(".", maxsplit=1)[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def tamper(token: str, index: int) -> str:
    """`token` with the character at `index` replaced by another URL-safe one."""
    replacement = "B" if token[index] == "A" else "A"
    return token[:index] + replacement + token[index + 1 :]


def tamperable(token: str) -> list[int]:
    """Positions whose change alters the decoded bytes (the last of a segment may be padding)."""
    return [i for i, char in enumerate(token) if char != "." and i + 1 < len(token) and token[i + 1] != "."]


# --- Round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize(("enrolment_id", "nonce"), [(1, 0), (5, 99), (2**31, 123456), (10**15, 7)])
def test_confirm_token_round_trips_its_ids(enrolment_id: int, nonce: int) -> None:
    """A confirmation link brings back the enrolment and nonce it was made for."""
    token = tokens().confirm(enrolment_id, nonce)
    assert tokens().read_confirm(token, WEEK) == ConfirmClaim(enrolment_id, nonce)


@pytest.mark.parametrize(("subscriber_id", "delivery_id"), [(42, 7), (42, None), (10**15, 1)])
def test_unsubscribe_token_round_trips_its_ids(subscriber_id: int, delivery_id: int | None) -> None:
    """An unsubscribe link brings back the subscriber and the mail it came in."""
    token = tokens().unsubscribe(subscriber_id, delivery_id)
    assert tokens().read_unsubscribe(token) == UnsubscribeClaim(subscriber_id, delivery_id)


@given(enrolment_id=ids, nonce=ids, subscriber_id=ids, delivery_id=st.none() | ids)
def test_tokens_round_trip_any_ids(
    enrolment_id: int, nonce: int, subscriber_id: int, delivery_id: int | None
) -> None:
    """Any database ids survive the trip through a link."""
    t = tokens()
    assert t.read_confirm(t.confirm(enrolment_id, nonce), WEEK) == ConfirmClaim(enrolment_id, nonce)
    assert t.read_unsubscribe(t.unsubscribe(subscriber_id, delivery_id)) == UnsubscribeClaim(
        subscriber_id, delivery_id
    )


def test_tokens_carry_ids_only() -> None:
    """Decoded, a token holds the ids and nothing else: no address can leak through a link."""
    confirm = tokens().confirm(5, 99)
    unsubscribe = tokens().unsubscribe(42, 7)
    assert payload(confirm) == [5, 99]
    assert payload(unsubscribe) == [42, 7]
    assert "@" not in confirm + unsubscribe


def test_tokens_are_url_safe() -> None:
    """Tokens go in URL paths as they are."""
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    for token in (tokens().confirm(2**40, 2**40), tokens().unsubscribe(2**40, None)):
        assert set(token) <= allowed


# --- Forgery -----------------------------------------------------------------------------------


def test_tampered_confirm_token_reads_as_none() -> None:
    """Changing any one character of a confirmation link makes it worthless."""
    token = tokens().confirm(5, 99)
    for index in tamperable(token):
        assert tokens().read_confirm(tamper(token, index), WEEK) is None, index


def test_tampered_unsubscribe_token_reads_as_none() -> None:
    """Changing any one character of an unsubscribe link makes it worthless."""
    token = tokens().unsubscribe(42, 7)
    for index in tamperable(token):
        assert tokens().read_unsubscribe(tamper(token, index)) is None, index


def test_token_signed_with_another_key_reads_as_none() -> None:
    """A link made by another installation (another secret key) is refused."""
    other = tokens("another-secret")
    assert tokens().read_confirm(other.confirm(5, 99), WEEK) is None
    assert tokens().read_unsubscribe(other.unsubscribe(42, 7)) is None


def test_confirm_and_unsubscribe_tokens_are_not_interchangeable() -> None:
    """A confirmation token cannot unsubscribe anyone, nor the other way round."""
    assert tokens().read_unsubscribe(tokens().confirm(42, 7)) is None
    assert tokens().read_confirm(tokens().unsubscribe(5, 99), WEEK) is None


@pytest.mark.parametrize("garbage", ["", ".", "..", "a.b", "a.b.c", "WzUsOTld", "%00", "x" * 500])
def test_garbage_reads_as_none(garbage: str) -> None:
    """A mangled link is refused quietly."""
    assert tokens().read_confirm(garbage, WEEK) is None
    assert tokens().read_unsubscribe(garbage) is None


@given(st.text(max_size=200))
def test_reading_any_text_never_raises(text: str) -> None:
    """Whatever a link scanner or a user puts in the URL, reading it never crashes."""
    assert tokens().read_confirm(text, WEEK) is None
    assert tokens().read_unsubscribe(text) is None


# --- Expiry ------------------------------------------------------------------------------------


def test_expired_confirm_token_reads_as_none() -> None:
    """A confirmation link older than its allowed age no longer works."""
    token = tokens().confirm(5, 99)
    assert tokens().read_confirm(token, WEEK) == ConfirmClaim(5, 99)
    assert tokens().read_confirm(token, -1) is None


def test_old_confirm_link_has_expired_after_a_week() -> None:
    """A confirmation link from a mail sent years ago is refused with the usual week's limit."""
    assert tokens().read_confirm(OLD_CONFIRM, WEEK) is None
    assert tokens().read_confirm(OLD_CONFIRM, 100 * 365 * 24 * 3600) == ConfirmClaim(5, 99)


def test_unsubscribe_link_never_expires() -> None:
    """An unsubscribe link in a mail read years later still works (RFC 8058)."""
    assert tokens().read_unsubscribe(OLD_UNSUBSCRIBE) == UnsubscribeClaim(42, 7)
