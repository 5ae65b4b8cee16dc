"""What every command shares: the two consoles, the one-line failure, the runtime from the environment."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from mailer.runtime import Runtime

# soft_wrap: a line is never broken at the terminal's (or, piped, rich's 80-column) width, so an
# error line names its file whole and `preview` shows the mail as the reader gets it.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> NoReturn:
    # The message quotes what the operator typed: brackets in it are text, not rich markup.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(1)


def load_runtime(*, sending: bool = False) -> Runtime:
    """The runtime the environment describes (`sending`: a worker process, see Runtime)."""
    from mailer.config import load_settings
    from mailer.runtime import Runtime

    return Runtime(load_settings(), sending=sending)
