"""The naive way, as a Celery app: one task per mail that renders, builds and sends on a new connection.

bench/send.py starts `celery -A bench.naive worker` with BENCH_REDIS_URL, BENCH_HOME and
BENCH_SMTP_PORT set. The task renders the same templates with a plain Jinja2 environment (and the
same CSS inlining, so the mail is the same), builds an `EmailMessage` with the default policy, and
opens an `smtplib.SMTP` connection for that one mail. Completions are counted in Redis.
"""

from __future__ import annotations

import os
import smtplib
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from functools import cache
from pathlib import Path
from typing import Any

import css_inline
import redis
from celery import Celery
from celery.signals import worker_ready
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from mailer.config import Site, load_site
from mailer.db import utcnow
from mailer.i18n import translator
from mailer.seminars.sequences import load_catalog_strict
from mailer.subscribers.tokens import Tokens

SEQUENCE, STEP = "web-business", "lesson-1"
IDLE_QUEUE, WORK_QUEUE = "bench-idle", "bench-naive"
DONE, READY = "naive:done", "naive:ready"

app = Celery("bench_naive", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_ignore_result=True, result_backend=None, worker_hijack_root_logger=False)


@cache
def counter() -> redis.Redis:
    return redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


@cache
def context() -> tuple[Site, Environment, dict[str, Any], Tokens]:
    """What a typical app builds at import: the site, one Jinja2 environment, the seminar."""
    home = Path(os.environ["BENCH_HOME"])
    site = load_site(home)
    env = Environment(loader=FileSystemLoader(home / "templates"), autoescape=select_autoescape(["html"]))
    env.globals.update(t=translator(site.locale), site=site)
    sequence = load_catalog_strict(home).get(SEQUENCE)
    assert sequence is not None
    return site, env, {"sequence": sequence, "step": sequence.step(STEP)}, Tokens("bench")


INLINER = css_inline.CSSInliner(keep_style_tags=True)


@app.task(name="bench.naive.send")
def send(reader: int) -> None:
    """Render lesson-1 for one reader, build the message, and send it on a connection of its own."""
    site, env, base, tokens = context()
    folder = f"mail/{SEQUENCE}/{STEP}"
    url = f"http://localhost:8000/unsubscribe/{tokens.unsubscribe(reader, reader)}"
    ctx = {**base, "name": f"読者{reader}", "unsubscribe_url": url}
    subject = " ".join(env.get_template(f"{folder}/subject.txt").render(ctx).split())
    text = env.get_template("mail/_base/body.txt").render(
        ctx, content=env.get_template(f"{folder}/body.txt").render(ctx).strip()
    )
    content = Markup(env.get_template(f"{folder}/body.html").render(ctx))
    html = INLINER.inline(
        env.get_template("mail/_base/body.html").render(ctx, content=content, subject=subject)
    )
    sender = site.sender
    msg = EmailMessage()
    msg["From"] = Address(display_name=sender.name, addr_spec=sender.address)
    msg["To"] = Address(display_name=f"読者{reader}", addr_spec=f"reader{reader}@example.com")
    msg["Subject"] = subject
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = make_msgid(domain=sender.domain)
    msg["List-Unsubscribe"] = f"<{url}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    with smtplib.SMTP("127.0.0.1", int(os.environ["BENCH_SMTP_PORT"])) as client:
        client.send_message(msg)
    counter().incr(DONE)


@worker_ready.connect
def _ready(**_: object) -> None:
    """Tell the benchmark this worker is consuming (the idle queue, until it is told to switch)."""
    context()
    counter().incr(READY)
