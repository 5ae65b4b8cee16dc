"""`broadcast test`: one issue, as a reader gets it, to any address, outside the ledger."""

from __future__ import annotations

import logging
from datetime import datetime

from mailer.broadcasts import content, issues
from mailer.deliver.jobs import Job
from mailer.errors import BroadcastError
from mailer.mail.compose import Recipient
from mailer.runtime import Runtime
from mailer.subscribers.addresses import Refusal, check_address, wire_form

log = logging.getLogger(__name__)


def send_test(runtime: Runtime, issue_id: int, address: str, now: datetime) -> None:
    """Send the issue to `address`, its subject prefixed `[テスト]`: no subscriber, no ledger row.
    An address the form would refuse (a blocked provider, not an address) is refused here too."""
    site = runtime.site
    checked = check_address(address, site.signup.blocked)
    if isinstance(checked, Refusal):
        if checked.reason == "blocked":
            raise BroadcastError(f"--to: {checked.provider} does not take our mail (the form refuses it too)")
        raise BroadcastError(f"--to: not an address the form would take ({checked.reason})")
    with runtime.transaction() as session:
        issue = issues.get(session, issue_id)
        found = content.of(issue)
    magazine = content.magazine(site, runtime.catalog())
    template = content.template(
        runtime.renderer, magazine, found, runtime.renderer.t("broadcast.test_prefix")
    )
    recipient = Recipient(0, 0, wire_form(checked.email), runtime.renderer.t("sample_name"))
    job = Job(0, 0, recipient.email, template.render(recipient, now))
    with runtime.transport.session() as connection:
        for _job, error in connection.send_many(site.sender.address, [job]):
            if error is not None:
                raise BroadcastError(f"the relay refused the test mail: {error}")
    log.info("broadcast.test_sent broadcast_id=%s", issue_id)
