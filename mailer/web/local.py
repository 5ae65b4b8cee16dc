"""Pages for this machine only (`/outbox`, `/admin` without a password): a loopback client that
names this site in its Host header.

A loopback client alone is not enough: a page on another site whose name resolves to 127.0.0.1
(DNS rebinding) is fetched by the machine's own browser, from a loopback address, with the other
site's name in `Host` and that site's origin, so it may read the answer. Its name is never one of
ours, so a Host check closes that door.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit

from fastapi import Request
from starlette.exceptions import HTTPException

DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(address: str | None) -> bool:
    """A client address on this machine (127.0.0.0/8, ::1)."""
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def split_host(host: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6]:port` as (lowercased name, port); None if it is not one."""
    try:
        parts = urlsplit(f"//{host}")
        port = parts.port
    except ValueError:
        return None
    name = parts.hostname
    if not name or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return name.lower(), port


def _loopback_name(name: str) -> bool:
    """`localhost` or a loopback address literal: names no other site can have."""
    return name == "localhost" or is_loopback(name)


def own_host(host: str | None, base_url: str) -> bool:
    """A Host header a browser sends for this site: a loopback name with any port, or the name and
    port of MAILER_BASE_URL (no port where it takes its scheme's default)."""
    found = split_host(host) if host else None
    if found is None:
        return False
    name, port = found
    if _loopback_name(name):
        return True
    base = urlsplit(base_url)
    try:
        base_port = base.port or DEFAULT_PORTS.get(base.scheme)
    except ValueError:
        return False
    return name == (base.hostname or "").lower() and (port or DEFAULT_PORTS.get(base.scheme)) == base_port


def from_this_machine(request: Request, base_url: str) -> bool:
    """A request from a loopback client that names this site."""
    client = request.client.host if request.client else None
    return is_loopback(client) and own_host(request.headers.get("host"), base_url)


def local_only(base_url: str) -> Callable[[Request], None]:
    """A dependency for a router of local pages: anything else gets the neutral 404, the answer a
    path that does not exist gets, so a stranger cannot even tell that the page is there (a 403
    or 421 would say it is)."""

    def check(request: Request) -> None:
        if not from_this_machine(request, base_url):
            raise HTTPException(404)

    return check
