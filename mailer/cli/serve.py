"""The long-running processes: `run` (all in one), `web`, `worker` and `beat`."""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mailer.cli.common import fail, load_runtime, out

if TYPE_CHECKING:
    from mailer.runtime import Runtime

HostOption = Annotated[str, typer.Option(help="Interface to listen on.")]
PortOption = Annotated[int, typer.Option(help="Port to listen on.")]


def _serving_runtime(host: str, port: int) -> Runtime:
    """Links point where this process listens unless MAILER_BASE_URL says otherwise (a proxy)."""
    from mailer.config import load_settings
    from mailer.runtime import Runtime

    settings = load_settings()
    if "base_url" not in settings.model_fields_set:
        shown = "localhost" if host in {"127.0.0.1", "0.0.0.0", "::", "::1"} else host  # noqa: S104 (compared, not bound)
        settings.base_url = f"http://{shown}:{port}"
    return Runtime(settings)


def _serve(runtime: Runtime, host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    options: dict[str, Any] = {"host": host, "port": port, "log_level": "info", "access_log": False}
    # uvicorn re-raises SIGTERM after its graceful shutdown; as SystemExit it unwinds our
    # `finally` blocks (worker and beat threads stop) instead of killing the process mid-way.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if workers > 1:
        # Each worker process builds its own runtime from the environment; links must point
        # where this parent listens.
        os.environ["MAILER_BASE_URL"] = runtime.settings.base_url
        uvicorn.run("mailer.web.app:from_environment", factory=True, workers=workers, **options)
        return
    from mailer import tasks
    from mailer.web.app import create_app

    uvicorn.run(create_app(runtime, broker_ok=tasks.broker_ok), **options)


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _prepare(runtime: Runtime) -> None:
    """What every serving command checks first: the schema is current, the seminars load."""
    from mailer.seminars.sequences import load_catalog_strict

    runtime.upgrade_db()
    load_catalog_strict(runtime.settings.home)
    _ = runtime.site


def _port_free(host: str, port: int) -> None:
    """Fail at once when the port is taken, before a worker starts and a tick sends anything."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror} (another mailer running? try --port)")


def run(host: HostOption = "127.0.0.1", port: PortOption = 8000) -> None:
    """The whole thing on one machine: web, worker and scheduler (Ctrl-C stops all)."""
    from mailer import tasks
    from mailer.embedded import worker_thread

    _port_free(host, port)
    runtime = _serving_runtime(host, port)
    _prepare(runtime)
    celery = tasks.configure(runtime, worker_here=True)
    out.print(f"mailer: http://{host}:{port}/  (mail goes to {runtime.settings.smtp_url}; Ctrl-C stops)")
    if runtime.settings.smtp_url.startswith("maildir:"):
        out.print(f"mailer: read the mail written at http://{host}:{port}/outbox")
    try:
        with worker_thread(celery, beat=True):
            _serve(runtime, host, port)
    except KeyboardInterrupt:
        pass  # Ctrl-C: web, worker and scheduler have stopped; that is a normal end
    out.print("mailer: stopped")


def web(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Processes serving requests.")] = 1,
) -> None:
    """The web process alone (production: several workers, behind a proxy)."""
    _port_free(host, port)
    runtime = _serving_runtime(host, port)
    _prepare(runtime)
    if workers == 1:  # else each worker process configures its own (web.app.from_environment)
        from mailer import tasks

        tasks.configure(runtime)
    _serve(runtime, host, port, workers)


def worker(concurrency: Annotated[int, typer.Option(help="Threads sending at once.")] = 2) -> None:
    """A Celery worker that sends what the ledger says is due."""
    from mailer import tasks

    runtime = load_runtime(sending=True)
    _prepare(runtime)
    celery = tasks.configure(runtime)
    celery.worker_main(
        [
            "worker",
            "--loglevel=INFO",
            "-Q",
            "mailer",
            "--pool=threads",
            f"--concurrency={concurrency}",
        ]
    )


def beat() -> None:
    """The scheduler: wakes the tick every few seconds (two at once are harmless)."""
    from mailer import tasks

    runtime = load_runtime()
    _prepare(runtime)
    celery = tasks.configure(runtime)
    celery.start(["beat", "--loglevel=INFO"])
