"""Message-IDs: one per delivery, the same on a re-send, unique to the installation, showing no id."""

from __future__ import annotations

import email
import email.policy
import itertools
import re
from datetime import UTC, datetime
from pathlib import Path

from mailer.config import load_site
from mailer.mail.compose import Recipient, Renderer
from mailer.seminars.sequences import load_catalog_strict
from mailer.subscribers.tokens import Tokens
from tests.conftest import SECRET

SHAPE = re.compile(r"<([0-9a-f]{24})@([^>]+)>")


def renderer(home: Path, secret: str = SECRET) -> Renderer:
    """The renderer a process would build over `home` with `secret`."""
    return Renderer(load_site(home), "http://localhost:8000", Tokens(secret), secret)


def shared_prefix(a: str, b: str) -> int:
    """How many leading characters two strings have in common."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def test_message_id_is_a_tag_at_the_sender_domain(home: Path) -> None:
    """A Message-ID is 24 hex digits of keyed hash at the sender's domain, and nothing else."""
    r = renderer(home)
    found = SHAPE.fullmatch(r.message_id(398))
    assert found
    assert found.group(2) == r.site.sender.domain


def test_message_id_shows_no_delivery_id(home: Path) -> None:
    """The delivery's id is nowhere in its Message-ID, so a reader cannot count the mails sent."""
    r = renderer(home)
    for delivery_id in (398, 12345, 2**31, 10**12):
        tag = SHAPE.fullmatch(r.message_id(delivery_id))
        assert tag
        assert str(delivery_id) not in tag.group(1)
        assert f"{delivery_id:x}" not in tag.group(1)


def test_message_id_is_the_same_for_the_same_delivery(home: Path) -> None:
    """A re-send of a delivery, even by another process, carries the Message-ID of the first send."""
    assert renderer(home).message_id(398) == renderer(home).message_id(398)


def test_message_ids_differ_between_deliveries_and_installations(home: Path) -> None:
    """Consecutive deliveries get unrelated tags, and another secret key gives other Message-IDs."""
    r = renderer(home)
    tags = [r.message_id(n)[1:25] for n in range(1, 1001)]
    assert len(set(tags)) == len(tags)
    assert max(shared_prefix(a, b) for a, b in itertools.pairwise(tags)) < 6
    assert renderer(home, "another-secret").message_id(398) != r.message_id(398)


def test_a_rendered_mail_carries_the_same_message_id_each_time(home: Path) -> None:
    """Rendering a delivery's mail again later, on either path, gives it the same Message-ID header."""
    r = renderer(home)
    sequence = next(s for s in load_catalog_strict(home).sequences.values() if s.steps)
    template = r.step(sequence, sequence.steps[0])
    reader = Recipient(398, 214, "reader@example.com", "読者")
    first = datetime(2026, 1, 5, 9, tzinfo=UTC)
    later = datetime(2026, 1, 6, 9, tzinfo=UTC)
    fast = email.message_from_bytes(template.render(reader, first), policy=email.policy.default)
    again = email.message_from_bytes(template.render(reader, later), policy=email.policy.default)
    reference = template.message(reader, later)
    assert fast["Message-ID"] == again["Message-ID"] == reference["Message-ID"] == r.message_id(398)
