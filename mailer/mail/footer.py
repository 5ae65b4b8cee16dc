"""The legal footer: what 特定電子メール法 requires in every list mail, checked in each part."""

from __future__ import annotations

from markupsafe import Markup

from mailer.config import Site
from mailer.mail.compose import Composed


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
