"""Celery configured for mail: the ledger holds the truth and the delays, Redis only wakes workers."""

from __future__ import annotations

from pathlib import Path

from mailer import tasks
from mailer.config import Settings
from mailer.runtime import Runtime


def configured(home: Path, broker_url: str) -> dict[str, object]:
    settings = Settings(_env_file=None, home=home, broker_url=broker_url, secret_key="x")  # type: ignore[call-arg]
    return dict(tasks.configure(Runtime(settings)).conf)


def test_redis_is_configured_for_mail(home: Path) -> None:
    conf = configured(home, "redis://127.0.0.1:6379/0")
    assert conf["task_acks_late"] is True  # acknowledged after the work
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    # Nothing waits in Redis longer than the visibility timeout: wake-ups expire well before it.
    timeout = conf["broker_transport_options"]["visibility_timeout"]  # type: ignore[index]
    assert timeout > tasks.WAKE_EXPIRES
    assert conf["beat_schedule"]["tick"]["options"]["expires"] < timeout  # type: ignore[index]
    assert conf["broker_connection_max_retries"] is None  # a Redis restart is waited out
    assert sorted(name for name in tasks.app.tasks if name.startswith("mailer.")) == [
        "mailer.deliver",
        "mailer.tick",
    ]


def test_the_embedded_broker_gets_no_redis_options(home: Path) -> None:
    """The sqla transport hands every option to create_engine(): none may leak there."""
    conf = configured(home, "")
    assert str(conf["broker_url"]).startswith("sqla+sqlite:///")
    assert conf["broker_transport_options"] == {}
