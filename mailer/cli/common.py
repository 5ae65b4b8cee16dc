"""What every command shares: the two consoles, the one-line failure, the runtime from the environment."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn, cast

import typer
from typer import _click  # the click typer carries, as TyperGroup's own signatures name it
from typer.core import TyperGroup

if TYPE_CHECKING:
    from rich.console import Console

    from mailer.runtime import Runtime


class _LazyConsole:
    """A rich Console made when first used: importing rich costs `mailer --help` a third of its time."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr

    @cached_property
    def console(self) -> Console:
        from rich.console import Console

        # soft_wrap: a line is never broken at the terminal's (or, piped, rich's 80-column) width,
        # so an error line names its file whole and `preview` shows the mail as the reader gets it.
        # emoji=False: what the operator typed (`--to seminar:zzz`) is printed as typed, not as 💤.
        return Console(stderr=self._stderr, soft_wrap=True, emoji=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)

    # Special methods are looked up on the type, not through __getattr__: a progress bar enters
    # its console as a context (`broadcast send --wait`).
    def __enter__(self) -> Console:
        return self.console.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.console.__exit__(*exc)


out = cast("Console", _LazyConsole(stderr=False))
err = cast("Console", _LazyConsole(stderr=True))


class Commands(TyperGroup):
    """Click's plain help (typer's rich help imports rich's markdown, syntax and traceback modules,
    most of `mailer --help`'s time), listing each command's first sentence whole, wrapped, rather
    than cut at the terminal's width."""

    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def fail(message: str) -> NoReturn:
    from rich.markup import escape

    # The message quotes what the operator typed: brackets in it are text, not rich markup.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(1)


def load_runtime(*, sending: bool = False) -> Runtime:
    """The runtime the environment describes (`sending`: a worker process, see Runtime)."""
    from mailer.config import load_settings
    from mailer.runtime import Runtime

    return Runtime(load_settings(), sending=sending)
