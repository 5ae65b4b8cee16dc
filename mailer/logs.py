"""Logging: key=value lines naming ids; a last filter masks anything shaped like an address."""

from __future__ import annotations

import logging
import re
import sys

# Wide on purpose: a false positive costs a masked word, a miss leaks an address.
ADDRESS = re.compile(r"[^\s@<>\"'(),;:]+@[^\s@<>\"'(),;:]+")


class MaskAddresses(logging.Filter):
    """Rewrites each record's final text, so arguments and exception text are covered too."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if "@" in text or (record.exc_text and "@" in record.exc_text):
            record.msg, record.args = ADDRESS.sub("<address>", text), None
            if record.exc_text:
                record.exc_text = ADDRESS.sub("<address>", record.exc_text)
        return True


def configure(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if any(isinstance(f, MaskAddresses) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(MaskAddresses())
    root.addHandler(handler)
    root.setLevel(level)
    # Quiet what narrates routine work: Alembic every start, Celery two lines per tick.
    for name in ("alembic", "celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)
