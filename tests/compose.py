"""docker-compose.yml as data: the commands and health checks that tests start natively.

There is no Docker engine on the build machines, so the tests run the compose file's own commands as
`python -m mailer <argv>`: what the stack runs is what is exercised.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"

# `$$` is Compose's escape for a `$` left to the container's shell (`$$HOSTNAME`).
_ESCAPED_DOLLAR = re.compile(r"\$\$")


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The file as YAML data, anchors and `<<` merges resolved, before Compose's interpolation."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise TypeError(f"{path}: no `services:` mapping")
    return data


def mailer_services(path: Path = COMPOSE_FILE) -> dict[str, dict[str, Any]]:
    """The services that run the mailer image, the ones that `build:` it, in the file's order."""
    services: dict[str, dict[str, Any]] = load_compose(path)["services"]
    return {name: service for name, service in services.items() if "build" in service}


def _argv(value: object, where: str) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        return [str(item) for item in value]
    raise ValueError(f"{where}: expected a string or a list of strings, got {value!r}")


def compose_commands(path: Path = COMPOSE_FILE) -> dict[str, list[str]]:
    """Each mailer service's arguments to the `mailer` entry point, e.g. {"migrate": ["db", "upgrade"]}.

    Start one natively as `[sys.executable, "-m", "mailer", *argv]`.
    """
    commands = {}
    for name, service in mailer_services(path).items():
        if "command" not in service:
            raise ValueError(f"{path}: service {name!r} has no command")
        commands[name] = _argv(service["command"], f"{path}: {name}.command")
    return commands


def healthcheck_argv(service: dict[str, Any], where: str = "healthcheck") -> list[str]:
    """A service's health check as a native argv: `CMD` runs as is, `CMD-SHELL` through `sh -c`.

    Compose's `$$` becomes `$`, as the container sees it; other interpolation is not done. The
    caller provides what the container's environment would (MAILER_BROKER_URL, HOSTNAME, PATH).
    """
    test = service.get("healthcheck", {}).get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    argv = _argv(test, where)
    if not argv or argv[0] not in {"CMD", "CMD-SHELL"}:
        raise ValueError(f"{where}: expected [CMD, ...] or [CMD-SHELL, command], got {test!r}")
    unescaped = [_ESCAPED_DOLLAR.sub("$", arg) for arg in argv[1:]]
    if argv[0] == "CMD-SHELL":
        return ["sh", "-c", " ".join(unescaped)]
    return unescaped
